"""Trustworthy runs: every planned test has a row, exit codes, reproducibility, a run never
lost (database checked first, busy database -> side file -> merge), schema migrations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import make_frames

from validator.cli import main
from validator.config.defaults import DEFAULT_SEED
from validator.pipeline import RunConfig, run_validation
from validator.results.store import SCHEMA_VERSION, query
from validator.stages.plan import Plan

FIXTURES = Path(__file__).parent / "data"


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _write(tmp_path: Path, sim: pl.DataFrame, data: pl.DataFrame) -> tuple[str, str]:
    s, d = tmp_path / "s.parquet", tmp_path / "d.parquet"
    sim.write_parquet(s)
    data.write_parquet(d)
    return str(s), str(d)


def test_every_planned_test_has_a_row_even_in_a_tiny_category(capsys, tmp_path):
    sim, data = make_frames(n_sim=8_000, n_data=4_000)
    sim = sim.with_columns(chan=pl.Series(np.where(np.arange(8_000) < 12, "rare", "bulk")))
    data = data.with_columns(chan=pl.Series(np.where(np.arange(4_000) < 6, "rare", "bulk")))
    s, d = _write(tmp_path, sim, data)
    db = tmp_path / "v.duckdb"
    code, out, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight",
                          "--category", "chan", "--db", str(db))
    assert code == 0, err
    per_cat = query(db, "SELECT category, count(*) AS n, count(pvalue) AS ran, "
                        "count(not_run_reason) AS not_run, count(passed) AS judged "
                        "FROM tests GROUP BY category ORDER BY category").set_index("category")
    # 4 features x 4 methods + 6 pairs x 5 methods, in every category
    assert per_cat["n"].tolist() == [46, 46, 46]
    rare = per_cat.loc["rare"]
    assert rare["ran"] + rare["not_run"] == 46 and rare["not_run"] > 0
    assert rare["judged"] == rare["ran"]  # a test that did not run is neither passed nor failed
    reasons = query(db, "SELECT DISTINCT not_run_reason FROM tests WHERE category = 'rare' "
                        "AND not_run_reason IS NOT NULL")["not_run_reason"].tolist()
    assert any("one bin left" in r for r in reasons), reasons
    run = query(db, "SELECT n_tests, n_not_run FROM runs").iloc[0]
    assert run["n_tests"] == 138 and run["n_not_run"] == rare["not_run"]
    assert "could not run" in out


def test_a_category_missing_from_data_gets_every_test_with_the_reason(tmp_path):
    sim, data = make_frames(n_sim=6_000, n_data=3_000)
    sim = sim.with_columns(chan=pl.Series(np.array(["ee", "zz"])[np.arange(6_000) % 2]))
    data = data.with_columns(chan=pl.Series(np.full(3_000, "ee")))
    s, d = _write(tmp_path, sim, data)
    outcome = run_validation(RunConfig(sim=[s], data=[d], weight="weight", category="chan",
                                       db=None))
    zz = [r for r in outcome.records if r.category == "zz"]
    assert len(zz) == len([r for r in outcome.records if r.category == "ee"]) == 46
    assert all(r.result is None and "no data event" in r.not_run_reason for r in zz)
    assert outcome.summary.n_not_run == 46


def test_an_internal_error_exits_3_with_one_line_and_the_traceback(capsys, samples, monkeypatch):
    import validator.engine.pool as engine

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(engine, "fill_sample", broken)
    sim, data = samples
    # one job: the planted bug lives in this process (workers start from a clean one)
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                        "--no-db", "--jobs", "1")
    assert code == 3
    first = err.splitlines()[0]
    assert first.startswith("validator: internal error: ZeroDivisionError: planted bug")
    assert "Traceback (most recent call last)" in err


def test_a_tests_result_does_not_depend_on_the_other_tests(samples):
    sim, data = samples

    def dependence_bc(features: list[str]) -> tuple[float, float]:
        out = run_validation(RunConfig(sim=[str(sim)], data=[str(data)], weight="weight",
                                       features=features, db=None))
        (rec,) = [r for r in out.records if r.method == "dependence"
                  and {r.feature_x, r.feature_y} == {"b", "c"}]
        assert rec.result.pvalue_method == "toys"
        return rec.result.statistic, rec.result.pvalue

    assert dependence_bc(["b", "c"]) == dependence_bc(["a", "b", "c"])


def test_cli_and_api_share_the_seed_and_the_run_stores_its_configuration(capsys, samples,
                                                                         tmp_path):
    from validator.cli import build_parser

    parsed = build_parser().parse_args(["run", "--sim", "s", "--data", "d"])
    assert parsed.seed == RunConfig(sim=[], data=[]).seed == DEFAULT_SEED
    sim, data = samples
    db = tmp_path / "v.duckdb"
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                        "--sim-selection", "a > -3", "--exclude", "nj", "--seed", "7",
                        "--db", str(db))
    assert code == 0, err
    api = run_validation(RunConfig(sim=[str(sim)], data=[str(data)], weight="weight",
                                   sim_selection="a > -3", exclude=["nj"], seed=7, db=db))
    runs = query(db, "SELECT * FROM runs ORDER BY started_at, run_id")
    cli_id = next(r for r in runs["run_id"] if r != api.run_id)
    row = runs.set_index("run_id").loc[cli_id]
    config = json.loads(row["config_json"])
    assert row["seed"] == 7 and config["seed"] == 7
    assert config["sim_selection"] == "a > -3" and config["exclude"] == ["nj"]
    versions = json.loads(row["versions_json"])
    assert {"validator", "python", "numpy", "scipy", "duckdb"} <= set(versions)
    # the notebook and the command line give the same numbers
    tests = query(db, "SELECT run_id, test_id, statistic, pvalue FROM tests ORDER BY test_id")
    by_run = {r: t[["statistic", "pvalue"]].to_numpy() for r, t in tests.groupby("run_id")}
    np.testing.assert_array_equal(by_run[cli_id], by_run[api.run_id])
    # `validator show` re-displays the stored run
    assert main(["show", "--db", str(db), cli_id[:17]]) == 0
    shown = capsys.readouterr().out
    assert cli_id in shown and "worst 6 of 6 features and pairs" in shown and "--seed 7" in shown


def test_chunk_size_changes_no_stored_number(tmp_path):
    sim, data = make_frames(n_sim=12_000, n_data=6_000, seed=5)
    s, d = _write(tmp_path, sim, data)
    results = []
    for rows in (1_777, 250_000):
        db = tmp_path / f"v{rows}.duckdb"
        run_validation(RunConfig(sim=[s], data=[d], weight="weight", chunk_rows=rows, db=db))
        tests = query(db, "SELECT method, feature_x, feature_y, statistic, pvalue FROM tests "
                          "ORDER BY test_id")
        hists = query(db, "SELECT binning, feature_x, feature_y, sim_sumw, data_counts "
                          "FROM histograms ORDER BY binning, feature_x, feature_y")
        plan = query(db, "SELECT plan_json FROM runs")["plan_json"][0]
        results.append((tests, hists, plan))
    (t1, h1, p1), (t2, h2, p2) = results
    assert p1 == p2  # the same binning, whatever the chunking
    assert t1[["method", "feature_x", "feature_y"]].equals(t2[["method", "feature_x", "feature_y"]])
    np.testing.assert_allclose(t1["statistic"], t2["statistic"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(t1["pvalue"], t2["pvalue"], rtol=1e-7, atol=1e-12)
    for a, b in zip(h1["sim_sumw"], h2["sim_sumw"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)
    for a, b in zip(h1["data_counts"], h2["data_counts"], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["folder", "not duckdb", "missing folder"])
def test_the_database_is_checked_before_any_work(capsys, samples, tmp_path, monkeypatch, case):
    import validator.pipeline as pipeline

    def never(*args, **kwargs):
        raise AssertionError("the samples were read before the database was checked")

    monkeypatch.setattr(pipeline, "open_sample", never)
    target = {"folder": tmp_path, "not duckdb": tmp_path / "notes.txt",
              "missing folder": tmp_path / "nope" / "v.duckdb"}[case]
    if case == "not duckdb":
        target.write_text("some notes, not a database\n" * 10)
    sim, data = samples
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                        "--db", str(target))
    assert code == 2 and err.count("\n") == 1
    assert {"folder": "is a folder", "not duckdb": "not a DuckDB database",
            "missing folder": "does not exist"}[case] in err
    if case == "not duckdb":
        assert target.read_text().startswith("some notes")


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_busy_database_sends_the_run_to_a_side_file_that_merge_adds(capsys, samples,
                                                                      tmp_path):
    sim, data = samples
    db = tmp_path / "v.duckdb"
    assert _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                "--db", str(db))[0] == 0
    reader = subprocess.Popen([sys.executable, "-c", HOLD, str(db), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "holding"
        started = time.monotonic()
        code, out, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--weight",
                              "weight", "--db", str(db), "--db-wait", "1")
        assert time.monotonic() - started < 50
    finally:
        reader.kill()
        reader.wait()
    assert code == 0, err
    sides = list(tmp_path.glob("v.*.pending.duckdb"))
    assert len(sides) == 1
    assert str(sides[0]) in err and "validator merge" in err and "stayed busy" in out
    side_run = query(sides[0], "SELECT run_id, n_tests FROM runs")
    assert len(query(db, "SELECT * FROM runs")) == 1
    assert main(["merge", "--db", str(db), str(sides[0])]) == 0
    assert not sides[0].exists()
    runs = query(db, "SELECT run_id, n_tests FROM runs")
    assert side_run["run_id"][0] in set(runs["run_id"]) and len(runs) == 2
    n_tests = query(db, "SELECT count(*) AS n FROM tests WHERE run_id = ?",
                    [side_run["run_id"][0]])["n"][0]
    assert n_tests == side_run["n_tests"][0]


def test_a_database_of_release_0_1_0_is_migrated(capsys, samples, tmp_path):
    db = tmp_path / "old.duckdb"
    shutil.copy(FIXTURES / "release_0_1_0.duckdb", db)
    (old_id,) = query(db, "SELECT run_id FROM runs")["run_id"]
    n_old_tests = query(db, "SELECT count(*) AS n FROM tests")["n"][0]
    # the plan stored by that release (no version) still loads
    plan = Plan.from_json(query(db, "SELECT plan_json FROM runs")["plan_json"][0])
    assert [f.name for f in plan.features] == ["a", "b", "nj"] and plan.features[0].plot_edges == ()
    sim, data = samples
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                        "--db", str(db))
    assert code == 0, err
    assert query(db, "SELECT max(version) AS v FROM schema_info")["v"][0] == SCHEMA_VERSION
    assert query(db, "SELECT count(*) AS n FROM tests WHERE run_id = ?",
                 [old_id])["n"][0] == n_old_tests
    assert set(query(db, "SELECT DISTINCT binning FROM histograms WHERE run_id = ?",
                     [old_id])["binning"]) == {"test"}
    assert main(["show", "--db", str(db), old_id]) == 0
    assert old_id in capsys.readouterr().out
    assert main(["runs", "--db", str(db)]) == 0


def test_a_database_from_a_newer_release_is_refused_before_any_work(capsys, samples,
                                                                    tmp_path):
    import duckdb

    db = tmp_path / "new.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_info (version INTEGER, applied_at TIMESTAMP, "
                "tool_version VARCHAR)")
    con.execute("INSERT INTO schema_info VALUES (99, now(), '9.0')")
    con.close()
    sim, data = samples
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                        "--db", str(db))
    assert code == 2 and "newer validator (schema version 99" in err


def test_a_sample_of_one_chunk_is_read_once(samples, monkeypatch):
    # the planning pass keeps a one-chunk sample in memory and the fill reuses it
    import validator.inputs.sources as sources

    calls = []
    original = sources.iter_chunks

    def counted(sample, *args, **kwargs):
        calls.append(sample.name)
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(sources, "iter_chunks", counted)
    sim, data = samples
    run_validation(RunConfig(sim=[str(sim)], data=[str(data)], weight="weight", db=None))
    assert sorted(calls) == ["data", "sim"]
