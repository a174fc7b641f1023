r"""Poisson likelihood-ratio test against the saturated model with simulation stat uncertainty.

The model for data counts :math:`n_i` given the simulated sum of weights :math:`w_i` and sum
of squared weights :math:`s_i^2` per bin is

.. math::

    n_i \sim \mathrm{Poisson}(\mu\, b_i), \qquad
    w_i \sim \mathrm{Gauss}(b_i, s_i^2),

with a free normalisation :math:`\mu` and one nuisance parameter per bin, the true
simulated content :math:`b_i` ("Barlow-Beeston lite": R. Barlow and C. Beeston, Comput. Phys.
Commun. 77 (1993) 219; J. S. Conway, "Incorporating nuisance parameters in likelihoods for
multibin analyses", arXiv:1103.0354). Writing :math:`b_i = \gamma_i w_i`, the
constraint :math:`(b_i - w_i)^2 / s_i^2 = (\gamma_i - 1)^2 / \sigma_i^2` with relative width
:math:`\sigma_i = s_i / w_i` is HistFactory's ``staterror`` with a Gaussian constraint
(K. Cranmer et al., CERN-OPEN-2012-016). The absolute form is used here because it
stays valid when a bin's sum of weights is zero or negative (NLO negative weights).

The per-bin nuisance parameters are profiled analytically (the likelihood equation in
:math:`b_i` is a quadratic, as in Conway), the normalisation numerically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

__all__ = ["saturated"]

#: Expected data count below which the chi² asymptotics are not trusted.
MIN_EXPECTED = 5.0
#: Relative floor (times the mean absolute simulated content per bin) for a prediction that
#: would otherwise be zero in a bin with data and no simulation uncertainty.
_PRED_FLOOR_REL = 1e-9


def _profile_b(
    mu: np.ndarray, n: np.ndarray, w: np.ndarray, s2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r"""Conditional ML estimate of the true simulated content :math:`b_i` given :math:`\mu`.

    Stationarity of :math:`-2\ln L_i = 2(\mu b - n \ln \mu b) + (b - w)^2/s^2` in :math:`b`
    gives :math:`b^2 + (\mu s^2 - w) b - n s^2 = 0` (as in Conway, arXiv:1103.0354,
    in absolute units), whose non-negative root is

    .. math:: b = \tfrac12\left(a + \sqrt{a^2 + 4 n s^2}\right), \quad a = w - \mu s^2,

    evaluated as :math:`2 n s^2 / (\sqrt{a^2 + 4 n s^2} - a)` for :math:`a < 0` to avoid
    cancellation. For :math:`s^2 = 0` it reduces to :math:`b = \max(w, 0)`.

    Returns
    -------
    tuple of numpy.ndarray
        ``b`` and ``r = sqrt(a^2 + 4 n s^2)`` (used for the derivative).
    """
    a = w - mu * s2
    r = np.sqrt(a * a + 4.0 * n * s2)
    with np.errstate(divide="ignore", invalid="ignore"):
        neg = 2.0 * n * s2 / (r - a)
    b = np.where(a >= 0, 0.5 * (a + r), np.where(r - a > 0, neg, 0.0))
    return b, r


def _q_terms(
    mu: np.ndarray, b: np.ndarray, n: np.ndarray, w: np.ndarray, s2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-bin Poisson deviance and constraint terms of :math:`-2\ln(L/L_\mathrm{sat})`.

    Poisson deviance (Baker & Cousins, NIM 221 (1984) 437):
    :math:`2[\nu - n + n\ln(n/\nu)]` with :math:`\nu = \mu b` (the :math:`n\ln n` term is 0 for
    :math:`n = 0`); constraint :math:`(b - w)^2 / s^2` (0 where :math:`s^2 = 0`, where
    :math:`b = w`).
    """
    nu = mu * b
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(n > 0, n * np.log(n / nu), 0.0)
        dev = 2.0 * (nu - n + log_term)
        con = np.where(s2 > 0, (b - w) ** 2 / s2, 0.0)
    return dev, con


def _fit_mu(
    n: np.ndarray,
    w: np.ndarray,
    s2: np.ndarray,
    b_floor: float,
    max_iter: int = 200,
    tol: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Profile the normalisation, vectorised over the leading axis (one fit per row).

    With :math:`u = \ln\mu` and the :math:`b_i` profiled, the envelope theorem gives
    :math:`\partial q/\partial u = 2(\sum_i \nu_i - N)` and
    :math:`\partial^2 q/\partial u^2 = 2\sum_i \nu_i (1 - \mu s_i^2 / r_i)`. The root of the
    first derivative is found by Newton's method safeguarded by bisection on a bracket
    (Press et al., Numerical Recipes, 3rd ed., sec. 9.4, ``rtsafe``).

    Parameters
    ----------
    n, w, s2:
        Arrays of shape ``(n_fits, n_bins)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``mu`` of shape ``(n_fits,)`` and ``b`` of shape ``(n_fits, n_bins)``.
    """
    tot_n = n.sum(axis=1)
    w_pos = np.clip(w, 0.0, None).sum(axis=1)
    w_pos = np.where(w_pos > 0, w_pos, 1.0)
    empty = tot_n <= 0
    tot_n_safe = np.where(empty, 1.0, tot_n)

    def score(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mu = np.exp(u)[:, None]
        b, r = _profile_b(mu, n, w, s2)
        b = np.maximum(b, np.where(n > 0, b_floor, 0.0))
        nu = mu * b
        with np.errstate(divide="ignore", invalid="ignore"):
            dlog = np.where(r > 0, 1.0 - mu * s2 / r, 1.0)
        g = nu.sum(axis=1) - tot_n_safe
        h = (nu * dlog).sum(axis=1)
        return g, h, b

    u0 = np.log(tot_n_safe / w_pos)
    lo = u0 - 1.0
    hi = u0 + 1.0
    for _ in range(64):
        g_lo, _, _ = score(lo)
        bad = g_lo > 0
        if not bad.any():
            break
        lo = np.where(bad, lo - 2.0 * (u0 - lo), lo)
    for _ in range(64):
        g_hi, _, _ = score(hi)
        bad = g_hi < 0
        if not bad.any():
            break
        hi = np.where(bad, hi + 2.0 * (hi - u0), hi)
    else:
        raise ValueError("cannot bracket the normalisation: no bin has positive simulation")

    u = u0.copy()
    for _ in range(max_iter):
        g, h, _ = score(u)
        lo = np.where(g < 0, u, lo)
        hi = np.where(g > 0, u, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            u_new = u - g / h
        outside = ~((u_new > lo) & (u_new < hi)) | ~(h > 0) | ~np.isfinite(u_new)
        u_new = np.where(outside, 0.5 * (lo + hi), u_new)
        u_new = np.where(g == 0, u, u_new)
        step = np.abs(u_new - u)
        u = u_new
        if np.all((step < tol) | (hi - lo < tol)):
            break
    mu = np.exp(u)
    _, _, b = score(u)
    # No data at all: the likelihood is maximised at mu -> 0, where b -> max(w, 0).
    mu = np.where(empty, 0.0, mu)
    b = np.where(empty[:, None], np.clip(w, 0.0, None), b)
    return mu, b


def _fill_empty_sim_error(w: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give bins with no simulated event the variance of one event of mean weight.

    A bin with zero content and zero error would make the simulation's prediction exactly 0;
    as ROOT's ``TH1::Chi2TestX`` "UW" branch does, it gets :math:`s^2 = \\sum s_j^2/\\sum w_j`
    (batched over the leading axis). Returns the new ``s2`` and the mask of replaced bins.
    """
    tot_w = w.sum(axis=1, keepdims=True)
    tot_s2 = s2.sum(axis=1, keepdims=True)
    zero = (w == 0) & (s2 == 0) & (tot_s2 > 0) & (tot_w > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(zero, tot_s2 / tot_w, s2), zero


def _statistic(
    n: np.ndarray, w: np.ndarray, s2: np.ndarray, b_floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit and return ``q``, ``mu``, ``b``, deviance and constraint terms (batched).

    ``s2`` must already have empty-simulation bins filled (:func:`_fill_empty_sim_error`).
    """
    mu, b = _fit_mu(n, w, s2, b_floor)
    dev, con = _q_terms(mu[:, None], b, n, w, s2)
    return dev.sum(axis=1) + con.sum(axis=1), mu, b, dev, con


def _log_shift(nominal: np.ndarray, varied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ln(varied/nominal)`` per bin, 0 (and flagged) where either is not positive."""
    ok = (nominal > 0) & (varied > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, np.log(np.where(ok, varied / nominal, 1.0)), 0.0), ~ok


def _interp(theta: np.ndarray, l_up: np.ndarray, l_dn: np.ndarray) -> tuple[np.ndarray, ...]:
    r"""Log of the multiplicative effect of nuisance parameters, and its derivatives.

    For one parameter with :math:`L_\pm = \ln(\text{variation}_\pm/\text{nominal})` per bin,
    :math:`\ln f(\theta) = a\theta + c\theta^2` for :math:`|\theta| \le 1` with
    :math:`a = (L_+ - L_-)/2`, :math:`c = (L_+ + L_-)/2` (so :math:`f(\pm1)` is the variation),
    continued linearly (in the log) beyond :math:`|\theta| = 1`. This is smooth (C¹) and
    keeps predictions positive, like HistFactory's polynomial-exponential interpolation
    (K. Cranmer et al., CERN-OPEN-2012-016; pyhf ``code4``), but simpler.

    Parameters
    ----------
    theta:
        Shape ``(n_fits, K)``.
    l_up, l_dn:
        Shape ``(K, n_bins)``.

    Returns
    -------
    tuple of numpy.ndarray
        Summed ``ln f`` per bin ``(n_fits, n_bins)``, first and second derivatives
        ``(n_fits, K, n_bins)``.
    """
    a = 0.5 * (l_up - l_dn)
    c = 0.5 * (l_up + l_dn)
    t = theta[:, :, None]
    inside = np.abs(t) <= 1.0
    tc = np.clip(t, -1.0, 1.0)
    lnf_in = a * tc + c * tc * tc
    slope = a + 2.0 * c * tc
    lnf = np.where(inside, lnf_in, lnf_in + slope * (t - tc))
    d2 = np.where(inside, 2.0 * c, 0.0)
    return lnf.sum(axis=1), slope, d2


def _fit_with_variations(
    n: np.ndarray,
    w: np.ndarray,
    s2: np.ndarray,
    l_up: np.ndarray,
    l_dn: np.ndarray,
    theta0: np.ndarray,
    b_floor: float,
    u_start: np.ndarray,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Fit normalisation, per-bin :math:`b_i` and systematic parameters (batched).

    The per-bin rate multiplier is :math:`m_i = \mu f_i(\boldsymbol\theta)`; given it, every
    :math:`b_i` is profiled analytically (:func:`_profile_b` with :math:`\mu \to m_i`). The
    remaining parameters :math:`x = (\ln\mu, \boldsymbol\theta)` are fitted by Newton's
    method with a backtracking (Armijo) line search (J. Nocedal and S. J. Wright, "Numerical
    Optimization", 2nd ed., 2006, ch. 3), vectorised over fits. With
    :math:`\eta_i = \ln m_i`, the envelope theorem gives
    :math:`\partial q/\partial\eta_i = 2(\nu_i - n_i)` and
    :math:`\partial^2 q/\partial\eta_i^2 = 2\nu_i(1 - m_i s_i^2/r_i)` (see :func:`_fit_mu`),
    so the gradient and Hessian follow by the chain rule through :func:`_interp`; the
    constraints add :math:`(\theta_k - \theta_{0k})^2`.

    Parameters
    ----------
    n, w, s2:
        Shape ``(n_fits, n_bins)``.
    l_up, l_dn:
        Shape ``(K, n_bins)``.
    theta0:
        Constraint centres, shape ``(n_fits, K)``.
    u_start:
        Starting :math:`\ln\mu`, shape ``(n_fits,)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``q`` ``(n_fits,)`` (the saturated reference is 0), multipliers ``m`` and ``b``
        ``(n_fits, n_bins)``, ``theta`` ``(n_fits, K)``.
    """
    n_fit, n_par = theta0.shape

    def evaluate(x: np.ndarray, derivatives: bool) -> tuple[np.ndarray, ...]:
        theta = x[:, 1:]
        lnf, d1, d2 = _interp(theta, l_up, l_dn)
        m = np.exp(x[:, :1] + lnf)
        b, r = _profile_b(m, n, w, s2)
        b = np.maximum(b, np.where(n > 0, b_floor, 0.0))
        dev, con = _q_terms(m, b, n, w, s2)
        q = dev.sum(axis=1) + con.sum(axis=1) + np.sum((theta - theta0) ** 2, axis=1)
        if not derivatives:
            return (q,)
        nu = m * b
        resid = nu - n
        with np.errstate(divide="ignore", invalid="ignore"):
            curv = nu * np.where(r > 0, 1.0 - m * s2 / r, 1.0)
        # d(eta_i)/dx: 1 for ln(mu), d1 for theta.
        jac = np.concatenate([np.ones((n_fit, 1, n.shape[1])), d1], axis=1)
        grad = 2.0 * np.einsum("fpb,fb->fp", jac, resid)
        grad[:, 1:] += 2.0 * (theta - theta0)
        hess = 2.0 * np.einsum("fpb,fb,fqb->fpq", jac, curv, jac)
        diag = 2.0 * np.einsum("fkb,fb->fk", d2, resid) + 2.0
        hess[:, np.arange(1, n_par + 1), np.arange(1, n_par + 1)] += diag
        return q, grad, hess, m, b

    x = np.concatenate([u_start[:, None], theta0], axis=1)
    for _ in range(max_iter):
        q, grad, hess, _, _ = evaluate(x, True)
        try:
            step = np.linalg.solve(hess, -grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.full_like(grad, np.nan)
        slope = np.sum(grad * step, axis=1)
        bad = ~np.all(np.isfinite(step), axis=1) | ~(slope < 0)
        if bad.any():
            # Not a descent direction: scaled steepest descent for those fits.
            scale = np.abs(np.diagonal(hess, axis1=1, axis2=2)) + 1.0
            step[bad] = -grad[bad] / scale[bad]
            slope = np.sum(grad * step, axis=1)
        alpha = np.ones(n_fit)
        todo = np.ones(n_fit, dtype=bool)
        for _ in range(40):
            q_new = evaluate(x + alpha[:, None] * step, False)[0]
            ok = q_new <= q + 1e-4 * alpha * slope
            todo &= ~ok
            if not todo.any():
                break
            alpha = np.where(todo, 0.5 * alpha, alpha)
        alpha = np.where(todo, 0.0, alpha)
        x = x + alpha[:, None] * step
        if np.all((np.max(np.abs(alpha[:, None] * step), axis=1) < tol) | (alpha == 0)):
            break
    q, _, _, m, b = evaluate(x, True)
    return q, m, b, x[:, 1:]


def saturated(
    data_counts: ArrayLike,
    sim_sumw: ArrayLike,
    sim_sumw2: ArrayLike,
    *,
    n_toys: int = 0,
    rng: np.random.Generator | int | None = None,
    variations: Mapping[str, tuple[ArrayLike, ArrayLike]] | None = None,
    max_toys: int | None = None,
    thresholds: Sequence[float] = (),
    coarse_above: float | None = None,
    sim_count: ArrayLike | None = None,
    sim_sumw3: ArrayLike | None = None,
    sim_sumw4: ArrayLike | None = None,
) -> GofResult:
    r"""Likelihood-ratio test of the data against the saturated model (Barlow-Beeston lite).

    The statistic is

    .. math::

        q = -2 \ln \frac{L(\hat\mu, \hat{\boldsymbol b})}{L_\mathrm{sat}}
          = \sum_i 2\left[\hat\nu_i - n_i + n_i \ln\frac{n_i}{\hat\nu_i}\right]
            + \sum_i \frac{(\hat b_i - w_i)^2}{s_i^2},
        \qquad \hat\nu_i = \hat\mu \hat b_i,

    where the saturated model has :math:`\nu_i = n_i` and :math:`b_i = w_i` (S. Baker and
    R. D. Cousins, NIM 221 (1984) 437). With 2 × bins observations and bins + 1 parameters it
    is asymptotically :math:`\chi^2` with bins − 1 degrees of freedom (Wilks). When
    :math:`s_i^2 \to 0` it is the Baker-Cousins G statistic with the simulation normalised to
    the data total.

    Special cases: a bin empty in both histograms is dropped (one degree of freedom less), as
    in ROOT's ``TH1::Chi2Test``; a bin with no simulated event (zero sum of weights and of
    squared weights) gets the variance of one event of mean weight,
    :math:`s_i^2 = \sum_j s_j^2 / \sum_j w_j`, as ROOT's "UW" test does; a bin with negative
    sum of weights needs no special treatment (:math:`b_i \ge 0` is profiled); only a bin with
    data, non-positive sum of weights and zero uncertainty has its prediction clipped at a
    small positive value (reported in ``details``).

    The asymptotic p-value is anti-conservative when some bins hold few effective simulated
    events or events of very different weights (the estimated :math:`s_i^2` is then noisy and
    correlated with :math:`w_i`; see N. D. Gagunashvili, "Tests for comparing weighted
    histograms. Review and improvements", arXiv:1606.06591); use toys there.

    Parameters
    ----------
    data_counts:
        Data counts per bin (any shape, flattened).
    sim_sumw:
        Simulated sum of weights per bin; may be zero or negative (negative weights).
    sim_sumw2:
        Simulated sum of squared weights per bin (non-negative).
    n_toys:
        If positive, the p-value is from this many pseudo-experiments (parametric bootstrap):
        data toys :math:`n_i^* \sim \mathrm{Poisson}(\hat\mu \hat b_i)`, simulation toys
        :math:`(w_i^*, s_i^{2*})` with mean :math:`\hat b_i` from
        :func:`validator.stats.binned.sim_toys` (scaled Poisson, or compound Poisson from
        each bin's weight moments with ``sim_count`` and ``sim_sumw3``, so that the toy's
        estimated variance fluctuates with its content as the real one does), each refitted;
        :math:`p = (1 + \#\{q^* \ge q\}) / (1 + n_\mathrm{toys})` (Davison & Hinkley,
        "Bootstrap methods and their application", 1997, sec. 4.2); when no toy reaches the
        observation that is a bound (``pvalue_is_bound``).
        Otherwise the asymptotic :math:`\chi^2` p-value.
    rng:
        Random generator or seed for the toys.
    variations:
        Systematic variations as constrained nuisance parameters: name -> ``(up, down)``
        simulated sums of weights per bin (same shape as ``sim_sumw``), e.g. the histogram
        filled with an up and a down weight column. Each is normalised to the nominal total
        (the normalisation is free anyway, so only its shape matters) and enters as a per-bin
        factor :math:`f_i(\theta_k)` (:func:`_interp`: :math:`f = \text{up}/\text{nominal}`
        at :math:`\theta_k = 1`, :math:`\text{down}/\text{nominal}` at :math:`-1`) with a
        unit Gaussian constraint :math:`\theta_k^2` added to :math:`q` (HistFactory
        ``histosys``). Each constrained parameter brings its own auxiliary measurement, so the
        degrees of freedom stay bins − 1. Bins where a variation or the nominal is not
        positive get no effect from it (counted in ``details``). Toys also draw the
        constraint centres :math:`\theta_{0k}^* \sim
        \mathrm{Gauss}(\hat\theta_k, 1)`.
    max_toys, thresholds:
        Adaptive toys: up to ``max_toys`` in all, added in doubling batches while a threshold
        lies inside the 99.9% Clopper-Pearson interval of the toy p-value or the p-value is a
        bound above the smallest threshold (:func:`validator.stats.toys.run_toys`).
        ``None`` / ``()``: exactly ``n_toys``.
    coarse_above:
        p-values above this level (and above every threshold) may be coarse: the toys stop
        at the h-th toy reaching the observation (Besag & Clifford's sequential p-value,
        :func:`validator.stats.toys.sequential_stop`); decisions at that level and below
        are unchanged. ``None``: ``n_toys`` always.
    sim_count, sim_sumw3:
        Number of simulated events and sum of cubed weights per bin (same shape as
        ``sim_sumw``, both or neither), for compound-Poisson toys.
    sim_sumw4:
        Sum of fourth powers of the weights per bin: how precisely each bin's variance is
        known, for the reliability of the asymptotic p-value.

    Returns
    -------
    GofResult
        ``method="saturated"``; ``residuals`` are signed deviance residuals
        :math:`\mathrm{sign}(n_i - \hat\nu_i)\sqrt{d_i + c_i}` (deviance plus constraint term,
        so their squares sum to :math:`q`); ``effect_size`` is ``max_abs_ratio_dev``.
        ``details`` hold the fitted normalisation, the number of bins with negative sum of
        weights and of clipped predictions. In asymptotic mode ``reliable`` is ``False`` when a
        bin's fitted expected count is below 5 or the simulation has fewer effective entries
        than the data has events, unless ``sim_sumw4`` shows every bin's variance known well
        enough (:func:`validator.stats.binned.small_simulation_reason`).

    Raises
    ------
    ValueError
        On mismatched shapes, negative or non-finite ``sim_sumw2``, or an empty histogram.
    """
    n_in, w_in, s2_in = as_histograms(data_counts, sim_sumw, sim_sumw2)
    if np.any(n_in < 0):
        raise ValueError("data_counts must be non-negative")
    n_all, w_all, s2_all = n_in.ravel(), w_in.ravel(), s2_in.ravel()
    if n_all.sum() <= 0 or w_all.sum() <= 0:
        raise ValueError("one histogram is empty (or has non-positive total weight)")
    check_toy_options(n_toys, max_toys, thresholds)
    cnt_all, s3_all = optional_sums(n_in.shape, sim_count, sim_sumw3)

    # As in ROOT's Chi2Test: a bin empty in both histograms carries no information.
    used = ~((n_all == 0) & (w_all == 0))
    n, w, s2 = n_all[used], w_all[used], s2_all[used]
    n_bins = int(used.sum())
    ndf = n_bins - 1
    b_floor = _PRED_FLOOR_REL * float(np.abs(w).mean())
    s2_raw = s2
    s2_fill, replaced = _fill_empty_sim_error(w[None], s2[None])
    s2 = s2_fill[0]

    names = list(variations or {})
    l_up = np.zeros((len(names), n_bins))
    l_dn = np.zeros((len(names), n_bins))
    n_bad_var = 0
    tot_w = float(w.sum())
    for k, name in enumerate(names):
        up, down = (np.asarray(v, dtype=float) for v in variations[name])  # type: ignore[index]
        if up.shape != n_in.shape or down.shape != n_in.shape:
            raise ValueError(f"variation {name!r}: shape differs from the nominal {n_in.shape}")
        if not (np.all(np.isfinite(up)) and np.all(np.isfinite(down))):
            raise ValueError(f"variation {name!r}: values must be finite")
        up, down = up.ravel()[used], down.ravel()[used]
        if up.sum() <= 0 or down.sum() <= 0:
            raise ValueError(f"variation {name!r}: non-positive total")
        l_up[k], bad_up = _log_shift(w, up * (tot_w / up.sum()))
        l_dn[k], bad_dn = _log_shift(w, down * (tot_w / down.sum()))
        n_bad_var += int(np.sum(bad_up | bad_dn))

    q_arr, mu_arr, b_arr, dev, con = _statistic(n[None], w[None], s2[None], b_floor)
    q = float(q_arr[0])
    mu_hat = float(mu_arr[0])
    b_hat = b_arr[0]
    m_hat = np.full(n_bins, mu_hat)
    theta_hat = np.zeros(len(names))
    if names:
        q_v, m_v, b_v, th_v = _fit_with_variations(
            n[None],
            w[None],
            s2[None],
            l_up,
            l_dn,
            np.zeros((1, len(names))),
            b_floor,
            np.log(mu_arr),
        )
        q, m_hat, b_hat, theta_hat = float(q_v[0]), m_v[0], b_v[0], th_v[0]
        dev_1, con_1 = _q_terms(m_hat, b_hat, n, w, s2)
        dev, con = dev_1[None], con_1[None]
    nu_hat = m_hat * b_hat
    raw_b, _ = _profile_b(m_hat, n, w, s2)
    n_clipped = int(np.sum((n > 0) & (raw_b < b_floor)))

    res_used = np.sign(n - nu_hat) * np.sqrt(np.clip(dev[0] + con[0], 0.0, None))
    residuals = np.zeros(n_all.shape)
    residuals[used] = res_used
    residuals = residuals.reshape(n_in.shape)

    n_small = int(np.sum(nu_hat < MIN_EXPECTED))
    details: dict[str, object] = {
        "mu_hat": mu_hat,
        "n_bins_used": n_bins,
        "n_bins_dropped": int((~used).sum()),
        "n_bins_negative_sumw": int(np.sum(w < 0)),
        "n_bins_expected_lt5": n_small,
        "min_expected": float(nu_hat.min()),
        "constraint_total": float(con[0].sum()),
        "n_bins_zero_sim_error_replaced": int(replaced.sum()),
        "sim_effective_entries": effective_entries(w_all[used], s2_all[used]),
    }
    if names:
        details["theta_hat"] = {name: float(t) for name, t in zip(names, theta_hat, strict=True)}
        details["n_bins_variation_ignored"] = n_bad_var
    if n_clipped:
        details["n_bins_prediction_clipped"] = n_clipped
        details["prediction_floor"] = b_floor * float(m_hat.mean())
        details["clip_note"] = (
            "bins with data but zero simulated content and zero uncertainty: the prediction "
            "was clipped at a small positive value"
        )

    pvalue_is_bound = False
    n_toys_total = None
    if n_toys > 0:
        gen = np.random.default_rng(rng)
        cnt = cnt_all[used] if cnt_all is not None else None
        s3 = s3_all[used] if s3_all is not None else None

        sim_law = SimToyLaw(b_hat, w, s2_raw, sim_count=cnt, sim_sumw3=s3)

        def draw(size: int) -> np.ndarray:
            n_toy = poisson_toys(gen, nu_hat, size)
            w_toy, s2_toy = sim_law.draw(size, gen)
            s2_toy, _ = _fill_empty_sim_error(w_toy, s2_toy)
            # Toys with no data or no positive simulation cannot be fitted (vanishingly
            # rare): they count as at least as extreme as the observation.
            ok = (n_toy.sum(axis=1) > 0) & (np.clip(w_toy, 0.0, None).sum(axis=1) > 0)
            q_toy, mu_toy = _statistic(n_toy[ok], w_toy[ok], s2_toy[ok], b_floor)[:2]
            if names:
                theta0_toy = theta_hat + gen.standard_normal((size, len(names)))
                q_toy = _fit_with_variations(
                    n_toy[ok],
                    w_toy[ok],
                    s2_toy[ok],
                    l_up,
                    l_dn,
                    theta0_toy[ok],
                    b_floor,
                    np.log(mu_toy),
                )[0]
            out = np.full(size, np.nan)
            out[ok] = q_toy
            return out

        options = ToyOptions(n_toys, max_toys, tuple(thresholds), coarse_above)
        law = chi2_tail_law(q, ndf if ndf >= 1 else None,
                            float(stats.chi2.sf(q, ndf)) if ndf >= 1 else None)
        toys = run_toys(q, draw, options, tail=law)
        pvalue, pvalue_is_bound, n_toys_total = toys.pvalue, toys.pvalue_is_bound, toys.n_toys
        details.update(toys.details)
        details["toy_scheme"] = "compound_poisson" if cnt is not None else "scaled_poisson"
        pvalue_method = "toys"
        reliable = True
        details["q_toys_mean"] = float(toys.toys.mean()) if toys.toys.size else float("nan")
        details["pvalue_asymptotic"] = float(stats.chi2.sf(q, ndf)) if ndf >= 1 else float("nan")
    else:
        pvalue = float(stats.chi2.sf(q, ndf)) if ndf >= 1 else float("nan")
        pvalue_method = "asymptotic"
        reasons = []
        if n_small:
            reasons.append(f"{n_small} bin(s) with expected data count < {MIN_EXPECTED:g}")
        s4 = None if sim_sumw4 is None else np.asarray(sim_sumw4, dtype=float).ravel()[used]
        small_sim = small_simulation_reason(float(n.sum()), w_all[used], s2_all[used], s4, n)
        if small_sim:
            reasons.append(small_sim)
        if ndf < 1:
            reasons.append("fewer than two non-empty bins")
        reliable = not reasons
        if reasons:
            details["unreliable_reason"] = "; ".join(reasons)

    return GofResult(
        method="saturated",
        statistic=q,
        pvalue=pvalue,
        ndf=ndf,
        effect_size=max_abs_ratio_deviation(n_all, w_all),
        effect_name="max_abs_ratio_dev",
        pvalue_method=pvalue_method,
        n_toys=n_toys_total,
        reliable=reliable,
        residuals=residuals,
        details=details,
        pvalue_is_bound=pvalue_is_bound,
    )
