"""Data access of the dashboard: cached reads of the one loader.

Every read goes through :mod:`validator.results.tables` (short-lived read-only connections,
closed before the page is drawn: no connection is ever held open, so a ``validator run`` can
write to the file between two clicks). Results are cached with ``st.cache_data`` keyed by the
database path, the state of the file (:func:`stamp`: modification time and size of the file
and of its write-ahead log) and the read's arguments (the run id among them), so a new run
written to the file is seen at the next rerun and an unchanged file is never read twice.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from validator.results import tables

#: Environment variable naming the database when the script gets no ``--db`` argument.
DB_ENV = "VALIDATOR_DB"


def db_path(argv: Sequence[str] | None = None) -> Path | None:
    """The database shown: ``--db`` among the script's arguments (``streamlit run app.py --
    --db FILE``), else the ``VALIDATOR_DB`` environment variable, else None."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    args, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    value = args.db or os.environ.get(DB_ENV)
    return Path(value).resolve() if value else None


def stamp(db: str | Path) -> tuple[int, int, int, int]:
    """The state of the database file: (mtime ns, size) of the file and of its WAL (0 when
    absent). Part of every cache key: a write to the file changes it."""
    out = []
    for p in (Path(db), Path(f"{db}.wal")):
        try:
            s = p.stat()
            out += [s.st_mtime_ns, s.st_size]
        except OSError:
            out += [0, 0]
    return out[0], out[1], out[2], out[3]


@st.cache_data(show_spinner=False, max_entries=1024)
def _cached(db: str, state: tuple[int, ...], name: str, args: tuple[Any, ...]) -> Any:
    """One read of the loader (:mod:`validator.results.tables`), cached per (database, file
    state, function, arguments)."""
    return getattr(tables, name)(db, *args)


def _read(name: str, db: str | Path, *args: Any) -> Any:
    out = _cached(str(db), stamp(db), name, tuple(args))
    return out.copy() if isinstance(out, pd.DataFrame) else out


# ------------------------------------------------------------------ runs


@st.cache_data(show_spinner=False, max_entries=64)
def _reading(db: str, state: tuple[int, ...], run_id: str) -> Any:
    from validator.results.reading import read_run
    from validator.results.tables import load_run_tables

    return read_run(load_run_tables(db, run_id))


def reading(db: str | Path, run_id: str) -> Any:
    """The one reading of a run (:func:`validator.results.reading.read_run`), as the terminal,
    the reports and the gate have it; cached per file state."""
    return _reading(str(db), stamp(db), run_id)


def runs(db: str | Path) -> pd.DataFrame:
    """Every run, newest first (without the plan JSON)."""
    return _read("run_list", db)


def run(db: str | Path, run_id: str) -> dict[str, Any]:
    """One run's ``runs`` row (every column), as a dict of plain values."""
    rows = records(_read("run_table", db, run_id, "runs"))
    return rows[0] if rows else {}


def tags(value: Any) -> dict[str, str]:
    """A ``runs.tags`` value (``key=value`` strings) as a dict."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    out = {}
    for item in list(value):
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


def run_label(row: Mapping[str, Any]) -> str:
    """A run as the picker shows it: its id, its tags and its model's short hash."""
    text = str(row["run_id"])
    t = tags(row.get("tags"))
    if t:
        text += "  [" + ", ".join(f"{k}={v}" for k, v in t.items()) + "]"
    model = row.get("model_id")
    if isinstance(model, str):
        text += f"  model {model[:8]}"
    return text


def tests(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's tests, by ``test_id``."""
    return _read("run_table", db, run_id, "tests")


def features(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's ``features`` rows (every category)."""
    return _read("run_table", db, run_id, "features")


def gate_results(db: str | Path, run_id: str) -> pd.DataFrame:
    """Every verdict on the run (``gate_results``), oldest first."""
    return _read("run_table", db, run_id, "gate_results")


def skipped(db: str | Path, run_id: str) -> pd.DataFrame:
    """Columns the run did not test, with the reason."""
    return _read("run_table", db, run_id, "skipped_columns")


def run_models(db: str | Path, run_id: str) -> pd.DataFrame:
    """The networks audited in the run (``models``)."""
    return _read("run_table", db, run_id, "models")


def importances(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's ``importances`` rows."""
    return _read("run_table", db, run_id, "importances")


def criticality(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's ``criticality`` rows, by ``criticality_rank``."""
    return _read("run_table", db, run_id, "criticality")


def syst_effects(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's ``syst_effects`` rows (systematics; empty without)."""
    return _read("run_table", db, run_id, "syst_effects")


def hist_plot(db: str | Path, run_id: str, category: str, feature: str,
              ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A feature's ``plot`` histograms (:func:`validator.results.tables.plot_histograms`)."""
    return _read("plot_histograms", db, run_id, category, feature)


def hist_pair(db: str | Path, run_id: str, category: str, x: str, y: str,
              ) -> dict[str, Any] | None:
    """A pair's ``test`` histogram row (:func:`validator.results.tables.pair_histogram`)."""
    return _read("pair_histogram", db, run_id, category, x, y)


# ------------------------------------------------------------------ models and history


def all_models(db: str | Path) -> pd.DataFrame:
    """Every audited network (:func:`validator.results.tables.model_list`)."""
    return _read("model_list", db)


def model_runs(db: str | Path, model_id: str | None) -> pd.DataFrame:
    """The runs of one model (:func:`validator.results.tables.model_runs`)."""
    return _read("model_runs", db, model_id)


def correction_chains(db: str | Path) -> pd.DataFrame:
    """Run -> correction -> closure runs (:func:`validator.results.tables.correction_chains`)."""
    return _read("correction_chains", db)


def model_importances(db: str | Path, model_id: str) -> pd.DataFrame:
    """First-order importances of one model in every run."""
    return _read("model_importances", db, model_id)


# ------------------------------------------------------------------ helpers


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values (missing values as None, arrays as lists)."""
    if frame is None or not len(frame):
        return []
    return [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict("records")]


def details(value: Any) -> dict[str, Any]:
    """A ``details`` JSON column as a dict ({} when missing or unreadable)."""
    if not isinstance(value, str) or not value:
        return {}
    try:
        out = json.loads(value)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}
