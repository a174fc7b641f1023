"""Weighted Pearson and Spearman correlations of a feature pair, simulation vs data.

The pipeline cannot keep raw arrays, so both estimators work from mergeable accumulators:

* Pearson: the moment sums ``S[a, b] = Σ w x^a y^b`` for ``a + b ≤ 4`` (``moment_sums``);
  optionally also ``S2[a, b] = Σ w² x^a y^b`` (``moment_sums(x, y, w**2)``).
* Spearman: a fine 2D histogram of weights (bins in increasing order of x and y), optionally also
  the per-bin ``Σw²``.

Standard errors come from the delta method (influence function) with fourth moments, valid for
non-normal data. The sample size entering them is Kish's effective size ``n_eff = (Σw)²/Σw²``
(Kish 1965, *Survey Sampling*, §11.7): this is exact when the weights are unrelated to (x, y).
When they are related (a mixture of processes with different weights and shapes), pass the
``Σw²`` accumulators (``S2`` / ``table_w2``): the variance is then the sandwich (linearisation)
estimate ``Σ w_i² ψ_i² / (Σw)²`` with ψ the influence function, which needs no such assumption
and reduces to the Kish form for unrelated weights.

The pipeline standardises x and y (location and scale) before accumulating, so the raw moments
are O(1) and their conversion to central moments does not lose precision.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from validator.stats.result import GofResult

__all__ = [
    "corr_pearson",
    "corr_spearman",
    "moment_sums",
    "pearson_from_moments",
    "spearman_from_table",
]

#: Below this effective sample size (of either sample) a correlation comparison is flagged
#: ``reliable=False``.
MIN_NEFF = 30.0

_ORDER = 4
_A, _B = np.indices((_ORDER + 1, _ORDER + 1))
_LOW = (_A + _B) <= _ORDER  # entries of S that are used


def moment_sums(x: ArrayLike, y: ArrayLike, w: ArrayLike | None = None) -> np.ndarray:
    """Moment sums ``S[a, b] = Σ_i w_i x_i^a y_i^b`` for ``a + b ≤ 4`` as a (5, 5) array.

    Entries with ``a + b > 4`` are zero. ``w=None`` means unit weights; pass ``w**2`` to get the
    ``Σw²`` sums used for the sandwich variance. Sums are additive: accumulate chunk by chunk.
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=float).ravel()
    if not (x.shape == y.shape == w.shape):
        raise ValueError("x, y and w must have the same length")
    powers = np.arange(_ORDER + 1)[:, None]
    xp = x[None, :] ** powers  # (5, n)
    yp = y[None, :] ** powers
    s = (xp * w[None, :]) @ yp.T
    s[~_LOW] = 0.0
    return s


def _shift_matrix(mean: float) -> np.ndarray:
    """P[a, i] = C(a, i) (−mean)^(a−i): maps raw moments to moments about ``mean``."""
    a = np.arange(_ORDER + 1)[:, None]
    i = np.arange(_ORDER + 1)[None, :]
    with np.errstate(invalid="ignore"):
        p = special.comb(a, i) * np.power(-mean, np.clip(a - i, 0, None))
    p[i > a] = 0.0
    return p


def _central(s: np.ndarray, mx: float, my: float) -> np.ndarray:
    """Sums about (mx, my): ``C[a, b] = Σ w (x − mx)^a (y − my)^b`` from raw sums ``s``."""
    s = np.where(_LOW, s, 0.0)
    c = _shift_matrix(mx) @ s @ _shift_matrix(my).T
    c[~_LOW] = 0.0
    return c


def _pearson_var_terms(nu: np.ndarray, r: float) -> float:
    """``ρ²/4 (ν40 + ν04 + 2ν22) + ν22 − ρ(ν31 + ν13)`` for standardised moments ``ν``.

    This is n·Var(r) of Kendall & Stuart (vol. 1, §10.9):
    ``r²/4 [μ40/μ20² + μ04/μ02² + 2μ22/(μ20μ02) + 4μ22/μ11² − 4μ31/(μ11μ20) − 4μ13/(μ11μ02)]``
    with the ``r²`` multiplied out (no division by μ11, so it is regular at r = 0); equivalently
    ``E[ψ²]`` for the influence function ``ψ = ũṽ − (r/2)(ũ² + ṽ²)`` of standardised ũ, ṽ.
    For bivariate normal data it equals ``(1 − ρ²)²``.
    """
    return (
        0.25 * r**2 * (nu[4, 0] + nu[0, 4] + 2.0 * nu[2, 2]) + nu[2, 2] - r * (nu[3, 1] + nu[1, 3])
    )


def pearson_from_moments(
    S: np.ndarray, n_eff: float, S2: np.ndarray | None = None
) -> tuple[float, float]:
    """Weighted Pearson correlation and its standard error from moment sums.

    Parameters
    ----------
    S : (5, 5) array, ``S[a, b] = Σ w x^a y^b`` for ``a + b ≤ 4`` (others ignored);
        ``S[0, 0] = Σw``.
    n_eff : effective sample size (Kish ``(Σw)²/Σw²``) used when ``S2`` is not given.
    S2 : optional (5, 5) array of ``Σ w² x^a y^b``; when given the standard error is the
        sandwich estimate (module notes) and ``n_eff`` is not used.

    Returns
    -------
    (r, se) : ``r = μ11/√(μ20 μ02)`` with weighted central moments μ_ab; ``se`` from the delta
        method with fourth moments (Kendall & Stuart, *The Advanced Theory of Statistics*, vol. 1,
        §10.9, large-sample variance of r, valid for non-normal parents):
        ``Var(r) = [ρ²/4 (ν40 + ν04 + 2ν22) + ν22 − ρ(ν31 + ν13)] / n_eff``,
        ν_ab = μ_ab / (σx^a σy^b). NaN where a variance vanishes.
    """
    S = np.asarray(S, dtype=float)
    if S.shape != (_ORDER + 1, _ORDER + 1):
        raise ValueError(f"S must have shape (5, 5), got {S.shape}")
    sumw = S[0, 0]
    if not sumw > 0:
        return math.nan, math.nan
    mx, my = S[1, 0] / sumw, S[0, 1] / sumw
    mu = _central(S, mx, my) / sumw
    vx, vy = mu[2, 0], mu[0, 2]
    if not (vx > 0 and vy > 0):
        return math.nan, math.nan
    sx, sy = math.sqrt(vx), math.sqrt(vy)
    scale = np.power(sx, _A) * np.power(sy, _B)
    r = float(mu[1, 1] / (sx * sy))
    if S2 is None:
        if not n_eff > 0:
            return r, math.nan
        var = _pearson_var_terms(mu / scale, r) / float(n_eff)
    else:
        S2 = np.asarray(S2, dtype=float)
        if S2.shape != S.shape:
            raise ValueError(f"S2 must have shape (5, 5), got {S2.shape}")
        c2 = _central(S2, mx, my) / scale / sumw**2
        var = _pearson_var_terms(c2, r)
    se = math.sqrt(var) if var >= 0 else math.nan
    return r, se


def _grades(p: np.ndarray) -> np.ndarray:
    """Mid-grades ``F(x−) + p(x)/2`` of a marginal with probabilities ``p`` (midranks / N)."""
    return np.cumsum(p) - 0.5 * p


def _tail_mid(v: np.ndarray) -> np.ndarray:
    """``Σ_{k>i} v_k + v_i/2`` for each i (mass strictly above plus half at the value)."""
    return np.cumsum(v[::-1])[::-1] - 0.5 * v


def spearman_from_table(
    table: np.ndarray, n_eff: float, table_w2: np.ndarray | None = None
) -> tuple[float, float]:
    """Spearman rank correlation and its standard error from a 2D histogram of weights.

    Parameters
    ----------
    table : (nx, ny) sums of weights, bins in increasing order of x (rows) and y (columns).
    n_eff : effective sample size (Kish) used when ``table_w2`` is not given.
    table_w2 : optional per-bin ``Σw²`` (sandwich variance, module notes).

    The correlation is the Pearson correlation, over the table, of the mid-grade scores of the
    two marginals (``u = F(x−) + p(x)/2``: all events in a bin share the midrank), which is what
    ``scipy.stats.spearmanr`` computes on midranks; with one bin per distinct value it is exact,
    with fine bins a close approximation.

    Standard error: delta method through the influence function of this functional, which has
    the Pearson part ``ũṽ − (r/2)(ũ² + ṽ²)`` (as in ``pearson_from_moments``) plus the effect of
    estimating the grades from the same sample:
    ``[A(x) + B(y)]/(s_u s_v) − r [A_u(x)/s_u² + B_v(y)/s_v²]`` with
    ``A(x) = E[(1{X>x} + ½1{X=x})(V − v̄)]`` etc. For continuous margins this is the influence
    function of Spearman's ρ of Croux & Dehon (2010, Stat. Methods Appl. 19, 497):
    ``12[F(x)G(y) + E{F(X)1(Y≥y)} + E{G(Y)1(X≥x)}] − 3ρ − 9``; the non-null asymptotic variance
    computed from a bivariate table follows Borkowf (2002, Comput. Stat. Data Anal. 39, 271).
    Treating the grades as fixed (Pearson's formula on the scores) would misstate the error
    when ρ ≠ 0. ``Var = E[ψ²]/n_eff`` (Kish) or ``Σ w² ψ²/(Σw)²`` (sandwich).
    """
    t = np.asarray(table, dtype=float)
    if t.ndim != 2:
        raise ValueError(f"table must be two-dimensional, got shape {t.shape}")
    total = float(t.sum())
    if not total > 0:
        return math.nan, math.nan
    p = t / total
    px, py = p.sum(axis=1), p.sum(axis=0)
    u, v = _grades(px), _grades(py)
    ubar, vbar = float(px @ u), float(py @ v)
    du, dv = u - ubar, v - vbar
    var_u, var_v = float(px @ du**2), float(py @ dv**2)
    if not (var_u > 0 and var_v > 0):
        return math.nan, math.nan
    su, sv = math.sqrt(var_u), math.sqrt(var_v)
    r = float(du @ p @ dv) / (su * sv)

    uu, vv = du / su, dv / sv
    # Influence-function terms of the grade estimation.
    a_x = _tail_mid(p @ dv)  # A(x_i) = E[(1{X>x_i} + ½1{X=x_i}) (V − v̄)]
    b_y = _tail_mid(du @ p)  # B(y_j) = E[(U − ū)(1{Y>y_j} + ½1{Y=y_j})]
    au_x = _tail_mid(px * du)  # A_u(x_i) = E[(1{X>x_i} + ½1{X=x_i}) (U − ū)]
    bv_y = _tail_mid(py * dv)
    psi = (
        np.outer(uu, vv)
        - 0.5 * r * (uu[:, None] ** 2 + vv[None, :] ** 2)
        + (a_x[:, None] + b_y[None, :]) / (su * sv)
        - r * (au_x[:, None] / var_u + bv_y[None, :] / var_v)
    )
    psi -= float(np.sum(p * psi))
    if table_w2 is None:
        if not n_eff > 0:
            return r, math.nan
        var = float(np.sum(p * psi**2)) / float(n_eff)
    else:
        t2 = np.asarray(table_w2, dtype=float)
        if t2.shape != t.shape:
            raise ValueError("table_w2 must have the shape of table")
        var = float(np.sum(t2 * psi**2)) / total**2
    se = math.sqrt(var) if var >= 0 else math.nan
    return r, se


def _compare(r_s, se_s, neff_s, r_d, se_d, neff_d, name: str) -> GofResult:
    """z-test of ``r_data − r_sim`` with independent samples."""
    se = math.sqrt(se_s**2 + se_d**2) if np.isfinite(se_s) and np.isfinite(se_d) else math.nan
    delta = r_d - r_s
    if np.isfinite(se) and se > 0 and np.isfinite(delta):
        z = delta / se
        pvalue = float(2.0 * special.ndtr(-abs(z)))
    else:
        z, pvalue = math.nan, math.nan
    finite = bool(np.isfinite(z))
    reliable = bool(finite and min(neff_s, neff_d) >= MIN_NEFF)
    return GofResult(
        method=f"corr_{name}",
        statistic=float(z),
        pvalue=pvalue if finite else 1.0,
        effect_size=float(delta),
        effect_name=f"delta_{name}",
        pvalue_method="asymptotic",
        reliable=reliable,
        details={
            "estimator": name,
            "r_sim": float(r_s),
            "se_sim": float(se_s),
            "r_data": float(r_d),
            "se_data": float(se_d),
            "n_eff_sim": float(neff_s),
            "n_eff_data": float(neff_d),
        },
    )


def _neff_from(sumw: float, sumw2_total: float | None, n_eff: float) -> float:
    return n_eff if sumw2_total is None else sumw**2 / sumw2_total


def corr_pearson(
    data_S: np.ndarray,
    data_neff: float,
    sim_S: np.ndarray,
    sim_neff: float,
    *,
    data_S2: np.ndarray | None = None,
    sim_S2: np.ndarray | None = None,
) -> GofResult:
    """Compare the weighted Pearson correlation of a pair in simulation and data (``corr_pearson``).

    ``statistic`` is the signed ``z = (r_data − r_sim)/√(se_data² + se_sim²)`` (the samples are
    independent); two-sided normal p-value ``2Φ(−|z|)``; ``effect_size = r_data − r_sim``
    (``effect_name="delta_pearson"``). Standard errors from ``pearson_from_moments`` (Kish with the
    given ``*_neff``, or the sandwich form with the optional ``Σw²`` sums ``*_S2``).
    ``reliable=False`` when an effective size is below 30 or a standard error is not finite
    (the p-value is then reported as 1).
    """
    r_s, se_s = pearson_from_moments(sim_S, sim_neff, sim_S2)
    r_d, se_d = pearson_from_moments(data_S, data_neff, data_S2)
    neff_s = _neff_from(sim_S[0][0], None if sim_S2 is None else sim_S2[0][0], sim_neff)
    neff_d = _neff_from(data_S[0][0], None if data_S2 is None else data_S2[0][0], data_neff)
    return _compare(r_s, se_s, neff_s, r_d, se_d, neff_d, "pearson")


def corr_spearman(
    data_table: np.ndarray,
    data_neff: float,
    sim_table: np.ndarray,
    sim_neff: float,
    *,
    data_table_w2: np.ndarray | None = None,
    sim_table_w2: np.ndarray | None = None,
) -> GofResult:
    """Compare the Spearman rank correlation of a pair in simulation and data (``corr_spearman``).

    As ``corr_pearson`` with ``spearman_from_table`` (``effect_name="delta_spearman"``). Each
    sample's ranks are its own (the grades of its own marginals), as when Spearman's ρ is
    computed separately in each sample.
    """
    r_s, se_s = spearman_from_table(sim_table, sim_neff, sim_table_w2)
    r_d, se_d = spearman_from_table(data_table, data_neff, data_table_w2)
    neff_s = _neff_from(
        float(np.sum(sim_table)),
        None if sim_table_w2 is None else float(np.sum(sim_table_w2)),
        sim_neff,
    )
    neff_d = _neff_from(
        float(np.sum(data_table)),
        None if data_table_w2 is None else float(np.sum(data_table_w2)),
        data_neff,
    )
    return _compare(r_s, se_s, neff_s, r_d, se_d, neff_d, "spearman")
