"""Page file of the dashboard: the code is :func:`validator.dashboard.pairs.render`."""

from validator.dashboard.common import guard
from validator.dashboard.pairs import render

guard(render)
