"""Compiled fill kernels (numba), with the numpy formulation they replace kept as reference.

The pair histograms dominate the fill: every pair needs Σw, Σw², the event count, Σw³, Σw⁴
(and Σw, Σw² of each weight variation) per cell, and Σw per (random event group, cell). With
numpy that is one ``bincount`` per sum and pair, each reading the whole chunk again
(:func:`validator.stages.fill._fill_pairs_numpy`). :func:`fill_pairs` does all of them in one pass
per pair, the pair's sums kept in L1. Measured on 250k events x 30 features (435 pairs, 10x10
cells), one core: 1.4 s with the numpy bincounts, 0.33 s compiled (weighted), 0.09 s for data
(``benchmarks/RESULTS.md``).

``numba`` is a dependency; where it cannot be imported (a Python it has no wheel for yet) the
numpy path runs instead (:data:`HAVE_NUMBA`), with the same results to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from validator.stats.compiled import HAVE_NUMBA, numba


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
    cells = np.empty(n if n_var > 1 and not unit else 0, dtype=np.int64)
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
                cells[e] = cell
                w = nominal[e]
                w2 = w * w
                local_groups[(cell << group_bits) + groups[e]] += w
                local[cell, 0] += 1.0
                local[cell, 2] += w2
                local[cell, 3] += w2 * w
                local[cell, 4] += w2 * w2
            # the variations two at a time (a systematic's up and down), each pass a tight
            # loop over the cells kept above: 0.30 -> 0.18 s for four variations per 125k
            # events x 465 pairs, against one pass with a loop over the variations inside
            v = 1
            while v + 1 < n_var:
                up = weights[v]
                down = weights[v + 1]
                for e in range(n):
                    cell = cells[e]
                    wu = up[e]
                    wd = down[e]
                    local[cell, 3 + 2 * v] += wu
                    local[cell, 4 + 2 * v] += wu * wu
                    local[cell, 5 + 2 * v] += wd
                    local[cell, 6 + 2 * v] += wd * wd
                v += 2
            if v < n_var:  # an odd one out
                last = weights[v]
                for e in range(n):
                    cell = cells[e]
                    wu = last[e]
                    local[cell, 3 + 2 * v] += wu
                    local[cell, 4 + 2 * v] += wu * wu
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
#: its search to the few edges inside that cell. Quantile edges crowd where the events are,
#: so a finer grid leaves fewer edges to search there: 30 features x 250k events took 0.11,
#: 0.09, 0.07, 0.05 and 0.045 s with 2, 4, 8, 16 and 32 cells per edge (a table of 16 x 1,100
#: entries, 140 kB per feature, still fits the core's cache).
LOOKUP_CELLS_PER_EDGE = 16


def _positions_py(edges: np.ndarray, lookup: np.ndarray, lo: float, step: float,
                  inv_step: float, x: np.ndarray, out: np.ndarray) -> None:
    """``out[e]`` = the number of ``edges`` <= ``x[e]`` (``searchsorted(side="right")``).

    The lookup grid has uniformly spaced points ``lo + c * step`` from the first edge (cell
    ``c`` is ``[point c, point c + 1)``, the last cell unbounded above) and ``lookup[c]`` is
    the number of edges <= point ``c`` (``lookup[-1]`` all of them). A value's cell is
    computed, corrected by a step where rounding put it in a neighbour, and its position
    found by binary search among the edges inside the cell (usually none or one): exact,
    whatever the rounding. The points are computed as :func:`lookup_grid` computed them (the
    same two roundings), not stored: the search reads the edges and one table only.
    """
    last = lookup.shape[0] - 2  # the unbounded cell
    n_edges = edges.shape[0]
    for e in range(x.shape[0]):
        v = x[e]
        if not v >= lo:  # below every edge, or NaN (numpy sorts NaN last)
            out[e] = 0 if v < lo else n_edges
            continue
        t = (v - lo) * inv_step
        c = last if t >= last else int(t)
        while c > 0 and v < lo + c * step:
            c -= 1
        while c < last and v >= lo + (c + 1) * step:
            c += 1
        a, b = lookup[c], lookup[c + 1]  # edges[:a] <= point c <= v < point c+1 < edges[b:]
        while a < b:
            mid = (a + b) >> 1
            if edges[mid] <= v:
                a = mid + 1
            else:
                b = mid
        out[e] = a


_positions_compiled = (numba.njit(cache=True, nogil=True)(_positions_py)
                       if HAVE_NUMBA else None)


@dataclass(frozen=True)
class LookupGrid:
    """The uniform lookup grid of :func:`positions` over sorted edges: point ``c`` is
    ``lo + c * step``, ``lookup[c]`` the number of edges at or below it."""

    lookup: np.ndarray
    lo: float
    step: float
    inv_step: float


def lookup_grid(edges: np.ndarray) -> LookupGrid | None:
    """The lookup grid of :func:`positions` for sorted ``edges``; None where the edges span
    nothing."""
    lo, hi = float(edges[0]), float(edges[-1])
    if not hi > lo or not np.isfinite(hi - lo):
        return None
    n_cells = LOOKUP_CELLS_PER_EDGE * len(edges)
    step = (hi - lo) / n_cells
    points = lo + np.arange(n_cells + 1) * step
    lookup = np.append(np.searchsorted(edges, points, side="right"), len(edges))
    return LookupGrid(lookup, lo, step, 1.0 / step)


def positions(edges: np.ndarray, x: np.ndarray, grid: LookupGrid | None = None) -> np.ndarray:
    """``numpy.searchsorted(edges, x, side="right")`` for sorted ``edges``, compiled with a
    uniform lookup grid (:func:`lookup_grid`, made here unless given; several times faster
    for a thousand quantile edges); numpy's own where numba is missing or the edges span
    nothing."""
    if grid is None and HAVE_NUMBA:
        grid = lookup_grid(edges)
    if not HAVE_NUMBA or grid is None:
        return np.searchsorted(edges, x, side="right")
    out = np.empty(x.shape[0], dtype=np.int64)
    _positions_compiled(np.ascontiguousarray(edges, dtype=np.float64), grid.lookup, grid.lo,
                        grid.step, grid.inv_step, np.ascontiguousarray(x, dtype=np.float64),
                        out)
    return out


def _add_local_py(sums: np.ndarray, group_sums: np.ndarray | None, start: int,
                  local: np.ndarray, local_groups: np.ndarray | None, group_bits: int) -> None:
    """Add one feature's sums (bins x columns) and Σw per (bin, group) into the chunk's, from
    its first bin ``start``."""
    for b in range(local.shape[0]):
        for c in range(local.shape[1]):
            sums[start + b, c] += local[b, c]
        if group_sums is not None and local_groups is not None:
            for g in range(group_sums.shape[0]):
                group_sums[g, start + b] += local_groups[(b << group_bits) + g]


_add_local = numba.njit(cache=True, nogil=True)(_add_local_py) if HAVE_NUMBA else None


def _fill_features_py(x: np.ndarray, valid: np.ndarray, edges: np.ndarray,
                      edge_start: np.ndarray, lookup: np.ndarray, lookup_start: np.ndarray,
                      grid_lo: np.ndarray, grid_step: np.ndarray, inv_step: np.ndarray,
                      tables: np.ndarray,
                      table_start: np.ndarray, bin_start: np.ndarray, loc: np.ndarray,
                      groups: np.ndarray, group_bits: int, weights: np.ndarray, unit: bool,
                      test_sums: np.ndarray, test_groups: np.ndarray, fine_sums: np.ndarray,
                      fine_groups: np.ndarray, plot_sums: np.ndarray, codes: np.ndarray,
                      feature_sums: np.ndarray) -> None:
    """Every feature's 1D sums of a chunk, one feature at a time (the sums in cache).

    Feature ``k``'s grid of edges is ``edges[edge_start[k]:edge_start[k + 1]]`` (its lookup
    grid's table likewise from ``lookup_start``, its first point, spacing and inverse
    spacing ``grid_lo[k]``, ``grid_step[k]``, ``inv_step[k]``, the last 0 where there is no
    lookup grid: :func:`lookup_grid`); its four
    tables from a value's position in the grid to its test, fine, plotting and pair bin start
    at ``table_start[k]``, each ``n_edges + 2`` long (the last entry for invalid values);
    ``bin_start[b, k]`` is where its bins of binning ``b`` (test, fine, plot) start in the
    flat vectors. Sums are added in event order, as ``numpy.bincount`` adds them: the same
    floats as the numpy formulation (:func:`validator.stages.fill._fill_features_numpy`).

    Output columns: ``test_sums`` the count, Σw, Σw², Σw³, Σw⁴, then Σw, Σw² of each variation;
    ``fine_sums`` and ``plot_sums`` Σw, Σw² of each weight row (with ``unit`` weights every sum
    is the count: one column). ``test_groups`` and ``fine_groups`` (groups, bins) get Σw per
    event group; ``codes`` each event's pair bin (the trash bin for an invalid value);
    ``feature_sums`` per feature Σw and Σw·w over valid and over invalid events, Σw(x - loc)
    and Σw(x - loc)² over valid ones.
    """
    n_f, n = x.shape
    n_var = weights.shape[0]
    nominal = weights[0]
    u = np.empty(n, dtype=np.int64)
    for k in range(n_f):
        e0, e1 = edge_start[k], edge_start[k + 1]
        n_edges = e1 - e0
        xk = x[k]
        if inv_step[k] > 0.0:
            _positions_compiled(edges[e0:e1], lookup[lookup_start[k]:lookup_start[k + 1]],
                                grid_lo[k], grid_step[k], inv_step[k], xk, u)
        else:
            u[:] = np.searchsorted(edges[e0:e1], xk, side="right")
        size = n_edges + 2
        t0 = table_start[k]
        test_of = tables[t0:t0 + size]
        fine_of = tables[t0 + size:t0 + 2 * size]
        plot_of = tables[t0 + 2 * size:t0 + 3 * size]
        pair_of = tables[t0 + 3 * size:t0 + 4 * size]
        n_test = bin_start[0, k + 1] - bin_start[0, k]
        n_fine = bin_start[1, k + 1] - bin_start[1, k]
        n_plot = bin_start[2, k + 1] - bin_start[2, k]
        ts = np.zeros((n_test, test_sums.shape[1]))
        fs = np.zeros((n_fine, fine_sums.shape[1]))
        ps = np.zeros((n_plot, plot_sums.shape[1]))
        tg = np.zeros(n_test << group_bits)
        fg = np.zeros(n_fine << group_bits)
        loc_k = loc[k]
        valid_w = valid_ww = invalid_w = invalid_ww = sum_d = sum_d2 = 0.0
        trash = n_edges + 1
        # a loop per weighting rather than branches inside one (see _fill_pairs_py)
        if unit:
            for e in range(n):
                if not valid[k, e]:
                    codes[k, e] = pair_of[trash]
                    invalid_w += 1.0
                    continue
                p = u[e]
                codes[k, e] = pair_of[p]
                t, f = test_of[p], fine_of[p]
                ts[t, 0] += 1.0
                tg[(t << group_bits) + groups[e]] += 1.0
                fs[f, 0] += 1.0
                fg[(f << group_bits) + groups[e]] += 1.0
                ps[plot_of[p], 0] += 1.0
                d = xk[e] - loc_k
                valid_w += 1.0
                sum_d += d
                sum_d2 += d * d
            valid_ww, invalid_ww = valid_w, invalid_w
        else:
            for e in range(n):
                w = nominal[e]
                if not valid[k, e]:
                    codes[k, e] = pair_of[trash]
                    invalid_w += w
                    invalid_ww += w * w
                    continue
                p = u[e]
                codes[k, e] = pair_of[p]
                t, f, q = test_of[p], fine_of[p], plot_of[p]
                w2 = w * w
                ts[t, 0] += 1.0
                ts[t, 1] += w
                ts[t, 2] += w2
                ts[t, 3] += w2 * w
                ts[t, 4] += w2 * w2
                tg[(t << group_bits) + groups[e]] += w
                fs[f, 0] += w
                fs[f, 1] += w2
                fg[(f << group_bits) + groups[e]] += w
                ps[q, 0] += w
                ps[q, 1] += w2
                d = xk[e] - loc_k
                valid_w += w
                valid_ww += w2
                sum_d += d * w
                sum_d2 += d * d * w
            # the variations in a pass of their own: the nominal loop stays tight
            for v in range(1, n_var):
                for e in range(n):
                    if valid[k, e]:
                        p = u[e]
                        t, f, q = test_of[p], fine_of[p], plot_of[p]
                        wv = weights[v, e]
                        ts[t, 3 + 2 * v] += wv
                        ts[t, 4 + 2 * v] += wv * wv
                        fs[f, 2 * v] += wv
                        fs[f, 2 * v + 1] += wv * wv
                        ps[q, 2 * v] += wv
                        ps[q, 2 * v + 1] += wv * wv
        _add_local(test_sums, test_groups, bin_start[0, k], ts, tg, group_bits)
        _add_local(fine_sums, fine_groups, bin_start[1, k], fs, fg, group_bits)
        _add_local(plot_sums, None, bin_start[2, k], ps, None, group_bits)
        feature_sums[k, 0] += valid_w
        feature_sums[k, 1] += valid_ww
        feature_sums[k, 2] += invalid_w
        feature_sums[k, 3] += invalid_ww
        feature_sums[k, 4] += sum_d
        feature_sums[k, 5] += sum_d2


_fill_features_compiled = (numba.njit(cache=True, nogil=True)(_fill_features_py)
                           if HAVE_NUMBA else None)


def fill_features(x: np.ndarray, valid: np.ndarray, tables: FeatureTables, groups: np.ndarray,
                  n_groups: int, weights: np.ndarray, unit: bool,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                             np.ndarray, np.ndarray]:
    """One chunk's 1D sums of every feature (compiled); see :func:`_fill_features_py`.

    ``x`` and ``valid`` are (n_features, n_events), ``weights`` (n_var, n_events). Returns the
    test, fine and plotting sums (one row per bin), the test and fine Σw per (event group,
    bin), each event's pair bin per feature (int16) and the per-feature sums.
    """
    if not HAVE_NUMBA:
        raise RuntimeError("numba is not available")
    group_bits = int(n_groups).bit_length() - 1
    if n_groups != 1 << group_bits:
        raise ValueError(f"the number of event groups must be a power of 2, got {n_groups}")
    n_f, n = x.shape
    n_var = weights.shape[0]
    n_test, n_fine, n_plot = (int(tables.bin_start[b, -1]) for b in range(3))
    test_sums = np.zeros((n_test, 1 if unit else 3 + 2 * n_var))
    fine_sums = np.zeros((n_fine, 1 if unit else 2 * n_var))
    plot_sums = np.zeros((n_plot, 1 if unit else 2 * n_var))
    test_groups = np.zeros((n_groups, n_test))
    fine_groups = np.zeros((n_groups, n_fine))
    codes = np.empty((n_f, n), dtype=np.int16)
    feature_sums = np.zeros((n_f, 6))
    _fill_features_compiled(
        np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(valid, dtype=np.bool_),
        tables.edges, tables.edge_start, tables.lookup, tables.lookup_start, tables.grid_lo,
        tables.grid_step, tables.inv_step, tables.tables, tables.table_start,
        tables.bin_start, tables.loc, np.ascontiguousarray(groups, dtype=np.int64), group_bits,
        np.ascontiguousarray(weights, dtype=np.float64), unit, test_sums, test_groups,
        fine_sums, fine_groups, plot_sums, codes, feature_sums)
    return test_sums, fine_sums, plot_sums, test_groups, fine_groups, codes, feature_sums


@dataclass(frozen=True)
class FeatureTables:
    """Every feature's grid of edges, lookup grid and bin tables, concatenated for
    :func:`fill_features` (made once per plan:
    :attr:`validator.stages.fill.Layout.feature_tables`)."""

    edges: np.ndarray
    edge_start: np.ndarray
    lookup: np.ndarray
    lookup_start: np.ndarray
    grid_lo: np.ndarray
    grid_step: np.ndarray
    inv_step: np.ndarray  # 0 for a feature without a lookup grid
    tables: np.ndarray  # per feature: test, fine, plot and pair bin of each grid position
    table_start: np.ndarray
    bin_start: np.ndarray  # (3, F + 1): where each feature's test, fine and plot bins start
    loc: np.ndarray

    @classmethod
    def of(cls, grids: list[Any], bin_starts: tuple[np.ndarray, np.ndarray, np.ndarray],
           loc: np.ndarray, with_lookup: bool = True) -> FeatureTables:
        """From each feature's :class:`validator.stages.fill.FeatureGrid` (``with_lookup=False``:
        no lookup grids, a binary search over all the edges)."""
        def starts(sizes: list[int]) -> np.ndarray:
            return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

        lookups = [lookup_grid(g.edges) if with_lookup else None for g in grids]
        tables = [np.concatenate([g.test, g.fine, g.plot, g.pair]).astype(np.int64)
                  for g in grids]
        return cls(
            edges=np.concatenate([g.edges for g in grids]).astype(np.float64),
            edge_start=starts([len(g.edges) for g in grids]),
            lookup=np.concatenate([lk.lookup if lk is not None else np.zeros(0, np.int64)
                                   for lk in lookups]).astype(np.int64),
            lookup_start=starts([len(lk.lookup) if lk is not None else 0 for lk in lookups]),
            grid_lo=np.array([lk.lo if lk is not None else 0.0 for lk in lookups]),
            grid_step=np.array([lk.step if lk is not None else 0.0 for lk in lookups]),
            inv_step=np.array([lk.inv_step if lk is not None else 0.0 for lk in lookups]),
            tables=np.concatenate(tables), table_start=starts([len(t) for t in tables]),
            bin_start=np.stack([np.asarray(b, dtype=np.int64) for b in bin_starts]),
            loc=np.asarray(loc, dtype=np.float64))


def warm() -> None:
    """Load (or compile, the first time) every kernel for the argument types the fill uses,
    so that processes forked after this call start with them ready (see
    :mod:`validator.engine.worker_preload`)."""
    if not HAVE_NUMBA:
        return
    # one signature covers every call (``unit`` and the number of weight rows are values)
    fill_pairs(np.zeros((2, 1), dtype=np.int16), [(0, 1)], [(1, 1)], np.zeros(1),
               np.zeros(1), np.ones((1, 1)), False, np.zeros((1, 1)))
    positions(np.array([0.0, 1.0]), np.array([0.5]))
    edges = np.array([0.0, 1.0])
    zeros = np.zeros(len(edges) + 2, dtype=np.int64)
    grid = SimpleNamespace(edges=edges, test=zeros, fine=zeros, plot=zeros, pair=zeros)
    one = np.array([0, 1])
    tables = FeatureTables.of([grid], (one, one, one), np.zeros(1))
    fill_features(np.full((1, 1), 0.5), np.ones((1, 1), dtype=bool), tables,
                  np.zeros(1, dtype=np.int64), 1, np.ones((1, 1)), False)
