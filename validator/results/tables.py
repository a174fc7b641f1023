"""The one loader of a run's tables: from a DuckDB file (:func:`load_run_tables`) or from a
run just finished, in memory (:func:`outcome_tables`), as the same DataFrames.

A file of today's schema must hold every table and column of
:data:`validator.results.schema.SCHEMA`: a missing one is an
:class:`~validator.errors.InputError` naming it (a damaged database is never read as if the
missing values were NULL). A file of an earlier schema (migrated when a
run is next written to it) lacks what later versions added: those tables are empty and those
columns NULL, as docs/schema.md documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from validator.errors import InputError

#: What the reading of a run reads (the terminal, ``show``, the gate, JUnit, the reports'
#: text, the dashboard's overview): every run table but the histograms.
SUMMARY_TABLES = ("runs", "features", "tests", "skipped_columns", "models", "criticality",
                  "gate_results", "syst_effects", "importances")
#: The histograms a report's figures need: the plotting 1D and the test 2D binnings.
REPORT_HISTOGRAMS = ("((binning = 'plot' AND feature_y IS NULL) OR "
                     "(binning = 'test' AND feature_y IS NOT NULL))")
#: The order rows are read in, where it matters to a reader.
ORDER = {"tests": " ORDER BY test_id", "criticality": " ORDER BY criticality_rank",
         "gate_results": " ORDER BY judged_at"}


def _schema(table: str) -> list[str]:
    from validator.results.schema import SCHEMA

    return [c for c, _ in SCHEMA[table]]


def empty_table(table: str) -> pd.DataFrame:
    """A table of the schema without rows."""
    return pd.DataFrame(columns=_schema(table))


def _present(db: Path) -> dict[str, set[str]]:
    from validator.results.store import query

    found = query(db, "SELECT table_name, column_name FROM information_schema.columns "
                      "WHERE table_schema = 'main'")
    out: dict[str, set[str]] = {}
    for table, column in zip(found["table_name"], found["column_name"], strict=True):
        out.setdefault(table, set()).add(column)
    return out


def check_tables(db: str | Path, tables: Iterable[str]) -> int:
    """The file's schema version, once every table of ``tables`` and each of its columns is
    there (today's schema); an :class:`InputError` names the first missing one."""
    from validator.results.schema import SCHEMA_VERSION
    from validator.results.store import check_readable

    db = Path(db)
    version = check_readable(db)
    if version < SCHEMA_VERSION:
        return version
    present = _present(db)
    for table in tables:
        if table not in present:
            raise InputError(f"{db}: table '{table}' is missing (a damaged validator database; "
                             "re-run, or restore the file)")
        missing = [c for c in _schema(table) if c not in present[table]]
        if missing:
            raise InputError(f"{db}: table '{table}' has no column '{missing[0]}' (a damaged "
                             "validator database; re-run, or restore the file)")
    return version


def _complete(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """A table of an earlier schema with today's columns (the added ones NULL)."""
    missing = [c for c in _schema(table) if c not in frame.columns]
    return frame.assign(**dict.fromkeys(missing)) if missing else frame


def load_run_tables(db: str | Path, run: str = "latest", *,
                    tables: Iterable[str] = SUMMARY_TABLES,
                    histograms: str | None = None) -> dict[str, pd.DataFrame]:
    """One stored run's rows: table name -> DataFrame (``run``: ``latest``, an id or a unique
    prefix). ``histograms``: ``"report"`` adds the figures' histograms
    (:data:`REPORT_HISTOGRAMS`), ``"all"`` every histogram of the run."""
    from validator.results.store import query, resolve_run

    db = Path(db)
    names = list(dict.fromkeys([*tables, *(["histograms"] if histograms else [])]))
    check_tables(db, names)
    run_id = resolve_run(db, run)
    present = _present(db)
    out: dict[str, pd.DataFrame] = {}
    for table in names:
        if table not in present:  # an earlier schema: added later
            out[table] = empty_table(table)
            continue
        sql = f"SELECT * FROM {table} WHERE run_id = ?"
        if table == "histograms" and histograms == "report":
            sql += f" AND {REPORT_HISTOGRAMS}"
        out[table] = _complete(query(db, sql + ORDER.get(table, ""), [run_id]), table)
    return out


def tables_from_rows(rows: Mapping[str, Iterable[Mapping[str, Any]]],
                     tables: Iterable[str] = SUMMARY_TABLES) -> dict[str, pd.DataFrame]:
    """Row dicts per table (as :func:`validator.results.rows.run_rows` gives) as DataFrames."""
    return {t: pd.DataFrame(list(rows.get(t, [])), columns=_schema(t)) for t in tables}


def outcome_tables(outcome: Any, *, verdict_rows: Iterable[Mapping[str, Any]] = ()
                   ) -> dict[str, pd.DataFrame]:
    """A run just finished, as :func:`load_run_tables` would read it once stored (the
    histograms left out); ``verdict_rows``: the ``gate_results`` of a verdict not stored."""
    from validator.results.rows import run_rows

    rows = dict(run_rows(outcome, with_histograms=False))
    rows["gate_results"] = list(verdict_rows)
    return tables_from_rows(rows)
