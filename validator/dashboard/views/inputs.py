"""Page file of the dashboard: the code is :func:`validator.dashboard.inputs.render`."""

from validator.dashboard.common import guard
from validator.dashboard.inputs import render

guard(render)
