"""Page file of the dashboard: the code is :func:`validator.dashboard.models.render`."""

from validator.dashboard.common import guard
from validator.dashboard.models import render

guard(render)
