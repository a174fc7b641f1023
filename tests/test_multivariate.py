"""The learned multivariate tests (c2st, nplm), their attribution, the pipeline's rows, and
evidently's report beside them (``validator/stats/multivariate.py``,
``validator/stages/multivariate.py``)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import load_sample_generator, make_frames
from scipy import stats

from validator.inputs.sources import ENTRY, FILE
from validator.pipeline import RunConfig, run_validation
from validator.stages.multivariate import EventReservoir, check_methods
from validator.stats import multivariate as mv

TRACKS = ("trk1_d0sig", "trk2_d0sig", "trk3_d0sig")


def _null_case(seed: int, n_sim: int = 3_000, n_data: int = 1_500, dim: int = 3
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted simulation (two weight values, 4 % negative, NLO-style) and data of one law."""
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n_sim, dim))
    w = np.where(rng.random(n_sim) < 0.5, 0.5, 1.5) * np.where(rng.random(n_sim) < 0.04, -1, 1)
    return xs, w, rng.standard_normal((n_data, dim))


def _chunk(x: np.ndarray, names: tuple[str, ...], start: int) -> dict[str, np.ndarray]:
    out = {n: x[:, i] for i, n in enumerate(names)}
    out[ENTRY], out[FILE] = np.arange(start, start + len(x)), np.zeros(len(x), np.int64)
    return out


# ---------------------------------------------------------------------------------------------
# building blocks


def test_reservoir_does_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5_000, 2)), rng.random(5_000)
    whole = EventReservoir(("a", "b"), 700, 11)
    whole.add(_chunk(x, ("a", "b"), 0), w)
    parts = [EventReservoir(("a", "b"), 700, 11) for _ in range(3)]
    for part, sl in zip(parts, (slice(0, 1234), slice(1234, 4000), slice(4000, None)),
                        strict=True):
        part.add(_chunk(x[sl], ("a", "b"), sl.start), w[sl])
    merged = parts[2] + parts[0] + parts[1]
    assert len(merged.w) == 700
    np.testing.assert_array_equal(merged.x, whole.x)
    np.testing.assert_array_equal(merged.w, whole.w)


def test_check_methods() -> None:
    assert check_methods(["nplm", " c2st", "", "nplm"]) == ("nplm", "c2st")
    with pytest.raises(ValueError, match="bogus"):
        check_methods(["bogus"])


def test_cell_resampling_cancels_negative_weights_locally() -> None:
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4_000, 3))
    w = np.where(rng.random(4_000) < 0.1, -1.0, 1.0) * rng.uniform(0.5, 1.5, 4_000)
    new, info = mv.cell_resample(z, w)
    assert (new >= 0).all() and info["n_negative"] == int((w < 0).sum())
    assert new.sum() == pytest.approx(w.sum(), rel=1e-12)
    assert info["n_unresolved"] == 0 and info["mean_cell_size"] < 5
    # distributions above the cell scale are kept: the weighted mean of each input
    np.testing.assert_allclose(new @ z / new.sum(), w @ z / w.sum(), atol=0.01)


def test_deterministic_with_the_seed() -> None:
    xs, w, xd = _null_case(3, 2_000, 1_000)
    for test, count in ((mv.c2st, {"n_permutations": 2}), (mv.nplm, {"n_toys": 2})):
        a = test(xs, w, xd, np.random.default_rng(7), **count)
        b = test(xs, w, xd, np.random.default_rng(7), **count)
        c = test(xs, w, xd, np.random.default_rng(8), **count)
        assert (a.statistic, a.pvalue, a.n_toys) == (b.statistic, b.pvalue, b.n_toys)
        assert a.details["null_quantiles"] == b.details["null_quantiles"]
        assert a.statistic != c.statistic
        assert a.n_toys == 2
        assert a.pvalue_method == ("asymptotic" if test is mv.c2st else "toys")


def test_time_budget_stops_the_toys() -> None:
    xs, w, xd = _null_case(4, 2_000, 1_000)
    result = mv.nplm(xs, w, xd, np.random.default_rng(1), n_toys=50, time_budget_s=0.0)
    assert result.n_toys == 0 and result.details["stopped_by_time_budget"]
    assert not result.reliable  # no toy: no p-value to trust


# ---------------------------------------------------------------------------------------------
# calibration and power


@pytest.mark.slow
def test_null_pvalues_are_uniform() -> None:
    """Data drawn from the weighted simulation: both tests' p-values are uniform over
    replicas (Kolmogorov-Smirnov against U(0, 1) on the discrete toy p-values, loose)."""
    replicas, toys = 16, 9
    pvalues: dict[str, list[float]] = {"c2st": [], "nplm": []}
    for r in range(replicas):
        xs, w, xd = _null_case(100 + r)
        pvalues["c2st"].append(mv.c2st(xs, w, xd, np.random.default_rng(r)).pvalue)
        pvalues["nplm"].append(mv.nplm(xs, w, xd, np.random.default_rng(r),
                                       n_toys=toys).pvalue)
    for name, p in pvalues.items():
        p = np.asarray(p)
        # toy p-values take values k/(toys+1): compare with a uniform on (0, 1]; the held-out
        # rank test of c2st is continuous
        shift = 0.5 / (toys + 1) if name == "nplm" else 0.0
        assert stats.kstest(p - shift, "uniform").pvalue > 0.01, (name, p)
        assert np.mean(p <= 0.1) <= 0.35, (name, p)


@pytest.fixture(scope="module")
def track_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """sample_data's multivariate case at the shipped size (150k simulated, 75k data)."""
    sim, data = load_sample_generator().make_multivariate_case()
    folder = tmp_path_factory.mktemp("tracks")
    sim.write_parquet(folder / "sim.parquet")
    data.write_parquet(folder / "data.parquet")
    return folder / "sim.parquet", folder / "data.parquet"


@pytest.mark.slow
def test_planted_three_track_correlation_found_only_by_the_multivariate_tests(track_case):
    """The three-track sign correlation is exact in every 1D and 2D marginal: no 1D, 2D,
    correlation or dependence test of those columns fails; c2st and nplm find it, and their
    attributions name the tracks."""
    sim, data = track_case
    outcome = run_validation(RunConfig(
        sim=[str(sim)], data=[str(data)], weight="weight", db=None,
        features=[*TRACKS, "m_ll"], multivariate=("c2st", "nplm"), multivariate_toys=19))
    assert not any(outcome.passed[t] is False for t, r in enumerate(outcome.records)
                   if r.kind not in ("multivariate",))
    found = outcome.findings()
    assert not (found.features or found.correlations or found.pairs_other)
    tests = {r.method: r.result for r in outcome.records if r.kind == "multivariate"}
    assert set(tests) == {"c2st", "nplm"}
    # both say how strong the effect is: c2st's held-out rank test, nplm's χ² fitted to its
    # toys beyond every toy (not the bound 1/20)
    assert tests["c2st"].pvalue < 1e-6 and not tests["c2st"].pvalue_is_bound
    assert tests["nplm"].statistic > tests["nplm"].details["null_quantiles"]["max"]
    assert tests["nplm"].pvalue < 1e-6 and not tests["nplm"].pvalue_is_bound
    assert tests["nplm"].details["pvalue_from"] == "chi2_fit_tail"
    for method, result in tests.items():
        top = list(result.details["attribution"])[:3]
        assert set(top) == set(TRACKS), (method, top)
    assert tests["c2st"].details["auc"] > 0.51
    rows = [r for r in outcome.multivariate.importances if r["method"] == "nplm_taylor"]
    assert {r["feature_x"] for r in rows} == {*TRACKS, "m_ll"}


@pytest.mark.slow
def test_a_difference_covered_by_a_weight_systematic_passes_the_imperfect_machine() -> None:
    """Data drawn at +1σ of a weight systematic (a 0.2σ slope in x0): plain nplm fails,
    the imperfect-machine version (nuisance profiled, arXiv:2111.13633) passes."""
    rng = np.random.default_rng(5)
    n_sim, n_data, slope = 30_000, 4_000, 0.2
    xs = rng.standard_normal((n_sim, 2))
    w = np.ones(n_sim)
    up, down = np.exp(slope * xs[:, 0]), np.exp(-slope * xs[:, 0])
    xd = rng.standard_normal((n_data, 2))
    xd[:, 0] += slope  # exp(slope x) N(0, 1) is N(slope, 1): the +1σ variation
    plain = mv.nplm(xs, w, xd, np.random.default_rng(1), n_toys=9)
    profiled = mv.nplm(xs, w, xd, np.random.default_rng(1), n_toys=9,
                       systematics={"slope": (up, down)})
    assert plain.pvalue_is_bound and plain.statistic > 2 * plain.details["null_quantiles"]["max"]
    assert profiled.pvalue > 0.2, profiled.details["null_quantiles"]
    assert profiled.details["nuisances"]["slope"] == pytest.approx(1.0, abs=0.35)
    assert profiled.details["nuisance_model_r2"]["slope"] > 0.99


# ---------------------------------------------------------------------------------------------
# the pipeline: rows in DuckDB, evidently beside ours


def test_run_stores_multivariate_rows_and_the_evidently_report(tmp_path: Path) -> None:
    sim, data = make_frames(n_sim=6_000, n_data=3_000, shift=0.1)
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    db, report = tmp_path / "v.duckdb", tmp_path / "out" / "drift.html"
    outcome = run_validation(RunConfig(
        sim=[str(tmp_path / "sim.parquet")], data=[str(tmp_path / "data.parquet")],
        weight="weight", db=db, multivariate=("c2st", "nplm"), multivariate_toys=3,
        multivariate_events=1_500, evidently_report=str(report)))
    assert report.is_file() and report.stat().st_size > 10_000
    con = duckdb.connect(str(db), read_only=True)
    try:
        mv_rows = con.sql("SELECT method, feature_x, feature_y, n_toys, p_holm, pvalue_method "
                          "FROM tests WHERE kind = 'multivariate' ORDER BY method").fetchall()
        ev_rows = con.sql("SELECT method, feature_x, p_holm, passed FROM tests "
                          "WHERE kind = 'evidently'").fetchall()
        imp = con.sql("SELECT method, sample, feature_x, scaled_value FROM importances "
                      "WHERE method LIKE '%_taylor'").fetchall()
        n_tests = con.sql("SELECT n_tests FROM runs").fetchall()[0][0]
    finally:
        con.close()
    assert [(m, x, y, n, kind) for m, x, y, n, _, kind in mv_rows] == [
        ("c2st", "*", None, 3, "asymptotic"), ("nplm", "*", None, 3, "toys")]
    assert all(p is not None for *_, p, _ in mv_rows)  # in the Holm family
    features = {f.name for f in outcome.plan.features}
    assert {x for _, x, _, _ in ev_rows} == features
    assert all(m.startswith("evidently:") and p is None and passed is not None
               for m, _, p, passed in ev_rows)
    # evidently's rows are beside the family: not counted in the run's tests
    assert n_tests == len(outcome.records) - len(ev_rows)
    assert {(m, s) for m, s, _, _ in imp} == {("c2st_taylor", "data"), ("nplm_taylor", "data")}
    assert {x for _, _, x, _ in imp} == features


def test_cli_refuses_an_unknown_method_before_reading(samples, capsys) -> None:
    from validator.cli import main

    sim, data = samples
    code = main(["run", "--sim", str(sim), "--data", str(data), "--weight", "weight",
                 "--no-db", "--multivariate", "c2st,bogus"])
    assert code == 2
    assert "unknown multivariate method 'bogus'" in capsys.readouterr().err
