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

#: What the server imports before it forks any worker (last: it freezes what was imported).
PRELOAD = ["validator.engine.worker_preload"]
#: What it imports besides for a run that audits a network: every worker evaluates it, and
#: importing torch costs each of them 1.5 s of its first task (one copy in the server, shared
#: by the workers it forks, also costs less memory than one per worker).
NETWORK_PRELOAD = ["torch"]
_preload: list[str] = list(PRELOAD)


def clean_context() -> multiprocessing.context.BaseContext:
    """The start method of the workers that read files: ``forkserver`` (with
    :data:`PRELOAD`, and :data:`NETWORK_PRELOAD` if :func:`start_early` was told of a
    network), or ``spawn`` where there is no forkserver (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_preload)
    return context


def start_early(network: bool = False) -> None:
    """Start the server now, without waiting for it (its imports run beside the caller's);
    ``network``: the run audits a network, the server imports torch too."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    if network:
        _preload[:] = [*NETWORK_PRELOAD, *PRELOAD]
    clean_context()
    forkserver.ensure_running()
