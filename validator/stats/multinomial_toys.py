"""Multinomial toys of one law: ``MultinomialToys(n, p).draw(rng, n_toys)``.

The data toys of the binned KS/AD tests (:class:`validator.stats.edf.NullModel`) are
Multinomial(``n``, ``p``) rows with the same ``n`` and ``p`` for every toy. numpy's
``Generator.multinomial`` draws each row by conditional binomials, one per bin with its own
parameters (the events left and the probability left), a fresh set-up and draw of the BTPE
algorithm each (V. Kachitvichyanukul and B. W. Schmeiser, Commun. ACM 31 (1988) 216): about
60 ns a bin, 60-85 µs a toy of 1,000 bins whatever ``n``. This module draws the same law
exactly with per-bin work on parameters that do not change from toy to toy, so that tables
built once serve every toy.

Method (Poisson conditioning, then completion by single events)
----------------------------------------------------------------
1. Draw ``X_i ~ Poisson(λ p_i)`` independently per bin, ``λ = n − c√n`` (``c``:
   :func:`shortfall`), each from its bin's table: the Poisson terms of
   :mod:`validator.stats.poisson_toys` (the mode's term, then the recursions
   ``p(k∓1) = p(k)·(k or λ/(k+1))`` until a term falls below 2⁻⁶⁰ of the mode's: the mass
   left out is below 1e-15), put in an alias table (below). Let ``T = Σ X_i``.
2. If ``T > n`` the attempt is rejected and a new one drawn from step 1.
3. Otherwise ``n − T`` independent Categorical(``p``) events are added to the row, from an
   alias table of ``p``.

Why the rows are exactly Multinomial(``n``, ``p``). Independent Poisson numbers conditioned
on their sum are multinomial (L. Devroye, "Non-Uniform Random Variate Generation", Springer
1986, sec. XI.1; N. L. Johnson, S. Kotz and N. Balakrishnan, "Discrete Multivariate
Distributions", Wiley 1997, ch. 35): for ``Σ x_i = t``,
``P(X = x | T = t) = Π_i e^{−λp_i}(λp_i)^{x_i}/x_i! / (e^{−λ}λ^t/t!) = t!/Π x_i! · Π p_i^{x_i}``,
free of ``λ``. Rejecting on ``T`` alone (step 2) changes the law of ``T`` only, not that of
``X`` given ``T``, and the attempts are independent. Given ``T = t ≤ n``, step 3 adds
``Y ~`` Multinomial(``n − t``, ``p``) independent of ``X``: ``X`` and ``Y`` are the counts of
``t`` and ``n − t`` independent Categorical(``p``) events, so ``X + Y`` counts ``n`` of them:
Multinomial(``n``, ``p``) for every ``t``, and hence unconditionally. ``c`` only moves work
between the two steps: ``c ≥ √n`` (``λ = 0``) is plain categorical sampling.

Alias tables with exact integer weights. Each table (one per bin's Poisson terms, one for
``p``) holds ``L = 2^k ≥`` (its number of terms) columns of ``C = 2^(53−k)`` units: term
``i`` gets ``w_i = ⌊2^53 · term_i / Σ terms⌋`` units, the few units that rounding leaves
over go to the largest term, and the pairing of A. J. Walker (ACM Trans. Math. Softw. 3
(1977) 253) in the construction of M. D. Vose (IEEE Trans. Softw. Eng. 17 (1991) 972), done
in integers, fills each column with at most two terms (zero-weight columns pad ``L`` to a
power of two). A uniform number ``u`` of the generator is ``m·2⁻⁵³`` with ``m`` uniform on
``[0, 2^53)`` (numpy's ``random()``), so its top ``k`` bits pick a column exactly uniformly
and its other ``53 − k`` bits, compared with the column's integer threshold, pick one of its
two terms: every term is drawn with probability exactly ``w_i/2^53``, the terms rounded to
2⁻⁵³ of the total (the resolution of inversion with the same uniform numbers, that of
:mod:`validator.stats.poisson_toys`). One memory access and no branch per number: 2-3 ns
where the table is in cache, against 6-7 ns for the guide-table inversion of
``poisson_toys`` (its while loops mispredict).

Cost per toy: ``B`` lookups per attempt (one uniform number each), ``1/P(T ≤ n)``
attempts, and ``n − T`` added events (about ``√n (c + φ(c)/Φ(c))``). ``c`` =
:data:`POISSON_SHORTFALL`, or only categorical events where ``n`` is small next to ``B``
(:func:`shortfall`); :func:`tables_pay` says from measured unit costs whether the tables
beat numpy's draw (numpy's is cheaper for few bins and large ``n``) and fit
:data:`MAX_TABLE_ENTRIES`. At 1,000 bins, in batches of 100 toys, a toy costs 8 µs at ``n =
1e5``, 16-18 µs at 1e6 and 39 µs at 1e7, numpy's 84, 62 and 57 µs (medians,
``benchmarks/bench_multinomial_toys.py``): the completion grows as ``√n``, and the tables
(8 bytes a column: 2, 8 and 17 MB, built once in 5, 11 and 30-50 ms) stop fitting the
caches. Without numba the numpy forms give the same numbers at about numpy's own cost.

Randomness: only from the generator passed in. Each round of attempts takes one uniform
number per bin and attempt (bin by bin: the layout the table lookups read fastest), then
one per added event of the kept attempts, in order. The compiled (numba) kernels and their
numpy forms build the same tables and give the same numbers bit for bit from the same
uniform numbers (integer operations and the same floating-point sequence;
``tests/test_stats_edf.py``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from validator.stats.compiled import HAVE_NUMBA, numba
from validator.stats.poisson_toys import TAIL_CUT, mode_term

__all__ = ["MAX_TABLE_ENTRIES", "POISSON_SHORTFALL", "MultinomialToys", "alias_tables",
           "shortfall", "tables_pay"]

#: Bits of a uniform number (numpy's ``random()`` returns multiples of 2⁻⁵³): the unit of the
#: alias tables' integer weights.
UNIT_BITS = 53
_UNITS = float(1 << UNIT_BITS)
#: ``c`` of the Poisson total ``λ = n − c√n``. A larger ``c`` rejects fewer attempts (``1 −
#: Φ(c)`` of them, 16% at 1) and leaves more events to add one by one (``√n (c +
#: φ(c)/Φ(c))`` a toy). Measured at 1,000 bins (``benchmarks/bench_multinomial_toys.py``,
#: ``c`` from 0 to 2): the cost is flat within the machine's noise from 0.6 to 1.5 at ``n`` =
#: 1e5, 1e6 and 1e7, and 1 is at or next to the least at each.
POISSON_SHORTFALL = 1.0
#: Most alias columns (8 bytes each, 32 MB) built for one law: 1,000 bins use 2^21 at ``n``
#: = 1e7 and would pass it from about 2.5e7, where the lookups miss the caches and numpy's
#: draw is about as fast.
MAX_TABLE_ENTRIES = 1 << 22
#: Unit costs (ns) measured in the draws (2-core AMD EPYC VM, numpy 2.4, numba 0.68): numpy's
#: conditional binomial per bin; a table lookup per bin and attempt with its uniform number
#: and the copy of a kept row (cache misses included at 1,000 bins and ``n`` = 1e6); an added
#: event with its uniform number. They only choose the method (:func:`tables_pay`,
#: :func:`shortfall`), never the law.
NS_BINOMIAL = 60.0
NS_LOOKUP = 9.0
NS_EVENT = 4.5


def _modelled_ns(n: int, n_bins: int) -> tuple[float, float]:
    """(``c``, ns a toy): ``B·NS_LOOKUP/Φ(c) + NS_EVENT·√n·(c + φ(c)/Φ(c))`` with ``c`` =
    :data:`POISSON_SHORTFALL` (``T`` normal: acceptance ``Φ(c)``, ``E[n − T | T ≤ n]`` the mean
    of a truncated normal), or ``(inf, n·NS_EVENT)`` (categorical events only) where cheaper."""
    root = math.sqrt(n)
    c = POISSON_SHORTFALL
    accept = 0.5 * math.erfc(-c / math.sqrt(2.0))
    pdf = math.exp(-0.5 * c * c) / math.sqrt(2.0 * math.pi)
    poisson = n_bins * NS_LOOKUP / accept + NS_EVENT * root * (c + pdf / accept)
    if c * root >= n or n * NS_EVENT <= poisson:
        return math.inf, n * NS_EVENT
    return c, poisson


def shortfall(n: int, n_bins: int) -> float:
    """``c`` of the Poisson total ``λ = n − c√n``: :data:`POISSON_SHORTFALL`, or ``inf`` (``λ =
    0``: categorical events only) where that is cheaper (module notes, "Cost")."""
    return _modelled_ns(n, n_bins)[0]


def _table_entries(lam: float, probs: np.ndarray) -> float:
    """Upper estimate of the alias columns of the Poisson tables: about 18.2 standard
    deviations of terms (the cut at 2⁻⁶⁰ of the mode) plus 25 for small rates, doubled by the
    padding to a power of two; without Poisson stage (``lam = 0``) the table of ``p`` alone."""
    if lam == 0.0:
        return 2.0 * probs.size
    return float(np.sum(2.0 * (18.2 * np.sqrt(lam * probs) + 25.0)))


def _poisson_rate(n: int, c: float) -> float:
    """``λ = n − c√n``, 0 where ``c√n ≥ n`` (``c`` may be infinite)."""
    shortfall = c * math.sqrt(n)
    return n - shortfall if shortfall < n else 0.0


def tables_pay(n: int, p: ArrayLike) -> bool:
    """Whether :class:`MultinomialToys` draws Multinomial(``n``, ``p``) faster than numpy's
    conditional binomials (:data:`NS_BINOMIAL` a bin) by the module's cost model, with
    tables within :data:`MAX_TABLE_ENTRIES`."""
    probs = np.asarray(p, dtype=np.float64).ravel()
    if probs.size < 2 or n < 1:
        return False
    c, ns = _modelled_ns(int(n), probs.size)
    return ns < probs.size * NS_BINOMIAL \
        and _table_entries(_poisson_rate(int(n), c), probs) <= MAX_TABLE_ENTRIES


# ---------------------------------------------------------------------------------------
# Kernels: numba where it can be imported, else the numpy forms after them (the same numbers)
# ---------------------------------------------------------------------------------------


def _poisson_terms_py(lam: np.ndarray, mode: np.ndarray, pm: np.ndarray, tail_cut: float):
    """Poisson terms of rates ``lam`` (mode ``mode``, mode's term ``pm``) as
    :func:`validator.stats.poisson_toys.poisson_table_numpy` computes them (before its
    cumulative sum), concatenated: (first k, start of each rate's terms (``B + 1``), terms).
    A rate of 0 has the single term 1 at k = 0."""
    n_bins = lam.size
    n_down = np.ones(n_bins, dtype=np.int64)
    start = np.zeros(n_bins + 1, dtype=np.int64)
    for c in range(n_bins):
        size = 1
        if lam[c] > 0.0:
            lam_c = lam[c]
            cut = pm[c] * tail_cut
            p = pm[c]
            k = mode[c]
            while k > 0:
                p = p * (k / lam_c)
                if p < cut:
                    break
                n_down[c] += 1
                k -= 1
            p = pm[c]
            k = mode[c]
            while True:
                p = p * (lam_c / (k + 1))
                if p < cut:
                    break
                size += 1
                k += 1
            size += n_down[c] - 1
        start[c + 1] = start[c] + size
    terms = np.empty(start[n_bins])
    first = np.zeros(n_bins, dtype=np.int64)
    for c in range(n_bins):
        o = start[c]
        if lam[c] == 0.0:
            terms[o] = 1.0
            continue
        lam_c = lam[c]
        m = mode[c]
        nd = n_down[c]
        first[c] = m - (nd - 1)
        p = pm[c]
        terms[o + nd - 1] = p
        for i in range(1, nd):
            p = p * ((m - i + 1) / lam_c)
            terms[o + nd - 1 - i] = p
        p = pm[c]
        k = m
        for i in range(o + nd, start[c + 1]):
            p = p * (lam_c / (k + 1))
            terms[i] = p
            k += 1
    return first, start, terms


def _alias_bits(size: int) -> int:
    """``k``: the least with ``2^k ≥ size``."""
    k = 0
    while (1 << k) < size:
        k += 1
    return k


def _integer_weights_py(terms: np.ndarray, start: np.ndarray, bits: np.ndarray,
                        offset: np.ndarray, weights: np.ndarray) -> None:
    """``weights[offset[c] + i] = ⌊2^53 · term_i / Σ terms⌋`` (the sum in order), zero on
    the padding, the units left over on the first largest term: each table sums to 2^53."""
    units = float(1 << 53)
    for c in range(bits.size):
        o = start[c]
        n = start[c + 1] - o
        total = 0.0
        for i in range(n):
            total += terms[o + i]
        q = offset[c]
        s = 0
        top = 0
        for i in range(n):
            w = np.int64(terms[o + i] / total * units)
            weights[q + i] = w
            s += w
            if w > weights[q + top]:
                top = i
        for i in range(n, 1 << bits[c]):
            weights[q + i] = 0
        weights[q + top] += (np.int64(1) << 53) - s


def _vose_py(bits: np.ndarray, offset: np.ndarray, table: np.ndarray) -> None:
    """Walker's alias tables by Vose's construction, in integers (module notes), in place:
    ``table`` holds the integer weights and receives the entries ``threshold << k | alias``
    (a column's weight is last read when its entry is written)."""
    most = 1
    for c in range(bits.size):
        most = max(most, 1 << bits[c])
    small = np.empty(most, dtype=np.int64)
    large = np.empty(most, dtype=np.int64)
    for c in range(bits.size):
        k = bits[c]
        q = offset[c]
        size = 1 << k
        full = np.int64(1) << (53 - k)
        ns = 0
        nl = 0
        for i in range(size):
            if table[q + i] < full:
                small[ns] = i
                ns += 1
            else:
                large[nl] = i
                nl += 1
        while ns > 0 and nl > 0:
            sm = small[ns - 1]
            lg = large[nl - 1]
            w_sm = table[q + sm]
            table[q + lg] -= full - w_sm
            table[q + sm] = (w_sm << k) | lg
            if table[q + lg] < full:
                small[ns - 1] = lg
                nl -= 1
            else:
                ns -= 1
        # exact weights: what is left is full columns (large: w = C; small only if empty)
        for i in range(nl):
            table[q + large[i]] = (full << k) | large[i]
        for i in range(ns):
            table[q + small[i]] = (full << k) | small[i]


def _lookup_py(first: np.ndarray, bits: np.ndarray, offset: np.ndarray, table: np.ndarray,
               u: np.ndarray, out: np.ndarray, total: np.ndarray) -> None:
    """``out[t, c] = first[c] +`` the term of uniform ``u[c, t]`` in table ``c``;
    ``total[t]``: the row sums."""
    n_bins, n_toys = u.shape
    units = float(1 << 53)
    for t in range(n_toys):
        total[t] = 0.0
    for c in range(n_bins):
        k = bits[c]
        q = offset[c]
        low = 53 - k
        mask = (np.int64(1) << low) - 1
        amask = (np.int64(1) << k) - 1
        f = first[c]
        for t in range(n_toys):
            m = np.int64(u[c, t] * units)
            col = m >> low
            entry = table[q + col]
            j = col if (m & mask) < (entry >> k) else entry & amask
            out[t, c] = f + j
            total[t] += f + j


def _complete_py(bits: int, table: np.ndarray, added: np.ndarray, u: np.ndarray,
                 out: np.ndarray) -> None:
    """Add ``added[t]`` Categorical events to row ``t`` of ``out`` from the alias table of
    ``p`` (offset 0), one uniform number of ``u`` each, in order."""
    units = float(1 << 53)
    low = 53 - bits
    mask = (np.int64(1) << low) - 1
    amask = (np.int64(1) << bits) - 1
    i = 0
    for t in range(added.size):
        for _ in range(added[t]):
            m = np.int64(u[i] * units)
            i += 1
            col = m >> low
            entry = table[col]
            j = col if (m & mask) < (entry >> bits) else entry & amask
            out[t, j] += 1.0


if HAVE_NUMBA:
    _jit = numba.njit(cache=True, nogil=True)
    _poisson_terms_compiled = _jit(_poisson_terms_py)
    _integer_weights_compiled = _jit(_integer_weights_py)
    _vose_compiled = _jit(_vose_py)
    _lookup_compiled = _jit(_lookup_py)
    _complete_compiled = _jit(_complete_py)


def poisson_terms_numpy(lam: np.ndarray, mode: np.ndarray, pm: np.ndarray):
    """:func:`_poisson_terms_py` by numpy (the products of ``poisson_table_numpy``)."""
    firsts, parts = [], []
    for rate, m, p_m in zip(lam, mode, pm, strict=True):
        if rate == 0.0:
            firsts.append(0)
            parts.append(np.ones(1))
            continue
        m = int(m)
        cut = p_m * TAIL_CUT
        span = int(12.0 * math.sqrt(rate) + 40.0)
        k_down = np.arange(m, max(m - span, 0), -1, dtype=np.float64)
        down = np.cumprod(np.concatenate([[p_m], k_down / rate]))
        k_up = np.arange(m + 1, m + span + 1, dtype=np.float64)
        up = np.cumprod(np.concatenate([[p_m], rate / k_up]))
        n_down = int(np.argmax(down < cut)) if np.any(down < cut) else down.size
        n_up = int(np.argmax(up < cut)) if np.any(up < cut) else up.size
        firsts.append(m - (n_down - 1))
        parts.append(np.concatenate([down[1:n_down][::-1], up[:n_up]]))
    start = np.concatenate([[0], np.cumsum([t.size for t in parts])]).astype(np.int64)
    return np.array(firsts, dtype=np.int64), start, np.concatenate(parts)


def _integer_weights_numpy(terms, start, bits, offset, weights) -> None:
    for c in range(bits.size):
        t = terms[start[c]:start[c + 1]]
        total = np.cumsum(t)[-1]  # in order, as the loop
        w = (t / total * _UNITS).astype(np.int64)
        q = int(offset[c])
        weights[q:q + (1 << int(bits[c]))] = 0
        weights[q:q + t.size] = w
        weights[q + int(np.argmax(w))] += (1 << UNIT_BITS) - int(np.sum(w))


def _vose_numpy(bits, offset, table) -> None:
    """:func:`_vose_py` for all tables in lockstep: step ``s`` pairs every table's ``s``-th
    small column, in the same order as the loop."""
    n_tab = bits.size
    full = np.left_shift(np.int64(1), UNIT_BITS - bits)
    size = np.left_shift(np.int64(1), bits)
    small = np.empty_like(table)  # each table's stacks at its own offset
    large = np.empty_like(table)
    ns = np.zeros(n_tab, dtype=np.int64)
    nl = np.zeros(n_tab, dtype=np.int64)
    for c in range(n_tab):
        q = int(offset[c])
        is_small = table[q:q + int(size[c])] < full[c]
        s_idx, l_idx = np.flatnonzero(is_small), np.flatnonzero(~is_small)
        small[q:q + s_idx.size], large[q:q + l_idx.size] = s_idx, l_idx
        ns[c], nl[c] = s_idx.size, l_idx.size
    while True:
        a = np.flatnonzero((ns > 0) & (nl > 0))
        if a.size == 0:
            break
        q = offset[a]
        sm = small[q + ns[a] - 1]
        lg = large[q + nl[a] - 1]
        w_sm = table[q + sm]
        table[q + lg] -= full[a] - w_sm
        table[q + sm] = np.left_shift(w_sm, bits[a]) | lg
        to_small = table[q + lg] < full[a]
        b = a[to_small]
        small[offset[b] + ns[b] - 1] = lg[to_small]
        nl[b] -= 1
        ns[a[~to_small]] -= 1
    for c in range(n_tab):
        q = int(offset[c])
        for stack, count in ((large, nl[c]), (small, ns[c])):
            cols = stack[q:q + int(count)]
            table[q + cols] = (int(full[c]) << int(bits[c])) | cols


def _lookup_numpy(first, bits, offset, table, u, out, total) -> None:
    m = (u * _UNITS).astype(np.int64)  # (bins, toys)
    low = (UNIT_BITS - bits)[:, None]
    col = m >> low
    entry = table[offset[:-1, None] + col]
    mask = (np.int64(1) << low) - 1
    amask = (np.int64(1) << bits[:, None]) - 1
    j = np.where((m & mask) < (entry >> bits[:, None]), col, entry & amask)
    out[...] = (first[:, None] + j).T
    total[:] = np.sum(out, axis=1)


def _complete_numpy(bits: int, table, added, u, out) -> None:
    m = (u * _UNITS).astype(np.int64)
    low = UNIT_BITS - bits
    col = m >> low
    entry = table[col]
    j = np.where((m & ((1 << low) - 1)) < (entry >> bits), col, entry & ((1 << bits) - 1))
    np.add.at(out, (np.repeat(np.arange(added.size), added), j), 1.0)


def alias_tables(terms: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Alias tables of the non-negative ``terms[start[c]:start[c + 1]]`` (each with a
    positive sum): (``k`` per table, start of each table (``+1``), entries
    ``threshold << k | alias``), as the module notes build them."""
    terms = np.ascontiguousarray(terms, dtype=np.float64)
    start = np.ascontiguousarray(start, dtype=np.int64)
    bits = np.array([_alias_bits(int(n)) for n in np.diff(start)], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(np.left_shift(1, bits))]).astype(np.int64)
    table = np.empty(offset[-1], dtype=np.int64)
    if HAVE_NUMBA:
        _integer_weights_compiled(terms, start, bits, offset, table)
        _vose_compiled(bits, offset, table)
    else:
        _integer_weights_numpy(terms, start, bits, offset, table)
        _vose_numpy(bits, offset, table)
    return bits, offset, table


class MultinomialToys:
    """Multinomial(``n``, ``p``) toys of one law (module notes): tables built at the first
    draw; ``draw(rng, n_toys)`` returns float rows of shape ``(n_toys, p.size)``. ``p`` is
    normalised to sum 1.

    ``c``: the ``c`` of ``λ = n − c√n`` (default :func:`shortfall`'s; any ``c ≥ 0`` gives the
    same law, ``c ≥ √n`` (``inf``) plain categorical sampling).
    """

    def __init__(self, n: int, p: ArrayLike, c: float | None = None):
        probs = np.asarray(p, dtype=np.float64).ravel()
        if n < 0 or probs.size == 0 or not np.all(np.isfinite(probs)) \
                or np.any(probs < 0) or not np.sum(probs) > 0:
            raise ValueError("a multinomial law needs n >= 0 and finite probabilities >= 0, "
                             "not all 0")
        if c is not None and not c >= 0:
            raise ValueError(f"the Poisson shortfall c must be >= 0, not {c}")
        self.n = int(n)
        self.p = probs / np.sum(probs)
        self.c = shortfall(self.n, probs.size) if c is None else float(c)
        self.lam = _poisson_rate(self.n, self.c)
        # attempts kept, P(Poisson(λ) ≤ n), normal approximation with a continuity correction
        # (it only sizes the rounds of attempts)
        self.acceptance = 1.0 if self.lam == 0.0 else 0.5 * math.erfc(
            -(self.n + 0.5 - self.lam) / math.sqrt(2.0 * self.lam))
        self._tables: tuple | None = None
        self._buffers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _scratch(self, attempts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uniform numbers, counts, row sums) of ``attempts`` attempts: arrays kept from one
        draw to the next (fresh ones of a megabyte cost more in page faults than the lookups
        that fill them)."""
        if self._buffers is None or self._buffers[2].size < attempts:
            n_bins = self.p.size
            self._buffers = (np.empty(n_bins * attempts), np.empty(attempts * n_bins),
                             np.empty(attempts))
        u, x, total = self._buffers
        return (u[:self.p.size * attempts].reshape(self.p.size, attempts),
                x[:attempts * self.p.size].reshape(attempts, self.p.size), total[:attempts])

    def _build(self) -> tuple:
        probs = self.p
        cat = alias_tables(probs, np.array([0, probs.size]))
        if self.lam == 0.0:
            return None, cat
        rates = self.lam * probs
        terms = [mode_term(float(r)) if r > 0 else (0, 0.0) for r in rates]
        mode = np.array([t[0] for t in terms], dtype=np.int64)
        pm = np.array([t[1] for t in terms])
        if HAVE_NUMBA:
            first, start, flat = _poisson_terms_compiled(rates, mode, pm, TAIL_CUT)
        else:
            first, start, flat = poisson_terms_numpy(rates, mode, pm)
        return (first, *alias_tables(flat, start)), cat

    def draw(self, rng: np.random.Generator, n_toys: int) -> np.ndarray:
        """``n_toys`` rows of counts (floats), each exactly Multinomial(``n``, ``p``)."""
        if self._tables is None:
            self._tables = self._build()
        poisson, (cat_bits, _, cat_table) = self._tables
        n_bins = self.p.size
        out = np.empty((n_toys, n_bins))
        filled = 0
        while filled < n_toys:
            missing = n_toys - filled
            if poisson is None:
                kept = missing
                x = out[filled:]
                x[...] = 0.0
                added = np.full(missing, self.n, dtype=np.int64)
            else:
                attempts = math.ceil(missing / self.acceptance)
                u, x_all, total = self._scratch(attempts)
                rng.random(out=u)
                if HAVE_NUMBA:
                    _lookup_compiled(*poisson, u, x_all, total)
                else:
                    _lookup_numpy(*poisson, u, x_all, total)
                rows = np.flatnonzero(total <= self.n)[:missing]
                kept = rows.size
                x = out[filled:filled + kept]
                np.take(x_all, rows, axis=0, out=x)
                added = (self.n - total[rows]).astype(np.int64)
            v = rng.random(int(np.sum(added)))
            if HAVE_NUMBA:
                _complete_compiled(int(cat_bits[0]), cat_table, added, v, x)
            else:
                _complete_numpy(int(cat_bits[0]), cat_table, added, v, x)
            filled += kept
        return out


def warm() -> None:
    """Load (or compile, the first time) the compiled kernels in this process."""
    if HAVE_NUMBA:
        MultinomialToys(30, [0.2, 0.3, 0.5], c=1.0).draw(np.random.default_rng(0), 2)
