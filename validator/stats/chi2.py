"""Chi² comparison of an unweighted histogram (data) with a weighted one (simulation).

Implements N. D. Gagunashvili, "Comparison of weighted and unweighted histograms",
arXiv:physics/0605123 (2006), as implemented in ROOT's ``TH1::Chi2Test`` / ``TH1::Chi2TestX``
with option ``"UW"`` (hist/hist/src/TH1.cxx), including ROOT's treatment of its special cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from validator.stats.binned import (
    SimToyLaw,
    as_histograms,
    effective_entries,
    max_abs_ratio_deviation,
    optional_sums,
    small_simulation_reason,
)
from validator.stats.poisson_toys import poisson_toys
from validator.stats.result import GofResult
from validator.stats.toys import ToyOptions, check_toy_options, chi2_tail_law, run_toys

__all__ = ["chi2_uw"]

#: Expected data count below which the chi² asymptotics are not trusted (Cochran 1954).
MIN_EXPECTED = 5.0


def _uw_core(n: np.ndarray, w: np.ndarray, e2: np.ndarray) -> dict[str, np.ndarray]:
    """Gagunashvili's UW statistic, batched over the leading axis (shape ``(n_hist, n_bins)``).

    Follows ROOT's ``TH1::Chi2TestX`` "UW" branch case by case (see :func:`chi2_uw`). Bins
    empty in both histograms are masked out (``used``). Raises ``ValueError`` where ROOT reports
    an error.
    """
    tot_n = n.sum(axis=1, keepdims=True)
    tot_w = w.sum(axis=1, keepdims=True)
    tot_s2 = e2.sum(axis=1, keepdims=True)
    if np.any(tot_n == 0) or np.any(tot_w == 0):
        raise ValueError("one histogram is empty")
    used = ~((n == 0) & (w == 0))

    # Zero simulated content and zero error: ROOT's approximate error (one mean-weight event).
    zero_sim = used & (w == 0) & (e2 == 0)
    if zero_sim.any():
        if np.any(zero_sim & (tot_s2 <= 0)):
            raise ValueError("simulation has zero content and zero errors in a bin with data")
        e2 = np.where(zero_sim, tot_s2 / tot_w, e2)
    if np.any(used & (e2 == 0) & (w < 0)):
        raise ValueError("a bin has negative simulated content with zero error")

    # ROOT's sequential "add one data event" rule for bins where p_hat would vanish: the
    # first such bin (in order) gets one event and N grows by one from that bin on.
    inc = np.zeros_like(n)
    rows = np.arange(n.shape[0])
    while True:
        sum1_before = tot_n + np.cumsum(inc, axis=1) - inc
        var1 = tot_w * w - sum1_before * e2
        degenerate = used & (n == 0) & (inc == 0) & (var1 <= 0)
        has = degenerate.any(axis=1)
        if not has.any():
            break
        inc[rows[has], np.argmax(degenerate[has], axis=1)] = 1.0
    sum1 = tot_n + np.cumsum(inc, axis=1)
    cnt1 = n + inc

    var1 = tot_w * w - sum1 * e2
    var2 = np.sqrt(var1 * var1 + 4.0 * tot_w * tot_w * cnt1 * e2)
    with np.errstate(divide="ignore", invalid="ignore"):
        # p_hat = (var1 + var2) / (2 W^2), written without cancellation when var1 < 0.
        probb = np.where(
            var1 >= 0, (var1 + var2) / (2.0 * tot_w * tot_w), 2.0 * cnt1 * e2 / (var2 - var1)
        )
        nexp1 = probb * sum1
        nexp2 = probb * tot_w
        delta1 = cnt1 - nexp1
        delta2 = w - nexp2
        has_err = e2 > 0
        term1 = np.where(used, delta1 * delta1 / nexp1, 0.0)
        term2 = np.where(used & has_err, delta2 * delta2 / e2, 0.0)
        # Residuals (Gagunashvili; ROOT's res array).
        temp1 = tot_w * e2 / var2
        temp2 = 1.0 + (sum1 * e2 - tot_w * w) / var2
        var_res = temp1 * temp1 * sum1 * probb * (1.0 - probb) + temp2 * temp2 * e2 / 4.0
        res = np.where(has_err, -delta2 / np.sqrt(var_res), delta1 / np.sqrt(nexp1))
    return {
        "chi2": (term1 + term2).sum(axis=1),
        "used": used,
        "probb": np.where(used, probb, 0.0),
        "nexp1": nexp1,
        "cnt1": cnt1,
        "e2": e2,
        "has_err": has_err,
        "zero_sim": zero_sim,
        "inc": inc,
        "residuals": np.where(used, res, 0.0),
    }


def chi2_uw(
    data_counts: ArrayLike,
    sim_sumw: ArrayLike,
    sim_sumw2: ArrayLike,
    *,
    n_toys: int = 0,
    rng: np.random.Generator | int | None = None,
    max_toys: int | None = None,
    thresholds: Sequence[float] = (),
    coarse_above: float | None = None,
    sim_count: ArrayLike | None = None,
    sim_sumw3: ArrayLike | None = None,
    sim_sumw4: ArrayLike | None = None,
) -> GofResult:
    r"""Gagunashvili's chi² test of unweighted data against weighted simulation (ROOT "UW").

    The normalisations are free: only the shapes are compared. With :math:`n_i` the data
    counts, :math:`w_i` and :math:`s_i^2` the simulated sum of weights and of squared weights
    in bin :math:`i`, :math:`N = \sum n_i` and :math:`W = \sum w_i`, the maximum-likelihood
    estimate of the common bin probability is (Gagunashvili, arXiv:physics/0605123)

    .. math::

        \hat p_i = \frac{W w_i - N s_i^2
                   + \sqrt{(W w_i - N s_i^2)^2 + 4 W^2 s_i^2 n_i}}{2 W^2}

    and the statistic

    .. math::

        X^2 = \sum_i \frac{(n_i - N\hat p_i)^2}{N \hat p_i}
              + \sum_i \frac{(w_i - W \hat p_i)^2}{s_i^2}

    is asymptotically :math:`\chi^2` with (number of bins used) − 1 degrees of freedom.

    Special cases, as in ROOT's ``TH1::Chi2TestX`` "UW" branch (hist/hist/src/TH1.cxx):

    - a bin where data and simulation are both zero is dropped and the number of degrees of
      freedom reduced by one;
    - a bin where the simulation has zero content and zero error gets
      :math:`s_i^2 = \sum_j s_j^2 / W` (the variance of one event of mean weight);
    - a bin with :math:`s_i^2 = 0` but non-zero content (a theory prediction without error)
      contributes only the first sum;
    - a bin with :math:`n_i = 0` and :math:`W w_i \le N s_i^2` (where :math:`\hat p_i` would
      vanish) is given one data event, and :math:`N` is increased by one for that bin and
      every later bin. This ROOT artefact makes the result depend on the bin order; it is kept
      for compatibility and counted in ``details["root_increments"]``.

    Normalised residuals are those of ROOT (Gagunashvili, op. cit., and the ``res`` output of
    ``TH1::Chi2Test``): for :math:`s_i^2 > 0`, the sign-inverted residual of the simulation
    term; otherwise :math:`(n_i - N\hat p_i)/\sqrt{N\hat p_i}`. Dropped bins get residual 0.

    The asymptotic p-value is anti-conservative when the simulation has few effective events
    in some bins (its sum of weights is then far from Gaussian and correlated with its
    estimated variance); ``n_toys > 0`` calibrates it by a parametric bootstrap under the
    null: data toys :math:`n_i^* \sim \mathrm{Poisson}(N\hat p_i)`, simulation toys from
    :func:`validator.stats.binned.sim_toys` with mean :math:`W\hat p_i` (compound Poisson
    from each bin's weight moments when ``sim_count`` and ``sim_sumw3`` are given), and
    :math:`p = (1 + \#\{X^{2*} \ge X^2\})/(1 + n_\mathrm{toys})` (Davison & Hinkley,
    "Bootstrap methods and their application", 1997, sec. 4.2). When no toy reaches the
    observation that is a bound (``pvalue_is_bound``); with ``max_toys`` and ``thresholds``
    toys are added while a decision is open (:func:`validator.stats.toys.run_toys`).

    Parameters
    ----------
    data_counts:
        Unweighted data counts per bin (any shape; flattened in C order, which is the order
        that matters for the ROOT artefact above).
    sim_sumw:
        Simulated sum of weights per bin, same shape. Negative values (negative weights) are
        allowed.
    sim_sumw2:
        Simulated sum of squared weights per bin, same shape, non-negative.
    n_toys:
        If positive, the p-value is from this many pseudo-experiments; otherwise it is the
        asymptotic one (:math:`\chi^2` survival function, as ROOT's ``TMath::Prob``).
    rng:
        Random generator or seed for the toys.
    max_toys:
        With ``thresholds``: up to this many toys in all, added in doubling batches while a
        threshold lies inside the 99.9% Clopper-Pearson interval of the toy p-value, or no toy
        reached the observation and :math:`1/(1+n)` is above the smallest threshold
        (:func:`validator.stats.toys.run_toys`). ``None``: exactly ``n_toys``.
    thresholds:
        Significance levels at which the p-value will be judged (e.g. ``alpha`` and Holm's
        first threshold ``alpha/m``).
    coarse_above:
        p-values above this level (and above every threshold) may be coarse: the toys stop
        at the h-th toy reaching the observation (Besag & Clifford's sequential p-value,
        :func:`validator.stats.toys.sequential_stop`); decisions at that level and below
        are unchanged. ``None``: ``n_toys`` always.
    sim_count, sim_sumw3:
        Number of simulated events and sum of cubed weights per bin (same shape as
        ``sim_sumw``, both or neither): the toys then draw each bin as a compound Poisson sum
        with the bin's weight moments (:func:`validator.stats.binned.sim_toys`).
    sim_sumw4:
        Sum of fourth powers of the weights per bin (same shape): how precisely each bin's
        variance is known, for the reliability of the asymptotic p-value
        (:func:`validator.stats.binned.small_simulation_reason`).

    Returns
    -------
    GofResult
        ``method="chi2_uw"``, ``statistic`` :math:`X^2`, ``ndf``, ``residuals`` with the
        input's shape, ``effect_size`` = ``max_abs_ratio_dev`` (see
        :func:`validator.stats.binned.max_abs_ratio_deviation`). ``reliable`` is ``False`` when
        the p-value is asymptotic and a used bin has an expected data count
        :math:`N\hat p_i < 5`, or the simulation has fewer effective entries
        :math:`W^2/\sum s_i^2` than the data has events
        (:func:`validator.stats.binned.small_simulation_reason`).

    Raises
    ------
    ValueError
        On mismatched shapes, negative ``sim_sumw2``, an empty histogram, or a bin where ROOT
        reports an infinite discrepancy (data in a bin of a simulation with all errors zero).
    """
    n_in, w_in, s2_in = as_histograms(data_counts, sim_sumw, sim_sumw2)
    check_toy_options(n_toys, max_toys, thresholds)
    n_all, w_all, s2_all = n_in.ravel(), w_in.ravel(), s2_in.ravel()
    if not w_all.sum() > 0:  # the shape of a simulation with Σw <= 0 is not a distribution
        raise ValueError(f"the simulation's total weight is {w_all.sum():g} (must be > 0)")
    cnt_all, s3_all = optional_sums(n_in.shape, sim_count, sim_sumw3)

    core = _uw_core(n_all[None], w_all[None], s2_all[None])
    chi2 = float(core["chi2"][0])
    used = core["used"][0]
    n_used = int(used.sum())
    ndf = n_used - 1
    nexp1 = core["nexp1"][0][used]
    cnt1 = core["cnt1"][0][used]
    e2 = core["e2"][0][used]
    has_err = core["has_err"][0][used]
    w = w_all[used]
    residuals = core["residuals"][0].reshape(n_in.shape)

    n_small = int(np.sum(nexp1 < MIN_EXPECTED))
    n_data_lt1 = int(np.sum(cnt1 < 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        n_sim_neff_lt10 = int(np.sum(has_err & (w * w / e2 < 10)))
    details: dict[str, object] = {
        "n_bins_used": n_used,
        "n_bins_dropped": int(n_all.size - n_used),
        "n_bins_expected_lt5": n_small,
        "min_expected": float(nexp1.min()) if nexp1.size else float("nan"),
        "n_bins_data_lt1": n_data_lt1,
        "n_bins_sim_neff_lt10": n_sim_neff_lt10,
        # ROOT's igood: +1 a data bin with < 1 event, +2 a simulated bin with < 10 effective
        "igood": (1 if n_data_lt1 else 0) + (2 if n_sim_neff_lt10 else 0),
        "root_increments": int(core["inc"][0].sum()),
        "sim_effective_entries": effective_entries(w_all, s2_all),
        "n_bins_zero_sim_error_replaced": int(core["zero_sim"][0].sum()),
    }
    p_asym = float(stats.chi2.sf(chi2, ndf)) if ndf >= 1 else float("nan")
    reasons = []
    pvalue_is_bound = False
    n_toys_total = None
    if n_toys > 0:
        gen = np.random.default_rng(rng)
        probb = core["probb"][0]
        tot_n, tot_w = float(n_all.sum()), float(w_all.sum())

        def draw(size: int) -> np.ndarray:
            n_toy = poisson_toys(gen, tot_n * probb, size)
            w_toy, s2_toy = sim_law.draw(size, gen)
            # Toys with an empty histogram cannot be evaluated (vanishingly rare): count as >=.
            ok = (n_toy.sum(axis=1) > 0) & (w_toy.sum(axis=1) != 0)
            chi2_toy = np.full(size, np.nan)
            with np.errstate(all="ignore"):
                chi2_toy[ok] = _uw_core(n_toy[ok], w_toy[ok], s2_toy[ok])["chi2"]
            return chi2_toy

        sim_law = SimToyLaw(tot_w * probb, w_all, s2_all, sim_count=cnt_all, sim_sumw3=s3_all)
        options = ToyOptions(n_toys, max_toys, tuple(thresholds), coarse_above)
        law = chi2_tail_law(chi2, ndf,
                            p_asym)
        toys = run_toys(chi2, draw, options, tail=law)
        pvalue, pvalue_is_bound, n_toys_total = toys.pvalue, toys.pvalue_is_bound, toys.n_toys
        details.update(toys.details)
        details["toy_scheme"] = "compound_poisson" if cnt_all is not None else "scaled_poisson"
        details["chi2_toys_mean"] = float(toys.toys.mean()) if toys.toys.size else float("nan")
        pvalue_method = "toys"
        details["pvalue_asymptotic"] = p_asym
    else:
        pvalue = p_asym
        pvalue_method = "asymptotic"
        if n_small:
            reasons.append(f"{n_small} bin(s) with expected data count < {MIN_EXPECTED:g}")
        s4_all = None if sim_sumw4 is None else np.asarray(sim_sumw4, dtype=float).ravel()
        small_sim = small_simulation_reason(float(n_all.sum()), w_all, s2_all, s4_all, n_all)
        if small_sim:
            reasons.append(small_sim)
    if ndf < 1:
        reasons.append("fewer than two non-empty bins")
    if reasons:
        details["unreliable_reason"] = "; ".join(reasons)
    return GofResult(
        method="chi2_uw",
        statistic=chi2,
        pvalue=float(pvalue),
        ndf=ndf,
        effect_size=max_abs_ratio_deviation(n_all, w_all),
        effect_name="max_abs_ratio_dev",
        pvalue_method=pvalue_method,
        n_toys=n_toys_total,
        reliable=not reasons,
        residuals=residuals,
        details=details,
        pvalue_is_bound=pvalue_is_bound,
    )
