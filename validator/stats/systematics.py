r"""Saturated goodness-of-fit test with systematic uncertainties as nuisance parameters.

The model is a binned HistFactory model (K. Cranmer, G. Lewis, L. Moneta, A. Shibata and
W. Verkerke, "HistFactory: A tool for creating statistical models for use with RooFit and
RooStats", CERN-OPEN-2012-016; its implementation in pyhf, L. Heinrich, M. Feickert,
G. Stark and K. Cranmer, JOSS 6 (2021) 2823) fitted to the data, against the saturated model,
as CMS Combine's ``saturated`` goodness-of-fit test with ``--toysFrequentist``.

Expected data count in bin :math:`i`:

.. math::

    \nu_i = \mu\,\gamma_i\,B_i(\boldsymbol\theta, \boldsymbol\eta), \qquad
    B_i = \sum_p \kappa_p(\eta_{j(p)}) \Bigl[w_{pi} + \sum_k \Delta_{pki}(\theta_k)\Bigr]
          + \sum_k \Delta^\mathrm{tot}_{ki}(\theta_k),

- :math:`w_{pi}`: nominal simulated sum of weights of process :math:`p` (one process, or
  several whose sum is the simulation);
- :math:`\mu`: a free overall normalisation (the test compares shapes: the data/simulation
  normalisation is free, as in :func:`validator.stats.likelihood.saturated`; fitted as
  :math:`\ln\mu`);
- :math:`\Delta_{pk}(\theta_k)`: vertical template morphing of shape systematic :math:`k`
  (an up and a down template per process, or of the total: :math:`\Delta^\mathrm{tot}`, added
  after the process normalisations), HistFactory ``histosys`` with pyhf's interpolation code
  ``code4p`` (:func:`interp_code4p`): a polynomial inside :math:`|\theta| \le 1`, linear
  outside;
- :math:`\kappa_p(\eta)`: log-normal normalisation uncertainty of process :math:`p`, HistFactory
  ``normsys`` with pyhf's code ``code4`` (:func:`interp_code4`): polynomial inside
  :math:`|\eta| < 1`, exponential :math:`\kappa_\pm^{|\eta|}` outside;
- :math:`\gamma_i`: Barlow-Beeston-lite statistical nuisance of the summed simulation per bin
  (R. Barlow and C. Beeston, Comput. Phys. Commun. 77 (1993) 219; J. S. Conway,
  arXiv:1103.0354), HistFactory/pyhf ``staterror``: Gaussian constraint of relative width
  :math:`\sigma_i = \sqrt{\sum_p s^2_{pi}}/\sum_p w_{pi}`.

Each :math:`\theta_k, \eta_j \sim \mathrm{N}(0, 1)` (global observable 0, unit width). In
:math:`q = -2\ln L` up to constants:

.. math::

    q = \sum_i 2\Bigl[\nu_i - n_i + n_i\ln\frac{n_i}{\nu_i}\Bigr]
        + \sum_i \frac{(\gamma_i - a_i)^2}{\sigma_i^2}
        + \sum_k (\theta_k - \theta_{0k})^2 + \sum_j (\eta_j - \eta_{0j})^2,

with the global observables :math:`a_i = 1`, :math:`\theta_{0k} = \eta_{0j} = 0` for the data.
The saturated model has :math:`\nu_i = n_i` and every constraint at its centre, so the test
statistic is the minimum of :math:`q` (S. Baker and R. D. Cousins, NIM 221 (1984) 437).

Fitting. Given the other parameters, the likelihood equation of each :math:`\gamma_i` is a
quadratic (Conway, arXiv:1103.0354, eq. 12), solved analytically (:func:`_profile_gamma`).
The few remaining parameters :math:`x = (\ln\mu, \boldsymbol\theta, \boldsymbol\eta)` are fitted
by Newton's method on the profiled :math:`q` with exact gradient and Hessian (envelope
theorem and Schur complement of the :math:`\gamma` block), an eigenvalue-modified Hessian where
it is not positive definite, and a backtracking Armijo line search (J. Nocedal and S. J.
Wright, "Numerical Optimization", 2nd ed., 2006, sec. 3.1 and 3.4), all vectorised over a
batch of independent fits (the toys of one test are fitted together: :func:`fit_batch`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from validator.stats.binned import max_abs_ratio_deviation
from validator.stats.compiled import HAVE_NUMBA
from validator.stats.poisson_toys import poisson_toys
from validator.stats.result import GofResult
from validator.stats.systematics_kernel import newton_fits
from validator.stats.toys import ToyOptions, check_toy_options, chi2_tail_law, run_toys

__all__ = [
    "BatchFit",
    "SystModel",
    "build_model",
    "expected_counts",
    "fit_batch",
    "interp_code4",
    "interp_code4p",
    "q_unprofiled",
    "saturated_syst",
    "warm",
]

#: Method name stored in DuckDB ``tests.method`` (issue 16: stored beside ``saturated``).
METHOD = "saturated_syst"
#: Initial number of toys (as the ``dependence`` test): resolves p = 0.01 to about ±0.006.
DEFAULT_TOYS = 300
#: Newton iterations before a fit is declared not converged (converged fits take 3-8).
MAX_ITER = 60
#: Backtracking halvings of a Newton step before the fit is declared stalled.
MAX_HALVINGS = 40
#: Largest change of one parameter in a Newton step (ln mu, or a nuisance in units of its
#: constraint): a step beyond 3 sigma of every constraint is never a good model move, and
#: unbounded steps overflow the exponential extrapolation of code4.
MAX_STEP = 3.0
#: Armijo sufficient-decrease constant (Nocedal & Wright, sec. 3.1, suggest 1e-4).
ARMIJO_C = 1e-4
#: A fit has converged when the Newton decrement g^T H^{-1} g (twice the decrease of q the
#: quadratic model predicts) is below this; the last full Newton step is then taken, which by
#: Newton's quadratic convergence leaves q within ~1e-15 of its minimum and each parameter
#: far within 1e-6 of its standard error of the minimum. (Smaller values are not
#: resolvable: q sums terms of size ~n_i, so its rounding error is ~1e-16 x sum n_i.)
DECREMENT_TOL = 1e-8
#: A backtracking step whose predicted decrease alpha |g^T p| is below this cannot be
#: resolved in q (rounding) and stops the line search: the fit is judged by its decrement.
RESOLVABLE_DECREASE = 1e-11
#: After MAX_ITER, a fit whose decrement is below this is still accepted (q within 1e-6).
DECREMENT_ACCEPT = 1e-6
#: Smallest eigenvalue kept (relative to the largest) when the Hessian is modified to be
#: positive definite (Nocedal & Wright, sec. 3.4).
EIG_FLOOR_REL = 1e-8
#: Floor of the process sum B_i relative to the mean nominal content per bin: the linear
#: extrapolation of code4p can drive a bin's prediction to zero or below at large |theta|;
#: there the prediction is held at this small positive value (the fit never sits there when
#: the bin has data: the Poisson term diverges).
B_FLOOR_REL = 1e-9
#: Offsets (in units of the constraint) of the single-nuisance starts of a multistart fit, on
#: both sides: at and past the +-1 joins of the interpolation, where the wells of code4p's
#: polynomial lie.
MULTISTART_OFFSETS = (1.0, 1.5)
#: Most nuisances for which a multistart also tries every corner of the +-1 cube (2^n starts).
MAX_CORNER_DIM = 4
#: Minima whose q differ by more than this are distinct (the fit tolerance is ~1e-8).
MULTIMODAL_TOL = 1e-6
#: Toys fitted at once: bounds memory (the Hessian terms are O(batch x params^2 x bins)).
TOY_CHUNK = 4096
#: Expected data count below which the chi² asymptotics (``pvalue_asymptotic`` in details)
#: are not trusted (Cochran 1954, as the other binned tests); counted in details.
MIN_EXPECTED = 5.0

# pyhf's code4 coefficients for alpha0 = 1 (pyhf/interpolators/code4.py, ``A_inverse``): the
# six coefficients a_1..a_6 of 1 + sum a_i alpha^i solve the conditions on value, first and
# second derivative at alpha = +-1; b = (hi - 1, lo - 1, hi ln hi, -lo ln lo, hi ln^2 hi,
# lo ln^2 lo).
_CODE4_AINV = np.array(
    [
        [15 / 16, -15 / 16, -7 / 16, -7 / 16, 1 / 16, -1 / 16],
        [3 / 2, 3 / 2, -9 / 16, 9 / 16, 1 / 16, 1 / 16],
        [-5 / 8, 5 / 8, 5 / 8, 5 / 8, -1 / 8, 1 / 8],
        [-3 / 2, -3 / 2, 7 / 8, -7 / 8, -1 / 8, -1 / 8],
        [3 / 16, -3 / 16, -3 / 16, -3 / 16, 1 / 16, -1 / 16],
        [1 / 2, 1 / 2, -5 / 16, 5 / 16, 1 / 16, 1 / 16],
    ]
)


# ------------------------------------------------------------------------------------------
# interpolation (HistFactory / pyhf codes)
# ------------------------------------------------------------------------------------------


def interp_code4p(
    alpha: ArrayLike, nominal: ArrayLike, up: ArrayLike, down: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Additive shape interpolation, pyhf ``code4p`` (the default of ``histosys``).

    With :math:`\delta_+ = \text{up} - \text{nom}`, :math:`\delta_- = \text{nom} - \text{down}`,
    :math:`S = (\delta_+ + \delta_-)/2` and :math:`A = (\delta_+ - \delta_-)/16`:

    .. math::

        \Delta(\alpha) = \begin{cases}
            \alpha\,\delta_+ & \alpha > 1 \\
            \alpha S + \alpha^2 A\,(15 - 10\alpha^2 + 3\alpha^4) & |\alpha| \le 1 \\
            \alpha\,\delta_- & \alpha < -1
        \end{cases}

    which equals the templates at :math:`\alpha = \pm1` and is continuous with its first and
    second derivatives there (pyhf ``pyhf.interpolators.code4p``; HistFactory's
    "piecewise linear" code 0 smoothed inside :math:`\pm1`; CERN-OPEN-2012-016 sec. 4.1).

    Parameters
    ----------
    alpha:
        Nuisance values, any shape ``A``.
    nominal, up, down:
        Templates, any shape ``T`` (broadcast: the result has shape ``A + T``).

    Returns
    -------
    tuple of numpy.ndarray
        :math:`\Delta`, :math:`d\Delta/d\alpha`, :math:`d^2\Delta/d\alpha^2`.
    """
    a = np.asarray(alpha, dtype=float)
    nom, hi, lo = (np.asarray(v, dtype=float) for v in (nominal, up, down))
    d_up, d_dn = np.broadcast_arrays(hi - nom, nom - lo)
    return _code4p(a.reshape(a.shape + (1,) * d_up.ndim), d_up, d_dn)


def _code4p(
    t: np.ndarray, d_up: np.ndarray, d_dn: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`interp_code4p` from the deltas, ``t`` already broadcastable against them."""
    s = 0.5 * (d_up + d_dn)
    c = 0.0625 * (d_up - d_dn)
    t2 = t * t
    poly = t * s + t2 * c * (15.0 + t2 * (-10.0 + 3.0 * t2))
    dpoly = s + c * t * (30.0 + t2 * (-40.0 + 18.0 * t2))
    d2poly = c * (30.0 + t2 * (-120.0 + 90.0 * t2))
    above, below = t > 1.0, t < -1.0
    value = np.where(above, t * d_up, np.where(below, t * d_dn, poly))
    d1 = np.where(above, d_up, np.where(below, d_dn, dpoly))
    d2 = np.where(above | below, 0.0, d2poly)
    return value, d1, d2


def _code4_coefficients(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Coefficients ``a_1..a_6`` of code4's polynomial, shape ``lo.shape + (6,)``."""
    l_hi, l_lo = np.log(hi), np.log(lo)
    b = np.stack([hi - 1.0, lo - 1.0, hi * l_hi, -lo * l_lo, hi * l_hi**2, lo * l_lo**2], -1)
    return b @ _CODE4_AINV.T


def interp_code4(
    alpha: ArrayLike, lo: ArrayLike, hi: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Multiplicative normalisation interpolation, pyhf ``code4`` (the default of ``normsys``).

    .. math::

        \kappa(\alpha) = \begin{cases}
            \kappa_+^{\alpha} & \alpha \ge 1 \\
            1 + \sum_{i=1}^{6} a_i \alpha^i & |\alpha| < 1 \\
            \kappa_-^{-\alpha} & \alpha \le -1
        \end{cases}

    with :math:`\kappa_\pm` the factors at :math:`\pm1` (``hi``, ``lo``) and the :math:`a_i`
    fixed by continuity of the value and of the first and second derivatives at
    :math:`\pm1` (pyhf ``pyhf.interpolators.code4`` with ``alpha0 = 1``; HistFactory code 4,
    CERN-OPEN-2012-016 sec. 4.1). Outside :math:`\pm1` it is a log-normal (exponential)
    extrapolation, always positive. For Combine's symmetric ``lnN`` with relative uncertainty
    :math:`\delta`: :math:`\kappa_+ = 1 + \delta`, :math:`\kappa_- = 1/(1 + \delta)`.

    Parameters
    ----------
    alpha:
        Nuisance values, any shape ``A``.
    lo, hi:
        Positive factors at :math:`\alpha = -1` and :math:`+1`, any shape ``T``.

    Returns
    -------
    tuple of numpy.ndarray
        :math:`\kappa`, :math:`d\kappa/d\alpha`, :math:`d^2\kappa/d\alpha^2`, shape ``A + T``.
    """
    a = np.asarray(alpha, dtype=float)
    lo_a, hi_a = np.broadcast_arrays(np.asarray(lo, dtype=float), np.asarray(hi, dtype=float))
    if np.any(lo_a <= 0) or np.any(hi_a <= 0):
        raise ValueError("code4 needs positive factors")
    return _code4(a.reshape(a.shape + (1,) * lo_a.ndim), lo_a, hi_a,
                  _code4_coefficients(lo_a, hi_a))


def _code4(
    t: np.ndarray, lo: np.ndarray, hi: np.ndarray, coef: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`interp_code4` with precomputed coefficients ``coef`` (``lo.shape + (6,)``)."""
    poly = np.ones(np.broadcast_shapes(t.shape, lo.shape))
    dpoly = np.zeros_like(poly)
    d2poly = np.zeros_like(poly)
    power = np.ones_like(poly)  # t**(i-1) at step i
    prev = np.zeros_like(poly)  # t**(i-2) at step i
    for i in range(1, 7):
        ci = coef[..., i - 1]
        dpoly += i * ci * power
        d2poly += i * (i - 1) * ci * prev
        prev = power
        power = power * t
        poly += ci * power
    l_hi, l_lo = np.log(hi), np.log(lo)
    up_exp = hi**t
    dn_exp = lo ** (-t)
    above, below = t >= 1.0, t <= -1.0
    value = np.where(above, up_exp, np.where(below, dn_exp, poly))
    d1 = np.where(above, up_exp * l_hi, np.where(below, -dn_exp * l_lo, dpoly))
    d2 = np.where(above, up_exp * l_hi**2, np.where(below, dn_exp * l_lo**2, d2poly))
    return value, d1, d2


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystModel:
    """A binned model with its systematics, built once per test by :func:`build_model`.

    Attributes
    ----------
    nominal:
        ``(P1, n_bins)``: nominal sum of weights per process; when a shape systematic is given
        for the total of several processes, a last row of zeros carries its deltas (it has no
        normalisation uncertainty).
    delta_up, delta_dn:
        ``(K, P1, n_bins)``: :math:`\\delta_+ = \\text{up} - \\text{nom}` and
        :math:`\\delta_- = \\text{nom} - \\text{down}` of each shape systematic.
    delta_s, delta_a:
        ``(K, P1, n_bins)``: code4p's :math:`S = (\\delta_+ + \\delta_-)/2` and
        :math:`A = (\\delta_+ - \\delta_-)/16`.
    norm_lo, norm_hi:
        ``(J,)``: code4 factors of the normalisation uncertainties.
    norm_process:
        ``(J,)``: the row of ``nominal`` each normalisation uncertainty scales.
    norm_coef:
        ``(J, 6)``: code4 polynomial coefficients (:func:`_code4_coefficients`).
    sigma_rel:
        ``(n_bins,)``: relative MC-stat width of the total per bin (0: no ``gamma``).
    shape_names, norm_names:
        Names of the shape systematics and of the normalised processes.
    b_floor:
        Smallest process sum kept (see :data:`B_FLOOR_REL`).
    """

    nominal: np.ndarray
    delta_up: np.ndarray
    delta_dn: np.ndarray
    delta_s: np.ndarray
    delta_a: np.ndarray
    norm_lo: np.ndarray
    norm_hi: np.ndarray
    norm_process: np.ndarray
    norm_coef: np.ndarray
    sigma_rel: np.ndarray
    shape_names: tuple[str, ...]
    norm_names: tuple[str, ...]
    b_floor: float

    @property
    def n_bins(self) -> int:
        return int(self.nominal.shape[1])

    @property
    def n_params(self) -> int:
        """Fitted parameters besides the gammas: ``ln mu``, the thetas, the etas."""
        return 1 + len(self.shape_names) + len(self.norm_names)

    @property
    def n_constrained(self) -> int:
        return len(self.shape_names) + len(self.norm_names)

    @property
    def total(self) -> np.ndarray:
        """Nominal summed simulation per bin."""
        return self.nominal.sum(axis=0)


def _norm_factors(unc: float | tuple[float, float], name: str) -> tuple[float, float]:
    """``(lo, hi)`` code4 factors from a relative uncertainty or an explicit pair."""
    if isinstance(unc, tuple | list):
        lo, hi = (float(v) for v in unc)
    else:
        d = float(unc)
        if not d > 0:
            raise ValueError(f"normalisation uncertainty {name!r} must be > 0, got {unc!r}")
        lo, hi = 1.0 / (1.0 + d), 1.0 + d
    if not (lo > 0 and hi > 0 and np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"normalisation uncertainty {name!r}: factors must be positive")
    return lo, hi


def build_model(
    sim_sumw: ArrayLike,
    sim_sumw2: ArrayLike,
    variations: Mapping[str, tuple[ArrayLike, ArrayLike | None]] | None = None,
    norm_uncertainties: Mapping[str, float | tuple[float, float]] | None = None,
    *,
    process_names: Sequence[str] | None = None,
    mc_stat: bool = True,
    bins: np.ndarray | None = None,
) -> SystModel:
    r"""Build the model of :func:`saturated_syst` from histograms (flattened; see there).

    ``sim_sumw``/``sim_sumw2`` have shape ``(n_bins,)`` (one process) or ``(P, n_bins)``;
    variation templates ``(n_bins,)`` (the total) or ``(P, n_bins)`` (per process);
    ``norm_uncertainties`` maps a process name to :math:`\delta` (log-normal,
    :math:`\kappa_\pm = (1+\delta)^{\pm1}`) or ``(lo, hi)``. A one-sided variation
    (``down`` is ``None``) is symmetrised as :math:`\text{down} = 2\,\text{nom} - \text{up}`
    (the linear mirror, as Combine's and CMS's convention for one-sided shape uncertainties).
    ``bins`` selects the bins kept (a boolean mask over the flattened bins).
    """
    w = np.asarray(sim_sumw, dtype=float)
    s2 = np.asarray(sim_sumw2, dtype=float)
    if w.shape != s2.shape:
        raise ValueError(f"shapes differ: sim_sumw {w.shape}, sim_sumw2 {s2.shape}")
    if w.ndim == 1:
        w, s2 = w[None], s2[None]
    n_proc, n_all = w.shape
    keep = np.ones(n_all, dtype=bool) if bins is None else np.asarray(bins, dtype=bool)
    names = list(process_names) if process_names is not None else [
        f"process{p}" for p in range(n_proc)
    ]
    if len(names) != n_proc:
        raise ValueError(f"{len(names)} process names for {n_proc} processes")
    w, s2 = w[:, keep], s2[:, keep]
    total = w.sum(axis=0)
    n_bins = total.size

    var = dict(variations or {})
    has_total_level = n_proc > 1 and any(np.ndim(v[0]) == 1 for v in var.values())
    rows = n_proc + int(has_total_level)
    nominal = np.zeros((rows, n_bins))
    nominal[:n_proc] = w
    d_up = np.zeros((len(var), rows, n_bins))
    d_dn = np.zeros((len(var), rows, n_bins))
    for k, (name, pair) in enumerate(var.items()):
        up = np.asarray(pair[0], dtype=float)
        down = None if pair[1] is None else np.asarray(pair[1], dtype=float)
        if up.ndim == 1:
            row = slice(rows - 1, rows) if has_total_level else slice(0, 1)
            nom = total[None]
            up2 = up[None]
            down2 = None if down is None else down[None]
        else:
            row = slice(0, n_proc)
            nom = w
            up2, down2 = up, down
        expect = (1 if up.ndim == 1 else n_proc, n_all)
        if up2.shape != expect or (down2 is not None and down2.shape != expect):
            raise ValueError(f"variation {name!r}: shape differs from the nominal "
                             f"({n_all} bins, or {n_proc} x {n_all})")
        up2 = up2[:, keep]
        down2 = 2.0 * nom - up2 if down2 is None else down2[:, keep]
        if not (np.all(np.isfinite(up2)) and np.all(np.isfinite(down2))):
            raise ValueError(f"variation {name!r}: values must be finite")
        d_up[k, row] = up2 - nom
        d_dn[k, row] = nom - down2

    norms = dict(norm_uncertainties or {})
    lo = np.zeros(len(norms))
    hi = np.zeros(len(norms))
    proc = np.zeros(len(norms), dtype=np.int64)
    for j, (name, unc) in enumerate(norms.items()):
        if name not in names:
            raise ValueError(f"normalisation uncertainty for unknown process {name!r} "
                             f"(processes: {', '.join(names)})")
        proc[j] = names.index(name)
        lo[j], hi[j] = _norm_factors(unc, name)

    if np.any(total <= 0):
        raise ValueError("a bin has non-positive simulated sum of weights: merge sparse bins "
                         "first (validator.stats.merge_sparse_bins with the simulation)")
    sigma = np.sqrt(s2.sum(axis=0)) / total if mc_stat else np.zeros(n_bins)
    return SystModel(
        nominal=nominal,
        delta_up=d_up,
        delta_dn=d_dn,
        delta_s=0.5 * (d_up + d_dn),
        delta_a=0.0625 * (d_up - d_dn),
        norm_lo=lo,
        norm_hi=hi,
        norm_process=proc,
        norm_coef=_code4_coefficients(lo, hi),
        sigma_rel=sigma,
        shape_names=tuple(var),
        norm_names=tuple(norms),
        b_floor=B_FLOOR_REL * float(np.abs(total).mean()),
    )


@dataclass
class _Eval:
    """Evaluated profiled ``q`` (and, when asked, its gradient and Hessian) for a batch."""

    q: np.ndarray
    nu: np.ndarray
    gamma: np.ndarray
    grad: np.ndarray | None = None
    hess: np.ndarray | None = None


def _code4p_weights(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""code4p as :math:`\Delta = \theta S + c(\theta) A` (:func:`interp_code4p`).

    :math:`c = \theta^2(15 - 10\theta^2 + 3\theta^4)` inside :math:`\pm1`, and
    :math:`c = \pm 8\theta` beyond :math:`\pm1` (since :math:`\delta_\pm = S \pm 8A`). The
    weights depend on :math:`\theta` only, so the templates enter by one matrix product.
    Returns :math:`c, c', c''`.
    """
    t2 = t * t
    sign = np.where(t > 1.0, 8.0, np.where(t < -1.0, -8.0, 0.0))
    outside = sign != 0.0
    c = np.where(outside, sign * t, t2 * (15.0 + t2 * (-10.0 + 3.0 * t2)))
    dc = np.where(outside, sign, t * (30.0 + t2 * (-40.0 + 18.0 * t2)))
    d2c = np.where(outside, 0.0, 30.0 + t2 * (-120.0 + 90.0 * t2))
    return c, dc, d2c


def _process_sum(
    model: SystModel, x: np.ndarray, derivatives: bool
) -> tuple[np.ndarray, ...]:
    r""":math:`B_i(\theta, \eta)` for a batch ``x`` ``(F, D)`` and its derivatives.

    Returns ``B`` ``(F, n_bins)`` and, with ``derivatives``, ``dB`` ``(F, D-1, n_bins)`` and
    ``d2B`` ``(F, D-1, D-1, n_bins)`` with respect to :math:`(\theta, \eta)`. Each process
    has at most one normalisation uncertainty.
    """
    n_fit = x.shape[0]
    n_k, n_j = len(model.shape_names), len(model.norm_names)
    theta, eta = x[:, 1 : 1 + n_k], x[:, 1 + n_k :]
    nom = model.nominal
    n_rows, n_bins = nom.shape
    if n_k:
        s_t, a_t = model.delta_s, model.delta_a  # (K, P1, n_bins)
        c, dc, d2c = _code4p_weights(theta)
        flat = theta @ s_t.reshape(n_k, -1) + c @ a_t.reshape(n_k, -1)
        templ = nom[None] + flat.reshape(n_fit, n_rows, n_bins)
    else:
        templ = np.broadcast_to(nom, (n_fit, n_rows, n_bins))
    kappa = np.ones((n_fit, n_rows))
    if n_j:
        k0, k1, k2 = _code4(eta, model.norm_lo, model.norm_hi, model.norm_coef)  # (F, J)
        kappa[:, model.norm_process] = k0
    b = np.einsum("fp,fpb->fb", kappa, templ)
    if not derivatives:
        return (b,)
    n_c = n_k + n_j
    db = np.zeros((n_fit, n_c, n_bins))
    d2b = np.zeros((n_fit, n_c, n_c, n_bins))
    if n_k:
        ks = np.einsum("fp,kpb->fkb", kappa, s_t)
        ka = np.einsum("fp,kpb->fkb", kappa, a_t)
        db[:, :n_k] = ks + dc[:, :, None] * ka
        idx = np.arange(n_k)
        d2b[:, idx, idx] = d2c[:, :, None] * ka
    for j in range(n_j):
        p = model.norm_process[j]
        row = n_k + j
        db[:, row] = k1[:, j, None] * templ[:, p]
        d2b[:, row, row] = k2[:, j, None] * templ[:, p]
        if n_k:
            cross = k1[:, j, None, None] * (s_t[None, :, p] + dc[:, :, None] * a_t[None, :, p])
            d2b[:, :n_k, row] = cross
            d2b[:, row, :n_k] = cross
    return b, db, d2b


def _profile_gamma(
    m: np.ndarray, n: np.ndarray, aux: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    r"""Conditional ML estimate of the per-bin MC-stat factor :math:`\gamma` given the rest.

    With :math:`m` the prediction without :math:`\gamma` (:math:`\nu = \gamma m`), stationarity
    of :math:`2(\gamma m - n\ln\gamma m) + (\gamma - a)^2/\sigma^2` gives
    :math:`\gamma^2 + (m\sigma^2 - a)\gamma - n\sigma^2 = 0` (Conway, arXiv:1103.0354, eq. 12,
    in relative units), whose non-negative root is
    :math:`\gamma = \tfrac12(c + \sqrt{c^2 + 4n\sigma^2})`, :math:`c = a - m\sigma^2`,
    evaluated as :math:`2n\sigma^2/(\sqrt{c^2 + 4n\sigma^2} - c)` for :math:`c < 0` (no
    cancellation). For :math:`\sigma = 0` it is :math:`\gamma = a`.
    """
    s2 = sigma * sigma
    c = aux - m * s2
    r = np.sqrt(c * c + 4.0 * n * s2)
    with np.errstate(divide="ignore", invalid="ignore"):
        neg = np.where(r - c > 0, 2.0 * n * s2 / (r - c), 0.0)
    return np.where(c >= 0, 0.5 * (c + r), neg)


def _evaluate(
    model: SystModel,
    x: np.ndarray,
    n: np.ndarray,
    aux: np.ndarray,
    centre: np.ndarray,
    derivatives: bool,
) -> _Eval:
    r"""Profiled :math:`q(x)` of a batch, with gradient and Hessian when asked.

    With :math:`\ell_i = \ln\mu + \ln B_i` and :math:`\gamma_i` profiled, the envelope theorem
    gives :math:`\partial q/\partial\ell_i = r_i = 2(\nu_i - n_i)`; the Schur complement of the
    :math:`\gamma_i` block gives the profiled curvature
    :math:`h_i = 2\nu_i\,[1 - \nu_i/(n_i + \gamma_i^2/\sigma_i^2)]` (:math:`2\nu_i` for
    :math:`\sigma_i = 0`). Then :math:`g = \sum_i r_i\,\partial\ell_i/\partial x + 2(x - x_0)`,
    :math:`H = \sum_i [h_i\,\ell_{i,x}\ell_{i,x}^T + r_i\,\ell_{i,xx}] + 2 I_\mathrm{constr}`
    with :math:`\ell_{i,xx} = B_{i,xx}/B_i - \ell_{i,x}\ell_{i,x}^T`.
    """
    n_c = model.n_constrained
    out = _process_sum(model, x, derivatives)
    b_raw = out[0]
    low = b_raw < model.b_floor
    b = np.where(low, model.b_floor, b_raw)
    mu = np.exp(x[:, :1])
    m = mu * b
    sigma = model.sigma_rel
    gamma = _profile_gamma(m, n, aux, sigma)
    nu = gamma * m
    has_sigma = sigma > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(n > 0, n * np.log(n / nu), 0.0)
        con = np.where(has_sigma, (gamma - aux) ** 2 / np.where(has_sigma, sigma, 1.0) ** 2,
                       0.0)
    dev = 2.0 * (nu - n + log_term)
    q = dev.sum(axis=1) + con.sum(axis=1) + np.sum((x[:, 1:] - centre) ** 2, axis=1)
    if not derivatives:
        return _Eval(q, nu, gamma)
    _, db, d2b = out
    r = 2.0 * (nu - n)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = n + np.where(has_sigma, gamma**2 / np.where(has_sigma, sigma, 1.0) ** 2,
                             np.inf)
        h = 2.0 * nu * np.where(denom > 0, 1.0 - nu / denom, 1.0)
    h = np.where(np.isfinite(h), h, 2.0 * nu)
    lx = np.where(low[:, None, :], 0.0, db / b[:, None, :])
    rb = np.where(low, 0.0, r / b)
    n_fit, dim = x.shape
    grad = np.empty((n_fit, dim))
    grad[:, 0] = r.sum(axis=1)
    grad[:, 1:] = np.einsum("fcb,fb->fc", lx, r) + 2.0 * (x[:, 1:] - centre)
    hess = np.empty((n_fit, dim, dim))
    hess[:, 0, 0] = h.sum(axis=1)
    cross = np.einsum("fcb,fb->fc", lx, h)
    hess[:, 0, 1:] = cross
    hess[:, 1:, 0] = cross
    hess[:, 1:, 1:] = (np.einsum("fcb,fb,fdb->fcd", lx, h - r, lx)
                       + np.einsum("fcdb,fb->fcd", d2b, rb))
    ic = np.arange(1, 1 + n_c)
    hess[:, ic, ic] += 2.0
    return _Eval(q, nu, gamma, grad, hess)


def _newton_direction(grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """Newton step; where the Hessian is not positive definite, its eigenvalues made positive.

    Positive definiteness is tested by a batched Cholesky factorisation (numpy raises for the
    whole batch, so the test is repeated per fit only then); those fits get the modified
    Newton step of Nocedal & Wright, sec. 3.4 (eigenvalues replaced by their absolute values,
    floored at :data:`EIG_FLOOR_REL` of the largest).
    """
    try:
        chol = np.linalg.cholesky(hess)
        bad = np.zeros(grad.shape[0], dtype=bool)
    except np.linalg.LinAlgError:
        chol = None
        bad = np.array([not _is_pd(h) for h in hess])
    step = np.empty_like(grad)
    good = ~bad
    if good.any():
        if chol is None:
            chol = np.linalg.cholesky(hess[good])
        else:
            chol = chol[good]
        y = np.linalg.solve(chol, -grad[good][..., None])
        step[good] = np.linalg.solve(np.swapaxes(chol, 1, 2), y)[..., 0]
    if bad.any():
        lam, vec = np.linalg.eigh(hess[bad])
        floor = EIG_FLOOR_REL * np.max(np.abs(lam), axis=1, keepdims=True) + 1e-300
        lam = np.where(lam > floor, lam, np.maximum(np.abs(lam), floor))
        proj = np.einsum("fdc,fd->fc", vec, grad[bad])
        step[bad] = -np.einsum("fdc,fc->fd", vec, proj / lam)
    return step


def _is_pd(h: np.ndarray) -> bool:
    """Whether a symmetric matrix is numerically positive definite (Cholesky succeeds)."""
    try:
        np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        return False
    return bool(np.all(np.isfinite(h)))


@dataclass(frozen=True)
class BatchFit:
    """Best fits of a batch of independent problems (:func:`fit_batch`).

    ``q`` ``(F,)`` is the minimum of :math:`-2\\ln(L/L_\\mathrm{sat})` (the test statistic),
    ``x`` ``(F, D)`` the parameters ``(ln mu, theta..., eta...)``, ``nu`` and ``gamma``
    ``(F, n_bins)`` the fitted expectation and MC-stat factors, ``hess`` ``(F, D, D)`` the
    Hessian of ``q`` at the minimum (covariance ``2 hess^-1``) when asked, ``converged``
    ``(F,)``, ``multimodal`` ``(F,)``: several minima found (``multistart`` only).
    """

    q: np.ndarray
    x: np.ndarray
    nu: np.ndarray
    gamma: np.ndarray
    converged: np.ndarray
    hess: np.ndarray | None = None
    multimodal: np.ndarray | None = None


def fit_batch(
    model: SystModel,
    counts: ArrayLike,
    *,
    centre: ArrayLike | None = None,
    aux: ArrayLike | None = None,
    start: ArrayLike | None = None,
    hessian: bool = False,
    multistart: bool = False,
) -> BatchFit:
    r"""Fit the model to a batch of data histograms, each an independent problem.

    Damped Newton on :math:`x = (\ln\mu, \theta, \eta)` with the :math:`\gamma_i` profiled
    analytically (:func:`_profile_gamma`); see the module docstring. Only fits not yet
    converged are evaluated at each iteration.

    The profiled likelihood need not be convex: code4p's polynomial makes a template whose up
    and down variations lie on the same side of the nominal a double well, and several such
    templates can give separate minima. With ``multistart`` each fit is also started from
    each nuisance in turn at its centre :math:`\pm1` and :math:`\pm1.5`
    (:data:`MULTISTART_OFFSETS`) and, for 2 to
    :data:`MAX_CORNER_DIM` nuisances, from every corner of the :math:`\pm1` cube, and the
    lowest converged minimum is kept (``multimodal`` flags fits whose starts found minima
    differing by more than :data:`MULTIMODAL_TOL`).

    Parameters
    ----------
    counts:
        ``(F, n_bins)`` data counts (or ``(n_bins,)`` for one fit).
    centre:
        ``(F, K + J)`` global observables of the thetas and etas (default 0).
    aux:
        ``(F, n_bins)`` global observables of the gammas (default 1).
    start:
        ``(F, D)`` starting point (default: :math:`\mu = N/\sum w`, nuisances at ``centre``).
    hessian:
        Also return the Hessian of ``q`` at the minimum.
    multistart:
        Start each fit from several points (above).
    """
    n = np.atleast_2d(np.asarray(counts, dtype=float))
    n_fit, n_bins = n.shape
    if n_bins != model.n_bins:
        raise ValueError(f"{n_bins} bins of data for a model of {model.n_bins}")
    n_c = model.n_constrained
    c0 = np.zeros((n_fit, n_c)) if centre is None else np.broadcast_to(
        np.asarray(centre, dtype=float), (n_fit, n_c))
    a = np.ones((n_fit, n_bins)) if aux is None else np.broadcast_to(
        np.asarray(aux, dtype=float), (n_fit, n_bins))
    if start is None:
        tot = np.maximum(n.sum(axis=1), 0.5)
        x = np.concatenate([np.log(tot / model.total.sum())[:, None], c0], axis=1)
    else:
        x = np.array(np.broadcast_to(np.asarray(start, dtype=float), (n_fit, 1 + n_c)))
    multimodal = np.zeros(n_fit, dtype=bool)
    if multistart and n_c:
        offsets = _start_offsets(n_c)  # (S, n_c), row 0 = the given start
        n_s = offsets.shape[0]
        xs = np.repeat(x[:, None, :], n_s, axis=1)
        xs[:, 1:, 1:] = c0[:, None, :] + offsets[None, 1:]
        rep = (n_fit * n_s, -1)
        x_all, dec_all = _newton(model, np.repeat(n, n_s, 0), np.repeat(a, n_s, 0),
                                 np.repeat(c0, n_s, 0), xs.reshape(rep))
        q_all = _evaluate(model, x_all, np.repeat(n, n_s, 0), np.repeat(a, n_s, 0),
                          np.repeat(c0, n_s, 0), False).q.reshape(n_fit, n_s)
        ok = np.isfinite(q_all) & (dec_all.reshape(n_fit, n_s) < DECREMENT_ACCEPT)
        q_ok = np.where(ok, q_all, np.inf)
        best = np.where(ok.any(axis=1), np.argmin(q_ok, axis=1), 0)
        spread = np.max(np.where(ok, q_all, -np.inf), axis=1) - np.min(q_ok, axis=1)
        multimodal = ok.any(axis=1) & (spread > MULTIMODAL_TOL)
        pick = np.arange(n_fit) * n_s + best
        x, decrement = x_all[pick], dec_all[pick]
    else:
        x, decrement = _newton(model, n, a, c0, x)
    final = _evaluate(model, x, n, a, c0, hessian)
    converged = np.isfinite(final.q) & (decrement < DECREMENT_ACCEPT)
    return BatchFit(final.q, x, final.nu, final.gamma, converged, final.hess, multimodal)


def _start_offsets(n_c: int) -> np.ndarray:
    """Nuisance starting offsets of :func:`fit_batch`'s multistart, row 0 all zero."""
    rows = [np.zeros(n_c)]
    for k in range(n_c):
        for offset in (*(-o for o in MULTISTART_OFFSETS), *MULTISTART_OFFSETS):
            r = np.zeros(n_c)
            r[k] = offset
            rows.append(r)
    if 2 <= n_c <= MAX_CORNER_DIM:
        rows.extend(np.array(c) for c in itertools.product((-1.0, 1.0), repeat=n_c))
    return np.array(rows)


def _newton(
    model: SystModel, n: np.ndarray, a: np.ndarray, c0: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The damped Newton iterations of :func:`fit_batch`: ``(x, decrement)``; compiled, one
    fit at a time (:mod:`validator.stats.systematics_kernel`: 2.5-8x faster per toy), or batched in
    numpy without numba (:func:`_newton_numpy`)."""
    if HAVE_NUMBA and x.shape[0] > 0:
        return newton_fits(model, n, a, c0, x, max_iter=MAX_ITER, max_halvings=MAX_HALVINGS,
                           max_step=MAX_STEP, armijo_c=ARMIJO_C, decrement_tol=DECREMENT_TOL,
                           resolvable_decrease=RESOLVABLE_DECREASE,
                           eig_floor_rel=EIG_FLOOR_REL)
    return _newton_numpy(model, n, a, c0, x)


def warm() -> None:
    """Load (or compile, the first time) the compiled fits in this process: about 0.5 s from
    numba's cache, which every process forked from this one would otherwise spend on its
    first fit. One fit of a one-bin model with a shape and a normalisation nuisance: the
    arrays :func:`newton_fits` is given have the types of every fit's."""
    if HAVE_NUMBA:
        one = np.array([10.0])
        fit_batch(build_model(one, one, {"s": (one * 1.1, None)}, {"process0": 0.1}), one)


def _newton_numpy(
    model: SystModel, n: np.ndarray, a: np.ndarray, c0: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The batched damped Newton iterations of :func:`fit_batch` in numpy, every fit of the
    batch stepped together: the reference of the compiled path, and the path without numba."""
    x = x.copy()
    n_fit = x.shape[0]
    done = np.zeros(n_fit, dtype=bool)
    decrement = np.full(n_fit, np.inf)
    for _ in range(MAX_ITER):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        xa, na, aa, ca = x[act], n[act], a[act], c0[act]
        ev = _evaluate(model, xa, na, aa, ca, True)
        step = _newton_direction(ev.grad, ev.hess)  # type: ignore[arg-type]
        longest = np.max(np.abs(step), axis=1, keepdims=True)
        step = step * np.minimum(1.0, MAX_STEP / np.maximum(longest, 1e-300))
        dec = -np.sum(ev.grad * step, axis=1)  # type: ignore[operator]
        decrement[act] = dec
        small = dec < DECREMENT_TOL
        # Converged: take the last (tiny) Newton step and stop.
        x[act[small]] = xa[small] + step[small]
        done[act[small]] = True
        move = ~small
        if not move.any():
            continue
        idx = act[move]
        xm, sm, qm = xa[move], step[move], ev.q[move]
        alpha = np.ones(idx.size)
        pending = np.ones(idx.size, dtype=bool)
        slope = -dec[move]
        for _h in range(MAX_HALVINGS):
            p = np.flatnonzero(pending)
            with np.errstate(over="ignore", invalid="ignore"):  # rejected below if not finite
                q_new = _evaluate(model, xm[p] + alpha[p, None] * sm[p], na[move][p],
                                  aa[move][p], ca[move][p], False).q
            ok = np.isfinite(q_new) & (q_new <= qm[p] + ARMIJO_C * alpha[p] * slope[p])
            pending[p[ok]] = False
            alpha[p[~ok]] *= 0.5
            hopeless = pending & (alpha * np.abs(slope) < RESOLVABLE_DECREASE)
            if not (pending & ~hopeless).any():
                break
        stalled = pending
        x[idx[~stalled]] = xm[~stalled] + alpha[~stalled, None] * sm[~stalled]
        done[idx[stalled]] = True  # no descent possible: stop, judged by its decrement
    return x, decrement


def expected_counts(model: SystModel, params: ArrayLike, gamma: ArrayLike | None = None
                    ) -> np.ndarray:
    r"""Expected data counts :math:`\mu\gamma_i B_i(\theta, \eta)` at ``params`` ``(F, D)``."""
    x = np.atleast_2d(np.asarray(params, dtype=float))
    b = np.maximum(_process_sum(model, x, False)[0], model.b_floor)
    g = 1.0 if gamma is None else np.asarray(gamma, dtype=float)
    return np.exp(x[:, :1]) * g * b


def q_unprofiled(
    model: SystModel,
    counts: ArrayLike,
    params: ArrayLike,
    gamma: ArrayLike,
    *,
    centre: ArrayLike | None = None,
    aux: ArrayLike | None = None,
) -> np.ndarray:
    r""":math:`q = -2\ln(L/L_\mathrm{sat})` at given parameters, the :math:`\gamma_i` included.

    The written-out formula of the module docstring (no profiling): for checks against
    references and for scans. ``params`` ``(F, D)``, ``gamma`` and ``counts`` ``(F, n_bins)``.
    """
    x = np.atleast_2d(np.asarray(params, dtype=float))
    n = np.atleast_2d(np.asarray(counts, dtype=float))
    g = np.atleast_2d(np.asarray(gamma, dtype=float))
    c0 = 0.0 if centre is None else np.asarray(centre, dtype=float)
    a = 1.0 if aux is None else np.asarray(aux, dtype=float)
    nu = expected_counts(model, x, g)
    sigma = model.sigma_rel
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(n > 0, n * np.log(n / nu), 0.0)
        con = np.where(sigma > 0, (g - a) ** 2 / np.where(sigma > 0, sigma, 1.0) ** 2, 0.0)
    dev = 2.0 * (nu - n + log_term)
    return dev.sum(axis=1) + con.sum(axis=1) + np.sum((x[:, 1:] - c0) ** 2, axis=1)


# ------------------------------------------------------------------------------------------
# the test
# ------------------------------------------------------------------------------------------


def saturated_syst(
    data_counts: ArrayLike,
    sim_sumw: ArrayLike,
    sim_sumw2: ArrayLike,
    *,
    variations: Mapping[str, tuple[ArrayLike, ArrayLike | None]] | None = None,
    norm_uncertainties: Mapping[str, float | tuple[float, float]] | None = None,
    process_names: Sequence[str] | None = None,
    mc_stat: bool = True,
    n_toys: int = DEFAULT_TOYS,
    rng: np.random.Generator | None = None,
    max_toys: int | None = None,
    thresholds: Sequence[float] = (),
    coarse_above: float | None = None,
) -> GofResult:
    r"""Saturated-model goodness of fit with systematic uncertainties profiled; toy p-value.

    The statistic is the minimum over all parameters of

    .. math::

        q = -2\ln\frac{L(\hat\mu, \hat\theta, \hat\eta, \hat\gamma)}{L_\mathrm{sat}}
          = \sum_i 2\Bigl[\hat\nu_i - n_i + n_i\ln\frac{n_i}{\hat\nu_i}\Bigr]
            + \sum_i\frac{(\hat\gamma_i - 1)^2}{\sigma_i^2} + \sum_k\hat\theta_k^2
            + \sum_j\hat\eta_j^2

    (module docstring: the model; Baker & Cousins, NIM 221 (1984) 437; Combine's
    ``saturated`` algorithm, where the saturated model has :math:`\nu_i = n_i` and every
    constraint at its centre). Without systematics it equals
    :func:`validator.stats.likelihood.saturated` (the same BB-lite model in absolute units).

    The p-value comes from frequentist toys, as Combine's ``GoodnessOfFit --toysFrequentist``:
    after the fit to the data, each toy draws :math:`n_i^* \sim \mathrm{Poisson}(\hat\nu_i)`
    (the post-fit expectation) and the global observables from their constraints around the
    post-fit values, :math:`\theta_{0k}^*, \eta_{0j}^* \sim \mathrm{N}(\hat\theta_k, 1)`,
    :math:`a_i^* \sim \mathrm{N}(\hat\gamma_i, \sigma_i^2)`, and is refitted with those global
    observables (all toys of the test in one vectorised batch, :func:`fit_batch`). The fit
    to the data is started from several points (``multistart`` of :func:`fit_batch`); when it
    finds separate minima (``details["multimodal"]``) every toy is fitted that way too.
    :math:`p = (1 + \#\{q^* \ge q\}) / (1 + n_\mathrm{toys})`, a bound when no toy reaches
    :math:`q` (``pvalue_is_bound``); toys whose fit fails count as reaching it. With
    ``max_toys`` and ``thresholds`` more toys are added while a decision at a threshold is
    open (:func:`validator.stats.toys.run_toys`).

    Parameters
    ----------
    data_counts:
        Data counts per bin, shape ``S`` (flattened).
    sim_sumw, sim_sumw2:
        Simulated :math:`\sum w` and :math:`\sum w^2` per bin, shape ``S`` (the shape of
        ``data_counts``: one process) or ``(P,) + S`` (``P`` processes, summed). Every kept bin
        needs a positive total (merge sparse bins first). Bins empty in the data and in every
        template are dropped, as in :func:`~validator.stats.likelihood.saturated`.
    variations:
        Shape systematics: name -> ``(up, down)`` templates of the simulated :math:`\sum w`,
        shape ``S`` (of the total) or ``(P,) + S`` (per process, a row equal to the nominal
        where a process is unaffected). ``down = None``: one-sided, symmetrised as
        :math:`2\,\text{nom} - \text{up}`. Templates are used as given (not normalised): the
        free :math:`\mu` absorbs their effect on the total. Only the nominal's MC statistics
        enter (as in HistFactory's ``staterror``). With several processes, a template of the
        total adds its delta after the process normalisations.
    norm_uncertainties:
        Process name -> relative uncertainty :math:`\delta` (log-normal,
        :math:`\kappa_\pm = (1 + \delta)^{\pm1}`, Combine's ``lnN``) or ``(lo, hi)`` factors.
        With one process (or one on every process) it is degenerate with the free
        normalisation and has no effect.
    process_names:
        Names of the ``P`` processes (default ``process0``, ...).
    mc_stat:
        Include the per-bin BB-lite :math:`\gamma_i` (default) or not.
    n_toys:
        Toys for the p-value (0: asymptotic :math:`\chi^2_{\text{bins}-1}` p-value only, with
        ``pvalue_method='asymptotic'``; not calibrated for this test's use and reported
        ``reliable = False``).
    rng:
        The test's random generator (e.g. :func:`validator.stages.compare.test_rng`); required when
        ``n_toys > 0``.
    max_toys, thresholds:
        Adaptive toys (see above).
    coarse_above:
        p-values above this level (and above every threshold) may be coarse: the toys stop
        at the h-th toy reaching the observation (Besag & Clifford's sequential p-value,
        :func:`validator.stats.toys.sequential_stop`); decisions at that level and below
        are unchanged. ``None``: ``n_toys`` always.

    Returns
    -------
    GofResult
        ``method='saturated_syst'``, ``ndf`` = bins − 1 (each constrained nuisance brings its
        own auxiliary measurement), ``effect_size`` ``max_abs_ratio_dev`` of the nominal (as
        ``saturated``), signed deviance residuals, and ``details``: ``mu_hat``, ``mu_err``,
        ``nuisances`` (name -> ``{"kind", "value", "error", "pull"}``: post-fit value,
        Hessian uncertainty and pull :math:`(\hat\theta - 0)/1`), ``gamma_max_pull``
        (:math:`\max_i|\hat\gamma_i - 1|/\sigma_i`), ``constraint_total``,
        ``max_abs_ratio_dev_postfit``, ``pvalue_asymptotic``, ``fit_converged`` and the toy
        details of :func:`~validator.stats.toys.run_toys`, ``multimodal``.

    Raises
    ------
    ValueError
        On mismatched shapes, negative or non-finite inputs, empty data, a kept bin with a
        non-positive simulated total, or a normalisation for an unknown process.
    """
    n_in = np.asarray(data_counts, dtype=float)
    w_in = np.asarray(sim_sumw, dtype=float)
    s2_in = np.asarray(sim_sumw2, dtype=float)
    if w_in.shape == n_in.shape:
        w2d, s22d = w_in.reshape(1, -1), s2_in.reshape(1, -1)
    elif w_in.ndim == n_in.ndim + 1 and w_in.shape[1:] == n_in.shape:
        w2d, s22d = w_in.reshape(w_in.shape[0], -1), s2_in.reshape(w_in.shape[0], -1)
    else:
        raise ValueError(f"shapes differ: data {n_in.shape}, sim_sumw {w_in.shape}")
    if s2_in.shape != w_in.shape:
        raise ValueError(f"shapes differ: sim_sumw {w_in.shape}, sim_sumw2 {s2_in.shape}")
    n_all = n_in.ravel()
    if not (np.all(np.isfinite(n_all)) and np.all(np.isfinite(w2d))):
        raise ValueError("data and sim_sumw must be finite")
    if np.any(n_all < 0):
        raise ValueError("data counts must be non-negative")
    if np.any(s22d < 0) or not np.all(np.isfinite(s22d)):
        raise ValueError("sim_sumw2 must be finite and non-negative")
    if n_all.sum() <= 0:
        raise ValueError("the data histogram is empty")
    check_toy_options(n_toys, max_toys, thresholds)
    if n_toys > 0 and not isinstance(rng, np.random.Generator):
        raise ValueError("toys need rng, a numpy.random.Generator (e.g. compare.test_rng)")

    def flat(v: ArrayLike | None) -> np.ndarray | None:
        if v is None:
            return None
        arr = np.asarray(v, dtype=float)
        if arr.shape == n_in.shape:
            return arr.ravel()
        if arr.ndim == n_in.ndim + 1 and arr.shape[1:] == n_in.shape:
            return arr.reshape(arr.shape[0], -1)
        raise ValueError(f"a variation has shape {arr.shape}; expected {n_in.shape} or "
                         f"(processes,) + {n_in.shape}")

    var_flat = {name: (flat(up), flat(dn)) for name, (up, dn) in (variations or {}).items()}
    touched = np.zeros(n_all.size, dtype=bool)
    for up, dn in var_flat.values():
        for t in (up, dn):
            if t is not None:
                touched |= np.any(np.atleast_2d(t) != 0, axis=0)
    used = ~((n_all == 0) & np.all(w2d == 0, axis=0) & ~touched)
    model = build_model(w2d, s22d, var_flat, norm_uncertainties,  # type: ignore[arg-type]
                        process_names=process_names, mc_stat=mc_stat, bins=used)
    n = n_all[used]
    n_bins = model.n_bins
    ndf = n_bins - 1

    fit = fit_batch(model, n[None], hessian=True, multistart=True)
    multimodal = bool(fit.multimodal[0])  # type: ignore[index]
    q = float(fit.q[0])
    x_hat = fit.x[0]
    nu_hat, gamma_hat = fit.nu[0], fit.gamma[0]
    converged = bool(fit.converged[0])
    try:
        cov = 2.0 * np.linalg.inv(fit.hess[0])  # type: ignore[index]
        err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:
        err = np.full(model.n_params, np.nan)

    sigma = model.sigma_rel
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(n > 0, n * np.log(n / nu_hat), 0.0)
        con = np.where(sigma > 0, (gamma_hat - 1.0) ** 2 / np.where(sigma > 0, sigma, 1) ** 2,
                       0.0)
    dev = 2.0 * (nu_hat - n + log_term)
    res_used = np.sign(n - nu_hat) * np.sqrt(np.clip(dev + con, 0.0, None))
    residuals = np.zeros(n_all.size)
    residuals[used] = res_used

    mu_hat = float(np.exp(x_hat[0]))
    nuisances: dict[str, dict[str, object]] = {}
    n_k = len(model.shape_names)
    for c, name in enumerate(model.shape_names + model.norm_names):
        kind = "shape" if c < n_k else "norm"
        value = float(x_hat[1 + c])
        nuisances[name] = {"kind": kind, "value": value, "error": float(err[1 + c]),
                           "pull": value}
    pulls_gamma = np.where(sigma > 0, np.abs(gamma_hat - 1.0) / np.where(sigma > 0, sigma, 1),
                           0.0)
    details: dict[str, object] = {
        "mu_hat": mu_hat,
        "mu_err": mu_hat * float(err[0]),
        "nuisances": nuisances,
        "n_bins_used": n_bins,
        "n_bins_dropped": int((~used).sum()),
        "mc_stat": bool(mc_stat),
        "gamma_max_pull": float(pulls_gamma.max()) if n_bins else float("nan"),
        "constraint_total": float(con.sum() + np.sum(x_hat[1:] ** 2)),
        "max_abs_ratio_dev_postfit": float(np.max(np.abs(n / nu_hat - 1.0))),
        "min_expected": float(nu_hat.min()),
        "n_bins_expected_lt5": int(np.sum(nu_hat < MIN_EXPECTED)),
        "fit_converged": converged,
        "multimodal": multimodal,
        "pvalue_asymptotic": float(stats.chi2.sf(q, ndf)) if ndf >= 1 else float("nan"),
        "interpolation": "histosys code4p, normsys code4 (pyhf); staterror Gaussian",
    }

    pvalue_is_bound = False
    n_toys_total: int | None = None
    reliable = converged
    if n_toys > 0:
        gen = rng
        theta_hat = x_hat[1:]
        start = x_hat

        def draw(size: int) -> np.ndarray:
            q_all: list[np.ndarray] = []
            for lo in range(0, size, TOY_CHUNK):
                m = min(TOY_CHUNK, size - lo)
                n_toy = poisson_toys(gen, nu_hat, m)
                centre = theta_hat + gen.standard_normal((m, model.n_constrained))
                aux = gamma_hat + sigma * gen.standard_normal((m, n_bins))
                ok = n_toy.sum(axis=1) > 0
                tf = fit_batch(model, n_toy[ok], centre=centre[ok], aux=aux[ok],
                               start=np.broadcast_to(start, (int(ok.sum()), start.size)),
                               multistart=multimodal)
                q_chunk = np.full(m, np.nan)  # unfitted or not converged: counts as reaching
                q_chunk[np.flatnonzero(ok)[tf.converged]] = tf.q[tf.converged]
                q_all.append(q_chunk)
            return np.concatenate(q_all) if q_all else np.zeros(0)

        options = ToyOptions(n_toys, max_toys, tuple(thresholds), coarse_above)
        law = chi2_tail_law(q, ndf if ndf >= 1 else None,
                            float(stats.chi2.sf(q, ndf)) if ndf >= 1 else None)
        toys = run_toys(q, draw, options, tail=law)
        pvalue, pvalue_is_bound, n_toys_total = toys.pvalue, toys.pvalue_is_bound, toys.n_toys
        details.update(toys.details)
        details["n_toys_failed"] = toys.n_failed
        details["q_toys_mean"] = float(toys.toys.mean()) if toys.toys.size else float("nan")
        pvalue_method = "toys"
    else:
        pvalue = float(details["pvalue_asymptotic"])  # type: ignore[arg-type]
        pvalue_method = "asymptotic"
        reliable = False
        details["unreliable_reason"] = "asymptotic p-value of the systematic test: use toys"
    if not converged:
        details["unreliable_reason"] = "the fit to the data did not converge"

    return GofResult(
        method=METHOD,
        statistic=q,
        pvalue=float(pvalue),
        ndf=ndf,
        effect_size=max_abs_ratio_deviation(n_all, w2d.sum(axis=0)),
        effect_name="max_abs_ratio_dev",
        pvalue_method=pvalue_method,
        n_toys=n_toys_total,
        reliable=reliable,
        residuals=residuals.reshape(n_in.shape),
        details=details,
        pvalue_is_bound=pvalue_is_bound,
    )
