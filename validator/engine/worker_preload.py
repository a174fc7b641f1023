"""Imported once by the server that the scan's and the fill's worker processes are forked
from (:func:`validator.engine.pool.clean_map`): every worker then starts with the readers imported
and the compiled kernels loaded, instead of spending a second or two on them in its first
task. Imported last, it also moves every object the server made out of the garbage
collector's reach (``gc.freeze``): a collection writes to each object it examines, and each
page written is copied into the worker, so without it each worker ends up with a private copy
of most of the server's heap (measured: 150 MB of each worker's 730 MB in the audited 1M
run). Importing this module has these effects and no other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import pyarrow.parquet  # noqa: F401 - not pandas: the readers convert without it

import validator.engine.pool  # noqa: F401 - the tasks' functions
from validator.stages import fill_kernels as kernels

kernels.warm()


#: glibc's mallopt parameters (malloc.h) and the values the workers use: large arrays come
#: from a heap that keeps what is freed, instead of fresh zeroed pages for every chunk.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest
TRIM_THRESHOLD_BYTES = 1 << 30


def _keep_freed_memory() -> None:
    """A worker's chunk arrays (tens of megabytes each, allocated and freed per chunk) would
    otherwise be mapped and unmapped each time: every chunk's arrays page-faulted in again,
    a worker's first chunk 0.3-1 s of system time instead of 0.1. Only where glibc is."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


_keep_freed_memory()

# last: what the server imported stays shared with the workers it forks
gc.collect()
gc.freeze()
