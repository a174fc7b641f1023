"""DuckDB store: round trip, whole-or-nothing writes, schema growth by columns."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from validator.errors import InputError
from validator.results.store import SCHEMA, ensure_schema, query, write_run


def _rows(run_id: str) -> dict:
    return {
        "runs": [{"run_id": run_id, "started_at": datetime(2026, 11, 23, 12), "n_sim": 10,
                  "sim_paths": ["a.parquet"], "n_tests": 2}],
        "tests": [
            {"run_id": run_id, "test_id": 0, "method": "chi2_uw", "feature_x": "x",
             "pvalue": 0.25, "passed": True},
            {"run_id": run_id, "test_id": 1, "method": "ks", "feature_x": "x", "pvalue": 0.01,
             "passed": False},
        ],
        "histograms": [{"run_id": run_id, "feature_x": "x", "edges_x": [0.0, 1.0, 2.0],
                        "sim_sumw": [1.5, 2.5], "data_counts": [1.0, 3.0]}],
    }


def test_round_trip_and_runs_accumulate(tmp_path):
    db = tmp_path / "v.duckdb"
    write_run(db, _rows("r1"))
    write_run(db, _rows("r2"))
    runs = query(db, "SELECT run_id, sim_paths FROM runs ORDER BY run_id")
    assert runs["run_id"].tolist() == ["r1", "r2"]
    assert list(runs["sim_paths"][0]) == ["a.parquet"]
    tests = query(db, "SELECT * FROM tests WHERE run_id = 'r2' ORDER BY test_id")
    assert tests["pvalue"].tolist() == [0.25, 0.01]
    assert [c for c, _ in SCHEMA["tests"]] == list(tests.columns)
    hist = query(db, "SELECT edges_x, sim_sumw FROM histograms WHERE run_id = 'r1'")
    assert list(hist["edges_x"][0]) == [0.0, 1.0, 2.0]


def test_a_failing_write_leaves_the_database_as_it_was(tmp_path):
    db = tmp_path / "v.duckdb"
    write_run(db, _rows("r1"))
    bad = _rows("r2")
    bad["tests"].append({"run_id": "r2", "test_id": "not an int"})
    with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
        write_run(db, bad)
    assert query(db, "SELECT count(*) AS n FROM runs")["n"][0] == 1
    assert query(db, "SELECT count(*) AS n FROM tests")["n"][0] == 2


#: The columns that make a file of release 0.1.0 (no schema_info) a validator database.
V1_RUNS = ("run_id VARCHAR, started_at TIMESTAMP, tool_version VARCHAR, sim_paths VARCHAR[], "
           "data_paths VARCHAR[]")
V1_TESTS = "run_id VARCHAR, method VARCHAR, pvalue DOUBLE"


def test_a_failure_inside_the_database_rolls_back_the_schema_too(tmp_path):
    db = tmp_path / "legacy.duckdb"
    con = duckdb.connect(str(db))  # a release-0.1.0 file whose runs refuse the new rows
    con.execute(f"CREATE TABLE runs ({V1_RUNS}, foo INTEGER NOT NULL)")
    con.execute(f"CREATE TABLE tests ({V1_TESTS})")
    con.close()
    with pytest.raises(InputError, match="nothing was"):
        write_run(db, _rows("r1"))
    con = duckdb.connect(str(db), read_only=True)
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    columns = [r[0] for r in con.execute("DESCRIBE runs").fetchall()]
    con.close()
    assert tables == {"runs", "tests"}
    assert columns == ["run_id", "started_at", "tool_version", "sim_paths", "data_paths", "foo"]


def test_old_files_gain_new_columns(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))  # a release-0.1.0 file
    con.execute(f"CREATE TABLE runs ({V1_RUNS})")
    con.execute("CREATE TABLE tests (run_id VARCHAR, test_id INTEGER, method VARCHAR, "
                "pvalue DOUBLE)")
    con.execute("INSERT INTO tests VALUES ('old', 0, 'ks', 0.5)")
    con.close()
    con = duckdb.connect(str(db))
    ensure_schema(con)
    cols = [r[0] for r in con.execute("DESCRIBE tests").fetchall()]
    con.close()
    assert {c for c, _ in SCHEMA["tests"]} <= set(cols)
    write_run(db, _rows("new"))
    assert query(db, "SELECT count(*) AS n FROM tests")["n"][0] == 3


def test_toy_detail_keys_of_an_earlier_schema_read_as_today(tmp_path):
    """The EDF tests stored ``n_toys_ge``/``pvalue_ci`` before the one toy engine: the one
    loader reads them as ``n_toys_reaching``/``pvalue_interval``."""
    import json

    from validator.results.tables import current_details

    old = json.dumps({"n_toys_ge": 0, "pvalue_ci": [0.0, 0.01], "toys_stop": "fixed"})
    assert json.loads(current_details(old)) == {
        "n_toys_reaching": 0, "pvalue_interval": [0.0, 0.01], "toys_stop": "fixed"}
    today = json.dumps({"n_toys_reaching": 3})
    assert current_details(today) == today and current_details(None) is None
