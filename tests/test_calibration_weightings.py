"""Calibration of the whole chain under realistic simulation weightings (issue 14).

Null replicas (``tests/null_weightings.py``: importance sampling, HT slices, NLO ±1 weights with
a kinematics-dependent negative fraction, a small simulation, spiky features, a plain control,
and importance weights rising x1000 into an undersampled tail)
go through ``run_validation`` (read -> plan -> fill -> tests). For every scenario and every
(kind, method), the reliable p-values of the tests that ran must give a false-positive rate at
5 % and at 1 % within a band, and no null p-value in the whole suite may fall below 1e-5.

The band (:func:`null_weightings.fpr_band`): tests of one run are correlated, so p-values are
not independent trials. Whole replicas are resampled with replacement (within each sample
size, 2000 times) to measure the variance of the pooled rate; its ratio to the binomial
variance is the design effect deff (≥ 1), and the rate must lie in the central 99.9 % interval
of Binomial(n / deff, alpha) / (n / deff). A miscalibrated method fails its scenario's test
with every method's rate, band and design effect in the message. Checked on synthetic uniform
p-values (24 + 8 replicas of 5 or 10 tests, Gaussian-copula correlation within groups of 5):
the band misses a calibrated method in ≤ 0.5 % of trials at correlation 0.5, in up to 5 % at
0.9 (few independent clusters); a method with a 15 % rate at alpha = 5 % always fails. With
~160-320 p-values per method the band is about [0.01, 0.11] at 5 % and [0, 0.045] at 1 %.

The run-level p-values of those runs (the global test's ``p_global_min`` and
``p_global_nfail``) must be below 0.05 in no more runs than a binomial band allows, per
scenario and pooled (issue 31; the full table, 200 runs per scenario, is
``benchmarks/calibration_weightings.py``).

Replicas: ``REPLICAS`` per data size (2k and 10k data events), all computed once in a
module-scoped fixture, in ``VALIDATOR_CALIBRATION_WORKERS`` processes (default 2), each run in
one process: 2 min 5 s wall measured for the file with its seven scenarios (session 8, shared
2-core machine at load 5-7; 215 CPU seconds for six scenarios earlier). Also here: a fast
check that the generators give a null (at large N, against the analytic law and between
samples) with the weightings as specified, and two power checks (the sample data's planted
effects; a 1 % scale shift at 150k events).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from null_weightings import (
    HT_SLICE_EDGES,
    HT_SLICE_WEIGHTS,
    IMPORTANCE_TAIL_U_MAX,
    IMPORTANCE_U_MAX,
    NLO_NEG_RANGE,
    PLAIN_NEG_FRACTION,
    SCENARIOS,
    SIM_PER_DATA,
    SPIKY_CAP,
    ReplicaResult,
    fpr_band,
    make_null,
    nlo_negative_fraction,
    run_replicas,
)
from scipy import stats

from validator.pipeline import RunConfig, run_validation

#: Minutes of calibration, real files or browsers: `make test` runs them, `make test-fast` not.
pytestmark = pytest.mark.slow

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"

#: Replicas per number of data events.
REPLICAS = {2_000: 24, 10_000: 8}
WORKERS = int(os.environ.get("VALIDATOR_CALIBRATION_WORKERS", min(2, os.cpu_count() or 1)))
ALPHAS = (0.05, 0.01)
BAND_LEVEL = 0.999
#: No null p-value of the suite may be smaller.
P_FLOOR = 1e-5
#: Standard deviations allowed in the generator checks (several hundred comparisons).
Z_MAX = 5.0


# ------------------------------------------------------------------ replicas


@pytest.fixture(scope="module")
def replicas() -> dict[str, list[ReplicaResult]]:
    tasks = [(s, n, r) for s in SCENARIOS for n, count in REPLICAS.items() for r in range(count)]
    by_scenario: dict[str, list[ReplicaResult]] = {s: [] for s in SCENARIOS}
    for result in run_replicas(tasks, WORKERS):
        by_scenario[result.scenario].append(result)
    return by_scenario


def _methods(results: list[ReplicaResult]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r[0], r[1]) for res in results for r in res.rows))


def _strata(results: list[ReplicaResult], kind: str, method: str) -> list[list[np.ndarray]]:
    return [[res.pvalues(kind, method) for res in results if res.n_data == n] for n in REPLICAS]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_false_positive_rates(replicas, scenario):
    results = replicas[scenario]
    lines, bad = [], []
    for kind, method in _methods(results):
        strata = _strata(results, kind, method)
        if not sum(len(g) for s in strata for g in s):
            continue  # never reliable: test_tests_run_and_are_reliable says so
        for alpha in ALPHAS:
            band = fpr_band(strata, alpha, BAND_LEVEL)
            by_size = ", ".join(
                f"{n // 1000}k {np.mean(np.concatenate(s) < alpha):.3f}"
                for n, s in zip(REPLICAS, strata, strict=True) if s and len(np.concatenate(s)))
            line = (f"{kind} {method} FPR@{alpha:g} = {band.rate:.3f} ({band.n_fail}/{band.n}; "
                    f"{by_size}) band [{band.low:.3f}, {band.high:.3f}] deff {band.deff:.2f}")
            lines.append(line)
            if not band.ok:
                bad.append(line)
    assert not bad, f"{scenario}: miscalibrated\n  " + "\n  ".join(bad) + \
        "\nall methods:\n  " + "\n  ".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_tests_run_and_are_reliable(replicas, scenario):
    """A calibration that passes because nothing ran would be empty: most tests must count."""
    results = replicas[scenario]
    for kind, method in _methods(results):
        rows = [r for res in results for r in res.rows if (r[0], r[1]) == (kind, method)]
        counted = sum(1 for r in rows if r[5] and np.isfinite(r[4]))
        how = Counter(r[6] if r[5] else "unreliable" if r[6] else "not run" for r in rows)
        assert counted >= 0.5 * len(rows), (scenario, kind, method, dict(how))


@pytest.mark.slow
def test_run_level_calibration(replicas):
    """Issue 31: the run-level p-values (``runs.p_global_min``, ``runs.p_global_nfail``) are
    valid under every weighting: below 0.05 in at most the 99.9 % binomial quantile of the
    runs of each scenario (runs are independent: a plain binomial), and of all runs pooled.

    A reduced version of ``benchmarks/calibration_weightings.py`` (200 runs per scenario at
    14k and 100k data events, table in benchmarks/RESULTS.md): 32 runs per scenario resolve
    only gross excesses (at most 6 of 32, 19 %), the pool of all scenarios about 10 %.
    """
    lines, bad = [], []
    pooled: dict[str, list[float]] = {"p_global_min": [], "p_global_nfail": []}
    for scenario, results in [*replicas.items(), ("all scenarios", None)]:
        for name in pooled:
            if results is None:
                v = np.array(pooled[name])
            else:
                v = np.array([getattr(r, name) for r in results])
                assert np.all(np.isfinite(v)), (scenario, name, "no run-level p-value")
                pooled[name].extend(v.tolist())
            k, n = int(np.sum(v < 0.05)), v.size
            most = int(stats.binom.ppf(BAND_LEVEL, n, 0.05))
            line = f"{scenario} {name} < 0.05 in {k}/{n} runs ({k / n:.3f}; at most {most})"
            lines.append(line)
            if k > most:
                bad.append(line)
    assert not bad, "run-level p-values miscalibrated\n  " + "\n  ".join(bad) + \
        "\nall:\n  " + "\n  ".join(lines)


@pytest.mark.slow
def test_no_tiny_null_pvalue(replicas):
    tiny, n = [], 0
    for results in replicas.values():
        for res in results:
            for r in res.rows:
                if r[5] and np.isfinite(r[4]):
                    n += 1
                    if r[4] < P_FLOOR:
                        tiny.append((res.scenario, res.n_data, res.replica, *r))
    # under an exactly uniform null about n * P_FLOOR of them are expected (correlated tests:
    # fewer independent ones); a tail extrapolation or a wrong variance gives many, far below
    assert not tiny, f"{len(tiny)} of {n} null p-values < {P_FLOOR:g} ({n * P_FLOOR:.2f} " \
        "expected if uniform and independent):\n" + "\n".join(
        map(str, sorted(tiny, key=lambda t: t[7])[:20]))


# ------------------------------------------------------------------ the generators

N_CHECK = 100_000  # data events of the generator checks


def _weighted_mean_z(x_sim, w, x_data, target: float | None = None) -> float:
    """z of the weighted simulation mean against the data mean (or against ``target``)."""
    mean_s = float(np.sum(w * x_sim) / np.sum(w))
    var_s = float(np.sum(w**2 * (x_sim - mean_s) ** 2) / np.sum(w) ** 2)  # ratio estimator
    if target is not None:
        delta, var = mean_s - target, var_s
    else:
        delta, var = mean_s - float(np.mean(x_data)), var_s + float(np.var(x_data) / len(x_data))
    return delta / math.sqrt(var) if var > 0 else (0.0 if abs(delta) < 1e-12 else math.inf)


def _u(frame: pl.DataFrame) -> np.ndarray:
    return (frame["ht"].to_numpy() - 100.0) / 100.0


@pytest.fixture(scope="module")
def large_nulls() -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    return {s: make_null(s, N_CHECK, seed=7) for s in SCENARIOS}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_generator_gives_a_null(large_nulls, scenario):
    """Weighted means and deciles of every feature agree between simulation and data, and
    those of u = (ht - 100)/100 with its analytic law, within their errors at large N."""
    sim, data = large_nulls[scenario]
    assert len(data) == N_CHECK and len(sim) == round(SIM_PER_DATA[scenario] * N_CHECK)
    w = sim["weight"].to_numpy()
    assert np.sum(w) == pytest.approx(N_CHECK)
    checks: list[tuple[str, float]] = []
    for name in data.columns:
        if name == "event":
            continue
        xs, xd = (f[name].cast(pl.Float64).to_numpy() for f in (sim, data))
        valid_s, valid_d = xs != -999.0, xd != -999.0
        checks.append((f"{name} valid fraction",
                       _weighted_mean_z(valid_s.astype(float), w, valid_d.astype(float))))
        xs, ws, xd = xs[valid_s], w[valid_s], xd[valid_d]
        checks.append((f"{name} mean", _weighted_mean_z(xs, ws, xd)))
        for q in np.unique(np.quantile(xd, np.linspace(0.1, 0.9, 9))):
            checks.append((f"{name} P(x <= {q:.4g})",
                           _weighted_mean_z((xs <= q).astype(float), ws, (xd <= q).astype(float))))
    # the analytic law of u: Exp(1), truncated to [0, T] for importance and importance_tail
    t = {"importance": IMPORTANCE_U_MAX, "importance_tail": IMPORTANCE_TAIL_U_MAX}.get(
        scenario, math.inf)
    norm = -math.expm1(-t)
    mean_u = 1.0 - (t * math.exp(-t) / norm if math.isfinite(t) else 0.0)
    us = _u(sim)
    checks.append(("u mean (analytic)", _weighted_mean_z(us, w, None, target=mean_u)))
    for c in (0.1, 0.5, 1.0, 2.0, 4.0, 7.0):
        cdf = -math.expm1(-min(c, t)) / norm
        checks.append((f"P(u <= {c}) (analytic)",
                       _weighted_mean_z((us <= c).astype(float), w, None, target=cdf)))
    bad = [(what, round(z, 2)) for what, z in checks if not abs(z) < Z_MAX]
    assert not bad, (scenario, bad)


def test_generators_are_deterministic():
    a_sim, a_data = make_null("nlo", 500, seed=3)
    b_sim, b_data = make_null("nlo", 500, seed=3)
    assert a_sim.equals(b_sim) and a_data.equals(b_data)
    c_sim, _ = make_null("nlo", 500, seed=4)
    assert not a_sim.equals(c_sim)
    assert set(a_sim.columns) == set(a_data.columns) | {"weight"}


def test_weightings_are_as_specified(large_nulls):
    # importance: positive weights spanning about x1000, falling with ht (small in the tail)
    sim, _ = large_nulls["importance"]
    w, u = sim["weight"].to_numpy(), _u(sim)
    assert np.all(w > 0)
    assert 500 < w.max() / w.min() <= 1000 * (1 + 1e-9)
    order = np.argsort(u)
    assert np.all(np.diff(w[order]) <= 1e-12 * w.max())
    assert np.all(u[w < w.max() / 30] > 6.0)  # the small weights sit in the tail
    # importance_tail: positive weights rising x1000 into the tail, where the simulation is
    # sparse: the top decile-or-so of the data (weights x100-x1000) holds 0.1 % of it
    sim, data = large_nulls["importance_tail"]
    w, u, u_data = sim["weight"].to_numpy(), _u(sim), _u(data)
    assert np.all(w > 0)
    assert 500 < w.max() / w.min() <= 1000 * (1 + 1e-9)
    order = np.argsort(u)
    assert np.all(np.diff(w[order]) >= -1e-12 * w.max())
    heavy = u > math.log(100.0) / 2.0
    assert np.all(w[heavy] >= 100 * w.min() * (1 - 1e-9))
    assert np.mean(heavy) == pytest.approx(1e-3, rel=0.15)
    assert np.mean(u_data > math.log(100.0) / 2.0) == pytest.approx(0.0706, abs=0.005)
    # ht_slices: one weight per slice, x300 ... x1 from the lowest to the highest slice
    sim, _ = large_nulls["ht_slices"]
    w, u = sim["weight"].to_numpy(), _u(sim)
    per_slice = []
    for a, b in itertools.pairwise(HT_SLICE_EDGES):
        in_slice = w[(u >= a) & (u < b)]
        assert in_slice.size and np.ptp(in_slice) == 0
        per_slice.append(in_slice[0])
    # (integer event counts per slice: the ratios are the targets to 1e-4)
    np.testing.assert_allclose(np.array(per_slice) / per_slice[-1], HT_SLICE_WEIGHTS, rtol=1e-4)
    # nlo: |w| constant, negative fraction rising with ht from 10 % to 45 %
    sim, _ = large_nulls["nlo"]
    w, u = sim["weight"].to_numpy(), _u(sim)
    assert np.ptp(np.abs(w)) < 1e-12 * np.abs(w).max()
    neg = w < 0
    fractions = []
    for lo, hi in itertools.pairwise(np.quantile(u, np.linspace(0.0, 1.0, 11))):
        sel = (u >= lo) & (u <= hi)
        expected = float(np.mean(nlo_negative_fraction(u[sel])))
        observed = float(np.mean(neg[sel]))
        assert abs(observed - expected) < Z_MAX * math.sqrt(expected * (1 - expected) / sel.sum())
        fractions.append(observed)
    assert np.all(np.diff(fractions) > 0)
    assert fractions[0] < 0.14 and fractions[-1] > 0.43
    assert np.mean(neg[u < 0.02]) == pytest.approx(NLO_NEG_RANGE[0], abs=0.02)
    assert np.mean(neg[u > 5.0]) == pytest.approx(NLO_NEG_RANGE[1], abs=0.02)
    # small_sim: Kish effective size 0.3 n_data
    w = large_nulls["small_sim"][0]["weight"].to_numpy()
    assert np.sum(w) ** 2 / np.sum(w**2) / N_CHECK == pytest.approx(0.30, abs=0.02)
    assert w.max() / w.min() > 20
    # plain and spiky: 4 % negative weights, sign independent of the event
    for scenario in ("plain", "spiky"):
        w = large_nulls[scenario][0]["weight"].to_numpy()
        assert np.mean(w < 0) == pytest.approx(PLAIN_NEG_FRACTION, abs=0.003)
    assert np.unique(np.round(np.abs(w) / np.abs(w).min(), 9)).tolist() == [1.0, 4.0]


def test_spiky_features_are_as_specified(large_nulls):
    sim, data = large_nulls["spiky"]
    w = sim["weight"].to_numpy()
    assert data.schema["tight"] == pl.Boolean and data.schema["njet"] == pl.Int32
    for frame, weights in ((data, np.ones(len(data))), (sim, w)):
        def share(mask, weights=weights):
            return float(np.sum(weights * mask) / np.sum(weights))

        assert share(frame["iso"].to_numpy() == 0.0) == pytest.approx(0.60, abs=0.01)
        assert share(frame["met"].to_numpy() == SPIKY_CAP) == pytest.approx(0.10, abs=0.006)
        assert frame["met"].max() == pytest.approx(SPIKY_CAP)
        assert share(frame["eta"].to_numpy() == -999.0) == pytest.approx(0.05, abs=0.005)
        assert share(frame["tight"].to_numpy()) == pytest.approx(0.03, abs=0.003)
        njet = frame["njet"].to_numpy()
        assert njet.min() == 2 and njet.max() <= 15
        # ntrk: 40 % exact zeros, then Poisson counts (one zero more in ~2500 from the Poisson)
        ntrk = frame["ntrk"].to_numpy()
        assert share(ntrk == 0) == pytest.approx(0.40, abs=0.01)
        assert len(np.unique(ntrk)) > 25  # binned as a continuous feature, ties on integers
    assert data.schema["ntrk"] == pl.Int32
    x = data.select(pl.corr("ht", "njet").alias("a"), pl.corr("ht", "met").alias("b")).row(0)
    assert min(x) > 0.2  # correlated features


# ------------------------------------------------------------------ power


@pytest.mark.slow
def test_planted_effects_still_flagged():
    """sample_data: met scaled by 5 % in data; lep1_iso x lep2_iso copula 0.5 vs 0.2."""
    outcome = run_validation(RunConfig(sim=[str(SAMPLE_DIR / "sim.parquet")],
                                       data=[str(SAMPLE_DIR / "data.parquet")],
                                       weight="weight", db=None))
    found = outcome.findings()
    assert ("all", "met") in found.features
    assert {"ks", "ad"} <= set(found.features["all", "met"])
    assert ("all", "lep1_iso", "lep2_iso") in found.correlations
    assert {"corr_pearson", "corr_spearman"} & set(
        found.correlations["all", "lep1_iso", "lep2_iso"])
    assert ("all", "lep1_iso") not in found.features and ("all", "lep2_iso") not in found.features


def test_one_percent_scale_shift_is_found(tmp_path):
    """A mass-like feature (log-normal, σ_log = 0.4) scaled by 1.01 in 150k data events vs
    300k weighted simulated ones (log-normal weights, 4 % negative; n_eff ≈ 230k): KS and AD
    find it (expected KS distance ≈ 0.01: √n D ≈ 3, p ~ 1e-8; measured p ~ 1e-12). An
    independent unshifted feature is not flagged."""
    rng = np.random.default_rng(1401)
    n_data, n_sim = 150_000, 300_000

    def mass(n: int, scale: float) -> np.ndarray:
        return scale * np.exp(rng.normal(math.log(50.0), 0.4, n))

    w = np.exp(0.3 * rng.normal(size=n_sim)) * np.where(rng.random(n_sim) < 0.04, -1.0, 1.0)
    pl.DataFrame({"mass": mass(n_sim, 1.0), "other": rng.normal(size=n_sim),
                  "weight": w}).write_parquet(tmp_path / "sim.parquet")
    pl.DataFrame({"mass": mass(n_data, 1.01), "other": rng.normal(size=n_data)}).write_parquet(
        tmp_path / "data.parquet")
    outcome = run_validation(RunConfig(sim=[str(tmp_path / "sim.parquet")],
                                       data=[str(tmp_path / "data.parquet")],
                                       weight="weight", db=None, features=["mass", "other"]))
    p = {(r.feature_x, r.method): r for r in outcome.records if r.kind == "1d"}
    for method in ("ks", "ad"):
        assert p["mass", method].reliable and p["mass", method].pvalue < 1e-3, p["mass", method]
        assert p["other", method].pvalue > 1e-3, p["other", method]
