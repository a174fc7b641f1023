"""Data access of the dashboard: cached, parameterised, read-only queries.

Every query goes through :func:`validator.results.store.query` (a short-lived read-only connection,
closed before the page is drawn: no connection is ever held open, so a ``validator run`` can
write to the file between two clicks). Results are cached with ``st.cache_data`` keyed by the
database path, the state of the file (:func:`stamp`: modification time and size of the file
and of its write-ahead log) and the query's parameters (the run id among them), so a new run
written to the file is seen at the next rerun and an unchanged file is never read twice.

SQL text is constant in this module; what a user picks (a run, a feature, a model) travels
only as a query parameter.
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

from validator.results.schema import SCHEMA
from validator.results.store import query

#: Environment variable naming the database when the script gets no ``--db`` argument.
DB_ENV = "VALIDATOR_DB"
#: Columns of ``runs`` the run picker and the history read (not the large plan JSON).
RUN_LIST_COLUMNS = (
    "run_id", "started_at", "finished_at", "tool_version", "sim_paths", "data_paths",
    "weight_column", "category_column", "model_id", "rules_name", "gate_passed", "n_sim",
    "n_data", "n_features", "n_pairs", "alpha", "n_tests", "n_reliable", "n_failed",
    "n_expected_failures", "n_significant_holm", "n_significant_bh", "n_not_run",
    "p_global_min", "p_global_nfail", "p_uniformity", "taylor_rank_corr_first",
    "taylor_rank_corr_second", "shap_rank_corr", "tags",
)


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
def _cached(db: str, state: tuple[int, ...], sql: str, params: tuple[Any, ...],
            ) -> pd.DataFrame:
    """One read-only query, cached per (database, file state, SQL, parameters)."""
    return query(db, sql, list(params))


def run_query(db: str | Path, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    """A cached read-only query with parameters (``?`` placeholders)."""
    return _cached(str(db), stamp(db), sql, tuple(params))


def table_columns(db: str | Path) -> dict[str, set[str]]:
    """The tables of the file and their columns (a file of an older schema has fewer)."""
    found = run_query(db, "SELECT table_name, column_name FROM information_schema.columns "
                          "WHERE table_schema = 'main'")
    out: dict[str, set[str]] = {}
    for t, c in zip(found["table_name"], found["column_name"], strict=True):
        out.setdefault(str(t), set()).add(str(c))
    return out


def _empty(table: str) -> pd.DataFrame:
    return pd.DataFrame(columns=[c for c, _ in SCHEMA.get(table, [])])


def _complete(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Add the columns a file of an older schema lacks (as missing values)."""
    for c, _ in SCHEMA.get(table, []):
        if c not in frame.columns:
            frame[c] = None
    return frame


def _select(db: str | Path, table: str, where: str, params: Sequence[Any],
            order: str = "", columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``SELECT`` from one table with a constant condition and parameters; empty when the
    file has no such table (older schema)."""
    have = table_columns(db).get(table)
    if not have:
        return _empty(table)
    cols = "*" if columns is None else ", ".join(f'"{c}"' for c in columns if c in have)
    sql = f"SELECT {cols} FROM {table}" + (f" WHERE {where}" if where else "") + \
        (f" ORDER BY {order}" if order else "")
    return _complete(run_query(db, sql, params).copy(), table)


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
    """Every run, newest first (without the plan and configuration JSON)."""
    return _select(db, "runs", "", [], "started_at DESC, run_id DESC", RUN_LIST_COLUMNS)


def run(db: str | Path, run_id: str) -> dict[str, Any]:
    """One run's ``runs`` row (every column), as a dict of plain values."""
    rows = records(_select(db, "runs", "run_id = ?", [run_id]))
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
    return _select(db, "tests", "run_id = ?", [run_id], "test_id")


def features(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's ``features`` rows (every category)."""
    return _select(db, "features", "run_id = ?", [run_id])


def gate_results(db: str | Path, run_id: str) -> pd.DataFrame:
    """Every verdict on the run (``gate_results``), oldest first."""
    return _select(db, "gate_results", "run_id = ?", [run_id], "judged_at")


def skipped(db: str | Path, run_id: str) -> pd.DataFrame:
    """Columns the run did not test, with the reason."""
    return _select(db, "skipped_columns", "run_id = ?", [run_id])


def run_models(db: str | Path, run_id: str) -> pd.DataFrame:
    """The networks audited in the run (``models``)."""
    return _select(db, "models", "run_id = ?", [run_id])


def importances(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's ``importances`` rows."""
    return _select(db, "importances", "run_id = ?", [run_id])


def criticality(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's ``criticality`` rows, by ``criticality_rank``."""
    return _select(db, "criticality", "run_id = ?", [run_id], "criticality_rank")


def syst_effects(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's ``syst_effects`` rows (systematics; empty without)."""
    return _select(db, "syst_effects", "run_id = ?", [run_id])


def hist_plot(db: str | Path, run_id: str, category: str, feature: str,
              ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A feature's ``plot`` histograms: the nominal row (None when not stored) and the
    variation rows (``process:NAME`` per process, systematic variations ``NAME_up``...)."""
    have = table_columns(db).get("histograms", set())
    if "binning" not in have:  # a file of release 0.1.0 stored test binnings only
        return None, []
    rows = records(_select(db, "histograms", "run_id = ? AND category = ? AND binning = 'plot' "
                           "AND feature_x = ? AND feature_y IS NULL",
                           [run_id, category, feature]))
    nominal = [r for r in rows if r.get("variation") is None]
    return (nominal[0] if nominal else None), [r for r in rows if r.get("variation")]


def hist_pair(db: str | Path, run_id: str, category: str, x: str, y: str,
              ) -> dict[str, Any] | None:
    """A pair's ``test`` histogram row (nominal), or None."""
    have = table_columns(db).get("histograms", set())
    if not have:
        return None
    test = " AND binning = 'test'" if "binning" in have else ""  # 0.1.0: test binnings only
    rows = records(_select(db, "histograms", "run_id = ? AND category = ? AND feature_x = ? "
                           "AND feature_y = ?" + test, [run_id, category, x, y]))
    rows = [r for r in rows if r.get("variation") is None]
    return rows[0] if rows else None


# ------------------------------------------------------------------ models and history


def all_models(db: str | Path) -> pd.DataFrame:
    """Every audited network, one row per model id: path, format, kind, inputs, outputs,
    derivative method, the number of runs and when it was first and last audited."""
    if not table_columns(db).get("models"):
        return pd.DataFrame(columns=["model_id", "path", "format", "kind", "inputs", "outputs",
                                     "params_json", "derivative_method", "n_runs",
                                     "first_added", "last_added"])
    return run_query(db, "SELECT model_id, arg_max(path, added_at) AS path, "
                         "arg_max(format, added_at) AS format, arg_max(kind, added_at) AS kind, "
                         "arg_max(inputs, added_at) AS inputs, "
                         "arg_max(outputs, added_at) AS outputs, "
                         "arg_max(params_json, added_at) AS params_json, "
                         "arg_max(derivative_method, added_at) AS derivative_method, "
                         "count(DISTINCT run_id) AS n_runs, min(added_at) AS first_added, "
                         "max(added_at) AS last_added FROM models GROUP BY model_id "
                         "ORDER BY last_added DESC").copy()


def model_runs(db: str | Path, model_id: str | None) -> pd.DataFrame:
    """The runs of one model (``None``: runs without a model), oldest first, with the
    smallest reliable p-value and Holm p-value of each (``min_p``, ``min_p_holm``)."""
    where = "r.model_id = ?" if model_id is not None else "r.model_id IS NULL"
    params = [model_id] if model_id is not None else []
    have = table_columns(db).get("runs", set())
    cols = ", ".join(f'r."{c}"' for c in RUN_LIST_COLUMNS if c in have)
    frame = run_query(
        db, f"SELECT {cols}, t.min_p, t.min_p_holm FROM runs r LEFT JOIN ("
            "SELECT run_id, min(pvalue) AS min_p, min(p_holm) AS min_p_holm FROM tests "
            "WHERE reliable AND pvalue IS NOT NULL AND kind <> 'taylor' GROUP BY run_id) t "
            f"ON r.run_id = t.run_id WHERE {where} ORDER BY r.started_at, r.run_id", params)
    return _complete(frame.copy(), "runs")


def model_importances(db: str | Path, model_id: str) -> pd.DataFrame:
    """First-order importances (Taylor, scaled; SHAP) of one model in every run."""
    return _select(db, "importances", "model_id = ? AND degree = 1", [model_id])


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
