"""Store runs in DuckDB: the documented schema is the public contract (see docs/schema.md).

A run is written in one transaction: it is there whole or not at all. DuckDB locks the file per
process, so the writer connects only to write a finished run (retrying briefly while another
process holds the file) and readers use short-lived read-only connections.
The schema grows by columns: opening an older file adds the columns it lacks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from validator.errors import InputError

#: table -> ordered (column, DuckDB type). Adding a column here migrates existing files.
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("run_id", "VARCHAR"), ("started_at", "TIMESTAMP"), ("finished_at", "TIMESTAMP"),
        ("tool_version", "VARCHAR"), ("sim_paths", "VARCHAR[]"), ("data_paths", "VARCHAR[]"),
        ("weight_column", "VARCHAR"), ("category_column", "VARCHAR"), ("model_id", "VARCHAR"),
        ("rules_name", "VARCHAR"), ("plan_json", "VARCHAR"), ("n_sim", "BIGINT"),
        ("n_data", "BIGINT"), ("sumw_sim", "DOUBLE"), ("sumw2_sim", "DOUBLE"),
        ("n_features", "INTEGER"), ("n_pairs", "INTEGER"), ("alpha", "DOUBLE"),
        ("n_tests", "INTEGER"), ("n_reliable", "INTEGER"), ("n_failed", "INTEGER"),
        ("n_expected_failures", "DOUBLE"), ("p_binomial", "DOUBLE"), ("p_uniformity", "DOUBLE"),
        ("n_significant_holm", "INTEGER"), ("n_significant_bh", "INTEGER"),
        ("gate_passed", "BOOLEAN"), ("command", "VARCHAR"), ("notes", "VARCHAR[]"),
    ],
    "features": [
        ("run_id", "VARCHAR"), ("category", "VARCHAR"), ("feature", "VARCHAR"),
        ("kind", "VARCHAR"), ("edges", "DOUBLE[]"), ("n_nan_sim", "BIGINT"),
        ("n_nan_data", "BIGINT"), ("n_sentinel_sim", "BIGINT"), ("n_sentinel_data", "BIGINT"),
        ("mean_sim", "DOUBLE"), ("std_sim", "DOUBLE"), ("mean_data", "DOUBLE"),
        ("std_data", "DOUBLE"),
    ],
    "tests": [
        ("run_id", "VARCHAR"), ("test_id", "INTEGER"), ("category", "VARCHAR"),
        ("kind", "VARCHAR"), ("method", "VARCHAR"), ("feature_x", "VARCHAR"),
        ("feature_y", "VARCHAR"), ("statistic", "DOUBLE"), ("ndf", "DOUBLE"),
        ("pvalue", "DOUBLE"), ("pvalue_method", "VARCHAR"), ("n_toys", "INTEGER"),
        ("effect_size", "DOUBLE"), ("effect_name", "VARCHAR"), ("reliable", "BOOLEAN"),
        ("p_holm", "DOUBLE"), ("p_bh", "DOUBLE"), ("passed", "BOOLEAN"),
        ("details", "VARCHAR"),
    ],
    "histograms": [
        ("run_id", "VARCHAR"), ("category", "VARCHAR"), ("feature_x", "VARCHAR"),
        ("feature_y", "VARCHAR"), ("edges_x", "DOUBLE[]"), ("edges_y", "DOUBLE[]"),
        ("sim_sumw", "DOUBLE[]"), ("sim_sumw2", "DOUBLE[]"), ("data_counts", "DOUBLE[]"),
    ],
    "skipped_columns": [
        ("run_id", "VARCHAR"), ("column_name", "VARCHAR"), ("reason", "VARCHAR"),
    ],
}

_ARROW_TYPES = {
    "VARCHAR": pa.string(), "TIMESTAMP": pa.timestamp("us"), "BIGINT": pa.int64(),
    "INTEGER": pa.int32(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
    "VARCHAR[]": pa.list_(pa.string()), "DOUBLE[]": pa.list_(pa.float64()),
}


def _connect(path: Path, read_only: bool = False, timeout_s: float = 15.0,
             ) -> duckdb.DuckDBPyConnection:
    """Open the database, waiting briefly while another process holds its lock."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise InputError(f"{path}: cannot open the database ({exc})") from exc
            time.sleep(0.2)
        except duckdb.Error as exc:
            raise InputError(f"{path}: not a usable DuckDB file ({exc})") from exc


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables and add missing columns (the schema only grows)."""
    for table, columns in SCHEMA.items():
        cols = ", ".join(f'"{name}" {typ}' for name, typ in columns)
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
            [table]).fetchall()}
        for name, typ in columns:
            if name not in have:
                con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {typ}')


def _arrow_table(table: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    columns = SCHEMA[table]
    arrays = {name: pa.array([row.get(name) for row in rows], type=_ARROW_TYPES[typ])
              for name, typ in columns}
    return pa.table(arrays)


def write_run(path: str | Path, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Write one run's rows (table name -> list of row dicts) in a single transaction."""
    for table in tables:
        if table not in SCHEMA:
            raise ValueError(f"unknown table {table}")
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    con = _connect(path)
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            ensure_schema(con)  # inside the transaction: a failed run adds no column either
            for table, rows in tables.items():
                if not rows:
                    continue
                arrow = _arrow_table(table, rows)
                con.register("_incoming", arrow)
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
                con.unregister("_incoming")
            con.execute("COMMIT")
        except BaseException as exc:
            con.execute("ROLLBACK")
            if isinstance(exc, duckdb.Error):
                raise InputError(f"{path}: the run could not be written, nothing was "
                                 f"({str(exc).splitlines()[0]})") from exc
            raise
    finally:
        con.close()


def query(path: str | Path, sql: str, params: Sequence[Any] | None = None) -> Any:
    """Run a read-only query on a short-lived connection; returns a pandas DataFrame."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: database not found")
    con = _connect(path, read_only=True)
    try:
        return con.execute(sql, params or []).df()
    except duckdb.CatalogException as exc:
        raise InputError(f"{path}: not a validator database ({str(exc).splitlines()[0]})") \
            from exc
    finally:
        con.close()


def list_runs(path: str | Path) -> Any:
    """The runs in a database, newest first."""
    return query(path, "SELECT run_id, started_at, n_sim, n_data, n_features, n_tests, n_failed, "
                       "n_expected_failures, n_significant_holm FROM runs ORDER BY started_at DESC")
