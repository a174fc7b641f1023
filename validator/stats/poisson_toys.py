"""Poisson numbers of many toys with the same rate per bin: ``poisson_toys(rng, lam, n)``.

The toys of a binned test draw, for every bin, ``n`` Poisson numbers of one rate (the bin's
expected count under the null). numpy's generator spends 40-70 ns a number on that (the
transformed rejection of W. Hörmann, Insurance Math. Econom. 12 (1993) 39, for rates of 10
and more; multiplication below), three quarters of a ``dependence`` toy's cost when a
decision needs tens of thousands of toys. With many toys per rate, the inversion of the
rate's distribution function is cheaper: one uniform number and a table lookup, about 10 ns
(L. Devroye, "Non-Uniform Random Variate Generation", Springer 1986, sec. III.2-3; the table
search starts from a guide table, H. C. Chen and Y. Asau, J. Chinese Inst. Eng. 3 (1974) 6).

Each bin's table is built from its mode ``m = floor(λ)``: ``p(m) = exp(m ln λ − λ −
ln m!)``, then ``p(k−1) = p(k)·k/λ`` downwards and ``p(k+1) = p(k)·λ/(k+1)`` upwards (each
step one rounding, so the shape is exact to about 1e-13 over thousands of steps), until a
term falls below 2⁻⁶⁰ of ``p(m)`` (the mass left out is below 1e-15: never reached by a
uniform number of 53 bits). A toy's number is the first ``k`` whose cumulative sum exceeds
``u·Σp`` (the normalisation cancels any common error of ``p(m)``).

Batches of fewer than :data:`TABLE_MIN_TOYS` toys use numpy's ``Generator.poisson`` as
before (the table would cost more than it saves), so the toys of a fixed number of toys,
and every p-value resting on them, are unchanged; a batch of more takes one uniform number
per toy and bin from the same generator. Both are fixed by the batch size, which the toys'
schedule fixes (:func:`validator.stats.toys.run_toys`). The compiled table search
(numba) and the numpy one give the same numbers bit for bit (the same sequential products
and sums; ``tests/test_stats_toys.py``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from validator.stats.compiled import HAVE_NUMBA, numba

__all__ = ["TABLE_MIN_TOYS", "poisson_toys"]

#: Fewest toys per batch drawn by inversion. A table costs about 3 ns per entry (about 17
#: standard deviations of entries, 1,700 for a rate of 10,000) and saves about 35 ns per
#: number: from a thousand toys on it pays for the largest rates the tests meet.
TABLE_MIN_TOYS = 1024
#: A table ends where its terms fall below this fraction of the mode's.
TAIL_CUT = 2.0**-60


def mode_term(lam: float) -> tuple[int, float]:
    """``(m, p(m))``: the mode ``m = floor(λ)`` of Poisson(``λ``) and its probability, where a
    table's terms start (module docstring)."""
    m = math.floor(lam)
    return m, math.exp(m * math.log(lam) - lam - math.lgamma(m + 1.0))


def poisson_table_numpy(lam: float) -> tuple[int, np.ndarray]:
    """(first k, cumulative sums) of rate ``lam`` > 0, as :func:`_draw_compiled` builds them."""
    m, pm = mode_term(lam)
    cut = pm * TAIL_CUT
    # generous lengths (the tails fall faster than a Gaussian's of sd sqrt(lam)): the terms
    # beyond the cut are dropped below
    span = int(12.0 * math.sqrt(lam) + 40.0)
    k_down = np.arange(m, max(m - span, 0), -1, dtype=np.float64)
    down = np.cumprod(np.concatenate([[pm], k_down / lam]))  # p(m), p(m-1), ...
    k_up = np.arange(m + 1, m + span + 1, dtype=np.float64)
    up = np.cumprod(np.concatenate([[pm], lam / k_up]))  # p(m), p(m+1), ...
    n_down = int(np.argmax(down < cut)) if np.any(down < cut) else down.size
    n_up = int(np.argmax(up < cut)) if np.any(up < cut) else up.size
    terms = np.concatenate([down[1:n_down][::-1], up[:n_up]])
    return m - (n_down - 1), np.cumsum(terms)


def _draw_numpy(lam: np.ndarray, u: np.ndarray, out: np.ndarray) -> None:
    for c in range(lam.size):
        if lam[c] == 0.0:
            out[:, c] = 0.0
            continue
        first, cdf = poisson_table_numpy(float(lam[c]))
        k = np.searchsorted(cdf, u[:, c] * cdf[-1], side="right")
        out[:, c] = first + np.minimum(k, cdf.size - 1)


def _draw_py(lam: np.ndarray, u: np.ndarray, out: np.ndarray, tail_cut: float) -> None:
    """``out[t, c]``: the Poisson(``lam[c]``) number of uniform ``u[t, c]`` (see the module)."""
    n_toys, n_bins = u.shape
    terms = np.empty(64)
    guide = np.empty(64, dtype=np.int64)
    for c in range(n_bins):
        lam_c = lam[c]
        if lam_c == 0.0:
            for t in range(n_toys):
                out[t, c] = 0.0
            continue
        m = math.floor(lam_c)
        pm = math.exp(m * math.log(lam_c) - lam_c - math.lgamma(m + 1.0))
        cut = pm * tail_cut
        # downwards from the mode: how far, then the terms in increasing k
        n_down = 1
        p = pm
        k = m
        while k > 0:
            p = p * (k / lam_c)
            if p < cut:
                break
            n_down += 1
            k -= 1
        first = m - (n_down - 1)
        if terms.size < n_down + 64:
            terms = np.empty(2 * (n_down + 64))
        p = pm
        terms[n_down - 1] = pm
        for i in range(1, n_down):
            p = p * ((m - i + 1) / lam_c)
            terms[n_down - 1 - i] = p
        # upwards from the mode
        n = n_down
        p = pm
        k = m
        while True:
            p = p * (lam_c / (k + 1))
            if p < cut:
                break
            if n >= terms.size:
                grown = np.empty(2 * terms.size)
                grown[:n] = terms[:n]
                terms = grown
            terms[n] = p
            n += 1
            k += 1
        total = 0.0
        for i in range(n):
            total += terms[i]
            terms[i] = total
        # guide: guide[g] is the first index whose cumulative sum exceeds total * g / n
        if guide.size < n:
            guide = np.empty(2 * n, dtype=np.int64)
        j = 0
        for g in range(n):
            level = total * g / n
            while j < n - 1 and terms[j] <= level:
                j += 1
            guide[g] = j
        for t in range(n_toys):
            x = u[t, c] * total
            j = guide[min(int(u[t, c] * n), n - 1)]
            while j > 0 and terms[j - 1] > x:  # the guide's level rounded above x
                j -= 1
            while j < n - 1 and terms[j] <= x:
                j += 1
            out[t, c] = first + j


_draw_compiled = numba.njit(cache=True, nogil=True)(_draw_py) if HAVE_NUMBA else None


def poisson_toys(rng: np.random.Generator, lam: ArrayLike, n_toys: int) -> np.ndarray:
    """``n_toys`` Poisson numbers per bin of rates ``lam`` (any shape), as floats of shape
    ``(n_toys, *lam.shape)``: ``rng.poisson`` below :data:`TABLE_MIN_TOYS` toys, inversion
    of each bin's table (one uniform number per toy and bin, drawn toy by toy) from there on.
    """
    rates = np.asarray(lam, dtype=np.float64)
    shape = (n_toys, *rates.shape)
    if n_toys < TABLE_MIN_TOYS:
        return rng.poisson(np.broadcast_to(rates, shape)).astype(np.float64)
    flat = rates.ravel()
    if not np.all(np.isfinite(flat)) or np.any(flat < 0):
        raise ValueError("Poisson rates must be finite and non-negative")
    u = rng.random((n_toys, flat.size))
    out = np.empty_like(u)
    if HAVE_NUMBA:
        _draw_compiled(np.ascontiguousarray(flat), u, out, TAIL_CUT)
    else:
        _draw_numpy(flat, u, out)
    return out.reshape(shape)


def warm() -> None:
    """Load (or compile, the first time) the compiled table search in this process."""
    if HAVE_NUMBA:
        _draw_compiled(np.array([0.0, 2.0]), np.full((1, 2), 0.5), np.empty((1, 2)), TAIL_CUT)
