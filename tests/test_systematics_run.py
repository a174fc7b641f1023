"""Systematics through a run: weight and shape variations, per-process normalisations, the
saturated test with nuisances beside the plain one, shape changes and bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from conftest import make_frames

from validator.cli import main
from validator.pipeline import RunConfig, run_validation
from validator.results.store import query
from validator.stages.compare import CompareOptions
from validator.stages.systematics import Systematics

#: The planted tilt of feature c in data, and the systematic's (it covers the data's).
DATA_TILT, SYST_TILT = 0.06, 0.08


def _tilted(c: np.ndarray, slope: float) -> np.ndarray:
    return np.exp(slope * (c - 2.0))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Simulation with tilt weight variations and a process column; data whose feature c is
    tilted by less than the systematic; a shape-variation file (the tilt as events)."""
    folder = tmp_path_factory.mktemp("syst")
    rng = np.random.default_rng(1)
    sim, _ = make_frames(n_sim=20_000, n_data=10, seed=2)
    w, c = sim["weight"].to_numpy(), sim["c"].to_numpy()
    up, down = w * _tilted(c, SYST_TILT), w / _tilted(c, SYST_TILT)
    sim = sim.with_columns(pl.Series("w_up", up * w.sum() / up.sum()),
                           pl.Series("w_down", down * w.sum() / down.sum()),
                           pl.Series("process", np.where(rng.random(len(w)) < 0.5, "p1", "p2")))
    _, pool = make_frames(n_sim=10, n_data=60_000, seed=9)
    p = _tilted(pool["c"].to_numpy(), DATA_TILT)
    data = pool.filter(pl.Series(rng.random(len(p)) < p / p.max())).head(10_000)
    # the same tilt as alternative events: an independent simulation, accepted with the tilt
    more, _ = make_frames(n_sim=60_000, n_data=10, seed=4)
    q = _tilted(more["c"].to_numpy(), SYST_TILT)
    shape_up = more.filter(pl.Series(rng.random(len(q)) < q / q.max()))
    # a shape variation is normalised as the nominal is (the same cross-sections)
    shape_up = shape_up.with_columns(
        pl.col("weight") * (w.sum() / shape_up["weight"].sum()))
    paths = {name: folder / f"{name}.parquet" for name in ("sim", "data", "up")}
    sim.write_parquet(paths["sim"])
    data.write_parquet(paths["data"])
    shape_up.write_parquet(paths["up"])
    return sim, paths


def _tests(outcome):
    return {(r.method, r.feature_x, r.feature_y): r for r in outcome.records}


def test_a_difference_covered_by_a_systematic_passes_with_it_only(files, tmp_path, capsys):
    sim, paths = files
    db = tmp_path / "v.duckdb"
    args = ["run", "--quiet", "--sim", str(paths["sim"]), "--data", str(paths["data"]),
            "--weight", "weight", "--features", "a,b,c", "--db", str(db)]
    assert main([*args, "--syst", "tilt=w_up:w_down"]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    tests = query(db, "SELECT * FROM tests").set_index(["method", "feature_x"])
    c = tests[tests["feature_y"].isna()]
    assert c.loc[("saturated", "c"), "p_holm"] < 1e-4  # fails without the systematic
    assert c.loc[("saturated_syst", "c"), "pvalue"] > 0.05  # covered with it
    # above alpha the toys stop at the 15th reaching the statistic (sequential p = 15/L)
    syst_c = c.loc[("saturated_syst", "c")]
    assert json.loads(syst_c["details"])["toys_stop"] == "sequential"
    assert syst_c["n_toys"] < 300 and syst_c["pvalue"] == pytest.approx(15 / syst_c["n_toys"])
    assert c.loc[("saturated_syst", "c"), "pvalue_method"] == "toys"
    nuisance = json.loads(c.loc[("saturated_syst", "c"), "details"])["nuisances"]["tilt"]
    # the data's tilt is 3/4 of the systematic's: pulled up, well inside its constraint
    assert 0.3 < nuisance["value"] < 1.0 and nuisance["kind"] == "shape"
    covered = re.search(r"covered by the systematics \(stat-only tests significant, "
                        r"saturated_syst passes; never a finding\): (.*?)(?: mismodelled|$)", out)
    assert covered and "c" in covered.group(1).replace(",", ";").split("; "), out
    # every feature and pair has both tests: a reviewer sees what the systematics absorb
    methods = query(db, "SELECT method, count(*) AS n FROM tests GROUP BY method")
    counts = dict(zip(methods["method"], methods["n"], strict=True))
    assert counts["saturated_syst"] == counts["saturated"] == 3 + 3
    # shape change of c under the systematic, from the stored test binning and the columns
    edges = np.asarray(query(db, "SELECT edges FROM features WHERE feature = 'c'")["edges"][0])
    x = sim["c"].to_numpy()
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    nominal = np.bincount(idx, sim["weight"].to_numpy(), len(edges) - 1)
    varied = np.bincount(idx, sim["w_up"].to_numpy(), len(edges) - 1)
    ref = np.max(np.abs(varied / varied.sum() / (nominal / nominal.sum()) - 1))
    effect = query(db, "SELECT * FROM syst_effects WHERE feature = 'c'").iloc[0]
    assert effect["systematic"] == "tilt" and not effect["is_output"]
    assert effect["shape_change_up"] == pytest.approx(ref, rel=1e-9)
    run = query(db, "SELECT config_json FROM runs").iloc[0]
    assert json.loads(run["config_json"])["systematics"]["weights"][0]["up"] == "w_up"


def test_one_sided_weight_and_shape_file_variations(files):
    _, paths = files
    syst = Systematics.parse(["tilt=w_up"], [f"jes={paths['up']}"])
    out = run_validation(RunConfig(sim=[str(paths["sim"])], data=[str(paths["data"])],
                                   weight="weight", features=["b", "c"], db=None,
                                   systematics=syst, compare=CompareOptions(syst_toys=100)))
    rec = _tests(out)["saturated_syst", "c", None]
    nuisances = rec.result.details["nuisances"]
    assert set(nuisances) == {"tilt", "jes"}
    assert rec.pvalue > 0.01
    # the shape file was filled into the nominal binning, as a sample of its own
    up, down = out.syst.shapes["jes"]
    assert down is None and up["all"].n_events == pl.read_parquet(paths["up"]).height
    assert out.syst.rows.labels == ("nominal", "tilt_up")


def test_process_rows_add_up_and_norm_uncertainties_enter(files, tmp_path):
    _, paths = files
    db = tmp_path / "p.duckdb"
    syst = Systematics.parse((), (), ["p1=0.1"], "process")
    out = run_validation(RunConfig(sim=[str(paths["sim"])], data=[str(paths["data"])],
                                   weight="weight", features=["a", "c"], db=db,
                                   systematics=syst, compare=CompareOptions(syst_toys=100)))
    assert out.syst.rows.labels == ("nominal", "process:p1", "process:p2")
    assert out.syst.norms == {"p1": 0.1}
    rec = _tests(out)["saturated_syst", "a", None]
    assert rec.result.details["nuisances"]["p1"]["kind"] == "norm"
    rows = query(db, "SELECT variation, sim_sumw FROM histograms WHERE feature_x = 'a' AND "
                     "binning = 'plot' ORDER BY variation NULLS FIRST")
    nominal = np.asarray(rows["sim_sumw"][0])
    stacked = np.asarray(rows["sim_sumw"][1]) + np.asarray(rows["sim_sumw"][2])
    np.testing.assert_allclose(stacked, nominal, rtol=1e-12, atol=1e-9)
    assert list(rows["variation"][1:]) == ["process:p1", "process:p2"]


@pytest.mark.parametrize("extra, message", [
    (["--syst", "tilt=w_nope:w_down"], "--syst tilt: no column 'w_nope'"),
    (["--syst", "tilt"], "is not NAME=UP_COLUMN[:DOWN_COLUMN]"),
    (["--norm-unc", "p1=0.1"], "per-process uncertainties need --process-column"),
    (["--norm-unc", "p9=0.1", "--process-column", "process"], "'p9' is not a value of"),
    (["--norm-unc", "-3"], "must be a relative uncertainty > 0"),
    (["--syst", "x=w_up", "--syst", "x=w_down"], "'x' is given twice"),
])
def test_bad_systematics_exit_2_with_one_line(files, tmp_path, capsys, extra, message):
    _, paths = files
    code = main(["run", "--quiet", "--sim", str(paths["sim"]), "--data", str(paths["data"]),
                 "--weight", "weight", "--features", "a,c", "--no-db", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_shape_file_without_the_features_exits_2(files, tmp_path, capsys):
    _, paths = files
    thin = tmp_path / "thin.parquet"
    pl.read_parquet(paths["up"]).drop("c").write_parquet(thin)
    code = main(["run", "--quiet", "--sim", str(paths["sim"]), "--data", str(paths["data"]),
                 "--weight", "weight", "--features", "a,c", "--no-db",
                 "--syst-file", f"jes={thin}"])
    err = capsys.readouterr().err
    assert code == 2 and "thin.parquet: --syst-file jes: no column 'c'" in err, err


@pytest.mark.parametrize("column, values, total", [
    ("w_zero", lambda w: np.zeros_like(w), "sums to 0 "),
    ("w_flip", lambda w: -np.abs(w), "sums to -"),
])
def test_a_weight_variation_summing_to_nothing_exits_2(files, tmp_path, capsys, column,
                                                       values, total):
    """A weight variation whose weights sum to 0 or less is a template of nothing: the
    profiled fit took it as covering the data's tilt (a false pass); it is refused."""
    sim, paths = files
    odd = tmp_path / f"{column}.parquet"
    sim.with_columns(pl.Series(column, values(sim["weight"].to_numpy()))).write_parquet(odd)
    code = main(["run", "--quiet", "--sim", str(odd), "--data", str(paths["data"]),
                 "--weight", "weight", "--features", "a,c", "--no-db",
                 "--syst", f"odd={column}:w_down"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{column}.parquet: --syst odd: the up weight column '{column}' {total}" in err, err


def test_a_variation_empty_in_one_category_is_not_tested_there(files, tmp_path):
    """A weight variation of zeros in one category only (the run as a whole has one): its
    saturated_syst tests in that category are not run, saying why, instead of taking the
    template of nothing as covering the data; the other category's are run."""
    sim, paths = files
    odd = tmp_path / "odd.parquet"
    sim.with_columns(pl.when(pl.col("nj") < 2).then(0.0).otherwise(pl.col("w_up"))
                     .alias("w_odd")).write_parquet(odd)
    out = run_validation(RunConfig(
        sim=[str(odd)], data=[str(paths["data"])], weight="weight", features=["a", "c"],
        category="many", defines=["many=nj >= 2"], db=None,
        systematics=Systematics.parse(["tilt=w_odd:w_down"]),
        compare=CompareOptions(syst_toys=50)))
    syst = [r for r in out.records if r.method == "saturated_syst"]
    empty = [r for r in syst if r.category == "0"]  # many = false: nj < 2
    assert empty and all(r.result is None and "the systematic tilt's up template is empty"
                         in r.not_run_reason for r in empty), {r.category for r in syst}
    assert all(r.result is not None for r in syst if r not in empty)


def test_a_shape_file_emptied_by_the_selection_exits_2(files, tmp_path, capsys):
    """A shape variation whose events all fail the selection (here: its c shifted below the
    cut) would be a template of zeros: refused, naming the file and the systematic."""
    _, paths = files
    low = tmp_path / "low.parquet"
    pl.read_parquet(paths["up"]).with_columns(pl.col("c") - 100.0).write_parquet(low)
    code = main(["run", "--quiet", "--sim", str(paths["sim"]), "--data", str(paths["data"]),
                 "--weight", "weight", "--features", "a,c", "--no-db",
                 "--sim-selection", "c > -50", "--syst-file", f"jes={low}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "low.parquet: --syst-file jes up: no event passes the selection" in err, err


def test_global_test_varies_the_nuisances(files):
    """Under systematics the run-level test is systematics-aware (the profiled test decides a
    binned histogram, the EDF tests' replicas vary the nuisances): a difference the
    systematic covers is far less significant run-wide than without it, and without
    systematics nothing changes."""
    _, paths = files
    base = dict(sim=[str(paths["sim"])], data=[str(paths["data"])], weight="weight",
                features=["a", "b", "c"], db=None, compare=CompareOptions(syst_toys=50))
    plain = run_validation(RunConfig(**base))
    with_syst = run_validation(RunConfig(**base, systematics=Systematics.parse(
        ["tilt=w_up:w_down"])))
    g0, g1 = plain.global_result, with_syst.global_result
    assert g0.n_nuisances == 0 and g1.n_nuisances == 1
    assert g1.n_failed < g0.n_failed and g1.min_pvalue > g0.min_pvalue
    assert g0.p_min < 0.01 < g1.p_min
    again = run_validation(RunConfig(**base, systematics=Systematics.parse((), (), None,
                                                                           "process")))
    assert again.global_result.n_nuisances == 0
    assert again.global_result.p_min == g0.p_min  # process rows alone vary nothing


def test_report_band_is_the_quadrature_sum_of_shape_shifts():
    from validator.output.documents import syst_band

    nominal = np.array([10.0, 20.0, 30.0, 40.0])
    up = np.array([12.0, 20.0, 30.0, 38.0])  # same total: a shape change
    down = np.array([9.0, 21.0, 30.0, 40.0]) * 2.0  # twice the total: scaled back first
    one_sided = nominal * np.array([1.0, 1.0, 1.1, 1.0])
    band = syst_band(nominal, {"a_up": up, "a_down": down, "b_up": one_sided})
    scaled_down = down * nominal.sum() / down.sum()
    a = np.maximum(np.abs(up - nominal), np.abs(scaled_down - nominal))
    b = np.abs(one_sided * nominal.sum() / one_sided.sum() - nominal)
    np.testing.assert_allclose(band, np.hypot(a, b))
    assert syst_band(nominal, {}) is None
