"""Compiled fill kernels (numba), with the numpy formulation they replace kept as reference.

The pair histograms dominate the fill: every pair needs Σw, Σw², the event count, Σw³, Σw⁴
(and Σw, Σw² of each weight variation) per cell, and Σw per (random event group, cell). With
numpy that is one ``bincount`` per sum and pair, each reading the whole chunk again
(:func:`validator.fill._fill_pairs_numpy`). :func:`fill_pairs` does all of them in one pass
per pair, the pair's sums kept in L1. Measured on 250k events x 30 features (435 pairs, 10x10
cells), one core: 1.4 s with the numpy bincounts, 0.33 s compiled (weighted), 0.09 s for data
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

def _fill_pairs_py(codes: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray,
                   pair_nx: np.ndarray, pair_ny: np.ndarray, offsets: np.ndarray,
                   groups: np.ndarray, group_bits: int, weights: np.ndarray, unit: bool,
                   sums: np.ndarray, group_sums: np.ndarray) -> None:
    """Add a chunk's pair sums into ``sums`` (cells x sums) and ``group_sums`` (cells x groups).

    One pair at a time over the whole chunk: its two rows of codes and the groups stream in
    order (the prefetcher's best case) while the pair's own (cell, group) sums, a few tens of
    kB including the trash row and column, stay in L1; they are added to the chunk's sums at
    the end. Columns of ``sums``: the count, then Σw, Σw², Σw³, Σw⁴ of the nominal weight,
    then Σw, Σw² of each variation (for ``unit`` weights only the count).
    """
    n = codes.shape[1]
    n_var = weights.shape[0]
    n_groups = 1 << group_bits
    n_cols = sums.shape[1]
    nominal = weights[0]
    for p in range(pair_i.shape[0]):
        xs = codes[pair_i[p]]
        ys = codes[pair_j[p]]
        nx, ny = pair_nx[p], pair_ny[p]
        row_len = ny + 1  # the trash bin ny holds events invalid in y
        local_groups = np.zeros((nx + 1) * row_len * n_groups)
        local = np.zeros(((nx + 1) * row_len, n_cols))
        # three loops rather than branches inside one: numba keeps a loop tight only when it
        # has no data-dependent branch or inner loop (an empty variation loop costs 0.3 s)
        if unit:
            for e in range(n):
                local_groups[((xs[e] * row_len + ys[e]) << group_bits) + groups[e]] += 1.0
        elif n_var == 1:
            for e in range(n):
                cell = xs[e] * row_len + ys[e]
                w = nominal[e]
                w2 = w * w
                local_groups[(cell << group_bits) + groups[e]] += w
                local[cell, 0] += 1.0
                local[cell, 2] += w2
                local[cell, 3] += w2 * w
                local[cell, 4] += w2 * w2
        else:
            for e in range(n):
                cell = xs[e] * row_len + ys[e]
                w = nominal[e]
                w2 = w * w
                local_groups[(cell << group_bits) + groups[e]] += w
                local[cell, 0] += 1.0
                local[cell, 2] += w2
                local[cell, 3] += w2 * w
                local[cell, 4] += w2 * w2
                for v in range(1, n_var):
                    wv = weights[v, e]
                    local[cell, 3 + 2 * v] += wv
                    local[cell, 4 + 2 * v] += wv * wv
        base = offsets[p]
        for cx in range(nx):
            for cy in range(ny):
                cell = cx * row_len + cy
                target = base + cx * ny + cy
                total = 0.0
                for g in range(n_groups):
                    value = local_groups[(cell << group_bits) + g]
                    group_sums[target, g] += value
                    total += value
                if unit:
                    sums[target, 0] += total
                    continue
                sums[target, 0] += local[cell, 0]
                sums[target, 1] += total
                for q in range(2, n_cols):
                    sums[target, q] += local[cell, q]


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
    n_groups, n_cells = group_sumw.shape
    group_bits = int(n_groups).bit_length() - 1
    if n_groups != 1 << group_bits:
        raise ValueError(f"the number of event groups must be a power of 2, got {n_groups}")
    n_var = weights.shape[0]
    sums = np.zeros((n_cells, 1 if unit else 3 + 2 * n_var))
    group_sums = np.zeros((n_cells, n_groups))
    _fill_pairs_compiled(np.ascontiguousarray(codes),
                         np.array([i for i, _ in pairs], dtype=np.int64),
                         np.array([j for _, j in pairs], dtype=np.int64),
                         np.array([s[0] for s in pair_shape], dtype=np.int64),
                         np.array([s[1] for s in pair_shape], dtype=np.int64),
                         np.asarray(offsets, dtype=np.int64),
                         np.ascontiguousarray(groups, dtype=np.int64), group_bits,
                         np.ascontiguousarray(weights, dtype=np.float64), unit, sums, group_sums)
    group_sumw += group_sums.T
    return sums


#: Cells of the uniform lookup grid over a feature's edges, per edge: a value's cell narrows
#: its search to the few edges inside that cell.
LOOKUP_CELLS_PER_EDGE = 4


def _positions_py(edges: np.ndarray, grid: np.ndarray, lookup: np.ndarray, inv_step: float,
                  x: np.ndarray, out: np.ndarray) -> None:
    """``out[e]`` = the number of ``edges`` <= ``x[e]`` (``searchsorted(side="right")``).

    ``grid`` are uniformly spaced points from the first edge (cell ``c`` is ``[grid[c],
    grid[c + 1])``, the last cell unbounded above) and ``lookup[c]`` the number of edges <=
    ``grid[c]`` (``lookup[-1]`` all of them). A value's cell is computed, corrected by a step
    where rounding put it in a neighbour, and its position found by binary search among the
    edges inside the cell (usually none or one): exact, whatever the rounding.
    """
    last = lookup.shape[0] - 2  # the unbounded cell
    n_edges = edges.shape[0]
    lo = grid[0]
    for e in range(x.shape[0]):
        v = x[e]
        if not v >= lo:  # below every edge, or NaN (numpy sorts NaN last)
            out[e] = 0 if v < lo else n_edges
            continue
        t = (v - lo) * inv_step
        c = last if t >= last else int(t)
        while c > 0 and v < grid[c]:
            c -= 1
        while c < last and v >= grid[c + 1]:
            c += 1
        a, b = lookup[c], lookup[c + 1]  # edges[:a] <= grid[c] <= v < grid[c+1] < edges[b:]
        while a < b:
            mid = (a + b) >> 1
            if edges[mid] <= v:
                a = mid + 1
            else:
                b = mid
        out[e] = a


_positions_compiled = (numba.njit(cache=True, nogil=True)(_positions_py)
                       if HAVE_NUMBA else None)


def lookup_grid(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The uniform lookup grid of :func:`positions` for sorted ``edges`` (grid points, edges
    at or below each, inverse spacing); None where the edges span nothing."""
    lo, hi = float(edges[0]), float(edges[-1])
    if not hi > lo or not np.isfinite(hi - lo):
        return None
    n_cells = LOOKUP_CELLS_PER_EDGE * len(edges)
    step = (hi - lo) / n_cells
    grid = lo + np.arange(n_cells + 1) * step
    lookup = np.append(np.searchsorted(edges, grid, side="right"), len(edges))
    return grid, lookup, 1.0 / step


def positions(edges: np.ndarray, x: np.ndarray,
              grid: tuple[np.ndarray, np.ndarray, float] | None = None) -> np.ndarray:
    """``numpy.searchsorted(edges, x, side="right")`` for sorted ``edges``, compiled with a
    uniform lookup grid (:func:`lookup_grid`, made here unless given; several times faster
    for a thousand quantile edges); numpy's own where numba is missing or the edges span
    nothing."""
    if grid is None and HAVE_NUMBA:
        grid = lookup_grid(edges)
    if not HAVE_NUMBA or grid is None:
        return np.searchsorted(edges, x, side="right")
    points, lookup, inv_step = grid
    out = np.empty(x.shape[0], dtype=np.int64)
    _positions_compiled(np.ascontiguousarray(edges, dtype=np.float64), points, lookup,
                        inv_step, np.ascontiguousarray(x, dtype=np.float64), out)
    return out


def warm() -> None:
    """Load (or compile, the first time) every kernel for the argument types the fill uses,
    so that processes forked after this call start with them ready (see
    :mod:`validator.worker_preload`)."""
    if not HAVE_NUMBA:
        return
    # one signature covers every call (``unit`` and the number of weight rows are values)
    fill_pairs(np.zeros((2, 1), dtype=np.int16), [(0, 1)], [(1, 1)], np.zeros(1),
               np.zeros(1), np.ones((1, 1)), False, np.zeros((1, 1)))
    positions(np.array([0.0, 1.0]), np.array([0.5]))
