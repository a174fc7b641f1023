"""Multiple-testing summary: hand-computed Holm / Benjamini-Hochberg values, the binomial count,
and the grouping of significant tests into findings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from validator.results.summary import adjust_pvalues, findings, summarise


def test_holm_and_bh_by_hand():
    holm, bh = adjust_pvalues(np.array([0.01, 0.04, 0.03, np.nan]))
    # Holm: sorted 0.01*3, 0.03*2, 0.04*1 made monotone; BH: 0.01*3/1, 0.03*3/2, 0.04*3/3
    np.testing.assert_allclose(holm[:3], [0.03, 0.06, 0.06])
    np.testing.assert_allclose(bh[:3], [0.03, 0.04, 0.04])
    assert np.isnan(holm[3]) and np.isnan(bh[3])


def test_failures_against_the_binomial():
    p = np.linspace(0.0005, 1.0, 200)  # uniform grid: 10 below 0.05
    reliable = np.ones(200, bool)
    reliable[0] = False  # an unreliable test does not count
    s = summarise(p, reliable, alpha=0.05)
    assert s.n_reliable == 199 and s.n_failed == 9
    assert s.n_expected == pytest.approx(9.95)
    assert s.p_binomial == pytest.approx(stats.binom.sf(8, 199, 0.05))
    assert s.p_uniformity > 0.9


def _rec(method: str, x: str, y: str | None) -> dict:
    return {"category": "all", "method": method, "feature_x": x, "feature_y": y,
            "reliable": True, "p_holm": 1e-6}


def test_findings_separate_marginal_from_correlation_failures():
    records = [
        _rec("chi2_uw", "met", None),
        _rec("chi2_uw", "met", "ht"),  # plain 2D, met fails in 1D: explained
        _rec("dependence", "met", "njet"),  # dependence residual of met's 1D failure
        _rec("dependence", "iso1", "iso2"),  # marginals fine: a mismodelled correlation
        _rec("corr_pearson", "met", "pt"),  # a correlation test always counts
        _rec("chi2_uw", "a", "b"),  # plain 2D with no 1D failure
    ]
    found = findings(records)
    assert set(found.features) == {("all", "met")}
    assert set(found.correlations) == {("all", "iso1", "iso2"), ("all", "met", "pt")}
    assert set(found.pairs_from_marginals) == {("all", "met", "ht"), ("all", "met", "njet")}
    assert set(found.pairs_other) == {("all", "a", "b")}


def test_tests_that_did_not_run_are_counted_apart():
    p = np.array([0.01, 0.5, np.nan, np.nan])
    s = summarise(p, np.array([True, True, False, False]), alpha=0.05)
    assert s.n_not_run == 2 and s.n_reliable == 2 and s.n_failed == 1 and s.n_tests == 4
    # a test with no p-value is never significant
    assert findings([{**_rec("ks", "a", None), "p_holm": None}]).features == {}


def test_multivariate_tests_are_adjusted_as_their_own_family():
    from statsmodels.stats.multitest import multipletests

    from validator.results.summary import adjusted_by_family

    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 300)
    p[[5, 299]] = 0.02, 0.01  # two permutation p-values at their resolution
    kinds = ["1d"] * 298 + ["multivariate"] * 2
    kinds[5], kinds[298] = "multivariate", "2d"
    holm, bh = adjusted_by_family(p, kinds)
    mv = np.array([k == "multivariate" for k in kinds])
    np.testing.assert_allclose(holm[~mv], multipletests(p[~mv], method="holm")[1])
    np.testing.assert_allclose(bh[~mv], multipletests(p[~mv], method="fdr_bh")[1])
    np.testing.assert_allclose(holm[mv], multipletests(p[mv], method="holm")[1])
    assert holm[299] == pytest.approx(0.02)  # Holm over two tests, not over 300


def test_holm_and_bh_equal_statsmodels_multipletests():
    from statsmodels.stats.multitest import multipletests

    from validator.results.summary import benjamini_hochberg, holm

    rng = np.random.default_rng(12)
    samples = [rng.uniform(0, 1, 500), rng.uniform(0, 1e-3, 40), np.array([0.3]),
               np.round(rng.uniform(0, 0.2, 200), 3),  # many ties
               np.concatenate([rng.beta(0.2, 5, 100), [0.0, 1.0, 1.0]])]
    for p in samples:
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-15)
        np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1],
                                   rtol=1e-15)
