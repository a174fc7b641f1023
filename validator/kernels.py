"""Compiled fill kernels (numba), with the numpy formulation they replace kept as reference.

The pair histograms dominate the fill: every pair needs Σw, Σw², the event count, Σw³, Σw⁴
(and Σw, Σw² of each weight variation) per cell, and Σw per (random event group, cell). With
numpy that is one ``bincount`` per sum and pair, each reading the whole chunk again
(:func:`validator.fill._fill_pairs_numpy`). :func:`fill_pairs` does all of them in one pass
per block of events: a block's bin codes and weights stay in cache while every pair reads
them, and each pair's cells stay in L1. Measured on 250k weighted events x 30 features (435
pairs, 10x10 cells), one core: 1.4 s with the numpy bincounts, 0.5-0.7 s compiled
(``benchmarks/RESULTS.md``).

``numba`` is a dependency; where it cannot be imported (a Python it has no wheel for yet) the
numpy path runs instead (:data:`HAVE_NUMBA`), with the same results to rounding.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - the import itself
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False

#: Events per block of the pair kernel: their codes (30 int16 features) and weights are about
#: 0.5 MB, inside a core's L2 cache while the 435 pairs of a 30-feature plan read them.
PAIR_BLOCK_EVENTS = 4096


def _fill_pairs_py(codes: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray,
                   pair_ny: np.ndarray, offsets: np.ndarray, trash: np.ndarray,
                   groups: np.ndarray, weights: np.ndarray, unit: bool,
                   sums: np.ndarray, group_sumw: np.ndarray) -> None:
    """Add a chunk's pair sums into ``sums`` (cells x sums, interleaved) and ``group_sumw``.

    Interleaved, a cell's sums share a cache line: one miss per event and pair, not one per
    sum. Columns of ``sums``: the count, then (weighted) Σw, Σw², Σw³, Σw⁴ of the nominal
    weight, then Σw, Σw² of each variation.
    """
    n = codes.shape[1]
    n_var = weights.shape[0]
    for start in range(0, n, PAIR_BLOCK_EVENTS):
        stop = min(start + PAIR_BLOCK_EVENTS, n)
        for p in range(pair_i.shape[0]):
            xs = codes[pair_i[p]]
            ys = codes[pair_j[p]]
            ny, base, trash_x, trash_y = pair_ny[p], offsets[p], trash[pair_i[p]], trash[pair_j[p]]
            for e in range(start, stop):
                cx, cy = xs[e], ys[e]
                if cx == trash_x or cy == trash_y:  # invalid in either feature
                    continue
                cell = base + cx * ny + cy
                out = sums[cell]
                out[0] += 1.0
                if unit:
                    group_sumw[groups[e], cell] += 1.0
                    continue
                w = weights[0, e]
                w2 = w * w
                out[1] += w
                out[2] += w2
                out[3] += w2 * w
                out[4] += w2 * w2
                group_sumw[groups[e], cell] += w
                for v in range(1, n_var):
                    wv = weights[v, e]
                    out[3 + 2 * v] += wv
                    out[4 + 2 * v] += wv * wv


_fill_pairs_compiled = (numba.njit(cache=True, nogil=True)(_fill_pairs_py)
                        if HAVE_NUMBA else None)


def fill_pairs(codes: np.ndarray, pairs: list[tuple[int, int]], pair_shape: list[tuple[int, int]],
               offsets: np.ndarray, groups: np.ndarray, weights: np.ndarray, unit: bool,
               group_sumw: np.ndarray) -> np.ndarray:
    """One chunk's 2D sums of every pair (compiled); see :func:`_fill_pairs_py`.

    ``codes`` (n_features, n_events): each event's pair bin per feature, the feature's trash
    bin (its number of pair bins) where the value is invalid; ``offsets[p]`` where pair
    ``p``'s ``nx * ny`` cells start in the flat vectors; ``weights`` (n_var, n_events), row 0
    nominal; ``groups`` each event's random group, whose Σw per cell is added to
    ``group_sumw`` (N_GROUPS, cells). Returns the sums, one row per cell: the count and, unless
    ``unit`` (data: every weight 1, all sums equal the count), Σw, Σw², Σw³, Σw⁴ (nominal) and
    Σw, Σw² per variation.
    """
    if not HAVE_NUMBA:
        raise RuntimeError("numba is not available")
    n_cells = int(group_sumw.shape[1])
    n_var = weights.shape[0]
    trash = np.zeros(codes.shape[0], dtype=np.int64)
    for (i, j), (nx, ny) in zip(pairs, pair_shape, strict=True):
        trash[i], trash[j] = nx, ny
    sums = np.zeros((n_cells, 1 if unit else 3 + 2 * n_var))
    _fill_pairs_compiled(np.ascontiguousarray(codes),
                         np.array([i for i, _ in pairs], dtype=np.int64),
                         np.array([j for _, j in pairs], dtype=np.int64),
                         np.array([s[1] for s in pair_shape], dtype=np.int64),
                         np.asarray(offsets, dtype=np.int64), trash,
                         np.ascontiguousarray(groups, dtype=np.int64),
                         np.ascontiguousarray(weights, dtype=np.float64), unit, sums, group_sumw)
    return sums

