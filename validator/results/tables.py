"""The one loader of a run's tables: from a DuckDB file (:func:`load_run_tables`) or from a
run just finished, in memory (:func:`outcome_tables`), as the same DataFrames.

A file of today's schema must hold every table and column of
:data:`validator.results.schema.SCHEMA` (:func:`validator.results.store.check_readable`): a
missing one is an :class:`~validator.errors.InputError` naming it (a damaged database is
never read as if the missing values were NULL). A file of an earlier schema (migrated when a
run is next written to it) lacks what later versions added: those tables are empty and those
columns NULL, as docs/schema.md documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

#: What the reading of a run reads (the terminal, ``show``, the gate, JUnit, the reports'
#: text, the dashboard's overview): every run table but the histograms.
SUMMARY_TABLES = ("runs", "features", "tests", "skipped_columns", "models", "criticality",
                  "gate_results", "syst_effects", "importances", "corrections")
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
    run_id = resolve_run(db, run)  # checks the file (a damaged one names what it lacks)
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
    if "corrections" in out:
        out["closure_runs"] = _closure_runs(db, run_id, out["corrections"])
    if "tests" in out and len(out["tests"]):
        out["tests"]["details"] = out["tests"]["details"].map(current_details)
    return out


def _closure_runs(db: Path, run_id: str, corrections: pd.DataFrame) -> pd.DataFrame:
    """The other runs that applied the corrections this run applies (same file, by its
    sha256), with the half they kept and whether their gate passed."""
    from validator.results.store import query

    shas = sorted({str(s) for s in corrections.get("sha256", []) if isinstance(s, str)})
    columns = ["run_id", "sha256", "half", "gate_passed", "finished_at"]
    if not shas:
        return pd.DataFrame(columns=columns)
    marks = ", ".join("?" for _ in shas)
    return query(db, "SELECT c.run_id, c.sha256, c.half, r.gate_passed, r.finished_at "
                     "FROM corrections c JOIN runs r USING (run_id) WHERE c.role = 'closure' "
                     f"AND c.run_id <> ? AND c.sha256 IN ({marks}) ORDER BY r.finished_at",
                 [run_id, *shas])


#: Detail keys of the EDF tests' toys before the one toy engine (schema 3 and earlier) ->
#: the keys every toy p-value stores now (validator.stats.toys).
RENAMED_DETAIL_KEYS = {"n_toys_ge": "n_toys_reaching", "pvalue_ci": "pvalue_interval"}


def current_details(details: Any) -> Any:
    """A stored ``tests.details`` JSON with the keys of today's schema (a run of an earlier
    release, or merged from its side file, reads like one of this release)."""
    if not isinstance(details, str) or not any(k in details for k in RENAMED_DETAIL_KEYS):
        return details
    try:
        parsed = json.loads(details)
    except ValueError:
        return details
    if not isinstance(parsed, dict):
        return details
    return json.dumps({RENAMED_DETAIL_KEYS.get(k, k): v for k, v in parsed.items()})


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


# ------------------------------------------------------------------ across runs (the dashboard)

#: Columns of ``runs`` the run picker, ``validator runs`` and the history read (not the large
#: plan JSON).
RUN_LIST_COLUMNS = (
    "run_id", "started_at", "finished_at", "tool_version", "sim_paths", "data_paths",
    "weight_column", "category_column", "model_id", "rules_name", "gate_passed", "n_sim",
    "n_data", "n_features", "n_pairs", "alpha", "n_tests", "n_reliable", "n_failed",
    "n_expected_failures", "n_significant_holm", "n_significant_bh", "n_not_run",
    "p_global_min", "p_global_nfail", "p_uniformity", "taylor_rank_corr_first",
    "taylor_rank_corr_second", "shap_rank_corr", "tags", "config_json",
)


def table_columns(db: str | Path) -> dict[str, set[str]]:
    """The tables of a validator database and their columns (an earlier schema has fewer)."""
    from validator.results.store import check_readable

    check_readable(db)
    return _present(Path(db))


def _select(db: str | Path, table: str, where: str, params: list[Any], order: str = "",
            columns: Iterable[str] | None = None) -> pd.DataFrame:
    """``SELECT`` from one table with a constant condition and parameters; empty when the
    file has no such table (an earlier schema), today's columns completed."""
    from validator.results.store import query

    have = table_columns(db).get(table)
    if not have:
        return empty_table(table)
    cols = "*" if columns is None else ", ".join(f'"{c}"' for c in columns if c in have)
    sql = f"SELECT {cols} FROM {table}" + (f" WHERE {where}" if where else "") + \
        (f" ORDER BY {order}" if order else "")
    return _complete(query(db, sql, params), table)


def run_list(db: str | Path) -> pd.DataFrame:
    """Every run of the file, newest first (:data:`RUN_LIST_COLUMNS`)."""
    return _select(db, "runs", "", [], "started_at DESC, run_id DESC", RUN_LIST_COLUMNS)


def run_table(db: str | Path, run_id: str, table: str) -> pd.DataFrame:
    """One table's rows of one run (by its exact id), in the order a reader wants."""
    order = ORDER.get(table, "").replace(" ORDER BY ", "")
    return _select(db, table, "run_id = ?", [run_id], order)


def plot_histograms(db: str | Path, run_id: str, category: str, feature: str,
                    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A feature's ``plot`` histograms: the nominal row (None when not stored) and the
    variation rows (``process:NAME`` per process, systematic variations ``NAME_up``...)."""
    from validator.results.reading import records

    if "binning" not in table_columns(db).get("histograms", set()):
        return None, []  # a file of release 0.1.0 stored test binnings only
    rows = records(_select(db, "histograms", "run_id = ? AND category = ? AND binning = 'plot' "
                           "AND feature_x = ? AND feature_y IS NULL",
                           [run_id, category, feature]))
    nominal = [r for r in rows if r.get("variation") is None]
    return (nominal[0] if nominal else None), [r for r in rows if r.get("variation")]


def pair_histogram(db: str | Path, run_id: str, category: str, x: str, y: str,
                   ) -> dict[str, Any] | None:
    """A pair's nominal ``test`` histogram row, or None."""
    from validator.results.reading import records

    have = table_columns(db).get("histograms", set())
    if not have:
        return None
    test = " AND binning = 'test'" if "binning" in have else ""  # 0.1.0: test binnings only
    rows = records(_select(db, "histograms", "run_id = ? AND category = ? AND feature_x = ? "
                           "AND feature_y = ?" + test, [run_id, category, x, y]))
    rows = [r for r in rows if r.get("variation") is None]
    return rows[0] if rows else None


def model_list(db: str | Path) -> pd.DataFrame:
    """Every audited network, one row per model id: path, format, kind, inputs, outputs,
    derivative method, the number of runs and when it was first and last audited."""
    from validator.results.store import query

    if not table_columns(db).get("models"):
        return pd.DataFrame(columns=["model_id", "path", "format", "kind", "inputs", "outputs",
                                     "params_json", "derivative_method", "n_runs",
                                     "first_added", "last_added"])
    return query(db, "SELECT model_id, arg_max(path, added_at) AS path, "
                     "arg_max(format, added_at) AS format, arg_max(kind, added_at) AS kind, "
                     "arg_max(inputs, added_at) AS inputs, "
                     "arg_max(outputs, added_at) AS outputs, "
                     "arg_max(params_json, added_at) AS params_json, "
                     "arg_max(derivative_method, added_at) AS derivative_method, "
                     "count(DISTINCT run_id) AS n_runs, min(added_at) AS first_added, "
                     "max(added_at) AS last_added FROM models GROUP BY model_id "
                     "ORDER BY last_added DESC")


def correction_chains(db: str | Path) -> pd.DataFrame:
    """Run -> correction -> closure runs (``validator correct`` and ``run --apply``), one row
    per (correction, closure run), oldest correction first: the source run, the correction's
    name, method and file (sha256), and each closure run with the half it kept and whether
    its gate passed (no closure yet: a row with NULL closure). Empty for a database without
    the ``corrections`` table (schema 3 and earlier)."""
    from validator.results.store import query

    columns = ["source_run_id", "correction", "method", "sha256", "created_at",
               "closure_run_id", "half", "gate_passed"]
    if "corrections" not in table_columns(db):
        return pd.DataFrame(columns=columns)
    return query(db, "SELECT d.source_run_id, d.name AS correction, d.method, d.sha256, "
                     "d.created_at, c.run_id AS closure_run_id, c.half, r.gate_passed "
                     "FROM corrections d LEFT JOIN corrections c ON c.role = 'closure' "
                     "AND c.sha256 = d.sha256 LEFT JOIN runs r ON r.run_id = c.run_id "
                     "WHERE d.role = 'derived' ORDER BY d.created_at, r.finished_at")


def model_runs(db: str | Path, model_id: str | None) -> pd.DataFrame:
    """The runs of one model (``None``: runs without a model), oldest first, with the
    smallest reliable p-value and Holm p-value of each (``min_p``, ``min_p_holm``) and
    whether each is an upper bound (``min_p_is_bound``, ``min_p_holm_is_bound``)."""
    from validator.results.store import query

    where = "r.model_id = ?" if model_id is not None else "r.model_id IS NULL"
    params = [model_id] if model_id is not None else []
    present = table_columns(db)
    have = present.get("runs", set())
    cols = ", ".join(f'r."{c}"' for c in RUN_LIST_COLUMNS if c in have)
    # whether each smallest p is an upper bound (a file of release 0.1.0 has no such flag)
    bound = "pvalue_is_bound" if "pvalue_is_bound" in present.get("tests", set()) else "false"
    frame = query(
        db, f"SELECT {cols}, t.min_p, t.min_p_holm, t.min_p_is_bound, t.min_p_holm_is_bound "
            "FROM runs r LEFT JOIN ("
            "SELECT run_id, min(pvalue) AS min_p, min(p_holm) AS min_p_holm, "
            f"arg_min(coalesce({bound}, false), pvalue) AS min_p_is_bound, "
            f"arg_min(coalesce({bound}, false), p_holm) AS min_p_holm_is_bound FROM tests "
            "WHERE reliable AND pvalue IS NOT NULL AND kind <> 'taylor' GROUP BY run_id) t "
            f"ON r.run_id = t.run_id WHERE {where} ORDER BY r.started_at, r.run_id", params)
    return _complete(frame, "runs")


def model_importances(db: str | Path, model_id: str) -> pd.DataFrame:
    """First-order importances (Taylor, scaled; SHAP) of one model in every run."""
    return _select(db, "importances", "model_id = ? AND degree = 1", [model_id])
