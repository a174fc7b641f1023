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

from validator.hist import Hist
from validator.plan import SENTINEL_VALUES, Plan
from validator.sources import ENTRY, FILE
from validator.transform import INCLUSIVE, Reader, categories_of, weights_of

if TYPE_CHECKING:
    from validator.systematics import VariationRows

#: Entries (events x pairs) indexed at once when filling the pair histograms.
PAIR_BLOCK_ENTRIES = 8_000_000
#: Random event groups kept apart in the group-resolved sums behind the run-level global test
#: (validator.globaltest): its sign-flip replicas combine the groups, so 2**32 replicas are
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
    # events and Σw³ per bin (nominal weight): the shape of the weight law within a bin, for
    # toys of heavy-tailed or signed weights (validator.stats.binned.sim_toys)
    h1_count: np.ndarray  # (B1,)
    h1_sumw3: np.ndarray  # (B1,)
    h2_count: np.ndarray  # (B2,)
    h2_sumw3: np.ndarray  # (B2,)
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
            h2_count=np.zeros(layout.offsets_2d[-1]), h2_sumw3=np.zeros(layout.offsets_2d[-1]),
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
                    count=self.h1_count[lo:hi], sumw3=self.h1_sumw3[lo:hi])

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
                    sumw3=self.h2_sumw3[lo:hi].reshape(shape[1:]))

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


def _bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value, under/overflow folded into the first/last bin."""
    idx = np.searchsorted(edges, x, side="right") - 1
    return np.clip(idx, 0, len(edges) - 2)


def _flow_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value counting an underflow bin 0 and an overflow bin ``len(edges)``.

    Bins are ``[e_k, e_k+1)``; the last bin also holds its upper edge, like numpy.histogram.
    """
    idx = np.searchsorted(edges, x, side="right")
    idx[x == edges[-1]] = len(edges) - 1
    return idx


def _masked_bincount(index: np.ndarray, mask: np.ndarray, weights: np.ndarray, size: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Σw and Σw² per bin over all entries of ``index`` (any shape ``(..., n_events)``).

    ``mask`` (same shape, 0/1) zeroes the entries to leave out: they add nothing, which is
    cheaper than gathering the kept ones. One row per weight variation.
    """
    flat = index.ravel()
    sumw, sumw2 = [], []
    for w in weights:
        mw = mask * w
        sumw.append(np.bincount(flat, weights=mw.ravel(), minlength=size))
        sumw2.append(np.bincount(flat, weights=(mw * w).ravel(), minlength=size))
    return np.stack(sumw), np.stack(sumw2)


def _count_sumw3(index: np.ndarray, mask: np.ndarray, weight: np.ndarray, size: int,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Events and Σw³ per bin for one weight (see :func:`_masked_bincount`)."""
    flat = index.ravel()
    count = np.bincount(flat, weights=mask.ravel(), minlength=size)
    return count, np.bincount(flat, weights=(mask * weight**3).ravel(), minlength=size)


def _group_sums(index: np.ndarray, mask: np.ndarray, weight: np.ndarray, groups: np.ndarray,
                size: int) -> np.ndarray:
    """Σw per (event group, bin): shape (N_GROUPS, size)."""
    flat = (index + groups * size).ravel()
    sums = np.bincount(flat, weights=(mask * weight).ravel(), minlength=N_GROUPS * size)
    return sums.reshape(N_GROUPS, size)


def event_groups(entries: np.ndarray, files: np.ndarray, seed: int) -> np.ndarray:
    """The random group (0 .. N_GROUPS-1) of each event, a hash of its (file, row)."""
    from validator.plan import uniform_keys

    keys = uniform_keys(entries, files, seed ^ 0x5EED_6A0B)
    return np.minimum((keys * N_GROUPS).astype(np.int64), N_GROUPS - 1)


def accumulate(features: np.ndarray, weights: np.ndarray, layout: Layout,
               groups: np.ndarray | None = None) -> Accumulator:
    """Accumulate one chunk.

    Parameters
    ----------
    features:
        (n_events, n_features) float array in the plan's feature order.
    weights:
        (n_var, n_events): the nominal weight first, then any variations.
    groups:
        (n_events,) each event's random group (:func:`event_groups`); all in group 0 if None.
    """
    plan = layout.plan
    n, n_f = features.shape
    n_var = weights.shape[0]
    acc = Accumulator.empty(layout, n_var)
    if n == 0:
        return acc
    acc.n_events = n
    acc.sumw = weights.sum(axis=1)
    acc.sumw2 = (weights * weights).sum(axis=1)
    # feature-major copies: every per-feature and per-pair operation reads contiguous rows
    x = np.ascontiguousarray(features.T)
    finite = np.isfinite(x)
    sentinel = finite & np.isin(x, SENTINEL_VALUES)
    valid = finite & ~sentinel
    acc.n_nonfinite = (~finite).sum(axis=1).astype(np.int64)
    acc.n_sentinel = sentinel.sum(axis=1).astype(np.int64)
    safe = np.where(valid, x, 0.0)
    vmask = valid.astype(np.float64)

    idx1 = np.empty((n_f, n), np.int64)
    idx2 = np.empty((n_f, n), np.int64)
    idxf = np.empty((n_f, n), np.int64)
    idxp = np.empty((n_f, n), np.int64)
    for k in range(n_f):
        idx1[k] = _bin_index(safe[k], layout.edges[k]) + layout.offsets_1d[k]
        idx2[k] = _bin_index(safe[k], layout.pair_edges[k])
        idxf[k] = _bin_index(safe[k], layout.fine_edges[k]) + layout.offsets_fine[k]
        idxp[k] = _flow_index(safe[k], layout.plot_edges[k]) + layout.offsets_plot[k]
    acc.h1_sumw, acc.h1_sumw2 = _masked_bincount(idx1, vmask, weights,
                                                 int(layout.offsets_1d[-1]))
    acc.h1_count, acc.h1_sumw3 = _count_sumw3(idx1, vmask, weights[0],
                                              int(layout.offsets_1d[-1]))
    acc.fine_sumw, acc.fine_sumw2 = _masked_bincount(idxf, vmask, weights,
                                                     int(layout.offsets_fine[-1]))
    acc.plot_sumw, acc.plot_sumw2 = _masked_bincount(idxp, vmask, weights,
                                                     int(layout.offsets_plot[-1]))
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)
    acc.group_h1 = _group_sums(idx1, vmask, weights[0], groups, int(layout.offsets_1d[-1]))
    acc.group_fine = _group_sums(idxf, vmask, weights[0], groups,
                                 int(layout.offsets_fine[-1]))

    nominal = weights[0]
    acc.valid_sumw = vmask @ nominal
    acc.valid_sumw2 = vmask @ (nominal * nominal)
    acc.invalid_sumw = (1.0 - vmask) @ nominal
    acc.invalid_sumw2 = (1.0 - vmask) @ (nominal * nominal)
    loc_all = np.array([f.loc for f in plan.features])[:, None]
    d = np.where(valid, x - loc_all, 0.0)
    acc.sum_wd = d @ nominal
    acc.sum_wd2 = (d * d) @ nominal

    if plan.pairs:
        size2 = int(layout.offsets_2d[-1])
        pairs = np.asarray(plan.pairs, dtype=np.int64)
        ny = np.array([shape[1] for shape in layout.pair_shape], dtype=np.int64)
        # pairs in blocks, so the index arrays stay near PAIR_BLOCK_ENTRIES whatever the count
        block = max(1, PAIR_BLOCK_ENTRIES // n)
        for start in range(0, len(pairs), block):
            sel = slice(start, start + block)
            i, j = pairs[sel, 0], pairs[sel, 1]
            flat = idx2[i] * ny[sel, None] + idx2[j] + layout.offsets_2d[:-1][sel, None]
            both = vmask[i] * vmask[j]
            sumw, sumw2 = _masked_bincount(flat, both, weights, size2)
            acc.h2_sumw += sumw
            acc.h2_sumw2 += sumw2
            count, sumw3 = _count_sumw3(flat, both, weights[0], size2)
            acc.h2_count += count
            acc.h2_sumw3 += sumw3
            acc.group_h2 += _group_sums(flat, both, weights[0], groups, size2)

        used = layout.paired_features
        scale = np.array([plan.features[k].scale for k in used])[:, None]
        mask = vmask[used]
        z = d[used] / scale  # standardised; zero where the feature is not valid
        powers = [mask, z, z * z, z**3, z**4]
        weighted = [pw * nominal for pw in powers]
        acc.moments = np.stack([weighted[a] @ powers[b].T for a, b in MOMENT_ORDERS])
        weighted = [pw * nominal for pw in weighted]
        acc.moments_w2 = np.stack([weighted[a] @ powers[b].T for a, b in MOMENT_ORDERS])
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
    the weight rows of a simulation with systematics (:mod:`validator.systematics`).
    """
    names = layout.plan.feature_names
    per_category: dict[str, Accumulator] = {}
    done = 0
    for chunk in reader:
        n = len(chunk[ENTRY])
        x = np.column_stack([chunk[c] for c in names]) if n else np.empty((0, len(names)))
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
