"""The command line end to end: a run is stored whole; bad input exits 2 with one line."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import make_frames

from validator.cli import main
from validator.results.store import query


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_stores_everything(capsys, samples, tmp_path):
    sim, data = samples
    db = tmp_path / "v.duckdb"
    code, out, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                          "--db", str(db))
    assert code == 0, err
    assert "results written to" in out
    runs = query(db, "SELECT * FROM runs")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["n_sim"] == 20_000 and run["n_data"] == 10_000 and run["n_features"] == 4
    assert run["n_pairs"] == 6
    tests = query(db, "SELECT * FROM tests")
    assert len(tests) == run["n_tests"]
    assert set(tests["method"]) == {"chi2_uw", "saturated", "ks", "ad", "dependence",
                                    "corr_pearson", "corr_spearman"}
    assert tests["pvalue"].between(0, 1).all()
    assert (tests["p_holm"] >= tests["pvalue"] - 1e-12).all()
    hist = query(db, "SELECT * FROM histograms WHERE feature_y IS NULL AND feature_x = 'c' "
                       "AND binning = 'test'")
    assert sum(hist["data_counts"][0]) == 10_000  # under/overflow folded in, nothing dropped
    feats = query(db, "SELECT * FROM features ORDER BY feature")
    assert feats["feature"].tolist() == ["a", "b", "c", "nj"]
    assert feats.set_index("feature").loc["nj", "kind"] == "discrete"
    skipped = query(db, "SELECT * FROM skipped_columns")
    assert skipped.set_index("column_name").loc["event", "reason"] == "identifier"
    assert main(["runs", "--db", str(db)]) == 0


def test_planted_shift_is_the_worst_result(capsys, tmp_path):
    sim, data = make_frames(n_sim=40_000, n_data=20_000, shift=0.05, seed=11)
    sim.write_parquet(tmp_path / "s.parquet")
    data.write_parquet(tmp_path / "d.parquet")
    code, out, _ = _run(capsys, "--sim", str(tmp_path / "s.parquet"), "--data",
                        str(tmp_path / "d.parquet"), "--weight", "weight", "--db",
                        str(tmp_path / "v.duckdb"))
    assert code == 0
    assert "mismodelled features (1D, Holm < alpha): a (" in out
    worst = query(tmp_path / "v.duckdb",
                  "SELECT feature_x FROM tests WHERE kind = '1d' ORDER BY pvalue LIMIT 2")
    assert worst["feature_x"].tolist() == ["a", "a"]


def test_category_runs_per_value(capsys, tmp_path):
    sim, data = make_frames(n_sim=20_000, n_data=10_000)
    sim = sim.with_columns(chan=pl.Series(np.where(np.arange(20_000) % 2 == 0, "ee", "mm")))
    data = data.with_columns(chan=pl.Series(np.where(np.arange(10_000) % 3 == 0, "ee", "mm")))
    sim.write_parquet(tmp_path / "s.parquet")
    data.write_parquet(tmp_path / "d.parquet")
    db = tmp_path / "v.duckdb"
    code, _, err = _run(capsys, "--sim", str(tmp_path / "s.parquet"), "--data",
                        str(tmp_path / "d.parquet"), "--weight", "weight", "--category", "chan",
                        "--db", str(db))
    assert code == 0, err
    cats = query(db, "SELECT DISTINCT category FROM tests ORDER BY category")["category"].tolist()
    assert cats == ["all", "ee", "mm"]
    h = query(db, "SELECT category, data_counts FROM histograms WHERE feature_x = 'a' "
                  "AND feature_y IS NULL AND binning = 'test' ORDER BY category")
    totals = [sum(c) for c in h["data_counts"]]
    assert totals == [10_000, 3_334, 6_666]  # inclusive = sum of the categories


def _write(tmp_path, sim: pl.DataFrame, data: pl.DataFrame) -> tuple[str, str]:
    s, d = tmp_path / "s.parquet", tmp_path / "d.parquet"
    sim.write_parquet(s)
    data.write_parquet(d)
    return str(s), str(d)


BAD_INPUTS = {
    "missing file": (lambda s, d, t: (str(t / "nope.parquet"), d, []),
                     "nope.parquet: file not found"),
    "corrupt parquet": (lambda s, d, t: ((t / "bad.parquet").write_bytes(b"garbage") and
                                         str(t / "bad.parquet"), d, []),
                        "not a readable parquet file"),
    "weight missing": (lambda s, d, t: (s, d, ["--weight", "wgt"]),
                       "weight column 'wgt' not found"),
    "unknown feature": (lambda s, d, t: (s, d, ["--features", "a,zz"]), "feature 'zz' not found"),
    "category missing": (lambda s, d, t: (s, d, ["--category", "zz"]),
                         "category column 'zz' not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, samples, tmp_path, case):
    sim, data = samples
    db = tmp_path / "v.duckdb"
    assert _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                "--db", str(db))[0] == 0
    make, message = BAD_INPUTS[case]
    s, d, extra = make(str(sim), str(data), tmp_path)
    args = ["--sim", s, "--data", d, "--db", str(db)]
    if "--weight" not in extra:
        args += ["--weight", "weight"]
    code, _, err = _run(capsys, *args, *extra)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert query(db, "SELECT count(*) AS n FROM runs")["n"][0] == 1


def test_bad_samples(capsys, tmp_path):
    sim, data = make_frames(n_sim=2_000, n_data=1_000)
    # a feature all NaN in data
    s, d = _write(tmp_path, sim, data.with_columns(pl.lit(float("nan")).alias("c")))
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db")
    assert code == 2 and "feature 'c' has no finite value" in err and "--exclude c" in err
    # ... and the run goes on without it when asked
    code, out, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db",
                          "--exclude", "c")
    assert code == 0, err
    assert "1 excluded (--exclude)" in out
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db",
                        "--exclude", "zz")
    assert code == 2 and "--exclude: column 'zz'" in err
    # no shared feature
    s, d = _write(tmp_path, sim.select("weight", x=pl.col("a")), data.select(y=pl.col("a")))
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db")
    assert code == 2 and "no shared numeric feature" in err
    # an empty sample
    s, d = _write(tmp_path, sim, data.head(0))
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db")
    assert code == 2 and "has no events" in err
    # a sum of weights <= 0
    s, d = _write(tmp_path, sim.with_columns(weight=-pl.col("weight")), data)
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db")
    assert code == 2 and "sum of weights" in err
    # NaN weights
    s, d = _write(tmp_path, sim.with_columns(weight=pl.when(pl.col("event") == 5)
                                             .then(float("nan")).otherwise(pl.col("weight"))), data)
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db")
    assert code == 2 and "NaN/inf" in err


def test_nans_are_counted_and_reported(capsys, tmp_path):
    sim, data = make_frames(n_sim=4_000, n_data=2_000)
    data = data.with_columns(b=pl.when(pl.col("event") < 37).then(float("nan"))
                             .otherwise(pl.col("b")))
    s, d = _write(tmp_path, sim, data)
    db = tmp_path / "v.duckdb"
    code, out, _ = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--db", str(db))
    assert code == 0
    assert "b (sim 0, data 37)" in out
    feats = query(db, "SELECT n_nan_data FROM features WHERE feature = 'b' AND category = 'all'")
    assert feats["n_nan_data"][0] == 37


def test_sentinels_are_reported_and_excluded(capsys, tmp_path):
    sim, data = make_frames(n_sim=4_000, n_data=2_000)
    sim = sim.with_columns(c=pl.when(pl.col("event") < 100).then(-999.0).otherwise(pl.col("c")))
    s, d = _write(tmp_path, sim, data)
    db = tmp_path / "v.duckdb"
    code, out, _ = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--db", str(db))
    assert code == 0
    assert "default values such as -999 (tested: invalid_fraction): c (sim 100, data 0)" in out
    feats = query(db, "SELECT n_sentinel_sim, edges FROM features WHERE feature = 'c' "
                      "AND category = 'all'")
    assert feats["n_sentinel_sim"][0] == 100 and min(feats["edges"][0]) >= 0
    # the sentinel fraction is tested: 2.5% of the simulation's weight, none of the data
    test = query(db, "SELECT * FROM tests WHERE method = 'invalid_fraction'")
    assert test["feature_x"].tolist() == ["c"]
    w = sim["weight"].to_numpy()
    expected = -w[sim["event"].to_numpy() < 100].sum() / w.sum()
    assert test["effect_size"][0] == pytest.approx(expected, rel=1e-9)
    # few events: a toy p-value, refined until it settles Holm's first threshold
    assert test["p_holm"][0] < 0.05 and not test["passed"][0]


def test_columns_missing_from_some_files_are_skipped_and_said(capsys, tmp_path):
    sim, data = make_frames(n_sim=4_000, n_data=2_000)
    sim.head(2_000).write_parquet(tmp_path / "s1.parquet")
    sim.tail(2_000).drop("c").write_parquet(tmp_path / "s2.parquet")
    data.write_parquet(tmp_path / "d.parquet")
    db = tmp_path / "v.duckdb"
    code, _, err = _run(capsys, "--sim", str(tmp_path / "s1.parquet"), str(tmp_path / "s2.parquet"),
                        "--data", str(tmp_path / "d.parquet"), "--weight", "weight",
                        "--db", str(db))
    assert code == 0, err
    skipped = query(db, "SELECT * FROM skipped_columns").set_index("column_name")["reason"]
    assert skipped["c"] == "not in every sim file"
    assert query(db, "SELECT n_sim FROM runs")["n_sim"][0] == 4_000


def test_category_edge_cases_are_said(capsys, tmp_path):
    sim, data = make_frames(n_sim=6_000, n_data=3_000)
    # sim has categories all / ee / zz; data has all / ee / mm
    sim = sim.with_columns(chan=pl.Series(np.array(["all", "ee", "zz"])[np.arange(6_000) % 3]))
    data = data.with_columns(chan=pl.Series(np.array(["all", "ee", "mm"])[np.arange(3_000) % 3]))
    s, d = _write(tmp_path, sim, data)
    db = tmp_path / "v.duckdb"
    code, out, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight",
                          "--category", "chan", "--db", str(db))
    assert code == 0, err
    assert "category mm: 1,000 data events but no simulated event; not tested" in out
    assert "category zz: 2,000 simulated events but no data event; not tested" in out
    notes = list(query(db, "SELECT notes FROM runs")["notes"][0])
    assert any(n.startswith("category mm") for n in notes)
    # a category called "all" does not overwrite the inclusive selection
    h = query(db, "SELECT category, data_counts FROM histograms WHERE feature_x = 'a' "
                  "AND feature_y IS NULL AND binning = 'test' ORDER BY category")
    assert dict(zip(h["category"], (sum(c) for c in h["data_counts"]), strict=True)) == {
        "all": 3_000, "chan=all": 1_000, "ee": 1_000}
