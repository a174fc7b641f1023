"""Fill mergeable accumulators in one pass over the chunks of a sample.

An :class:`Accumulator` holds, for one sample (and one category), everything the tests need:
weighted 1D histograms (sum w and sum w² per bin), the unrolled 2D histograms of every pair,
fine histograms for the EDF tests, weighted moment sums up to fourth order for the
correlations, and NaN/inf/sentinel counts. Histogram contents carry a leading *variation* axis
(index 0 is the nominal weight) so that systematic weight variations fill the same way.

Accumulators support ``+``: chunks, files, processes and Dask workers merge identically, and the
result does not depend on how the input was split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from validator.inputs.sources import ENTRY, FILE
from validator.inputs.transform import INCLUSIVE, Reader, categories_of, weights_of
from validator.stages.plan import Plan, is_sentinel
from validator.stats.histogram import Hist

if TYPE_CHECKING:
    from validator.stages.fill_kernels import FeatureTables
    from validator.stages.systematics import VariationRows

#: Values per power (events x paired features) in one block of the moment products: the
#: five powers of a block (5 MB) stay in cache between their computation and the products,
#: which are still long enough for BLAS (4,000 events for 30 features). Measured per 250k
#: weighted events x 30 features, one core: 0.28 s with blocks of 1M values, 0.18 s with 120k
#: and the powers computed in place.
MOMENT_BLOCK_VALUES = 120_000
#: Random event groups kept apart in the group-resolved sums behind the run-level global test
#: (validator.stages.globaltest): its sign-flip replicas combine the groups, so 2**32 replicas are
#: possible while the sums stay 32 times the histograms.
N_GROUPS = 32
#: Moment orders (a, b) with a <= b, a + b <= 4, accumulated as Σ w x^a y^b.
MOMENT_ORDERS = tuple((a, b) for a in range(5) for b in range(a, 5) if a + b <= 4)


@dataclass(frozen=True)
class Layout:
    """Where each feature's and each pair's bins sit in the flat histogram vectors."""

    plan: Plan

    @cached_property
    def n_features(self) -> int:
        return len(self.plan.features)

    def prepared(self) -> Layout:
        """This layout with every derived table a fill uses computed (the key, the grids and
        their lookup tables), so that copies sent to worker processes carry them instead of
        each task deriving them again (a tenth of a second per task for 30 features)."""
        for name in ("key", "offsets_1d", "offsets_fine", "offsets_plot", "pair_shape",
                     "offsets_2d", "paired_features", "moment_index", "feature_tables"):
            getattr(self, name)
        return self

    @cached_property
    def edges(self) -> list[np.ndarray]:
        return [np.asarray(f.edges) for f in self.plan.features]

    @cached_property
    def pair_edges(self) -> list[np.ndarray]:
        return [np.asarray(f.pair_edges) for f in self.plan.features]

    @cached_property
    def fine_edges(self) -> list[np.ndarray]:
        return [np.asarray(f.fine_edges) for f in self.plan.features]

    @cached_property
    def plot_edges(self) -> list[np.ndarray]:
        return [np.asarray(f.plot_edges) for f in self.plan.features]

    @cached_property
    def key(self) -> str:
        """A fingerprint of every binning and pair: accumulators add only on equal keys."""
        return hashlib.sha256(self.plan.binning_json().encode()).hexdigest()[:16]

    @staticmethod
    def _offsets(sizes: list[int]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @cached_property
    def offsets_1d(self) -> np.ndarray:
        return self._offsets([len(e) - 1 for e in self.edges])

    @cached_property
    def offsets_fine(self) -> np.ndarray:
        return self._offsets([len(e) - 1 for e in self.fine_edges])

    @cached_property
    def offsets_plot(self) -> np.ndarray:
        """Plotting bins, each feature with an underflow and an overflow bin."""
        return self._offsets([len(e) + 1 for e in self.plot_edges])

    @cached_property
    def pair_shape(self) -> list[tuple[int, int]]:
        return [(len(self.pair_edges[i]) - 1, len(self.pair_edges[j]) - 1)
                for i, j in self.plan.pairs]

    @cached_property
    def offsets_2d(self) -> np.ndarray:
        return self._offsets([nx * ny for nx, ny in self.pair_shape])

    @cached_property
    def paired_features(self) -> np.ndarray:
        """Indices of the features that appear in some pair (moments are kept for these)."""
        used = sorted({i for p in self.plan.pairs for i in p})
        return np.asarray(used, dtype=np.int64)

    @cached_property
    def moment_index(self) -> dict[int, int]:
        return {int(f): k for k, f in enumerate(self.paired_features)}

    @cached_property
    def grids(self) -> list[FeatureGrid]:
        """Each feature's binnings as lookups into one grid (see :class:`FeatureGrid`)."""
        return _grids(self)

    @cached_property
    def feature_tables(self) -> FeatureTables:
        """The grids and bin tables of every feature concatenated, for the compiled 1D fill
        (:class:`validator.stages.fill_kernels.FeatureTables`)."""
        from validator.stages import fill_kernels as kernels

        return kernels.FeatureTables.of(
            self.grids, (self.offsets_1d, self.offsets_fine, self.offsets_plot),
            np.array([f.loc for f in self.plan.features], dtype=np.float64))


@dataclass
class Accumulator:
    """Sums over the events of one sample in one category; see the module docstring.

    Arrays with a leading ``n_var`` axis hold one row per weight variation (row 0 nominal).
    """

    n_events: int
    sumw: np.ndarray  # (n_var,)
    sumw2: np.ndarray  # (n_var,)
    n_nonfinite: np.ndarray  # (F,) events with NaN/inf
    n_sentinel: np.ndarray  # (F,) events with a sentinel value
    h1_sumw: np.ndarray  # (n_var, B1)
    h1_sumw2: np.ndarray  # (n_var, B1)
    fine_sumw: np.ndarray  # (n_var, Bf)
    fine_sumw2: np.ndarray  # (n_var, Bf)
    h2_sumw: np.ndarray  # (n_var, B2)
    h2_sumw2: np.ndarray  # (n_var, B2)
    valid_sumw: np.ndarray  # (F,) Σw over events where the feature is valid
    valid_sumw2: np.ndarray  # (F,)
    invalid_sumw: np.ndarray  # (F,) Σw over events where it is NaN/inf or a sentinel
    invalid_sumw2: np.ndarray  # (F,)
    sum_wd: np.ndarray  # (F,) Σ w (x - loc): about the plan's location, for precision
    sum_wd2: np.ndarray  # (F,) Σ w (x - loc)²
    moments: np.ndarray  # (len(MOMENT_ORDERS), K, K) Σ w z_i^a z_j^b, standardised, K paired
    moments_w2: np.ndarray  # (len(MOMENT_ORDERS), K, K) Σ w² z_i^a z_j^b
    plot_sumw: np.ndarray  # (n_var, Bp) plotting bins with under/overflow
    plot_sumw2: np.ndarray  # (n_var, Bp)
    # events, Σw³ and Σw⁴ per bin (nominal weight): the shape of the weight law within a bin,
    # for toys of heavy-tailed or signed weights (validator.stats.binned.sim_toys), and how
    # precisely Σw² is known (validator.stats.binned.variance_entries)
    h1_count: np.ndarray  # (B1,)
    h1_sumw3: np.ndarray  # (B1,)
    h1_sumw4: np.ndarray  # (B1,)
    h2_count: np.ndarray  # (B2,)
    h2_sumw3: np.ndarray  # (B2,)
    h2_sumw4: np.ndarray  # (B2,)
    # Σw per random event group (nominal): (N_GROUPS, B) for the test, fine and pair bins
    group_h1: np.ndarray
    group_fine: np.ndarray
    group_h2: np.ndarray
    layout_key: str = ""  # Layout.key of the plan this was filled with

    @classmethod
    def empty(cls, layout: Layout, n_var: int = 1) -> Accumulator:
        n_f = layout.n_features
        n_k = len(layout.paired_features)
        return cls(
            layout_key=layout.key,
            plot_sumw=np.zeros((n_var, layout.offsets_plot[-1])),
            plot_sumw2=np.zeros((n_var, layout.offsets_plot[-1])),
            h1_count=np.zeros(layout.offsets_1d[-1]), h1_sumw3=np.zeros(layout.offsets_1d[-1]),
            h1_sumw4=np.zeros(layout.offsets_1d[-1]),
            h2_count=np.zeros(layout.offsets_2d[-1]), h2_sumw3=np.zeros(layout.offsets_2d[-1]),
            h2_sumw4=np.zeros(layout.offsets_2d[-1]),
            group_h1=np.zeros((N_GROUPS, layout.offsets_1d[-1])),
            group_fine=np.zeros((N_GROUPS, layout.offsets_fine[-1])),
            group_h2=np.zeros((N_GROUPS, layout.offsets_2d[-1])),
            n_events=0,
            sumw=np.zeros(n_var), sumw2=np.zeros(n_var),
            n_nonfinite=np.zeros(n_f, np.int64), n_sentinel=np.zeros(n_f, np.int64),
            h1_sumw=np.zeros((n_var, layout.offsets_1d[-1])),
            h1_sumw2=np.zeros((n_var, layout.offsets_1d[-1])),
            fine_sumw=np.zeros((n_var, layout.offsets_fine[-1])),
            fine_sumw2=np.zeros((n_var, layout.offsets_fine[-1])),
            h2_sumw=np.zeros((n_var, layout.offsets_2d[-1])),
            h2_sumw2=np.zeros((n_var, layout.offsets_2d[-1])),
            valid_sumw=np.zeros(n_f), valid_sumw2=np.zeros(n_f),
            invalid_sumw=np.zeros(n_f), invalid_sumw2=np.zeros(n_f),
            sum_wd=np.zeros(n_f), sum_wd2=np.zeros(n_f),
            moments=np.zeros((len(MOMENT_ORDERS), n_k, n_k)),
            moments_w2=np.zeros((len(MOMENT_ORDERS), n_k, n_k)),
        )

    def __add__(self, other: Accumulator) -> Accumulator:
        """The accumulator of both inputs together.

        Raises ``ValueError`` unless both were filled with the same layout (binning and pairs)
        and the same number of weight variations: numpy would otherwise broadcast one
        variation over three, or add bins that are not the same bins.
        """
        if not isinstance(other, Accumulator):
            return NotImplemented
        if self.layout_key != other.layout_key:
            raise ValueError(f"cannot add accumulators filled with different layouts "
                             f"({self.layout_key} and {other.layout_key})")
        if self.sumw.shape != other.sumw.shape:
            raise ValueError(f"cannot add accumulators with {self.sumw.shape[0]} and "
                             f"{other.sumw.shape[0]} weight variations")
        merged = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "layout_key":
                merged[f.name] = a
                continue
            if np.shape(a) != np.shape(b):
                raise ValueError(f"cannot add accumulators: '{f.name}' has shapes "
                                 f"{np.shape(a)} and {np.shape(b)}")
            merged[f.name] = a + b
        return Accumulator(**merged)

    def __radd__(self, other: object) -> Accumulator:
        if other == 0:  # lets sum() start from 0
            return self
        return NotImplemented

    # ------------------------------------------------------------------ views for the tests

    @property
    def n_var(self) -> int:
        return int(self.sumw.shape[0])

    def hist_1d(self, layout: Layout, k: int) -> Hist:
        """Feature ``k`` in the test binning (under/overflow folded into the edge bins)."""
        lo, hi = layout.offsets_1d[k], layout.offsets_1d[k + 1]
        return Hist((layout.edges[k],), self.h1_sumw[:, lo:hi], self.h1_sumw2[:, lo:hi],
                    count=self.h1_count[lo:hi], sumw3=self.h1_sumw3[lo:hi],
                    sumw4=self.h1_sumw4[lo:hi])

    def hist_fine(self, layout: Layout, k: int) -> Hist:
        """Feature ``k`` in the fine binning behind the EDF tests (KS, AD, Wasserstein)."""
        lo, hi = layout.offsets_fine[k], layout.offsets_fine[k + 1]
        return Hist((layout.fine_edges[k],), self.fine_sumw[:, lo:hi], self.fine_sumw2[:, lo:hi])

    def hist_plot(self, layout: Layout, k: int) -> Hist:
        """Feature ``k`` in the plotting binning, with underflow and overflow bins."""
        lo, hi = layout.offsets_plot[k], layout.offsets_plot[k + 1]
        return Hist((layout.plot_edges[k],), self.plot_sumw[:, lo:hi],
                    self.plot_sumw2[:, lo:hi], flow=True)

    def hist_2d(self, layout: Layout, p: int) -> Hist:
        """Pair ``p`` of the plan, shape ``(n_var, nx, ny)``."""
        lo, hi = layout.offsets_2d[p], layout.offsets_2d[p + 1]
        i, j = layout.plan.pairs[p]
        shape = (self.n_var, *layout.pair_shape[p])
        return Hist((layout.pair_edges[i], layout.pair_edges[j]),
                    self.h2_sumw[:, lo:hi].reshape(shape), self.h2_sumw2[:, lo:hi].reshape(shape),
                    count=self.h2_count[lo:hi].reshape(shape[1:]),
                    sumw3=self.h2_sumw3[lo:hi].reshape(shape[1:]),
                    sumw4=self.h2_sumw4[lo:hi].reshape(shape[1:]))

    def moment_matrix(self, layout: Layout, i: int, j: int, squared: bool = False,
                      ) -> np.ndarray:
        """S[a, b] = Σ w z_i^a z_j^b (a + b <= 4) for the standardised pair (i, j).

        With ``squared``, the same sums with w² (for the variance of weighted estimators).
        """
        source = self.moments_w2 if squared else self.moments
        ki, kj = layout.moment_index[i], layout.moment_index[j]
        out = np.zeros((5, 5))
        for m, (a, b) in enumerate(MOMENT_ORDERS):
            out[a, b] = source[m, ki, kj]
            out[b, a] = source[m, kj, ki]
        return out

    def mean_std(self, layout: Layout, k: int) -> tuple[float, float]:
        """Weighted mean and standard deviation of feature ``k`` over its valid values."""
        sw = self.valid_sumw[k]
        if sw <= 0:
            return float("nan"), float("nan")
        shift = self.sum_wd[k] / sw
        var = max(self.sum_wd2[k] / sw - shift * shift, 0.0)
        return float(layout.plan.features[k].loc + shift), float(np.sqrt(var))

    def pair_n_eff(self, layout: Layout, i: int, j: int) -> float:
        """Kish's effective number of events where both features are valid."""
        ki, kj = layout.moment_index[i], layout.moment_index[j]
        sumw = self.moments[0, ki, kj]
        sumw2 = self.moments_w2[0, ki, kj]
        return float(sumw**2 / sumw2) if sumw2 > 0 else 0.0


@dataclass(frozen=True)
class FeatureGrid:
    """Every binning of one feature as lookups into one sorted grid of edges.

    ``edges`` is the union of the test, pair, fine and plotting edges (plus the float just
    above the last plotting edge). One ``searchsorted`` of a value into it gives ``u``, the
    number of grid edges <= the value; since each binning's edges are a subset of the grid,
    the number of *its* edges <= the value is a function of ``u`` alone, so each binning's bin
    is a table lookup ``lut[u]``: exactly what a ``searchsorted`` into that binning would give,
    at the cost of one search instead of four. Index ``len(edges) + 1`` is the *trash* entry
    that invalid values (NaN/inf/sentinel) are sent to: each table maps it to one bin past the
    binning's last, which the fill drops.
    """

    edges: np.ndarray
    test: np.ndarray  # test bins, under/overflow folded into the edge bins
    pair: np.ndarray  # pair bins, folded likewise
    fine: np.ndarray  # fine bins, folded likewise
    plot: np.ndarray  # plotting bins: 0 underflow, len(plot_edges) overflow

    @property
    def trash(self) -> int:
        return len(self.edges) + 1

    @staticmethod
    def _folded(grid: np.ndarray, edges: np.ndarray) -> np.ndarray:
        below = np.concatenate([[0], np.searchsorted(edges, grid, side="right")])
        return np.append(np.clip(below - 1, 0, len(edges) - 2), len(edges) - 1)

    @classmethod
    def of(cls, edges: np.ndarray, pair: np.ndarray, fine: np.ndarray, plot: np.ndarray,
           ) -> FeatureGrid:
        top = np.nextafter(plot[-1], np.inf)  # [last plot edge, top) holds that value only
        grid = np.unique(np.concatenate([edges, pair, fine, plot, [top]]))
        below = np.concatenate([[0], np.searchsorted(plot, grid, side="right")])
        # a value equal to the last plotting edge is in the last bin, like numpy.histogram
        below[1:][grid == plot[-1]] = len(plot) - 1
        return cls(edges=grid, test=cls._folded(grid, edges), pair=cls._folded(grid, pair),
                   fine=cls._folded(grid, fine), plot=np.append(below, len(plot) + 1))


def _grids(layout: Layout) -> list[FeatureGrid]:
    return [FeatureGrid.of(layout.edges[k], layout.pair_edges[k], layout.fine_edges[k],
                           layout.plot_edges[k]) for k in range(layout.n_features)]


def event_groups(entries: np.ndarray, files: np.ndarray, seed: int) -> np.ndarray:
    """The random group (0 .. N_GROUPS-1) of each event, a hash of its (file, row)."""
    from validator.stages.plan import uniform_keys

    keys = uniform_keys(entries, files, seed ^ 0x5EED_6A0B)
    return np.minimum((keys * N_GROUPS).astype(np.int64), N_GROUPS - 1)


class _Weights:
    """The powers of a chunk's weights the fill needs, computed once per chunk.

    With unit weights (data), every weighted sum is the count of events: one unweighted
    ``bincount`` gives Σ1 = Σw = Σw² = Σw³ = Σw⁴ exactly, so the other sums are not computed.
    """

    def __init__(self, weights: np.ndarray):
        self.all = np.asarray(weights, dtype=np.float64)
        self.nominal = self.all[0]
        self.unit = self.all.shape[0] == 1 and bool(np.all(self.nominal == 1.0))
        self.w2 = self.nominal * self.nominal
        self.w3 = self.w2 * self.nominal
        self.w4 = self.w2 * self.w2

    def per_bin(self, index: np.ndarray, size: int, shape_sums: bool = True,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None,
                           np.ndarray | None]:
        """Σw, Σw² (one row per variation), and with ``shape_sums`` the count, Σw³ and Σw⁴
        (nominal) per bin of ``index`` (values ``0 .. size``; ``size`` is the trash bin,
        dropped)."""
        count = (np.bincount(index, minlength=size + 1)[:size].astype(np.float64)
                 if shape_sums or self.unit else None)
        if self.unit:
            return count[None], count[None], count, count, count
        sumw = np.stack([np.bincount(index, w, minlength=size + 1)[:size] for w in self.all])
        sumw2 = np.stack([np.bincount(index, w * w if v else self.w2, minlength=size + 1)[:size]
                          for v, w in enumerate(self.all)])
        if not shape_sums:
            return sumw, sumw2, None, None, None
        sumw3 = np.bincount(index, self.w3, minlength=size + 1)[:size]
        sumw4 = np.bincount(index, self.w4, minlength=size + 1)[:size]
        return sumw, sumw2, count, sumw3, sumw4


def _grouped(index: np.ndarray, groups: np.ndarray, size: int, weights: _Weights,
             ) -> np.ndarray:
    """Σw (nominal) per (event group, bin) for bins ``0 .. size`` (the last is the trash):
    shape (N_GROUPS, size)."""
    key = groups * (size + 1) + index
    if weights.unit:
        sums = np.bincount(key, minlength=N_GROUPS * (size + 1)).astype(np.float64)
    else:
        sums = np.bincount(key, weights.nominal, minlength=N_GROUPS * (size + 1))
    return sums.reshape(N_GROUPS, size + 1)[:, :size]


def _fill_pairs(acc: Accumulator, layout: Layout, codes: np.ndarray, groups: np.ndarray,
                weights: _Weights) -> None:
    """Every pair's 2D sums: the compiled kernel
    (:func:`validator.stages.fill_kernels.fill_pairs`), or
    :func:`_fill_pairs_numpy` where numba is not available."""
    from validator.stages import fill_kernels as kernels

    if not kernels.HAVE_NUMBA:
        _fill_pairs_numpy(acc, layout, codes, groups, weights)
        return
    sums = kernels.fill_pairs(codes, layout.plan.pairs, layout.pair_shape,
                              np.asarray(layout.offsets_2d[:-1]), groups, weights.all,
                              weights.unit, acc.group_h2)
    acc.h2_count[:] = sums[:, 0]
    if weights.unit:
        acc.h2_sumw[0] = acc.h2_sumw2[0] = acc.h2_sumw3[:] = acc.h2_sumw4[:] = sums[:, 0]
        return
    acc.h2_sumw[0], acc.h2_sumw2[0] = sums[:, 1], sums[:, 2]
    acc.h2_sumw3[:], acc.h2_sumw4[:] = sums[:, 3], sums[:, 4]
    for v in range(1, weights.all.shape[0]):
        acc.h2_sumw[v], acc.h2_sumw2[v] = sums[:, 3 + 2 * v], sums[:, 4 + 2 * v]


def _fill_pairs_numpy(acc: Accumulator, layout: Layout, codes: np.ndarray, groups: np.ndarray,
                      weights: _Weights) -> None:
    """Every pair's 2D sums, one pair at a time: one key per event, five ``bincount`` s.

    Each feature's pair bin (``codes``, the trash bin ``ny`` for an invalid value) is computed
    once per chunk. Pair (i, j)'s key is ``((cx * (ny+1)) + cy) * N_GROUPS + group``: a
    weighted ``bincount`` over it gives Σw per (cell, group) (the group sums, and Σw by
    summing the groups); Σw², Σw³ and the count use the same key. A cell whose x or y is the
    trash bin (an event invalid in either feature) is dropped.
    """
    n = codes.shape[1]
    ny_all = np.array([len(e) - 1 for e in layout.pair_edges], dtype=np.int64)
    # per feature: its pair bin times N_GROUPS plus the event's group (the key's y part)
    gy = codes * N_GROUPS + groups[None, :]
    key = np.empty(n, dtype=np.int64)
    for p, (i, j) in enumerate(layout.plan.pairs):
        nx, ny = layout.pair_shape[p]
        stride = (ny + 1) * N_GROUPS
        assert ny == ny_all[j]
        np.multiply(codes[i], stride, out=key)
        np.add(key, gy[j], out=key)
        size = (nx + 1) * stride
        lo, hi = layout.offsets_2d[p], layout.offsets_2d[p + 1]

        def cells(sums: np.ndarray, nx: int = nx, ny: int = ny) -> np.ndarray:
            """(nx+1, ny+1, N_GROUPS) sums without trash cells, as (nx*ny, N_GROUPS)."""
            return sums.reshape(nx + 1, ny + 1, N_GROUPS)[:nx, :ny].reshape(nx * ny, N_GROUPS)

        if weights.unit:
            grouped = cells(np.bincount(key, minlength=size).astype(np.float64))
            total = grouped.sum(axis=1)
            acc.group_h2[:, lo:hi] = grouped.T
            acc.h2_sumw[0, lo:hi] = acc.h2_sumw2[0, lo:hi] = total
            acc.h2_count[lo:hi] = acc.h2_sumw3[lo:hi] = acc.h2_sumw4[lo:hi] = total
            continue
        grouped = cells(np.bincount(key, weights.nominal, minlength=size))
        acc.group_h2[:, lo:hi] = grouped.T
        acc.h2_sumw[0, lo:hi] = grouped.sum(axis=1)
        acc.h2_sumw2[0, lo:hi] = cells(np.bincount(key, weights.w2, minlength=size)).sum(1)
        acc.h2_sumw3[lo:hi] = cells(np.bincount(key, weights.w3, minlength=size)).sum(1)
        acc.h2_sumw4[lo:hi] = cells(np.bincount(key, weights.w4, minlength=size)).sum(1)
        acc.h2_count[lo:hi] = cells(np.bincount(key, minlength=size)).sum(1)
        for v in range(1, weights.all.shape[0]):
            w = weights.all[v]
            acc.h2_sumw[v, lo:hi] = cells(np.bincount(key, w, minlength=size)).sum(1)
            acc.h2_sumw2[v, lo:hi] = cells(np.bincount(key, w * w, minlength=size)).sum(1)


def _fill_moments(acc: Accumulator, layout: Layout, x: np.ndarray, valid: np.ndarray,
                  weights: _Weights) -> None:
    """Σ w z_i^a z_j^b and Σ w² z_i^a z_j^b for every pair of paired features and every
    (a, b) of ``MOMENT_ORDERS`` as matrix products: with P_b the (K, n) matrix of z^b (zero
    where the feature is invalid) and W_a = w·P_a, block (a, b) is W_a P_bᵀ. Since a <= b and
    a + b <= 4, three products cover them: W_0 [P_0..P_4]ᵀ, W_1 [P_1..P_3]ᵀ and W_2 P_2ᵀ.
    Events go in blocks so the powers stay small."""
    plan = layout.plan
    used = layout.paired_features
    n_k, n = len(used), x.shape[1]
    loc = np.array([plan.features[k].loc for k in used])[:, None]
    scale = np.array([plan.features[k].scale for k in used])[:, None]
    # the b-range each a needs, as slices of the stacked powers
    spans = {a: (min(b for a2, b in MOMENT_ORDERS if a2 == a),
                 max(b for a2, b in MOMENT_ORDERS if a2 == a)) for a, _ in MOMENT_ORDERS}
    totals = {a: np.zeros((2, n_k, (hi - lo + 1) * n_k)) for a, (lo, hi) in spans.items()}
    block = max(1, min(n, MOMENT_BLOCK_VALUES // max(n_k, 1)))
    buffer = np.empty((5 * n_k, block))  # the powers of a block, rows z^0 .. z^4 of each
    scaled = np.empty((n_k, block))
    for start in range(0, n, block):
        sel = slice(start, start + block)
        size = min(block, n - start)
        powers = buffer[:, :size]
        mask = valid[used, sel]
        p0, p1, p2, p3, p4 = (powers[b * n_k:(b + 1) * n_k] for b in range(5))
        p0[:] = mask
        np.subtract(x[used, sel], loc, out=p1)
        np.divide(p1, scale, out=p1)
        np.copyto(p1, 0.0, where=~mask)
        np.multiply(p1, p1, out=p2)
        np.multiply(p2, p1, out=p3)
        np.multiply(p2, p2, out=p4)
        w = weights.nominal[sel]
        w_pair = (w,) if weights.unit else (w, w * w)
        # a = 0 is Σ w [i valid] z_j^b: for a feature valid on every event of the block, the
        # same row for every i (one vector product); a full product only for the others
        partial = np.flatnonzero(~mask.all(axis=1))
        for row, wr in enumerate(w_pair):
            zero = np.broadcast_to(powers @ wr, (n_k, 5 * n_k)).copy()
            if partial.size:
                zero[partial] = (powers[partial] * wr) @ powers.T
            totals[0][row] += zero
        for a, (lo, hi) in spans.items():
            if a == 0:
                continue
            right = powers[lo * n_k:(hi + 1) * n_k].T
            for row, wr in enumerate(w_pair):
                # unit weights (data): the powers themselves, no product with ones
                left = powers[a * n_k:(a + 1) * n_k]
                if not weights.unit:
                    left = np.multiply(left, wr, out=scaled[:, :size])
                totals[a][row] += left @ right
    for a in totals:
        if weights.unit:  # w² = w = 1
            totals[a][1] = totals[a][0]

    def blocks(row: int) -> np.ndarray:
        return np.stack([totals[a][row][:, (b - spans[a][0]) * n_k:(b - spans[a][0] + 1) * n_k]
                         for a, b in MOMENT_ORDERS])

    acc.moments = blocks(0)
    acc.moments_w2 = blocks(1)


def _fill_features_numpy(acc: Accumulator, layout: Layout, x: np.ndarray, valid: np.ndarray,
                         groups: np.ndarray, w: _Weights) -> np.ndarray | None:
    """Every feature's 1D sums with numpy (where numba is missing; the reference of
    :func:`validator.stages.fill_kernels.fill_features`): one search per value into the feature's
    grid,
    a table lookup per binning, ``bincount`` s per sum. Returns the pair bins of every
    feature (None without pairs)."""

    plan = layout.plan
    n_f, n = x.shape
    grids = layout.grids
    # pair bins are few (a code per feature and event, the trash bin included): int16 keeps a
    # block of events' codes in cache for the pair kernel
    pair_codes = np.empty((n_f, n), dtype=np.int16) if plan.pairs else None
    for k in range(n_f):
        grid, ok = grids[k], valid[k]
        u = np.searchsorted(grid.edges, x[k], side="right")
        u[~ok] = grid.trash
        lo, hi = layout.offsets_1d[k], layout.offsets_1d[k + 1]
        c = grid.test[u]
        (acc.h1_sumw[:, lo:hi], acc.h1_sumw2[:, lo:hi], acc.h1_count[lo:hi],
         acc.h1_sumw3[lo:hi], acc.h1_sumw4[lo:hi]) = w.per_bin(c, hi - lo)
        acc.group_h1[:, lo:hi] = _grouped(c, groups, hi - lo, w)
        lo, hi = layout.offsets_fine[k], layout.offsets_fine[k + 1]
        c = grid.fine[u]
        acc.fine_sumw[:, lo:hi], acc.fine_sumw2[:, lo:hi], *_ = w.per_bin(c, hi - lo, False)
        acc.group_fine[:, lo:hi] = _grouped(c, groups, hi - lo, w)
        lo, hi = layout.offsets_plot[k], layout.offsets_plot[k + 1]
        acc.plot_sumw[:, lo:hi], acc.plot_sumw2[:, lo:hi], *_ = w.per_bin(grid.plot[u],
                                                                           hi - lo, False)
        if pair_codes is not None:
            pair_codes[k] = grid.pair[u]
        # validity sums and the moments about the plan's location, for precision
        wv = np.where(ok, w.nominal, 0.0)
        wi = w.nominal - wv if not ok.all() else np.zeros(n)
        acc.valid_sumw[k], acc.valid_sumw2[k] = wv.sum(), wv @ w.nominal
        acc.invalid_sumw[k], acc.invalid_sumw2[k] = wi.sum(), wi @ w.nominal
        d = np.where(ok, x[k] - plan.features[k].loc, 0.0)
        acc.sum_wd[k] = d @ w.nominal
        acc.sum_wd2[k] = (d * d) @ w.nominal
    return pair_codes


def _fill_features(acc: Accumulator, layout: Layout, x: np.ndarray, valid: np.ndarray,
                   groups: np.ndarray, w: _Weights) -> np.ndarray | None:
    """Every feature's 1D sums, compiled (:func:`validator.stages.fill_kernels.fill_features`);
    returns
    the pair bins of every feature (None without pairs)."""
    from validator.stages import fill_kernels as kernels

    test, fine, plot, test_groups, fine_groups, codes, per_feature = kernels.fill_features(
        x, valid, layout.feature_tables, groups, N_GROUPS, w.all, w.unit)
    acc.h1_count[:] = test[:, 0]
    acc.group_h1[:] = test_groups
    acc.group_fine[:] = fine_groups
    if w.unit:
        acc.h1_sumw[0] = acc.h1_sumw2[0] = acc.h1_sumw3[:] = acc.h1_sumw4[:] = test[:, 0]
        acc.fine_sumw[0] = acc.fine_sumw2[0] = fine[:, 0]
        acc.plot_sumw[0] = acc.plot_sumw2[0] = plot[:, 0]
    else:
        acc.h1_sumw[0], acc.h1_sumw2[0] = test[:, 1], test[:, 2]
        acc.h1_sumw3[:], acc.h1_sumw4[:] = test[:, 3], test[:, 4]
        for v in range(1, w.all.shape[0]):
            acc.h1_sumw[v], acc.h1_sumw2[v] = test[:, 3 + 2 * v], test[:, 4 + 2 * v]
        acc.fine_sumw[:], acc.fine_sumw2[:] = fine[:, 0::2].T, fine[:, 1::2].T
        acc.plot_sumw[:], acc.plot_sumw2[:] = plot[:, 0::2].T, plot[:, 1::2].T
    (acc.valid_sumw[:], acc.valid_sumw2[:], acc.invalid_sumw[:], acc.invalid_sumw2[:],
     acc.sum_wd[:], acc.sum_wd2[:]) = per_feature.T
    return codes if layout.plan.pairs else None


def accumulate(features: np.ndarray, weights: np.ndarray, layout: Layout,
               groups: np.ndarray | None = None) -> Accumulator:
    """Accumulate one chunk.

    Each feature is binned once (one search into its :class:`FeatureGrid`, then a table
    lookup per binning) and its 1D sums added in the same compiled pass
    (:func:`validator.stages.fill_kernels.fill_features`); 2D sums one compiled pass per pair
    (:func:`_fill_pairs`), the moment sums matrix products (:func:`_fill_moments`). Counts
    are exact; sums agree with a direct computation to rounding, in any chunking.

    Parameters
    ----------
    features:
        (n_events, n_features) float array in the plan's feature order (a column-major
        array, as :func:`fill_sample` builds it, is used without a copy).
    weights:
        (n_var, n_events): the nominal weight first, then any variations.
    groups:
        (n_events,) each event's random group (:func:`event_groups`); all in group 0 if None.
    """
    from validator.stages import fill_kernels as kernels

    plan = layout.plan
    n = features.shape[0]
    n_var = weights.shape[0]
    acc = Accumulator.empty(layout, n_var)
    if n == 0:
        return acc
    w = _Weights(weights)
    acc.n_events = n
    acc.sumw = w.all.sum(axis=1)
    acc.sumw2 = (w.all * w.all).sum(axis=1)
    # feature-major: every per-feature and per-pair operation reads contiguous rows
    x = np.ascontiguousarray(features.T, dtype=np.float64)
    finite = np.isfinite(x)
    sentinel = is_sentinel(x)
    valid = finite & ~sentinel
    acc.n_nonfinite = n - finite.sum(axis=1).astype(np.int64)
    acc.n_sentinel = sentinel.sum(axis=1).astype(np.int64)
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)
    if kernels.HAVE_NUMBA:
        pair_codes = _fill_features(acc, layout, x, valid, groups, w)
    else:
        pair_codes = _fill_features_numpy(acc, layout, x, valid, groups, w)
    if plan.pairs:
        _fill_pairs(acc, layout, pair_codes, groups, w)
        _fill_moments(acc, layout, x, valid, w)
    return acc


def fill_sample(reader: Reader, layout: Layout, category: str | None = None,
                progress: Callable[[str, int, int], None] | None = None, seed: int = 0,
                observe: Callable[[dict[str, np.ndarray], np.ndarray], None] | None = None,
                variations: VariationRows | None = None,
                ) -> dict[str, Accumulator]:
    """Second pass: one accumulator per category (and the inclusive one, their sum).

    Events are assigned to random groups by a hash of (``seed``, file, row): the same events
    fall in the same groups however the input is chunked or partitioned. ``observe(chunk,
    weights)``, when given, sees every chunk with its nominal weights in the same pass (the
    network audit accumulates its sums there: no second read of the data). ``variations``:
    the weight rows of a simulation with systematics (:mod:`validator.stages.systematics`).
    """
    names = layout.plan.feature_names
    per_category: dict[str, Accumulator] = {}
    done = 0
    for chunk in reader:
        n = len(chunk[ENTRY])
        # feature-major (F, n) and seen as (n, F): accumulate uses it without another copy
        x = np.stack([np.asarray(chunk[c], dtype=np.float64) for c in names]).T if n \
            else np.empty((0, len(names)))
        w = weights_of(chunk, reader.sample)
        if observe is not None:
            observe(chunk, w[0])
        if variations is not None and len(variations.labels) > 1:
            w = variations.weight_rows(chunk, w[0], reader.sample)
        groups = event_groups(chunk[ENTRY], chunk[FILE], seed)
        cats = categories_of(chunk, category)
        parts = {INCLUSIVE: slice(None)} if cats is None else {
            str(c): cats == c for c in np.unique(cats)}
        for cat, sel in parts.items():
            acc = accumulate(x[sel], w[:, sel], layout, groups[sel])
            per_category[cat] = per_category[cat] + acc if cat in per_category else acc
        done += n
        if progress:
            progress(f"fill {reader.sample.name}", done, reader.sample.n_rows)
    if category is not None and per_category:
        per_category = {INCLUSIVE: sum(per_category.values()), **dict(sorted(per_category.items()))}
    return per_category
