"""Summarise all tests of a run: multiple testing, observed vs expected failures, uniformity.

With hundreds of tests some p-values are small by chance. A reviewer asks: how many failures
were expected at ``alpha`` and how probable is the observed number (binomial), are the p-values
uniform as they should be under the null (Kolmogorov-Smirnov against U(0, 1)), and which tests
stay significant after a multiple-testing correction: Holm (1979, Scand. J. Stat. 6, 65; valid
under any dependence) and Benjamini-Hochberg (1995, JRSS B 57, 289; the false discovery rate).
Tests on one histogram are correlated (e.g. ``chi2_uw`` and ``saturated``), so the binomial and
uniformity figures are indicative, not exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class RunSummary:
    """Figures over all tests of a run.

    ``n_failed`` counts reliable tests with p < alpha; ``p_binomial`` is the probability of at
    least that many failures among ``n_reliable`` independent tests under the null.
    """

    n_tests: int
    n_reliable: int
    alpha: float
    n_failed: int
    n_expected: float
    p_binomial: float
    p_uniformity: float
    n_significant_holm: int
    n_significant_bh: int
    n_not_run: int = 0


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: the i-th smallest of m is ``max over j <= i of
    (m - j + 1) p_(j)``, at most 1 (S. Holm, Scand. J. Statist. 6 (1979) 65; as statsmodels'
    ``multipletests(method="holm")``, the reference in the tests)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.minimum(np.maximum.accumulate(p[order] * np.arange(m, 0, -1)), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: the i-th smallest of m is ``min over j >= i of
    m p_(j) / j``, at most 1 (Y. Benjamini and Y. Hochberg, JRSS B 57 (1995) 289; as
    statsmodels' ``multipletests(method="fdr_bh")``, the reference in the tests)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    raw = p[order] / (np.arange(1, m + 1) / m)
    adjusted = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def adjust_pvalues(pvalues: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Holm and Benjamini-Hochberg adjusted p-values (:func:`holm`,
    :func:`benjamini_hochberg`).

    NaN p-values stay NaN and do not count towards the number of tests.
    """
    p = np.asarray(pvalues, dtype=float)
    holm_p = np.full_like(p, np.nan)
    bh_p = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        clipped = np.clip(p[ok], 0.0, 1.0)
        holm_p[ok] = holm(clipped)
        bh_p[ok] = benjamini_hochberg(clipped)
    return holm_p, bh_p


#: Test kinds adjusted as a family of their own: a multivariate test is itself one omnibus
#: test of the whole input space (its permutation p-value resolves 1/(1 + n) ≈ 0.02, which
#: Holm over thousands of binned tests could never let through, however large the effect).
OWN_FAMILY_KINDS = ("multivariate",)


def adjusted_by_family(pvalues: np.ndarray, kinds: Sequence[str]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Holm and BH p-values, over the run's tests and, apart, over each kind of
    :data:`OWN_FAMILY_KINDS`."""
    kinds_arr = np.asarray(kinds, dtype=object)
    p_holm, p_bh = np.full(len(pvalues), np.nan), np.full(len(pvalues), np.nan)
    apart = np.isin(kinds_arr, OWN_FAMILY_KINDS)
    for family in [~apart, *(kinds_arr == k for k in OWN_FAMILY_KINDS)]:
        if family.any():
            p_holm[family], p_bh[family] = adjust_pvalues(pvalues[family])
    return p_holm, p_bh


def summarise(pvalues: np.ndarray, reliable: np.ndarray, alpha: float = 0.05,
              adjusted: tuple[np.ndarray, np.ndarray] | None = None) -> RunSummary:
    """Observed vs expected failures, p-value uniformity and adjusted significance.

    ``adjusted`` takes the (Holm, BH) p-values when the caller has them already. A test
    without a p-value (NaN: it could not run) is counted in ``n_not_run`` and nowhere else.
    """
    p = np.asarray(pvalues, dtype=float)
    rel = np.asarray(reliable, dtype=bool) & np.isfinite(p)
    holm, bh = adjusted if adjusted is not None else adjust_pvalues(p)
    n_rel = int(rel.sum())
    n_failed = int((p[rel] < alpha).sum())
    p_binom = float(stats.binom.sf(n_failed - 1, n_rel, alpha)) if n_rel else float("nan")
    p_unif = float(stats.kstest(p[rel], "uniform").pvalue) if n_rel >= 2 else float("nan")
    return RunSummary(
        n_tests=len(p),
        n_reliable=n_rel,
        alpha=alpha,
        n_failed=n_failed,
        n_expected=alpha * n_rel,
        p_binomial=p_binom,
        p_uniformity=p_unif,
        n_significant_holm=int(np.sum(rel & (holm < alpha))),
        n_significant_bh=int(np.sum(rel & (bh < alpha))),
        n_not_run=int(np.sum(~np.isfinite(p))),
    )


@dataclass(frozen=True)
class Findings:
    """What a run flags, after the Holm correction, grouped the way a reviewer reads it.

    ``features``: (category, feature) -> methods whose 1D test is significant.
    ``correlations``: (category, x, y) -> significant methods, for pairs whose correlation
    test (``corr_*``) is significant, or whose ``dependence`` test is while neither feature
    fails in 1D: the dependence between x and y is mismodelled.
    ``pairs_from_marginals``: (category, x, y) with x or y flagged in 1D whose significant
    tests are only plain 2D or ``dependence``: explained by the 1D failure (raking on fixed bins
    absorbs a marginal mismodelling only up to its shape *within* each bin, so a large 1D
    failure can leave a small dependence residual; a scale or shift changes no correlation).
    ``pairs_other``: the remaining pairs with a significant plain 2D test.
    ``taylor``: (node, x, y or None) -> methods, for the network's Taylor coefficients whose
    data and simulation means differ (``kind='taylor'``): the network responds to x (and y)
    differently in data.
    ``outputs``: (category, x, y or None) -> methods, for tests of a network output
    (``kind='output'``), alone or beside an input: an output is a function of every input, so
    its failures (and its pairs') follow from the inputs' and are listed apart.
    ``multivariate``: category -> methods, for the learned tests over every input at once
    (``kind='multivariate'``: c2st, nplm). evidently's rows (``kind='evidently'``) are outside
    the family (no Holm p-value) and never here.
    """

    features: dict[tuple[str, str], list[str]]
    correlations: dict[tuple[str, str, str], list[str]]
    pairs_from_marginals: dict[tuple[str, str, str], list[str]]
    pairs_other: dict[tuple[str, str, str], list[str]]
    taylor: dict[tuple[str, str, str | None], list[str]] = field(default_factory=dict)
    outputs: dict[tuple[str, str, str | None], list[str]] = field(default_factory=dict)
    multivariate: dict[str, list[str]] = field(default_factory=dict)  # category -> methods


def findings(tests: Iterable[Mapping[str, Any]], alpha: float = 0.05) -> Findings:
    """Group the significant tests (reliable, Holm-adjusted p < alpha) of a run.

    ``tests`` are rows of the ``tests`` table (mappings with ``category``, ``method``,
    ``feature_x``, ``feature_y``, ``reliable`` and ``p_holm``).
    """
    feats: dict[tuple[str, str], list[str]] = {}
    pairs: dict[tuple[str, str, str], list[str]] = {}
    taylor: dict[tuple[str, str, str | None], list[str]] = {}
    outputs: dict[tuple[str, str, str | None], list[str]] = {}
    multivariate: dict[str, list[str]] = {}
    for t in tests:
        p = t["p_holm"]
        if not (t["reliable"] and p is not None and np.isfinite(p) and p < alpha):
            continue
        y = t["feature_y"]
        if isinstance(y, float) and np.isnan(y):
            y = None
        if t.get("kind") in ("multivariate", "evidently"):  # every input at once / beside
            if t.get("kind") == "multivariate":
                multivariate.setdefault(t["category"], []).append(t["method"])
            continue
        if t.get("kind") == "taylor":
            taylor.setdefault((t.get("node") or "", t["feature_x"], y), []).append(t["method"])
        elif t.get("kind") == "output":
            outputs.setdefault((t["category"], t["feature_x"], y), []).append(t["method"])
        elif y is None:
            feats.setdefault((t["category"], t["feature_x"]), []).append(t["method"])
        else:
            pairs.setdefault((t["category"], t["feature_x"], y), []).append(t["method"])
    corr, from_marg, other = {}, {}, {}
    for key, methods in pairs.items():
        cat, x, y = key
        marginal_fails = (cat, x) in feats or (cat, y) in feats
        if any(m.startswith("corr") for m in methods) or (
                "dependence" in methods and not marginal_fails):
            corr[key] = methods
        elif marginal_fails:
            from_marg[key] = methods
        else:
            other[key] = methods
    return Findings(feats, corr, from_marg, other, taylor, outputs, multivariate)


#: The inclusive category (every event).
INCLUSIVE = "all"
#: Roles of a test in the run's verdict (:func:`verdict_roles`).
DECISIVE = "decisive"  # can flag a finding and fail a rule
STAT_ONLY = "stat_only"  # its histogram's systematics-aware test passes: covered, informational
OUTSIDE = "outside"  # beside the family (evidently's drift report): no Holm p-value
NOT_RUN = "not_run"  # no p-value (its reason in not_run_reason)
UNRELIABLE = "unreliable"  # too few events for its law: never a confident failure
#: The test with systematic uncertainties of a histogram (nuisance parameters profiled).
SYST_METHOD = "saturated_syst"
#: Shape tests of a histogram that know only statistical uncertainties: under systematics
#: they decide only beside a failing :data:`SYST_METHOD` of the same histogram (they add
#: "flagged by"); alone they are "stat. only". KS/AD, the correlations and ``dependence``
#: have no systematic treatment of their own (docs/rules.md).
STAT_ONLY_METHODS = frozenset({"chi2_uw", "saturated", "ks", "ad", "corr_pearson",
                               "corr_spearman", "dependence", "wasserstein_hist",
                               "wasserstein_weighted"})


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def verdict_roles(tests: Iterable[Mapping[str, Any]], alpha: float) -> list[str]:
    """The role of every test of a run in its verdict, in order (see the constants above).

    With systematics (a histogram with a :data:`SYST_METHOD` test that ran), the
    systematics decide: that test is decisive; the histogram's stat-only shape tests
    (:data:`STAT_ONLY_METHODS`) are decisive only when it is significant itself (reliable,
    Holm p < ``alpha``), and :data:`STAT_ONLY` otherwise. A Taylor coefficient of the audited
    network (kind ``taylor``) differs between data and simulation as its inputs'
    distributions do: it is :data:`STAT_ONLY` when every inclusive histogram of its inputs
    (the input, or both inputs and their pair) has a passing :data:`SYST_METHOD`. Without
    systematics every test that ran reliably is decisive.
    """
    rows = list(tests)

    def key(t: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        y = None if _missing(t.get("feature_y")) else t.get("feature_y")
        return t.get("category"), t.get("feature_x"), y

    syst_significant: dict[tuple[Any, Any, Any], bool] = {}
    for t in rows:
        if t.get("method") == SYST_METHOD and not _missing(t.get("pvalue")):
            p = t.get("p_holm")
            syst_significant[key(t)] = bool(t.get("reliable")) and not _missing(p) \
                and float(p) < alpha
    inclusive_syst = {(x, y): bad for (c, x, y), bad in syst_significant.items()
                      if c == INCLUSIVE}

    def network_covered(t: Mapping[str, Any]) -> bool:
        """A Taylor coefficient's data/simulation difference follows from its inputs'
        distributions: covered when every histogram of its inputs is covered."""
        x, y = t.get("feature_x"), None if _missing(t.get("feature_y")) else t["feature_y"]
        keys = [(x, None)] + ([(y, None), (x, y), (y, x)] if y is not None and y != x else [])
        known = [inclusive_syst[k] for k in keys if k in inclusive_syst]
        return bool(known) and not any(known)

    roles = []
    for t in rows:
        if t.get("kind") == "evidently":
            roles.append(OUTSIDE)
        elif _missing(t.get("pvalue")):
            roles.append(NOT_RUN)
        elif not t.get("reliable"):
            roles.append(UNRELIABLE)
        elif t.get("method") in STAT_ONLY_METHODS and key(t) in syst_significant \
                and not syst_significant[key(t)]:
            roles.append(STAT_ONLY)
        elif t.get("kind") == "taylor" and network_covered(t):
            roles.append(STAT_ONLY)
        else:
            roles.append(DECISIVE)
    return roles
