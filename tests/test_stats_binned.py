"""Binned goodness-of-fit tests: chi2_uw, saturated, dependence, and the binning helpers.

Numbers are checked against published references (ROOT's ``TH1::Chi2Test`` worked example),
scipy (``power_divergence``, ``chisquare``, ``optimize.minimize``) and analytic results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from validator.stats.binned import (
    effective_entries,
    max_abs_ratio_deviation,
    merge_histogram,
    merge_sparse_bins,
    sim_toys,
    toy_pvalue,
)
from validator.stats.chi2 import chi2_uw
from validator.stats.dependence import _null_fit, dependence, ipf
from validator.stats.likelihood import _q_terms, saturated
from validator.stats.result import GofResult

REFERENCE_DIR = Path(__file__).parents[1].parent / "shared" / "reference"

# ROOT TH1::Chi2Test reference documentation, worked example (N. Gagunashvili,
# arXiv:physics/0605123; tutorials/math/chi2test.C): the published values, hard-coded so the
# test also runs in a clone without ../shared.
_H2_SUMW = [
    2.20173025, 3.30143857, 2.5892849, 2.99990201, 4.92877054, 8.33036995, 6.95084763,
    15.206357, 23.9236012, 44.3848114, 49.4465599, 25.1868858, 16.3129692, 13.0289612,
    16.7857609, 22.9914703, 30.5279255, 12.5252123, 16.4104557, 7.86067867,
]  # fmt: skip
_H2_ERRORS = [
    0.38974303, 0.536510944, 0.529702604, 0.642001867, 0.969341516, 1.47611344, 1.69797957,
    3.28577447, 5.40784931, 9.10106468, 9.73541737, 5.55019951, 3.57914758, 2.77877331,
    3.23697519, 4.3608489, 5.77172089, 3.38666105, 2.98861837, 1.58402085,
]  # fmt: skip
_H1_BASE = [0, 1, 0, 1, 1, 6, 7, 2, 22, 30, 27, 20, 13, 9, 9, 13, 19, 11, 9, 0]
BUILTIN_REFERENCE = {
    "h2_sumw": _H2_SUMW,
    "h2_errors": _H2_ERRORS,
    "cases": [
        {
            "w": 0,
            "h1_counts": _H1_BASE,
            "published": {"chi2": 21.09, "ndf": 19, "pvalue": 0.33},
            "full_precision": {"chi2": 21.085124, "pvalue": 0.332116},
        },
        {
            "w": 17,
            "h1_counts": [*_H1_BASE[:14], 26, *_H1_BASE[15:]],
            "published": {"chi2": 32.33, "ndf": 19, "pvalue": 0.029},
            "full_precision": {"chi2": 32.333882, "pvalue": 0.0286527},
            "residuals_by_the_root_algorithm": [
                -1.1865, -0.795, -1.2695, -0.6857, -1.2087, 0.1785, 0.9375, -2.18, 1.1027,
                0.0564, -0.7228, 0.5847, 0.5227, 0.0943, 3.3031, -0.4933, -0.2322, 0.708,
                -0.5174, -2.0497,
            ],
        },
    ],
}  # fmt: skip


def _reference(source: str) -> dict:
    if source == "builtin":
        return BUILTIN_REFERENCE
    path = REFERENCE_DIR / "root_chi2test_uw.json"
    if not path.exists():
        pytest.skip(f"{path} not present (clone without ../shared)")
    return json.loads(path.read_text())


def _root_example(case: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = BUILTIN_REFERENCE
    n = np.array(ref["cases"][case]["h1_counts"], dtype=float)
    w = np.array(ref["h2_sumw"])
    s2 = np.array(ref["h2_errors"]) ** 2
    return n, w, s2


def _decimals(x: float) -> int:
    """Number of decimals a published value is quoted to."""
    text = repr(x)
    return len(text.split(".")[1]) if "." in text else 0


# ---------------------------------------------------------------------------------------
# chi2_uw against ROOT
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["file", "builtin"])
@pytest.mark.parametrize("case", [0, 1])
def test_chi2_uw_reproduces_root_worked_example(source: str, case: int) -> None:
    ref = _reference(source)
    c = ref["cases"][case]
    res = chi2_uw(c["h1_counts"], ref["h2_sumw"], np.asarray(ref["h2_errors"]) ** 2)
    assert isinstance(res, GofResult)
    assert res.method == "chi2_uw"
    pub = c["published"]
    # Published values, to the precision they are quoted with.
    assert round(res.statistic, _decimals(pub["chi2"])) == pytest.approx(pub["chi2"])
    assert res.ndf == pub["ndf"]
    assert round(res.pvalue, _decimals(pub["pvalue"])) == pytest.approx(pub["pvalue"])
    # Full-precision values (ROOT output, 6-7 significant digits).
    full = c["full_precision"]
    assert res.statistic == pytest.approx(full["chi2"], abs=1e-6)
    assert res.pvalue == pytest.approx(full["pvalue"], rel=2e-6)
    assert res.pvalue_method == "asymptotic"
    if "residuals_by_the_root_algorithm" in c:
        expected = np.array(c["residuals_by_the_root_algorithm"])
        np.testing.assert_allclose(res.residuals, expected, atol=5e-5 + 1e-12)


def test_chi2_uw_root_example_flags_small_expected_counts() -> None:
    res = chi2_uw(*_root_example(0))
    # Bins 1-5 hold 0-1 data events: expected counts well below 5.
    assert not res.reliable
    assert res.details["n_bins_expected_lt5"] > 0
    assert "expected data count < 5" in res.details["unreliable_reason"]
    # ROOT's igood = 1: data bins with < 1 event (bins 1, 3 and 20).
    assert res.details["n_bins_data_lt1"] == 3
    assert res.details["igood"] == 1


def test_chi2_uw_reliable_with_large_counts() -> None:
    rng = np.random.default_rng(11)
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05])
    n = rng.poisson(5000 * p)
    k = rng.poisson(20000 * p)
    res = chi2_uw(n, 0.5 * k, 0.25 * k)
    assert res.reliable
    assert "unreliable_reason" not in res.details
    assert res.ndf == 6


def test_asymptotic_results_flag_a_simulation_smaller_than_the_data() -> None:
    rng = np.random.default_rng(12)
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05])
    n = rng.poisson(5000 * p)
    k = rng.poisson(2000 * p)  # 2000 simulated events of weight 2.5
    for test in (chi2_uw, saturated):
        res = test(n, 2.5 * k, 6.25 * k)
        assert not res.reliable
        assert "fewer effective entries" in res.details["unreliable_reason"]
        assert res.details["sim_effective_entries"] == pytest.approx(k.sum())
        # Toys are the remedy: the toy result is not flagged.
        assert test(n, 2.5 * k, 6.25 * k, n_toys=50, rng=1).reliable
    assert effective_entries(2.5 * k, 6.25 * k) == pytest.approx(k.sum())
    assert effective_entries([1.0, 2.0], [0.0, 0.0]) == np.inf


def test_chi2_uw_drops_bins_empty_in_both() -> None:
    n, w, s2 = _root_example(1)
    pad = np.zeros(2)
    res = chi2_uw(np.r_[pad, n, pad], np.r_[pad, w, pad], np.r_[pad, s2, pad])
    assert res.ndf == 19  # 24 bins, 4 dropped
    assert res.details["n_bins_dropped"] == 4
    assert res.statistic == pytest.approx(32.333882, abs=1e-6)
    assert res.pvalue == pytest.approx(0.0286527, rel=2e-6)
    np.testing.assert_array_equal(res.residuals[[0, 1, -2, -1]], 0.0)


def test_chi2_uw_without_sim_errors_is_pearson_against_scaled_sim() -> None:
    # s_i^2 = 0: p_hat_i = w_i / W and X^2 is Pearson's chi2 of the data against N w_i / W.
    rng = np.random.default_rng(3)
    w = rng.uniform(5.0, 50.0, size=12)
    n = rng.poisson(3.0 * w).astype(float)
    res = chi2_uw(n, w, np.zeros_like(w))
    ref = stats.chisquare(n, f_exp=w * n.sum() / w.sum())
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    assert res.ndf == 11


def test_chi2_uw_is_normalisation_free() -> None:
    n, w, s2 = _root_example(1)
    for scale in (1e-3, 7.5, 1e4):
        res = chi2_uw(n, scale * w, scale**2 * s2)
        assert res.statistic == pytest.approx(32.333882, abs=1e-6)


def test_chi2_uw_zero_content_zero_error_bin_uses_mean_weight_variance() -> None:
    # ROOT: a simulated bin with zero content and zero error gets sum(s^2)/sum(w).
    n = np.array([12.0, 30.0, 45.0, 3.0, 25.0])
    w = np.array([6.0, 14.0, 24.0, 0.0, 13.0])
    s2 = np.array([3.0, 7.5, 11.0, 0.0, 6.0])
    res = chi2_uw(n, w, s2)
    filled = s2.copy()
    filled[3] = s2.sum() / w.sum()
    ref = chi2_uw(n, w, filled)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.details["n_bins_zero_sim_error_replaced"] == 1
    assert np.isfinite(res.statistic) and res.statistic > 0


def test_chi2_uw_root_adds_one_event_where_p_hat_vanishes() -> None:
    # First bin: no data and W*w_1 < N*s_1^2. ROOT adds one data event there and to N for
    # all later bins; in the first bin this equals a histogram with one event in bin 1.
    n = np.array([0.0, 40.0, 60.0, 30.0])
    w = np.array([0.2, 20.0, 30.0, 15.0])
    s2 = np.array([4.0, 10.0, 15.0, 7.5])
    res = chi2_uw(n, w, s2)
    assert res.details["root_increments"] == 1
    n1 = n.copy()
    n1[0] = 1.0
    ref = chi2_uw(n1, w, s2)
    assert ref.details["root_increments"] == 0
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)


def test_chi2_uw_negative_weight_bin_is_finite() -> None:
    n = np.array([20.0, 35.0, 2.0, 40.0, 18.0])
    w = np.array([10.0, 18.0, -0.5, 21.0, 9.0])
    s2 = np.array([5.0, 9.0, 1.2, 10.0, 4.5])
    res = chi2_uw(n, w, s2)
    assert np.isfinite(res.statistic) and 0 < res.pvalue < 1
    assert np.all(np.isfinite(res.residuals))
    # Still normalisation free with a negative bin.
    assert chi2_uw(n, 3 * w, 9 * s2).statistic == pytest.approx(res.statistic, rel=1e-12)


def test_chi2_uw_effect_size_is_max_ratio_deviation() -> None:
    n = np.array([10.0, 20.0, 30.0])
    w = np.array([1.0, 2.0, 2.0])
    # sim scaled to 60 events: [12, 24, 24]; ratios 5/6, 5/6, 5/4
    res = chi2_uw(n, w, w * 0.01)
    assert res.effect_name == "max_abs_ratio_dev"
    assert res.effect_size == pytest.approx(0.25)
    assert max_abs_ratio_deviation(n, w) == pytest.approx(0.25)
    # Bins without simulation are skipped (the scale is still the data total, 64 events):
    # sim scaled [12.8, 25.6, 25.6], ratios 0.78125, 0.78125, 1.171875.
    assert max_abs_ratio_deviation([10, 20, 30, 4], [1, 2, 2, 0]) == pytest.approx(0.21875)


@pytest.mark.parametrize(
    ("n", "w", "s2"),
    [
        ([1, 2], [1, 2, 3], [1, 2, 3]),
        ([1, 2, 3], [1, 2, 3], [1, -2, 3]),
        ([0, 0, 0], [1, 2, 3], [1, 2, 3]),
        ([1, 2, 3], [0, 0, 0], [0, 0, 0]),
    ],
)
def test_chi2_uw_rejects_bad_input(n: list, w: list, s2: list) -> None:
    with pytest.raises(ValueError):
        chi2_uw(n, w, s2)


def test_chi2_uw_data_in_bin_of_errorless_empty_simulation_is_an_error() -> None:
    # ROOT: infinite discrepancy (data where a simulation with all errors zero has nothing).
    with pytest.raises(ValueError, match="zero content and zero errors"):
        chi2_uw([5, 3, 4], [5, 0, 4], [0, 0, 0])


def test_chi2_uw_toys_agree_with_asymptotic_for_large_counts() -> None:
    rng = np.random.default_rng(5)
    p = np.array([0.04, 0.08, 0.15, 0.23, 0.2, 0.15, 0.1, 0.05])
    n = rng.poisson(4000 * p)
    k = rng.poisson(40000 * p)
    res = chi2_uw(n, 0.1 * k, 0.01 * k, n_toys=2000, rng=1)
    assert res.pvalue_method == "toys"
    assert res.n_toys == 2000
    assert res.reliable
    assert res.pvalue == pytest.approx(res.details["pvalue_asymptotic"], abs=0.04)
    again = chi2_uw(n, 0.1 * k, 0.01 * k, n_toys=2000, rng=1)
    assert again.pvalue == res.pvalue


# ---------------------------------------------------------------------------------------
# saturated
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [0, 1])
def test_saturated_infinite_mc_limit_is_baker_cousins(case: int) -> None:
    # sim_sumw2 -> 0: q = Baker-Cousins G with the normalisation fixed to the data total.
    n, w, _ = _root_example(case)
    res = saturated(n, w, np.zeros_like(w))
    ref = stats.power_divergence(n, f_exp=w * n.sum() / w.sum(), lambda_="log-likelihood")
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert res.ndf == 19
    assert res.pvalue == pytest.approx(stats.chi2.sf(ref.statistic, 19), rel=1e-9)
    assert res.details["mu_hat"] == pytest.approx(n.sum() / w.sum(), rel=1e-10)


def test_saturated_small_mc_error_approaches_baker_cousins() -> None:
    rng = np.random.default_rng(8)
    w = rng.uniform(20, 200, size=15)
    n = rng.poisson(0.7 * w).astype(float)
    ref = stats.power_divergence(n, f_exp=w * n.sum() / w.sum(), lambda_="log-likelihood")
    q = [saturated(n, w, eps * w).statistic for eps in (1e-2, 1e-4, 1e-6)]
    assert abs(q[2] - ref.statistic) < abs(q[1] - ref.statistic) < abs(q[0] - ref.statistic)
    assert q[2] == pytest.approx(ref.statistic, rel=1e-5)


def _joint_minimum(n: np.ndarray, w: np.ndarray, s2: np.ndarray) -> float:
    """-2 ln(L/L_sat) minimised over (ln mu, b) jointly by scipy: an independent reference."""

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        mu, b = np.exp(x[0]), x[1:]
        dev, con = _q_terms(mu, b, n, w, s2)
        grad_b = 2 * (mu - n / b) + 2 * (b - w) / s2
        return float(dev.sum() + con.sum()), np.r_[2 * np.sum(mu * b - n), grad_b]

    x0 = np.r_[np.log(n.sum() / w.sum()), np.clip(w, 1e-3, None)]
    bounds = [(None, None)] + [(1e-9, None)] * w.size
    best = optimize.minimize(
        f,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10000},
    )
    return float(best.fun)


@pytest.mark.parametrize("case", [0, 1])
def test_saturated_matches_joint_numerical_minimisation(case: int) -> None:
    n, w, s2 = _root_example(case)
    res = saturated(n, w, s2)
    assert res.statistic == pytest.approx(_joint_minimum(n, w, s2), rel=1e-7)
    assert res.method == "saturated"
    assert res.pvalue == pytest.approx(stats.chi2.sf(res.statistic, 19), rel=1e-12)
    # Deviance residuals: squares sum to q.
    assert np.sum(res.residuals**2) == pytest.approx(res.statistic, rel=1e-10)


def test_saturated_is_zero_for_a_perfect_match() -> None:
    w = np.array([10.0, 40.0, 25.0, 5.0])
    res = saturated(3 * w, w, 0.5 * w)
    assert res.statistic == pytest.approx(0.0, abs=1e-12)
    assert res.pvalue == pytest.approx(1.0)
    assert res.effect_size == pytest.approx(0.0)


def test_saturated_handles_negative_sum_of_weights() -> None:
    # NLO negative weights: a bin with negative sumw (and its uncertainty) needs no clipping;
    # the profiled true content b >= 0 stays within the likelihood.
    n = np.array([20.0, 35.0, 2.0, 40.0, 18.0])
    w = np.array([10.0, 18.0, -0.5, 21.0, 9.0])
    s2 = np.array([5.0, 9.0, 1.2, 10.0, 4.5])
    res = saturated(n, w, s2)
    assert res.details["n_bins_negative_sumw"] == 1
    assert "n_bins_prediction_clipped" not in res.details
    assert res.statistic == pytest.approx(_joint_minimum(n, w, s2), rel=1e-6)
    assert res.effect_size == pytest.approx(max_abs_ratio_deviation(n, w))


def test_saturated_clips_errorless_non_positive_prediction() -> None:
    n = np.array([20.0, 35.0, 4.0, 40.0])
    w = np.array([10.0, 18.0, -1.0, 21.0])
    s2 = np.array([5.0, 9.0, 0.0, 10.0])
    res = saturated(n, w, s2)
    assert res.details["n_bins_prediction_clipped"] == 1
    assert "clipped" in res.details["clip_note"]
    assert np.isfinite(res.statistic) and res.statistic > 100
    assert res.pvalue < 1e-10


def test_saturated_empty_sim_bin_gets_mean_weight_variance() -> None:
    n = np.array([12.0, 30.0, 45.0, 3.0, 25.0])
    w = np.array([6.0, 14.0, 24.0, 0.0, 13.0])
    s2 = np.array([3.0, 7.5, 11.0, 0.0, 6.0])
    res = saturated(n, w, s2)
    filled = s2.copy()
    filled[3] = s2.sum() / w.sum()
    assert res.details["n_bins_zero_sim_error_replaced"] == 1
    assert res.statistic == pytest.approx(saturated(n, w, filled).statistic, rel=1e-12)
    assert res.statistic == pytest.approx(_joint_minimum(n, w, filled), rel=1e-6)


def test_saturated_drops_empty_bins_and_flags_small_counts() -> None:
    n, w, s2 = _root_example(0)
    pad = np.zeros(3)
    res = saturated(np.r_[n, pad], np.r_[w, pad], np.r_[s2, pad])
    assert res.ndf == 19
    assert res.details["n_bins_dropped"] == 3
    assert res.statistic == pytest.approx(saturated(n, w, s2).statistic, rel=1e-12)
    assert not res.reliable
    assert "expected data count" in res.details["unreliable_reason"]


def test_saturated_is_normalisation_free() -> None:
    n, w, s2 = _root_example(1)
    q = saturated(n, w, s2).statistic
    assert saturated(n, 40 * w, 1600 * s2).statistic == pytest.approx(q, rel=1e-9)


def test_saturated_toys() -> None:
    rng = np.random.default_rng(21)
    p = np.array([0.04, 0.08, 0.15, 0.23, 0.2, 0.15, 0.1, 0.05])
    n = rng.poisson(4000 * p)
    k = rng.poisson(40000 * p)
    res = saturated(n, 0.1 * k, 0.01 * k, n_toys=2000, rng=3)
    assert res.pvalue_method == "toys"
    assert res.n_toys == 2000
    assert 1 / 2001 <= res.pvalue <= 1
    assert res.pvalue == pytest.approx(res.details["pvalue_asymptotic"], abs=0.04)
    # The mean of the toy statistic is close to the asymptotic ndf.
    assert res.details["q_toys_mean"] == pytest.approx(7, abs=0.5)
    assert saturated(n, 0.1 * k, 0.01 * k, n_toys=2000, rng=3).pvalue == res.pvalue


def test_saturated_toys_detect_a_clear_mismatch() -> None:
    p = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    q = np.array([0.15, 0.2, 0.3, 0.2, 0.15])
    res = saturated(5000 * q, 1000 * p, 10 * p, n_toys=200, rng=1)
    # No toy reaches the observation: the tail is extrapolated below 1/(1 + n_toys).
    assert res.pvalue < 1e-10
    assert res.details["pvalue_tail"] == "extrapolated"


def test_saturated_variations_absorb_a_modelled_shape_effect() -> None:
    rng = np.random.default_rng(4)
    p = np.diff(stats.expon.cdf(np.r_[np.linspace(0, 6, 15), np.inf], scale=2.0))
    tilt = np.exp(0.1 * np.linspace(-1, 1, p.size))
    k = rng.poisson(40000 * p)
    w, s2 = 0.5 * k, 0.25 * k
    n = rng.poisson(10000 * p * tilt / np.sum(p * tilt))
    plain = saturated(n, w, s2)
    with_syst = saturated(n, w, s2, variations={"tilt": (w * tilt, w / tilt)})
    assert plain.pvalue < 1e-3
    assert with_syst.pvalue > 0.05
    assert with_syst.details["theta_hat"]["tilt"] == pytest.approx(1.0, abs=0.35)
    assert with_syst.ndf == plain.ndf
    # A variation equal to the nominal changes nothing.
    same = saturated(n, w, s2, variations={"none": (w, w)})
    assert same.statistic == pytest.approx(plain.statistic, rel=1e-9)
    # Toys with a variation run and are consistent with the asymptotic p-value.
    toys = saturated(n, w, s2, variations={"tilt": (w * tilt, w / tilt)}, n_toys=300, rng=2)
    assert toys.pvalue == pytest.approx(with_syst.pvalue, abs=0.12)


def test_saturated_variations_match_scipy_minimisation() -> None:
    n, w, s2 = _root_example(1)
    up = w * np.linspace(0.8, 1.2, w.size)
    down = w * np.linspace(1.1, 0.9, w.size)
    res = saturated(n, w, s2, variations={"s": (up, down)})
    # Independent reference: minimise over (ln mu, theta, b) jointly with scipy, with the
    # same per-bin interpolation ln f = a theta + c theta^2 (|theta| <= 1, linear beyond).
    l_up = np.log(up * w.sum() / up.sum() / w)
    l_dn = np.log(down * w.sum() / down.sum() / w)
    a, c = 0.5 * (l_up - l_dn), 0.5 * (l_up + l_dn)

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        t, b = x[1], x[2:]
        tc = np.clip(t, -1, 1)
        slope = a + 2 * c * tc
        m = np.exp(x[0] + a * tc + c * tc**2 + slope * (t - tc))
        dev, con = _q_terms(m, b, n, w, s2)
        resid = 2 * (m * b - n)
        grad = np.r_[resid.sum(), slope @ resid + 2 * t, 2 * (m - n / b) + 2 * (b - w) / s2]
        return float(dev.sum() + con.sum() + t**2), grad

    x0 = np.r_[np.log(n.sum() / w.sum()), 0.0, w]
    bounds = [(None, None), (None, None)] + [(1e-9, None)] * w.size
    best = optimize.minimize(
        f,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10000},
    )
    assert res.statistic == pytest.approx(best.fun, rel=1e-6)
    assert res.details["theta_hat"]["s"] == pytest.approx(best.x[1], abs=1e-3)


def test_saturated_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        saturated([1, 2], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError):
        saturated([1, 2, 3], [1, 2, 3], [1, -1, 3])
    with pytest.raises(ValueError):
        saturated([0, 0, 0], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError):
        saturated([1, 2, 3], [1, 2, 3], [1, 2, 3], variations={"x": ([1, 2], [1, 2])})


# ---------------------------------------------------------------------------------------
# binning helpers
# ---------------------------------------------------------------------------------------


def test_merge_sparse_bins_examples() -> None:
    np.testing.assert_array_equal(
        merge_sparse_bins([1, 1, 5, 0, 0, 3, 10], 5.0), [0, 0, 0, 1, 1, 1, 1]
    )
    # Trailing small group merges into its predecessor.
    np.testing.assert_array_equal(merge_sparse_bins([6, 6, 1], 5.0), [0, 1, 1])
    # Total below the threshold: one group.
    np.testing.assert_array_equal(merge_sparse_bins([1, 1, 1], 5.0), [0, 0, 0])
    np.testing.assert_array_equal(merge_sparse_bins([9, 9, 9], 5.0), [0, 1, 2])


def test_merge_sparse_bins_invariants() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = int(rng.integers(1, 40))
        expected = rng.exponential(rng.uniform(0.5, 20.0), size=size)
        expected[rng.random(size) < 0.2] = 0.0
        min_exp = float(rng.uniform(1.0, 20.0))
        g = merge_sparse_bins(expected, min_exp)
        assert g.shape == (size,)
        assert g[0] == 0
        assert np.all(np.diff(g) >= 0) and np.all(np.diff(g) <= 1)
        merged = merge_histogram(expected, g)
        assert merged.sum() == pytest.approx(expected.sum())
        if expected.sum() >= min_exp:
            assert np.all(merged >= min_exp - 1e-12)
        else:
            assert np.all(g == 0)


def test_merge_histogram_batched_matches_bincount() -> None:
    rng = np.random.default_rng(1)
    values = rng.uniform(size=(4, 9))
    groups = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3])
    batched = merge_histogram(values, groups)
    for row, out in zip(values, batched, strict=True):
        np.testing.assert_allclose(out, np.bincount(groups, weights=row))


def test_sim_toys_moments() -> None:
    rng = np.random.default_rng(2)
    w = np.array([10.0, 3.0, -1.0, 0.0, 50.0])
    s2 = np.array([4.0, 3.0, 2.0, 0.0, 10.0])
    beta = np.array([12.0, 2.0, 0.5, 1.0, 50.0])
    w_t, s2_t = sim_toys(beta, w, s2, 200_000, rng)
    # Mean beta; variance u * beta with u = s2/w (scaled Poisson) where w > 0; the empty bin
    # uses the histogram's mean weight sum(s2)/sum(w) = 19/62; the negative bin is Gaussian.
    u = np.array([0.4, 1.0, np.nan, 19 / 62, 0.2])
    var = np.array([u[0] * 12, u[1] * 2, 2.0, u[3] * 1.0, u[4] * 50])
    np.testing.assert_allclose(w_t.mean(axis=0), beta, atol=0.02)
    np.testing.assert_allclose(w_t.var(axis=0), var, rtol=0.02)
    # Scaled Poisson: the toy's sum of squared weights is u times its sum of weights.
    scaled = [0, 1, 3, 4]
    np.testing.assert_allclose(s2_t[:, scaled], u[scaled] * w_t[:, scaled])
    np.testing.assert_array_equal(s2_t[:, 2], 2.0)


def test_toy_pvalue_counts_and_extrapolates_the_tail() -> None:
    rng = np.random.default_rng(3)
    toys = rng.chisquare(12, size=4000)
    # Inside the toys: the Monte Carlo p-value (1 + #>=) / (1 + n).
    p, info = toy_pvalue(15.0, toys)
    assert p == pytest.approx((1 + np.sum(toys >= 15.0)) / 4001)
    assert info["pvalue_tail"] == "empirical"
    assert p == pytest.approx(stats.chi2.sf(15.0, 12), abs=0.02)
    # Failed toys count as extreme.
    assert toy_pvalue(15.0, toys, n_failed=10)[0] == pytest.approx(
        (11 + np.sum(toys >= 15.0)) / 4011
    )
    # Beyond every toy: a chi2 matched to the toys' moments, close to the true chi2(12) tail.
    p, info = toy_pvalue(80.0, toys)
    assert info["pvalue_tail"] == "extrapolated"
    assert info["tail_fit_dof"] == pytest.approx(12, rel=0.1)
    assert p < 1 / 4001
    assert np.log10(p) == pytest.approx(np.log10(stats.chi2.sf(80.0, 12)), abs=1.0)


# ---------------------------------------------------------------------------------------
# ipf and dependence
# ---------------------------------------------------------------------------------------


def _copula_table(rho: float, edges_x: np.ndarray, edges_y: np.ndarray) -> np.ndarray:
    """Cell probabilities of a standard bivariate normal (Gaussian copula) on a grid."""
    mvn = stats.multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, rho], [rho, 1.0]])
    gx, gy = np.meshgrid(edges_x, edges_y, indexing="ij")
    cdf = mvn.cdf(np.dstack([gx, gy]))
    return np.diff(np.diff(cdf, axis=0), axis=1)


_EDGES = np.r_[-9.0, np.linspace(-1.5, 1.5, 6), 9.0]


def test_ipf_of_uniform_table_is_the_independence_table() -> None:
    rows = np.array([10.0, 30.0, 60.0])
    cols = np.array([25.0, 25.0, 50.0])
    out = ipf(np.ones((3, 3)), rows, cols)
    np.testing.assert_allclose(out, np.outer(rows, cols) / 100.0, rtol=1e-10)


def test_ipf_reproduces_targets_and_keeps_odds_ratios() -> None:
    rng = np.random.default_rng(9)
    table = rng.uniform(0.5, 5.0, size=(5, 6))
    rows = rng.uniform(10, 100, size=5)
    cols = rng.uniform(10, 100, size=6)
    cols *= rows.sum() / cols.sum()
    out = ipf(table, rows, cols)
    np.testing.assert_allclose(out.sum(axis=1), rows, rtol=1e-9)
    np.testing.assert_allclose(out.sum(axis=0), cols, rtol=1e-9)

    def log_odds(t: np.ndarray) -> np.ndarray:
        lt = np.log(t)
        return lt[:-1, :-1] + lt[1:, 1:] - lt[:-1, 1:] - lt[1:, :-1]

    np.testing.assert_allclose(log_odds(out), log_odds(table), atol=1e-9)
    # Batched form gives the same.
    batched = ipf(np.stack([table, table]), np.stack([rows, rows]), np.stack([cols, cols]))
    np.testing.assert_allclose(batched[1], out, rtol=1e-12)


def test_ipf_rejects_inconsistent_targets() -> None:
    with pytest.raises(ValueError, match="totals"):
        ipf(np.ones((2, 2)), [1.0, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="zero row"):
        ipf(np.array([[1.0, 1.0], [0.0, 0.0]]), [1.0, 1.0], [1.0, 1.0])


def _weighted_sim(p: np.ndarray, n_events: float, rng: np.random.Generator) -> tuple:
    """A weighted simulated table: two kinds of events with weights 0.3 and 1.7."""
    k1 = rng.poisson(0.7 * n_events / 0.3 * p)
    k2 = rng.poisson(0.3 * n_events / 1.7 * p)
    return 0.3 * k1 + 1.7 * k2, 0.09 * k1 + 2.89 * k2


def test_dependence_ignores_wrong_marginals_with_correct_dependence() -> None:
    p_data = _copula_table(0.3, _EDGES, _EDGES)
    # Same odds ratios, different marginals (e.g. a mismodelled energy scale in each).
    fx = np.linspace(0.5, 1.6, p_data.shape[0])
    fy = np.linspace(1.5, 0.6, p_data.shape[1])
    p_sim = p_data * fx[:, None] * fy[None, :]
    p_sim /= p_sim.sum()
    # A single p-value is uniform under this null, so look at a few replicas.
    p_dep, p_plain = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        w, s2 = _weighted_sim(p_sim, 60000, rng)
        n = rng.poisson(20000 * p_data)
        dep = dependence(n, w, s2, n_toys=200, rng=seed)
        p_dep.append(dep.pvalue)
        p_plain.append(chi2_uw(n.ravel(), w.ravel(), s2.ravel()).pvalue)
    assert max(p_plain) < 1e-10
    assert np.median(p_dep) > 0.2
    assert np.mean(np.array(p_dep) < 0.05) <= 0.15
    assert dep.method == "dependence"
    assert dep.pvalue_method == "toys" and dep.n_toys == 200
    assert dep.ndf == 36 - (49 - dep.details["n_groups"])
    assert dep.details["ipf_pseudo_content"] == 0.0


def test_dependence_detects_a_planted_correlation() -> None:
    rng = np.random.default_rng(13)
    p_data = _copula_table(0.3, _EDGES, _EDGES)
    p_sim = _copula_table(0.0, _EDGES, _EDGES)  # same marginals, no correlation
    w, s2 = _weighted_sim(p_sim, 20000, rng)
    n = rng.poisson(5000 * p_data)
    res = dependence(n, w, s2, n_toys=200, rng=2)
    assert res.pvalue < 1e-10
    assert res.details["pvalue_tail"] == "extrapolated"
    assert res.effect_name == "max_abs_ratio_dev_ipf"
    assert res.effect_size > 0.3
    assert res.details["cramers_v_excess"] > 0.05
    # Residuals: excess on the diagonal corners (positive correlation), deficit off-diagonal.
    assert res.residuals[0, 0] > 3 and res.residuals[-1, -1] > 3
    assert res.residuals[0, -1] < -2 and res.residuals[-1, 0] < -2


def test_dependence_drops_rows_and_columns_without_data() -> None:
    rng = np.random.default_rng(14)
    p = _copula_table(0.2, _EDGES, _EDGES)
    w, s2 = _weighted_sim(p, 20000, rng)
    n = rng.poisson(5000 * p)
    base = dependence(n, w, s2, n_toys=100, rng=5)
    n_pad = np.zeros((8, 8))
    n_pad[:7, 1:] = n
    w_pad = np.ones((8, 8))
    w_pad[:7, 1:] = w
    s2_pad = np.ones((8, 8))
    s2_pad[:7, 1:] = s2
    res = dependence(n_pad, w_pad, s2_pad, n_toys=100, rng=5)
    assert res.details["rows_dropped_no_data"] == 1
    assert res.details["cols_dropped_no_data"] == 1
    assert res.statistic == pytest.approx(base.statistic, rel=1e-10)
    assert res.pvalue == base.pvalue
    assert res.residuals.shape == (8, 8)
    np.testing.assert_array_equal(res.residuals[7], 0.0)


def test_null_fit_has_the_data_marginals_and_a_common_structure() -> None:
    rng = np.random.default_rng(16)
    p = _copula_table(0.3, _EDGES, _EDGES)
    w, s2 = _weighted_sim(p, 8000, rng)
    n = rng.poisson(5000 * p).astype(float)
    sim_null, data_null = _null_fit(n, w, s2)
    np.testing.assert_allclose(data_null.sum(axis=1), n.sum(axis=1), rtol=1e-8)
    np.testing.assert_allclose(data_null.sum(axis=0), n.sum(axis=0), rtol=1e-8)
    # data = a_i b_j theta: the ratio table has rank one (all its 2x2 log odds ratios vanish).
    lr = np.log(data_null / sim_null)
    np.testing.assert_allclose(lr[:-1, :-1] + lr[1:, 1:] - lr[:-1, 1:] - lr[1:, :-1], 0, atol=1e-8)
    # With a far larger simulation the common structure is the simulation itself.
    big_w, big_s2 = 1e4 * p, 1e-4 * p
    sim_big, data_big = _null_fit(n, big_w, big_s2)
    np.testing.assert_allclose(sim_big, big_w, rtol=1e-3)
    np.testing.assert_allclose(data_big, ipf(big_w, n.sum(axis=1), n.sum(axis=0)), rtol=1e-3)


def test_dependence_asymptotic_mode_is_flagged() -> None:
    rng = np.random.default_rng(15)
    p = _copula_table(0.2, _EDGES, _EDGES)
    w, s2 = _weighted_sim(p, 20000, rng)
    n = rng.poisson(5000 * p)
    res = dependence(n, w, s2, n_toys=0)
    assert res.pvalue_method == "asymptotic"
    assert not res.reliable
    assert res.pvalue == pytest.approx(stats.chi2.sf(res.statistic, res.ndf))


def test_dependence_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        dependence(np.ones(4), np.ones(4), np.ones(4))
    with pytest.raises(ValueError):
        dependence(np.ones((3, 1)), np.ones((3, 1)), np.ones((3, 1)))
