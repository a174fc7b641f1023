"""Page file of the dashboard: the code is :func:`validator.dashboard.overview.render`."""

from validator.dashboard.common import guard
from validator.dashboard.overview import render

guard(render)
