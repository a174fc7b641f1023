"""Page file of the dashboard: the code is :func:`validator.dashboard.model.render`."""

from validator.dashboard.common import guard
from validator.dashboard.model import render

guard(render)
