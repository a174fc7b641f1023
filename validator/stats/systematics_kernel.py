"""Compiled damped-Newton fits of :func:`validator.stats.systematics.fit_batch` (numba).

The toys of ``saturated_syst`` are each a profile fit: Newton's method on
:math:`x = (\\ln\\mu, \\boldsymbol\\theta, \\boldsymbol\\eta)` with every bin's
:math:`\\gamma_i` profiled analytically. With numpy, batched over the toys
(:func:`validator.stats.systematics._newton_numpy`, kept as the reference and the path without
numba), each iteration and each backtracking step is a few dozen array passes over
(toys x bins) arrays and their (toys x parameters² x bins) derivatives. A histogram whose
p-value lies near Holm's first threshold needs tens of thousands of such toys (the audited
benchmark's feature x output pairs: most of its tests' time). :func:`newton_fits` runs the
same algorithm one fit at a time in a compiled loop, each fit's per-bin terms accumulated in
one pass over its bins, with no (parameters² x bins) array: the same iterations, the same
step rule, the same line search. Measured, the whole ``saturated_syst`` per toy (draws
included), one process with two shape systematics, one core: 59 -> 7.4 µs at 20 bins,
102 -> 28 µs at 100 bins, 219 -> 81-93 µs at 300 bins (``benchmarks/RESULTS.md``, session 11;
``benchmarks/bench_systematics.py --numpy`` times a run-sized set both ways).

Two details differ from the batched numpy loop, both only where a fit cannot move:

- a backtracking search stops as soon as its predicted decrease is below
  ``RESOLVABLE_DECREASE`` (the batched loop keeps halving such a fit while other fits of the
  batch still search, so its outcome depended on its batch);
- a fit whose gradient or Hessian is not finite stops there (not converged: its toy counts as
  reaching the observation), where numpy's eigen-decomposition raised for the whole batch.

Otherwise the fits agree with the numpy path to rounding (``tests/test_stats_systematics.py``
asserts the statistic to 1e-9 relative and the parameters to 1e-6; the mean statistic of 8,192
toys agreed to 1e-15). ``numba`` is a dependency; where it cannot be
imported (:data:`validator.stats.compiled.HAVE_NUMBA`) the numpy path runs instead.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from validator.stats.compiled import HAVE_NUMBA, numba

__all__ = ["ModelArrays", "newton_fits"]


class ModelArrays(Protocol):
    """What the kernel reads of a :class:`validator.stats.systematics.SystModel`."""

    nominal: np.ndarray
    delta_s: np.ndarray
    delta_a: np.ndarray
    norm_lo: np.ndarray
    norm_hi: np.ndarray
    norm_process: np.ndarray
    norm_coef: np.ndarray
    sigma_rel: np.ndarray
    b_floor: float


def _code4_scalar(t: float, lo: float, hi: float, coef: np.ndarray) -> tuple[float, float, float]:
    """pyhf code4 at one value (``validator.stats.systematics._code4``): value, d1, d2."""
    if t >= 1.0:
        v = hi ** t
        lh = math.log(hi)
        return v, v * lh, v * lh * lh
    if t <= -1.0:
        v = lo ** (-t)
        ll = math.log(lo)
        return v, -v * ll, v * ll * ll
    poly, dpoly, d2poly = 1.0, 0.0, 0.0
    power, prev = 1.0, 0.0
    for i in range(1, 7):
        ci = coef[i - 1]
        dpoly += i * ci * power
        d2poly += i * (i - 1) * ci * prev
        prev = power
        power = power * t
        poly += ci * power
    return poly, dpoly, d2poly


def _evaluate_one(x: np.ndarray, n: np.ndarray, aux: np.ndarray, centre: np.ndarray,
                  nom: np.ndarray, ds: np.ndarray, da: np.ndarray, norm_lo: np.ndarray,
                  norm_hi: np.ndarray, norm_process: np.ndarray, norm_coef: np.ndarray,
                  sigma: np.ndarray, b_floor: float, derivatives: bool,
                  templ: np.ndarray, kappa: np.ndarray, cw: np.ndarray, dcw: np.ndarray,
                  d2cw: np.ndarray, k1: np.ndarray, k2: np.ndarray, db: np.ndarray,
                  d2b: np.ndarray, lx: np.ndarray, grad: np.ndarray, hess: np.ndarray) -> float:
    """Profiled ``q`` of one fit at ``x`` (``systematics._evaluate``); with ``derivatives``
    its gradient and Hessian into ``grad``, ``hess``. The other arrays are work space."""
    n_rows, n_bins = nom.shape
    n_k = ds.shape[0]
    n_j = norm_lo.shape[0]
    n_c = n_k + n_j
    for k in range(n_k):  # code4p as Delta = theta S + c(theta) A (systematics._code4p_weights)
        t = x[1 + k]
        t2 = t * t
        if t > 1.0 or t < -1.0:
            sign = 8.0 if t > 1.0 else -8.0
            cw[k] = sign * t
            dcw[k] = sign
            d2cw[k] = 0.0
        else:
            cw[k] = t2 * (15.0 + t2 * (-10.0 + 3.0 * t2))
            dcw[k] = t * (30.0 + t2 * (-40.0 + 18.0 * t2))
            d2cw[k] = 30.0 + t2 * (-120.0 + 90.0 * t2)
    for p in range(n_rows):
        kappa[p] = 1.0
    for j in range(n_j):
        k0, k1_j, k2_j = _code4_scalar(x[1 + n_k + j], norm_lo[j], norm_hi[j], norm_coef[j])
        k1[j] = k1_j
        k2[j] = k2_j
        kappa[norm_process[j]] = k0
    mu = math.exp(x[0])
    q_dev = 0.0
    q_con = 0.0
    if derivatives:
        dim = 1 + n_c
        for c in range(dim):
            grad[c] = 0.0
            for d in range(dim):
                hess[c, d] = 0.0
    for i in range(n_bins):
        b_raw = 0.0
        for p in range(n_rows):
            s_part = 0.0
            a_part = 0.0
            for k in range(n_k):
                s_part += x[1 + k] * ds[k, p, i]
                a_part += cw[k] * da[k, p, i]
            templ[p] = nom[p, i] + (s_part + a_part)
            b_raw += kappa[p] * templ[p]
        low = b_raw < b_floor
        b = b_floor if low else b_raw
        m = mu * b
        s = sigma[i]
        s2 = s * s
        cc = aux[i] - m * s2
        r = math.sqrt(cc * cc + 4.0 * n[i] * s2)
        if cc >= 0:
            gamma = 0.5 * (cc + r)
        elif r - cc > 0:
            gamma = 2.0 * n[i] * s2 / (r - cc)
        else:
            gamma = 0.0
        nu = gamma * m
        log_term = n[i] * math.log(n[i] / nu) if n[i] > 0 else 0.0
        q_dev += 2.0 * (nu - n[i] + log_term)
        if s > 0:
            q_con += (gamma - aux[i]) ** 2 / s2
        if not derivatives:
            continue
        # the bin's derivatives of B with respect to (theta, eta) (systematics._process_sum)
        for k in range(n_k):
            ks = 0.0
            ka = 0.0
            for p in range(n_rows):
                ks += kappa[p] * ds[k, p, i]
                ka += kappa[p] * da[k, p, i]
            db[k] = ks + dcw[k] * ka
            d2b[k, k] = d2cw[k] * ka
        for j in range(n_j):
            p = norm_process[j]
            row = n_k + j
            db[row] = k1[j] * templ[p]
            d2b[row, row] = k2[j] * templ[p]
            for k in range(n_k):
                cross = k1[j] * (ds[k, p, i] + dcw[k] * da[k, p, i])
                d2b[k, row] = cross
                d2b[row, k] = cross
        rr = 2.0 * (nu - n[i])
        if s > 0:
            denom = n[i] + gamma * gamma / s2
            h = 2.0 * nu * (1.0 - nu / denom if denom > 0 else 1.0)
        else:
            h = 2.0 * nu
        if not math.isfinite(h):
            h = 2.0 * nu
        rb = 0.0 if low else rr / b
        for c in range(n_c):
            lx[c] = 0.0 if low else db[c] / b
        grad[0] += rr
        hess[0, 0] += h
        for c in range(n_c):
            grad[1 + c] += lx[c] * rr
            hess[0, 1 + c] += lx[c] * h
            for d in range(n_c):
                hess[1 + c, 1 + d] += lx[c] * (h - rr) * lx[d] + d2b[c, d] * rb
    q_nuis = 0.0
    for c in range(n_c):
        q_nuis += (x[1 + c] - centre[c]) ** 2
    if derivatives:
        for c in range(n_c):
            grad[1 + c] += 2.0 * (x[1 + c] - centre[c])
            hess[1 + c, 0] = hess[0, 1 + c]
            hess[1 + c, 1 + c] += 2.0
    return q_dev + q_con + q_nuis


def _direction(grad: np.ndarray, hess: np.ndarray, chol: np.ndarray, step: np.ndarray,
               eig_floor_rel: float) -> None:
    """Newton step into ``step`` (``systematics._newton_direction``): by Cholesky where the
    Hessian is positive definite, else with its eigenvalues made positive (Nocedal & Wright,
    sec. 3.4). The Hessian must be finite."""
    dim = grad.shape[0]
    positive = True
    for j in range(dim):
        s = hess[j, j]
        for k in range(j):
            s -= chol[j, k] * chol[j, k]
        if not s > 0:
            positive = False
            break
        chol[j, j] = math.sqrt(s)
        for i in range(j + 1, dim):
            t = hess[i, j]
            for k in range(j):
                t -= chol[i, k] * chol[j, k]
            chol[i, j] = t / chol[j, j]
    if positive:
        for i in range(dim):  # L y = -g
            t = -grad[i]
            for k in range(i):
                t -= chol[i, k] * step[k]
            step[i] = t / chol[i, i]
        for i in range(dim - 1, -1, -1):  # L^T s = y
            t = step[i]
            for k in range(i + 1, dim):
                t -= chol[k, i] * step[k]
            step[i] = t / chol[i, i]
        return
    lam, vec = np.linalg.eigh(hess)
    largest = 0.0
    for c in range(dim):
        largest = max(largest, abs(lam[c]))
    floor = eig_floor_rel * largest + 1e-300
    for c in range(dim):
        if not lam[c] > floor:
            lam[c] = max(abs(lam[c]), floor)
    for d in range(dim):
        step[d] = 0.0
    for c in range(dim):
        proj = 0.0
        for d in range(dim):
            proj += vec[d, c] * grad[d]
        for d in range(dim):
            step[d] -= vec[d, c] * proj / lam[c]


def _newton_fits_py(nom: np.ndarray, ds: np.ndarray, da: np.ndarray, norm_lo: np.ndarray,
                    norm_hi: np.ndarray, norm_process: np.ndarray, norm_coef: np.ndarray,
                    sigma: np.ndarray, b_floor: float, n: np.ndarray, aux: np.ndarray,
                    centre: np.ndarray, x: np.ndarray, max_iter: int, max_halvings: int,
                    max_step: float, armijo_c: float, decrement_tol: float,
                    resolvable_decrease: float, eig_floor_rel: float,
                    decrement: np.ndarray) -> None:
    """The damped Newton iterations of every fit (``systematics._newton_numpy``), in place:
    ``x`` ``(F, D)`` from its start to the minimum, ``decrement`` ``(F,)`` the last Newton
    decrement (NaN where the derivatives stopped being finite)."""
    n_fit, dim = x.shape
    n_rows = nom.shape[0]
    n_k = ds.shape[0]
    n_j = norm_lo.shape[0]
    n_c = n_k + n_j
    templ = np.empty(n_rows)
    kappa = np.empty(n_rows)
    cw = np.empty(n_k)
    dcw = np.empty(n_k)
    d2cw = np.empty(n_k)
    k1 = np.empty(n_j)
    k2 = np.empty(n_j)
    db = np.zeros(n_c)
    d2b = np.zeros((n_c, n_c))  # entries never written stay zero, as in the numpy model
    lx = np.zeros(n_c)
    grad = np.empty(dim)
    hess = np.empty((dim, dim))
    chol = np.zeros((dim, dim))
    step = np.empty(dim)
    trial = np.empty(dim)
    for f in range(n_fit):
        xf = x[f]
        decrement[f] = np.inf
        q = 0.0
        evaluated = False  # q, grad and hess already hold the values at xf
        for _ in range(max_iter):
            if not evaluated:
                q = _evaluate_one(xf, n[f], aux[f], centre[f], nom, ds, da, norm_lo, norm_hi,
                                  norm_process, norm_coef, sigma, b_floor, True, templ, kappa,
                                  cw, dcw, d2cw, k1, k2, db, d2b, lx, grad, hess)
            evaluated = False
            finite = True
            for c in range(dim):
                if not math.isfinite(grad[c]):
                    finite = False
                for d in range(dim):
                    if not math.isfinite(hess[c, d]):
                        finite = False
            if not finite:
                decrement[f] = np.nan
                break
            _direction(grad, hess, chol, step, eig_floor_rel)
            longest = 0.0
            for c in range(dim):
                longest = max(longest, abs(step[c]))
            scale = min(1.0, max_step / max(longest, 1e-300))
            dec = 0.0
            for c in range(dim):
                step[c] *= scale
                dec -= grad[c] * step[c]
            decrement[f] = dec
            if dec < decrement_tol:  # converged: take the last (tiny) Newton step and stop
                for c in range(dim):
                    xf[c] += step[c]
                break
            slope = -dec
            alpha = 1.0
            accepted = False
            q_new = 0.0
            for h in range(max_halvings):
                for c in range(dim):
                    trial[c] = xf[c] + alpha * step[c]
                # the full step is usually accepted: its derivatives, taken in the same pass
                # over the bins, serve the next iteration (grad and hess are free to reuse:
                # this iteration's step is taken)
                full = h == 0
                q_new = _evaluate_one(trial, n[f], aux[f], centre[f], nom, ds, da, norm_lo,
                                      norm_hi, norm_process, norm_coef, sigma, b_floor,
                                      full, templ, kappa, cw, dcw, d2cw, k1, k2, db, d2b,
                                      lx, grad, hess)
                if math.isfinite(q_new) and q_new <= q + armijo_c * alpha * slope:
                    accepted = True
                    evaluated = full
                    break
                alpha *= 0.5
                if alpha * abs(slope) < resolvable_decrease:
                    break
            if not accepted:  # no descent possible: stop, judged by its decrement
                break
            for c in range(dim):
                xf[c] = trial[c]
            q = q_new


if HAVE_NUMBA:  # the helpers compiled first: the kernel calls them by their global names
    _code4_scalar = numba.njit(cache=True, nogil=True)(_code4_scalar)
    _evaluate_one = numba.njit(cache=True, nogil=True)(_evaluate_one)
    _direction = numba.njit(cache=True, nogil=True)(_direction)
_newton_fits_compiled = (numba.njit(cache=True, nogil=True)(_newton_fits_py)
                         if HAVE_NUMBA else None)


def newton_fits(model: ModelArrays, n: np.ndarray, aux: np.ndarray, centre: np.ndarray,
                x: np.ndarray, *, max_iter: int, max_halvings: int, max_step: float,
                armijo_c: float, decrement_tol: float, resolvable_decrease: float,
                eig_floor_rel: float) -> tuple[np.ndarray, np.ndarray]:
    """The fits of ``model`` (a :class:`validator.stats.systematics.SystModel`) to the rows
    of ``n`` from the starts ``x``, compiled (:func:`_newton_fits_py`): ``(x, decrement)``.
    The constants are :mod:`validator.stats.systematics`' own (passed, not imported, so that
    one definition serves both paths)."""
    if not HAVE_NUMBA:
        raise RuntimeError("numba is not available")
    x_out = np.array(x, dtype=float, order="C", copy=True)
    decrement = np.empty(x_out.shape[0])

    def arg(a: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        # C-ordered and writable (a copy only where needed): numba compiles a kernel per
        # argument type, and a read-only view (a broadcast centre or aux) is another type
        return np.require(a, dtype=dtype, requirements=("C", "W"))

    _newton_fits_compiled(
        arg(model.nominal), arg(model.delta_s), arg(model.delta_a), arg(model.norm_lo),
        arg(model.norm_hi), arg(model.norm_process, np.int64),
        arg(model.norm_coef).reshape(-1, 6), arg(model.sigma_rel), float(model.b_floor),
        arg(n), arg(aux), arg(centre),
        x_out, int(max_iter), int(max_halvings), float(max_step), float(armijo_c),
        float(decrement_tol), float(resolvable_decrease), float(eig_floor_rel), decrement)
    return x_out, decrement

