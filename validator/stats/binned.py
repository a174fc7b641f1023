"""Helpers shared by the binned tests: merging sparse bins and a binned effect size.

All functions are pure (arrays in, arrays or floats out) and vectorised with numpy.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "as_histograms",
    "effective_entries",
    "max_abs_ratio_deviation",
    "merge_histogram",
    "merge_sparse_bins",
    "sim_toys",
    "small_simulation_reason",
    "toy_pvalue",
]


def as_histograms(data_counts: ArrayLike, sim_sumw: ArrayLike, sim_sumw2: ArrayLike,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check and convert the three arrays every binned test takes.

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite values, or negative ``sim_sumw2``.
    """
    n = np.asarray(data_counts, dtype=float)
    w = np.asarray(sim_sumw, dtype=float)
    s2 = np.asarray(sim_sumw2, dtype=float)
    if not (n.shape == w.shape == s2.shape):
        raise ValueError(f"shapes differ: data {n.shape}, sim_sumw {w.shape}, sim_sumw2 {s2.shape}")
    if np.any(s2 < 0) or not np.all(np.isfinite(s2)):
        raise ValueError("sim_sumw2 must be finite and non-negative")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(w))):
        raise ValueError("data_counts and sim_sumw must be finite")
    return n, w, s2


def merge_sparse_bins(expected: ArrayLike, min_expected: float = 5.0) -> np.ndarray:
    """Group neighbouring bins so that every group has at least ``min_expected`` expected entries.

    Bins are visited in the given order and accumulated into the current group until its
    expected content reaches ``min_expected``; then a new group starts. A trailing group
    that stays below ``min_expected`` is merged into its predecessor. This is the usual
    rule of thumb for the asymptotic validity of Pearson's chi² (every expected count of
    at least 5; W. G. Cochran, "Some methods for strengthening the common chi² tests",
    Biometrics 10 (1954) 417), applied by merging adjacent bins as in the
    ``Chi2Test`` documentation of ROOT and in Gagunashvili, arXiv:physics/0605123.

    Parameters
    ----------
    expected:
        Expected content per bin, 1D (negative values count as zero). Pass ``array.ravel()``
        of a 2D table in the neighbour order wanted.
    min_expected:
        Minimum expected content of a group.

    Returns
    -------
    numpy.ndarray
        Integer group label per bin, starting at 0, non-decreasing, consecutive. If the
        total expected content is below ``min_expected``, every bin is in group 0.
    """
    exp = np.clip(np.asarray(expected, dtype=float).ravel(), 0.0, None)
    n = exp.size
    labels = np.zeros(n, dtype=np.int64)
    if n == 0:
        return labels
    group = 0
    acc = 0.0
    # A plain loop: the rule is sequential and the arrays are small (bins, not events).
    for i in range(n):
        labels[i] = group
        acc += exp[i]
        if acc >= min_expected and i < n - 1:
            group += 1
            acc = 0.0
    # Trailing group short of the threshold: merge into the predecessor.
    if acc < min_expected and group > 0:
        labels[labels == group] = group - 1
    return labels


def merge_histogram(values: ArrayLike, groups: ArrayLike) -> np.ndarray:
    """Sum bin contents per group.

    Parameters
    ----------
    values:
        Per-bin contents (counts, sums of weights or sums of squared weights), 1D, or with
        leading batch axes: the last axis is the bin axis.
    groups:
        Group label per bin, as returned by :func:`merge_sparse_bins`.

    Returns
    -------
    numpy.ndarray
        Summed contents, shape ``values.shape[:-1] + (n_groups,)``.
    """
    v = np.asarray(values, dtype=float)
    g = np.asarray(groups, dtype=np.int64).ravel()
    n_groups = int(g.max()) + 1 if g.size else 0
    if v.ndim == 1:
        return np.bincount(g, weights=v, minlength=n_groups)
    # Batched: one-hot matrix product keeps it vectorised over the leading axes.
    onehot = np.zeros((g.size, n_groups))
    onehot[np.arange(g.size), g] = 1.0
    return v @ onehot


def max_abs_ratio_deviation(data_counts: ArrayLike, sim_sumw: ArrayLike) -> float:
    """Largest relative deviation of data from the simulation scaled to the data total.

    ``max_i |n_i / (s w_i) - 1|`` with ``s = sum(n) / sum(w)``, over the bins where the
    simulation predicts a positive content (bins with no simulation are skipped). It does
    not shrink with the sample size, unlike a p-value.

    Parameters
    ----------
    data_counts:
        Data counts per bin.
    sim_sumw:
        Simulated sum of weights per bin.

    Returns
    -------
    float
        The deviation, or ``nan`` when no bin has positive simulation or either total is
        not positive.
    """
    n = np.asarray(data_counts, dtype=float).ravel()
    w = np.asarray(sim_sumw, dtype=float).ravel()
    tot_n, tot_w = n.sum(), w.sum()
    mask = w > 0
    if not mask.any() or tot_n <= 0 or tot_w <= 0:
        return float("nan")
    scaled = w[mask] * (tot_n / tot_w)
    return float(np.max(np.abs(n[mask] / scaled - 1.0)))


def sim_toys(
    expected_sumw: ArrayLike,
    sim_sumw: ArrayLike,
    sim_sumw2: ArrayLike,
    n_toys: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Pseudo-experiments of a weighted histogram: toy sums of weights and squared weights.

    Where a bin has positive sum of weights :math:`w` and squared weights :math:`s^2`, it is
    treated as :math:`m = w^2/s^2` effective events of equal weight :math:`u = s^2/w`
    (the scaled-Poisson approximation of a compound Poisson sum: Barlow & Beeston, Comput.
    Phys. Commun. 77 (1993) 219; Bohm & Zech, NIM A 748 (2014) 1): a toy draws
    :math:`k \sim \mathrm{Poisson}(\beta/u)` around the wanted mean :math:`\beta` and returns
    :math:`(u k, u^2 k)`. Unlike a Gaussian with fixed :math:`s^2`, this keeps the correlation
    between a bin's sum of weights and its estimated variance that the tests themselves see.
    A bin with no simulated event (:math:`w = s^2 = 0`) is treated the same way with the
    histogram's mean weight :math:`u = \sum s^2 / \sum w` (as ROOT's ``Chi2Test`` gives such a
    bin the variance of one event of mean weight). Other bins (:math:`w < 0`, or :math:`s^2 = 0`
    with :math:`w \ne 0`, or :math:`w = 0` with :math:`s^2 > 0`) get :math:`\beta + s z` with
    fixed :math:`s^2`.

    Parameters
    ----------
    expected_sumw:
        Mean of the toys per bin (e.g. the fitted simulated content), any shape.
    sim_sumw, sim_sumw2:
        Observed sums that define the effective weight per bin, same shape.
    n_toys:
        Number of toys (a leading axis of that length is added).
    rng:
        Random generator.

    Returns
    -------
    tuple of numpy.ndarray
        Toy ``sumw`` and ``sumw2``, each of shape ``(n_toys, *shape)``.
    """
    beta = np.asarray(expected_sumw, dtype=float)
    w = np.asarray(sim_sumw, dtype=float)
    s2 = np.asarray(sim_sumw2, dtype=float)
    shape = (n_toys, *w.shape)
    tot_w, tot_s2 = float(w.sum()), float(s2.sum())
    mean_u = tot_s2 / tot_w if tot_w > 0 and tot_s2 > 0 else 0.0
    positive = (w > 0) & (s2 > 0)
    empty = (w == 0) & (s2 == 0) & (mean_u > 0)
    scaled = positive | empty
    u = np.where(positive, s2 / np.where(positive, w, 1.0), np.where(empty, mean_u, 1.0))
    lam = np.where(scaled, np.clip(beta, 0.0, None) / u, 0.0)
    k = rng.poisson(np.broadcast_to(lam, shape)).astype(float)
    gauss = beta + np.sqrt(s2) * rng.standard_normal(shape)
    w_toy = np.where(scaled, u * k, gauss)
    s2_toy = np.where(scaled, u * u * k, np.broadcast_to(s2, shape))
    return w_toy, s2_toy


def effective_entries(sim_sumw: ArrayLike, sim_sumw2: ArrayLike) -> float:
    r"""Kish's effective number of entries of a weighted histogram, :math:`(\sum w)^2/\sum w^2`.

    L. Kish, "Survey Sampling", Wiley 1965; ROOT ``TH1::GetEffectiveEntries``. Returns
    ``inf`` when the sum of squared weights is zero (a prediction without uncertainty).
    """
    sw = float(np.sum(sim_sumw))
    sw2 = float(np.sum(sim_sumw2))
    return sw * sw / sw2 if sw2 > 0 else float("inf")


def small_simulation_reason(n_data: float, sim_sumw: ArrayLike, sim_sumw2: ArrayLike) -> str | None:
    """Why an asymptotic binned p-value is not trusted because the simulation is small.

    When the simulation has fewer effective entries than the data has events, its estimated
    per-bin variances are noisy and correlated with its contents, and the asymptotic
    chi² p-values of ``chi2_uw`` and ``saturated`` become anti-conservative (measured in
    ``tests/test_calibration_binned.py``; see also N. D. Gagunashvili, arXiv:1606.06591).
    Returns the reason, or ``None`` when the simulation is large enough.
    """
    n_eff = effective_entries(sim_sumw, sim_sumw2)
    if n_eff < n_data:
        return (
            f"simulation has fewer effective entries ({n_eff:.0f}) than data events "
            f"({n_data:.0f}): asymptotic p-value anti-conservative, use toys"
        )
    return None


def toy_pvalue(observed: float, toys: ArrayLike, n_failed: int = 0) -> tuple[float, dict]:
    r"""p-value of an observed statistic from pseudo-experiments (large values are extreme).

    :math:`p = (1 + \#\{t^* \ge t\} + n_\mathrm{failed}) / (1 + n_\mathrm{toys})` (Davison &
    Hinkley, "Bootstrap methods and their application", 1997, sec. 4.2), toys that could not
    be evaluated counting as extreme. When no toy reaches the observation this would stop at
    :math:`1/(1 + n_\mathrm{toys})`, too coarse for a multiple-testing correction over many
    tests; the tail is then extrapolated with a scaled :math:`\chi^2` matched to the toys'
    mean :math:`m` and variance :math:`v`, :math:`t \sim c\,\chi^2_k` with :math:`c = v/2m`,
    :math:`k = 2m^2/v` (F. E. Satterthwaite, Biometrics Bull. 2 (1946) 110; G. E. P. Box,
    Ann. Math. Statist. 25 (1954) 290), capped at :math:`1/(1 + n_\mathrm{toys})`.

    Parameters
    ----------
    observed:
        The observed statistic.
    toys:
        Statistics of the toys that could be evaluated.
    n_failed:
        Number of toys that could not be evaluated.

    Returns
    -------
    tuple
        The p-value and details to store (``pvalue_tail``: ``"extrapolated"`` or
        ``"empirical"``).
    """
    t = np.asarray(toys, dtype=float)
    n_toys = t.size + n_failed
    n_ge = int(np.sum(t >= observed)) + n_failed
    p_emp = (1 + n_ge) / (1 + n_toys)
    if n_ge > 0 or t.size < 2:
        return float(p_emp), {"pvalue_tail": "empirical"}
    m, v = float(t.mean()), float(t.var(ddof=1))
    if not (m > 0 and v > 0):
        return float(p_emp), {"pvalue_tail": "empirical"}
    scale, dof = v / (2.0 * m), 2.0 * m * m / v
    p_fit = float(stats.chi2.sf(observed / scale, dof))
    return min(p_fit, float(p_emp)), {
        "pvalue_tail": "extrapolated",
        "tail_fit_scale": scale,
        "tail_fit_dof": dof,
    }
