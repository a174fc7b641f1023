"""The server the scan's and the fill's worker processes are forked from, and its early start.

Workers that read files are not forked from the run's process (polars and pyarrow keep thread
pools that do not survive a fork: :func:`validator.engine.pool.clean_map`) but from a
``forkserver``, which imports :mod:`validator.engine.worker_preload` once. That takes a second or
two;
:func:`start_early`, called by ``validator run`` before it imports the pipeline, lets the
server do it on another core while the run's own process imports the same modules.

This module imports nothing but the standard library, so that starting early costs nothing.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context

#: What the server imports before it forks any worker.
PRELOAD = ["validator.engine.worker_preload"]


def clean_context() -> multiprocessing.context.BaseContext:
    """The start method of the workers that read files: ``forkserver`` (with
    :data:`PRELOAD`), or ``spawn`` where there is no forkserver (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_early() -> None:
    """Start the server now, without waiting for it (its imports run beside the caller's)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    clean_context()
    forkserver.ensure_running()
