"""The Streamlit dashboard (``validator dashboard --db FILE``): review a stored run beside the
network it audits, and monitor runs of one model over data-taking periods.

The dashboard only reads: every query runs on a short-lived read-only DuckDB connection
(:func:`validator.results.store.query`), cached per database file state and run
(:mod:`validator.dashboard.data`), so a ``validator run`` may write to the same file meanwhile.

Layout: ``app.py`` is the Streamlit entry (``st.navigation`` over the page files in
``views/``); each page's code is an importable module with a ``render()`` function
(:mod:`~validator.dashboard.overview`, :mod:`~validator.dashboard.inputs`,
:mod:`~validator.dashboard.pairs`, :mod:`~validator.dashboard.model`,
:mod:`~validator.dashboard.history`, :mod:`~validator.dashboard.models`); interactive plotly
figures are in :mod:`~validator.dashboard.plots`, their PNG/PDF versions (matplotlib) in
:mod:`validator.output.figures` and :mod:`~validator.dashboard.static`.
"""

from __future__ import annotations

from pathlib import Path

from validator.errors import InputError

#: The Streamlit script ``validator dashboard`` runs.
APP = Path(__file__).resolve().with_name("app.py")

def database_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be shown (one line), or None for a validator database.

    Checks, without writing anything, what the one loader checks
    (:func:`validator.results.store.check_readable`): the file exists, is a DuckDB file of
    validator's, and holds every table and column of its schema (a damaged database names
    what it lacks).
    """
    from validator.results.store import check_readable

    try:
        check_readable(path)
    except InputError as exc:
        return str(exc)
    return None


def check_database(path: str | Path) -> None:
    """Raise :class:`InputError` (one line) unless ``path`` is a validator database."""
    problem = database_problem(path)
    if problem:
        raise InputError(problem)
