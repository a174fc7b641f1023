"""Binned goodness-of-fit tests: chi2_uw, saturated, dependence, and the binning helpers.

Numbers are checked against published references (ROOT's ``TH1::Chi2Test`` worked example),
scipy (``power_divergence``, ``chisquare``, ``optimize.minimize``) and analytic results.
"""

from __future__ import annotations

import contextlib
import json
import math
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
)
from validator.stats.chi2 import chi2_uw
from validator.stats.dependence import dependence, ipf, null_fit
from validator.stats.likelihood import saturated
from validator.stats.result import GofResult
from validator.stats.toys import TAIL_SETTLES_FACTOR, toy_pvalue

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
# Independent references for chi2_uw, written out here from the published formulas
# ---------------------------------------------------------------------------------------


def _uw_formula(n: np.ndarray, w: np.ndarray, s2: np.ndarray) -> float:
    """Gagunashvili's X^2 (NIM A 614 (2010) 287, arXiv:0905.4221, eqs. for the UW case).

    p_i = (W w_i - N s_i^2 + sqrt((W w_i - N s_i^2)^2 + 4 W^2 s_i^2 n_i)) / (2 W^2),
    X^2 = sum (n_i - N p_i)^2 / (N p_i) + sum (w_i - W p_i)^2 / s_i^2 (second sum over
    s_i^2 > 0). No special cases: every bin must have p_i > 0.
    """
    n, w, s2 = (np.asarray(a, dtype=float) for a in (n, w, s2))
    big_n, big_w = n.sum(), w.sum()
    a = big_w * w - big_n * s2
    p = (a + np.sqrt(a**2 + 4.0 * big_w**2 * s2 * n)) / (2.0 * big_w**2)
    assert np.all(p > 0)
    sim_term = np.zeros_like(p)
    err = s2 > 0
    sim_term[err] = (w[err] - big_w * p[err]) ** 2 / s2[err]
    return float(np.sum((n - big_n * p) ** 2 / (big_n * p)) + sim_term.sum())


def _uw_root_loop(n, w, s2) -> tuple[float, int, np.ndarray]:
    """Line-by-line port of ROOT's TH1::Chi2TestX "UW" branch (hist/hist/src/TH1.cxx).

    A scalar loop over bins in order, with ROOT's special cases: bins empty in both are
    skipped (ndf - 1); zero content and zero error -> e2 = sum(e2)/sum(w); while p_hat would
    vanish, one event is added to the bin and to the running data total. Returns
    (chi2, ndf, residuals).
    """
    cnts1 = [float(v) for v in n]
    cnts2 = [float(v) for v in w]
    errs2 = [float(v) for v in s2]
    sum1, sum2, sumw2 = sum(cnts1), sum(cnts2), sum(errs2)
    ndf = len(cnts1) - 1
    chi2 = 0.0
    res = np.zeros(len(cnts1))
    for i, (cnt1, cnt2, e2sq) in enumerate(zip(cnts1, cnts2, errs2, strict=True)):
        if cnt1 * cnt1 == 0 and cnt2 * cnt2 == 0:
            ndf -= 1
            continue
        if cnt2 * cnt2 == 0 and e2sq == 0:
            assert sumw2 > 0
            e2sq = sumw2 / sum2
        var1 = sum2 * cnt2 - sum1 * e2sq
        var2 = var1 * var1 + 4.0 * sum2 * sum2 * cnt1 * e2sq
        while var1 * var1 + cnt1 == 0 or var1 + var2 == 0:
            sum1 += 1
            cnt1 += 1
            var1 = sum2 * cnt2 - sum1 * e2sq
            var2 = var1 * var1 + 4.0 * sum2 * sum2 * cnt1 * e2sq
        var2 = math.sqrt(var2)
        while var1 + var2 == 0:
            sum1 += 1
            cnt1 += 1
            var1 = sum2 * cnt2 - sum1 * e2sq
            var2 = math.sqrt(var1 * var1 + 4.0 * sum2 * sum2 * cnt1 * e2sq)
        probb = (var1 + var2) / (2.0 * sum2 * sum2)
        nexp1, nexp2 = probb * sum1, probb * sum2
        delta1, delta2 = cnt1 - nexp1, cnt2 - nexp2
        chi2 += delta1 * delta1 / nexp1
        if e2sq > 0:
            chi2 += delta2 * delta2 / e2sq
            temp1 = sum2 * e2sq / var2
            temp2 = 1.0 + (sum1 * e2sq - sum2 * cnt2) / var2
            temp2 = temp1 * temp1 * sum1 * probb * (1.0 - probb) + temp2 * temp2 * e2sq / 4.0
            # TMath::Sqrt of a negative number (p_hat > 1, possible with negative weights)
            # is NaN in C++.
            res[i] = -delta2 / math.sqrt(temp2) if temp2 >= 0 else math.nan
        else:
            res[i] = delta1 / math.sqrt(nexp1)
    return chi2, ndf, res


@pytest.mark.parametrize("case", [0, 1])
def test_reference_root_port_reproduces_the_published_example(case: int) -> None:
    # The references above are themselves checked against ROOT's published output.
    n, w, s2 = _root_example(case)
    full = BUILTIN_REFERENCE["cases"][case]["full_precision"]
    chi2, ndf, res = _uw_root_loop(n, w, s2)
    assert chi2 == pytest.approx(full["chi2"], abs=1e-6)
    assert ndf == 19
    assert stats.chi2.sf(chi2, ndf) == pytest.approx(full["pvalue"], rel=2e-6)
    # No special case is hit in this example (every bin has simulated content and error).
    assert _uw_formula(n, w, s2) == pytest.approx(full["chi2"], abs=1e-6)
    if case == 1:
        expected = BUILTIN_REFERENCE["cases"][1]["residuals_by_the_root_algorithm"]
        np.testing.assert_allclose(res, expected, atol=5e-5 + 1e-12)


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


def test_variance_entries_is_the_kish_size_of_the_squared_weights() -> None:
    from validator.stats.binned import variance_entries

    # equal weights: the number of events; one weight of 10 among 99 of 1: (199)^2 / 10099
    assert variance_entries([40 * 6.25], [40 * 6.25**2]) == pytest.approx([40.0])
    assert variance_entries([99 + 100.0], [99 + 1e4]) == pytest.approx([199.0**2 / 10099])
    assert variance_entries([0.0], [0.0]) == pytest.approx([0.0])  # no event: nothing known


def test_small_simulation_with_well_known_variances_keeps_its_asymptotics() -> None:
    from validator.stats.binned import MIN_VARIANCE_ENTRIES, small_simulation_reason

    p = np.array([0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05])
    n = np.round(200_000 * p)
    k = np.round(80_000 * p)  # a simulation of 80,000 events of weight 2.5: 0.4 x the data
    w, s2, s4 = 2.5 * k, 6.25 * k, 2.5**4 * k
    assert k.min() >= MIN_VARIANCE_ENTRIES
    for test in (chi2_uw, saturated):
        assert not test(n, w, s2).reliable  # without Σw⁴: smaller than the data, flagged
        assert test(n, w, s2, sim_sumw4=s4).reliable
    # a few heavy events in one bin: its variance rests on few entries, flagged again
    s2_heavy, s4_heavy = s2.copy(), s4.copy()
    s2_heavy[0] += 3 * 400.0**2
    s4_heavy[0] += 3 * 400.0**4
    why = small_simulation_reason(n.sum(), w, s2_heavy, s4_heavy, n)
    assert why is not None and "fewer effective entries" in why
    assert "a bin's variance rests on 3 effective entries" in why
    assert not chi2_uw(n, w, s2_heavy, sim_sumw4=s4_heavy).reliable


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
    # Gagunashvili's formula with the replacement written out: 27.5 / 57.
    filled = np.array([3.0, 7.5, 11.0, 27.5 / 57.0, 6.0])
    expected = _uw_formula(n, w, filled)
    assert res.statistic == pytest.approx(expected, rel=1e-12)
    assert res.statistic == pytest.approx(_uw_root_loop(n, w, s2)[0], rel=1e-12)
    assert res.ndf == 4
    assert res.pvalue == pytest.approx(stats.chi2.sf(expected, 4), rel=1e-10)
    assert res.details["n_bins_zero_sim_error_replaced"] == 1


def test_chi2_uw_root_adds_one_event_where_p_hat_vanishes() -> None:
    # First bin: no data and W*w_1 < N*s_1^2. ROOT adds one data event there and to N for
    # all later bins; in the first bin this equals Gagunashvili's formula for a histogram
    # with one event in bin 1.
    n = np.array([0.0, 40.0, 60.0, 30.0])
    w = np.array([0.2, 20.0, 30.0, 15.0])
    s2 = np.array([4.0, 10.0, 15.0, 7.5])
    assert w.sum() * w[0] < n.sum() * s2[0]
    res = chi2_uw(n, w, s2)
    assert res.details["root_increments"] == 1
    expected = _uw_formula(np.array([1.0, 40.0, 60.0, 30.0]), w, s2)
    assert res.statistic == pytest.approx(expected, rel=1e-12)
    assert res.statistic == pytest.approx(_uw_root_loop(n, w, s2)[0], rel=1e-12)
    assert res.pvalue == pytest.approx(stats.chi2.sf(expected, 3), rel=1e-10)


def test_chi2_uw_root_increment_in_later_bins_follows_the_root_loop() -> None:
    # Two such bins in the middle: N grows by one from each of them on, so bins before them
    # see N, bins between them N + 1, bins after them N + 2 (ROOT's order-dependent rule).
    n = np.array([40.0, 0.0, 60.0, 30.0, 0.0, 20.0])
    w = np.array([20.0, 0.2, 30.0, 15.0, 0.1, 10.0])
    s2 = np.array([10.0, 4.0, 15.0, 7.5, 3.0, 5.0])
    res = chi2_uw(n, w, s2)
    chi2, ndf, residuals = _uw_root_loop(n, w, s2)
    assert res.details["root_increments"] == 2
    assert res.statistic == pytest.approx(chi2, rel=1e-12)
    assert res.ndf == ndf == 5
    assert res.pvalue == pytest.approx(stats.chi2.sf(chi2, 5), rel=1e-10)
    np.testing.assert_allclose(res.residuals, residuals, rtol=1e-10)
    # The rule is order dependent: reversing the bins gives another statistic, again ROOT's.
    rev = chi2_uw(n[::-1], w[::-1], s2[::-1])
    assert rev.statistic == pytest.approx(_uw_root_loop(n[::-1], w[::-1], s2[::-1])[0], rel=1e-12)
    assert abs(rev.statistic - res.statistic) > 1e-6


def test_chi2_uw_negative_weight_bin_matches_the_formula() -> None:
    n = np.array([20.0, 35.0, 2.0, 40.0, 18.0])
    w = np.array([10.0, 18.0, -0.5, 21.0, 9.0])
    s2 = np.array([5.0, 9.0, 1.2, 10.0, 4.5])
    res = chi2_uw(n, w, s2)
    expected = _uw_formula(n, w, s2)
    assert res.statistic == pytest.approx(expected, rel=1e-12)
    assert res.pvalue == pytest.approx(stats.chi2.sf(expected, 4), rel=1e-10)
    np.testing.assert_allclose(res.residuals, _uw_root_loop(n, w, s2)[2], rtol=1e-10)
    # Still normalisation free with a negative bin (the formula is scale invariant).
    assert chi2_uw(n, 3 * w, 9 * s2).statistic == pytest.approx(expected, rel=1e-12)


def test_chi2_uw_matches_the_root_loop_on_random_histograms() -> None:
    # Random histograms with every special case: empty bins, bins without simulation,
    # negative and error-free simulated bins, bins where ROOT adds an event.
    rng = np.random.default_rng(17)
    n_checked = n_increments = 0
    for _ in range(300):
        size = int(rng.integers(2, 12))
        n = rng.poisson(rng.uniform(0.0, 30.0), size).astype(float)
        k = rng.poisson(rng.uniform(0.0, 30.0), size).astype(float)
        u = rng.choice([0.1, 0.5, 1.0, 3.0])
        w, s2 = u * k, u * u * k
        if rng.random() < 0.3:
            i = rng.integers(size)
            w[i], s2[i] = -rng.uniform(0.1, 2.0), rng.uniform(0.1, 3.0)
        if rng.random() < 0.2:
            s2[rng.integers(size)] = 0.0
        if rng.random() < 0.2:  # no data, cancelling weights: p_hat would vanish
            i = rng.integers(size)
            n[i], w[i], s2[i] = 0.0, 0.05 * u, u * u
        if not w.sum() > 0:
            continue  # a meaningless comparison (ROOT's loop need not even terminate)
        try:
            res = chi2_uw(n, w, s2)
        except ValueError:
            continue  # inputs ROOT rejects too (empty histogram, errorless empty bin)
        chi2, ndf, residuals = _uw_root_loop(n, w, s2)
        assert res.statistic == pytest.approx(chi2, rel=1e-9, abs=1e-12)
        assert res.ndf == ndf
        # (Residuals can be NaN, in both, where p_hat > 1 from a large negative bin.)
        np.testing.assert_allclose(res.residuals, residuals, rtol=1e-7, atol=1e-9)
        n_checked += 1
        n_increments += res.details["root_increments"] > 0
    assert n_checked > 200 and n_increments > 10


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


def test_chi2_uw_toys_agree_with_the_chi2_law_for_large_counts() -> None:
    rng = np.random.default_rng(5)
    p = np.array([0.04, 0.08, 0.15, 0.23, 0.2, 0.15, 0.1, 0.05])
    n = rng.poisson(4000 * p)
    k = rng.poisson(40000 * p)
    res = chi2_uw(n, 0.1 * k, 0.01 * k, n_toys=2000, rng=1)
    assert res.pvalue_method == "toys"
    assert res.n_toys == 2000
    assert res.reliable
    # Reference: Gagunashvili's X^2 written out, referred to chi2(7) by scipy. With 4000
    # data and 40000 simulated events the asymptotic law holds; 2000 toys resolve p to 0.011.
    x2 = _uw_formula(n, 0.1 * k, 0.01 * k)
    assert res.statistic == pytest.approx(x2, rel=1e-12)
    assert res.pvalue == pytest.approx(stats.chi2.sf(x2, 7), abs=0.04)
    again = chi2_uw(n, 0.1 * k, 0.01 * k, n_toys=2000, rng=1)
    assert again.pvalue == res.pvalue


_NULL_P = np.array([0.04, 0.08, 0.15, 0.23, 0.2, 0.15, 0.1, 0.05])


def _null_replicas(n_rep: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histograms drawn under H0: data ~ Poisson(2000 p); the simulation is a compound Poisson
    sum of 8000 expected events, 90 % of weight +1.2 and 10 % of weight -0.4 (NLO-like)."""
    rng = np.random.default_rng(seed)
    shape = (n_rep, _NULL_P.size)
    n = rng.poisson(2000 * _NULL_P, size=shape).astype(float)
    k_pos = rng.poisson(0.9 * 8000 * _NULL_P, size=shape)
    k_neg = rng.poisson(0.1 * 8000 * _NULL_P, size=shape)
    return n, 1.2 * k_pos - 0.4 * k_neg, 1.44 * k_pos + 0.16 * k_neg


# KS against U(0, 1) rejects a calibrated test with probability 1e-4; with fixed seeds the
# outcome is deterministic. With 1000 replicas a wrong ndf (7 +- 1) is rejected.
_KS_MIN_P = 1e-4


@pytest.mark.parametrize("test", [chi2_uw, saturated])
def test_asymptotic_pvalues_are_uniform_under_a_planted_null(test) -> None:
    n, w, s2 = _null_replicas(1000, seed=31)
    pvalues = np.array([test(*h).pvalue for h in zip(n, w, s2, strict=True)])
    assert stats.kstest(pvalues, "uniform").pvalue > _KS_MIN_P
    # ... and they are the chi2(7) law of the statistic computed independently.
    if test is chi2_uw:
        x2 = [_uw_formula(*h) for h in zip(n[:20], w[:20], s2[:20], strict=True)]
        np.testing.assert_allclose(pvalues[:20], stats.chi2.sf(x2, 7), rtol=1e-9)


@pytest.mark.parametrize("test", [chi2_uw, saturated])
def test_toy_pvalues_are_uniform_under_a_planted_null(test) -> None:
    n, w, s2 = _null_replicas(200, seed=32)
    pvalues = np.array(
        [test(*h, n_toys=99, rng=i).pvalue for i, h in enumerate(zip(n, w, s2, strict=True))]
    )
    # Monte Carlo p-values (1 + #)/(1 + 99) are on a grid of 0.01: uniform up to that.
    assert stats.kstest(pvalues, "uniform").pvalue > _KS_MIN_P
    assert np.all((pvalues >= 0.01) & (pvalues <= 1.0))


def test_chi2_uw_detects_a_planted_shape_difference() -> None:
    # Power: data from a tilted shape (+-15 % across the range). Under this alternative X^2
    # is about noncentral chi2(7, lam) with lam = n_h sum (q - p)^2 / p and
    # 1/n_h = 1/N_data + 1/N_sim,eff (16000 here): lam = 88.
    rng = np.random.default_rng(33)
    tilt = np.linspace(0.85, 1.15, _NULL_P.size)
    q = _NULL_P * tilt / np.sum(_NULL_P * tilt)
    n = rng.poisson(20000 * q).astype(float)
    k = rng.poisson(80000 * _NULL_P)
    res = chi2_uw(n, 0.25 * k, 0.0625 * k)
    x2 = _uw_formula(n, 0.25 * k, 0.0625 * k)
    assert res.statistic == pytest.approx(x2, rel=1e-12)
    assert res.pvalue == pytest.approx(stats.chi2.sf(x2, 7), rel=1e-9)
    lam = 16000 * np.sum((q - _NULL_P) ** 2 / _NULL_P)
    lo, hi = stats.ncx2.ppf([0.001, 0.999], 7, lam)
    assert lo < res.statistic < hi
    assert res.pvalue < 1e-6  # holds for any X^2 above lo


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


def _one_blas_thread() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a dependency: only a speed-up
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _minus_2_ln_lr(nu: np.ndarray, b: np.ndarray, n: np.ndarray, w: np.ndarray,
                   s2: np.ndarray) -> float:
    """-2 ln(L/L_sat) for n_i ~ Poisson(nu_i), w_i ~ Gauss(b_i, s2_i), written out here:
    sum 2 [nu - n + n ln(n/nu)] (Baker & Cousins, NIM 221 (1984) 437; n ln n = 0 at n = 0)
    + sum (b - w)^2 / s2."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(n > 0, n * np.log(n / nu), 0.0)
    return float(np.sum(2.0 * (nu - n + log_term)) + np.sum((b - w) ** 2 / s2))


def _joint_minimum(
    n: np.ndarray,
    w: np.ndarray,
    s2: np.ndarray,
    up: np.ndarray | None = None,
    down: np.ndarray | None = None,
) -> tuple[float, float]:
    """-2 ln(L/L_sat) minimised by scipy over (ln mu, theta, b) jointly: an independent
    reference for ``saturated`` (no analytic profiling). With ``up``/``down``, one shape
    variation normalised to the nominal total enters as ln f_i = a_i theta + c_i theta^2 for
    |theta| <= 1 (continued linearly beyond), a = (L+ - L-)/2, c = (L+ + L-)/2,
    L+- = ln(variation/nominal), with a unit Gaussian constraint theta^2. Returns
    (minimum, theta_hat)."""
    if up is None or down is None:
        a = c = np.zeros_like(w)
    else:
        l_up = np.log(up * w.sum() / up.sum() / w)
        l_dn = np.log(down * w.sum() / down.sum() / w)
        a, c = 0.5 * (l_up - l_dn), 0.5 * (l_up + l_dn)

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        t, b = x[1], x[2:]
        tc = np.clip(t, -1, 1)
        slope = a + 2 * c * tc
        m = np.exp(x[0] + a * tc + c * tc**2 + slope * (t - tc))
        resid = 2 * (m * b - n)
        grad = np.r_[resid.sum(), slope @ resid + 2 * t, 2 * (m - n / b) + 2 * (b - w) / s2]
        return _minus_2_ln_lr(m * b, b, n, w, s2) + t**2, grad

    x0 = np.r_[np.log(n.sum() / w.sum()), 0.0, np.clip(w, 1e-3, None)]
    bounds = [(None, None), (None, None) if up is not None else (0.0, 0.0)]
    bounds += [(1e-9, None)] * w.size
    # One BLAS thread: L-BFGS-B's many tiny BLAS calls slow down 30-fold on a busy machine
    # when OpenBLAS threads contend for the cores.
    with _one_blas_thread():
        best = optimize.minimize(
            f,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10000},
        )
    return float(best.fun), float(best.x[1])


@pytest.mark.parametrize("case", [0, 1])
def test_saturated_matches_joint_numerical_minimisation(case: int) -> None:
    n, w, s2 = _root_example(case)
    res = saturated(n, w, s2)
    assert res.statistic == pytest.approx(_joint_minimum(n, w, s2)[0], rel=1e-7)
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
    assert res.statistic == pytest.approx(_joint_minimum(n, w, s2)[0], rel=1e-6)
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
    # The mean-weight variance written out: sum(s2)/sum(w) = 27.5/57.
    filled = np.array([3.0, 7.5, 11.0, 27.5 / 57.0, 6.0])
    assert res.details["n_bins_zero_sim_error_replaced"] == 1
    assert res.statistic == pytest.approx(_joint_minimum(n, w, filled)[0], rel=1e-6)


def test_saturated_drops_empty_bins_and_flags_small_counts() -> None:
    n, w, s2 = _root_example(0)
    pad = np.zeros(3)
    res = saturated(np.r_[n, pad], np.r_[w, pad], np.r_[s2, pad])
    assert res.ndf == 19
    assert res.details["n_bins_dropped"] == 3
    assert res.statistic == pytest.approx(_joint_minimum(n, w, s2)[0], rel=1e-7)
    assert res.pvalue == pytest.approx(stats.chi2.sf(res.statistic, 19), rel=1e-12)
    assert not res.reliable
    assert "expected data count" in res.details["unreliable_reason"]


def test_saturated_is_normalisation_free() -> None:
    n, w, s2 = _root_example(1)
    q = _joint_minimum(n, w, s2)[0]
    for scale in (1e-3, 40.0, 1e4):
        res = saturated(n, scale * w, scale**2 * s2)
        assert res.statistic == pytest.approx(q, rel=1e-7)


def test_saturated_toys() -> None:
    rng = np.random.default_rng(21)
    p = np.array([0.04, 0.08, 0.15, 0.23, 0.2, 0.15, 0.1, 0.05])
    n = rng.poisson(4000 * p)
    k = rng.poisson(40000 * p)
    res = saturated(n, 0.1 * k, 0.01 * k, n_toys=2000, rng=3)
    assert res.pvalue_method == "toys"
    assert res.n_toys == 2000
    assert 1 / 2001 <= res.pvalue <= 1
    # Reference: the statistic from scipy's joint minimisation, referred to chi2(7).
    q = _joint_minimum(n, 0.1 * k, 0.01 * k)[0]
    assert res.statistic == pytest.approx(q, rel=1e-7)
    assert res.pvalue == pytest.approx(stats.chi2.sf(q, 7), abs=0.04)
    # The mean of the toy statistic is close to the asymptotic ndf.
    assert res.details["q_toys_mean"] == pytest.approx(7, abs=0.5)
    assert saturated(n, 0.1 * k, 0.01 * k, n_toys=2000, rng=3).pvalue == res.pvalue


def test_saturated_toys_detect_a_clear_mismatch() -> None:
    p = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    q = np.array([0.15, 0.2, 0.3, 0.2, 0.15])
    res = saturated(5000 * q, 1000 * p, 10 * p, n_toys=200, rng=1)
    # No toy reaches the observation: the chi2 law with the toys' scale says how far
    # beyond them (never below the analytic law), not the bound 1/(1 + n_toys)
    assert not res.pvalue_is_bound and res.pvalue < 1 / 201
    assert res.pvalue >= res.details["pvalue_asymptotic"]
    # asked to settle Holm's first threshold: the limit law puts the statistic far below it
    # (TAIL_SETTLES_FACTOR), so no toy is added to refine the bound (without a tail they
    # would run up to the bound's cap 5 x max_toys: tests/test_stats_toys.py)
    res = saturated(5000 * q, 1000 * p, 10 * p, n_toys=200, rng=1, max_toys=3200,
                    thresholds=(0.05, 0.05 / 1000))
    assert res.n_toys == 200 and res.details["n_toys_reaching"] == 0
    assert res.details["toys_stop"] == "settled"
    assert res.pvalue < 0.05 / 1000 / TAIL_SETTLES_FACTOR
    assert res.details["pvalue_from"] == "limit_law_tail"


def test_saturated_variations_absorb_a_modelled_shape_effect() -> None:
    rng = np.random.default_rng(4)
    p = np.diff(stats.expon.cdf(np.r_[np.linspace(0, 6, 15), np.inf], scale=2.0))
    tilt = np.exp(0.1 * np.linspace(-1, 1, p.size))
    k = rng.poisson(40000 * p)
    w, s2 = 0.5 * k, 0.25 * k
    n = rng.poisson(10000 * p * tilt / np.sum(p * tilt))
    plain = saturated(n, w, s2)
    with_syst = saturated(n, w, s2, variations={"tilt": (w * tilt, w / tilt)})
    q_plain = _joint_minimum(n, w, s2)[0]
    q_syst, theta_syst = _joint_minimum(n, w, s2, w * tilt, w / tilt)
    assert plain.statistic == pytest.approx(q_plain, rel=1e-7)
    assert with_syst.statistic == pytest.approx(q_syst, rel=1e-6)
    assert with_syst.details["theta_hat"]["tilt"] == pytest.approx(theta_syst, abs=1e-3)
    assert plain.pvalue < 1e-3
    assert with_syst.pvalue > 0.05
    assert with_syst.details["theta_hat"]["tilt"] == pytest.approx(1.0, abs=0.35)
    assert with_syst.ndf == plain.ndf
    # A variation equal to the nominal changes nothing.
    same = saturated(n, w, s2, variations={"none": (w, w)})
    assert same.statistic == pytest.approx(q_plain, rel=1e-7)
    # Toys with a variation agree with the chi2(14) law of the reference minimum.
    toys = saturated(n, w, s2, variations={"tilt": (w * tilt, w / tilt)}, n_toys=300, rng=2)
    assert toys.pvalue == pytest.approx(stats.chi2.sf(q_syst, 14), abs=0.12)


def test_saturated_variations_match_scipy_minimisation() -> None:
    n, w, s2 = _root_example(1)
    up = w * np.linspace(0.8, 1.2, w.size)
    down = w * np.linspace(1.1, 0.9, w.size)
    res = saturated(n, w, s2, variations={"s": (up, down)})
    q, theta = _joint_minimum(n, w, s2, up, down)
    assert res.statistic == pytest.approx(q, rel=1e-6)
    assert res.details["theta_hat"]["s"] == pytest.approx(theta, abs=1e-3)
    assert res.pvalue == pytest.approx(stats.chi2.sf(q, 19), rel=1e-5)


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


def test_toy_pvalue_counts_and_bounds_the_tail() -> None:
    rng = np.random.default_rng(3)
    toys = rng.chisquare(12, size=4000)
    # Inside the toys: the Monte Carlo p-value (1 + #>=) / (1 + n).
    p, info = toy_pvalue(15.0, toys)
    assert p == pytest.approx((1 + np.sum(toys >= 15.0)) / 4001)
    assert not info["pvalue_is_bound"]
    assert p == pytest.approx(stats.chi2.sf(15.0, 12), abs=0.02)
    # Failed toys count as extreme.
    assert toy_pvalue(15.0, toys, n_failed=10)[0] == pytest.approx(
        (11 + np.sum(toys >= 15.0)) / 4011
    )
    # Beyond every toy: the bound 1/(1 + n), not an extrapolation (the true p is 5e-12).
    p, info = toy_pvalue(80.0, toys)
    assert info["pvalue_is_bound"] and p == pytest.approx(1 / 4001)


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
    # beyond every toy: the chi2 law with the toys' scale says how strong, not a bound 1/201
    assert not res.pvalue_is_bound and res.details["pvalue_from"] == "limit_law_tail"
    assert res.pvalue < 1e-10 and res.details["n_toys_reaching"] == 0
    assert res.pvalue >= res.details["pvalue_asymptotic"]  # never below the analytic law
    assert stats.chi2.sf(res.statistic, res.ndf) < 1e-10
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
    sim_null, data_null = null_fit(n, w, s2)
    np.testing.assert_allclose(data_null.sum(axis=1), n.sum(axis=1), rtol=1e-8)
    np.testing.assert_allclose(data_null.sum(axis=0), n.sum(axis=0), rtol=1e-8)
    # data = a_i b_j theta: the ratio table has rank one (all its 2x2 log odds ratios vanish).
    lr = np.log(data_null / sim_null)
    np.testing.assert_allclose(lr[:-1, :-1] + lr[1:, 1:] - lr[:-1, 1:] - lr[1:, :-1], 0, atol=1e-8)
    # With a far larger simulation the common structure is the simulation itself.
    big_w, big_s2 = 1e4 * p, 1e-4 * p
    sim_big, data_big = null_fit(n, big_w, big_s2)
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


def test_chi2_uw_refuses_a_simulation_with_non_positive_total_weight() -> None:
    # an all-negative simulation once "matched perfectly" (X² = 0, p = 1)
    with pytest.raises(ValueError, match="total weight is -600"):
        chi2_uw([10, 20, 30], [-100.0, -200.0, -300.0], [1.0, 2.0, 3.0])


def _small_simulation_with_sparse_tail(tail_events: float) -> tuple:
    """A 10-bin histogram: simulation 0.4 x the data (weight 2.5) with 1000s of events per bin,
    but a last bin holding ``tail_events`` events."""
    from validator.stats.histogram import Hist

    k = np.array([8000, 9000, 9500, 9000, 8000, 7000, 6000, 5000, 4000, tail_events])
    n = np.round(k * 2.5 / 0.4)
    edges = (np.arange(11.0),)
    data = Hist(edges, n[None], n[None], count=n, sumw3=n, sumw4=n)
    sim = Hist(edges, (2.5 * k)[None], (6.25 * k)[None], count=k.astype(float),
               sumw3=2.5**3 * k, sumw4=2.5**4 * k)
    return data, sim


@pytest.mark.parametrize(("tail_events", "expect"), [(40.0, "merged"), (4000.0, "plain")])
def test_small_simulation_merges_a_sparse_tail_for_its_asymptotics(tail_events, expect):
    from validator.stages.compare import CompareOptions, ToyTargets, binned_tests

    data, sim = _small_simulation_with_sparse_tail(tail_events)
    out = binned_tests(data, sim, CompareOptions(), lambda name: np.random.default_rng(1),
                        ToyTargets((0.05, 1e-5)))
    for name in ("chi2_uw", "saturated"):
        res = out[name]
        assert res.pvalue_method == "asymptotic" and res.reliable
        if expect == "merged":  # the 40-event bin joins its neighbour: 9 bins, not 10
            assert res.details["n_groups_before_variance_merge"] == 10
            assert res.details["n_bins_used"] == 9
        else:
            assert "n_groups_before_variance_merge" not in res.details
            assert res.details["n_bins_used"] == 10


def test_small_simulation_with_too_many_sparse_bins_uses_toys():
    from validator.stages.compare import CompareOptions, ToyTargets, binned_tests
    from validator.stats.histogram import Hist

    # every bin has ~100 events: merging to 200 variance entries would halve the binning
    k = np.full(10, 100.0)
    n = np.round(k * 2.5 / 0.4)
    edges = (np.arange(11.0),)
    data = Hist(edges, n[None], n[None], count=n, sumw3=n, sumw4=n)
    sim = Hist(edges, (2.5 * k)[None], (6.25 * k)[None], count=k, sumw3=2.5**3 * k,
               sumw4=2.5**4 * k)
    out = binned_tests(data, sim, CompareOptions(small_sample_toys=50, max_toys=None),
                        lambda name: np.random.default_rng(1), ToyTargets())
    for name in ("chi2_uw", "saturated"):
        assert out[name].pvalue_method == "toys"
        assert out[name].details["n_bins_used"] == 10
