"""Page file of the dashboard: the code is :func:`validator.dashboard.history.render`."""

from validator.dashboard.common import guard
from validator.dashboard.history import render

guard(render)
