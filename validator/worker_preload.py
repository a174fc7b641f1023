"""Imported once by the server that the scan's and the fill's worker processes are forked
from (:func:`validator.engine.clean_map`): every worker then starts with the readers imported
and the compiled kernels loaded, instead of spending a second or two on them in its first
task. Importing this module has that effect and no other.
"""

from __future__ import annotations

import pandas  # noqa: F401 - imported for the workers (pyarrow's conversions use it)
import pyarrow.parquet  # noqa: F401

import validator.engine  # noqa: F401 - the tasks' functions
from validator import kernels

kernels.warm()
