"""Plan a run: which columns are features, how each is binned, which pairs are tested.

Planning takes one cheap pass over both samples (:class:`ColumnProfile`, mergeable like every
accumulator) and turns it into a :class:`Plan`, a plain value written to DuckDB with the run so
that a run can be reproduced.

Binning follows the practice of the CMS/KIT input-validation studies (Wunsch et al.,
arXiv:1803.08782; CMS-HIG-18-032): equal-population bins from quantiles of the *data*, duplicate
edges (integer-like variables with mass points) merged, default/sentinel values (-999 and the
like) reported and excluded, and under/overflow folded into the edge bins, never dropped.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from validator.errors import InputError
from validator.inputs.sources import ENTRY, FILE, Sample, common_kind
from validator.inputs.transform import Reader, single_if_exact, weights_of

#: Values physicists use as "not set"; counted and excluded from the binned tests.
SENTINEL_VALUES = (-99.0, -999.0, -9999.0, -99999.0, -999999.0)


def is_sentinel(x: np.ndarray) -> np.ndarray:
    """Where ``x`` holds one of the ``SENTINEL_VALUES`` (``np.isin``, with one comparison
    over the whole array and the membership test only where a value is that low)."""
    low = x <= max(SENTINEL_VALUES)
    if not low.any():
        return low
    found = np.zeros(x.shape, dtype=bool)
    found[low] = np.isin(x[low], SENTINEL_VALUES)
    return found


#: Column names that identify events rather than describe them (compared case-insensitively).
ID_COLUMNS = frozenset({
    "run", "event", "luminosityblock", "lumi", "lumiblock", "lumisection", "ls", "evt",
    "eventnumber", "runnumber", "event_id", "eventid", "id", "index", "entry", "__index_level_0__",
})
#: Column names that are truth labels or bookkeeping, never inputs.
LABEL_COLUMNS = frozenset({
    "label", "labels", "target", "truth", "is_signal", "issignal", "class", "process", "sample",
    "y_true",
})
MAX_DISTINCT = 64  # distinct values tracked per column while profiling
#: Values of a chunk looked at first for distinct values: a continuous column has more than
#: MAX_DISTINCT among them, and its chunk is then not sorted.
DISTINCT_PROBE = 1024
RESERVOIR_SIZE = 100_000  # data values kept per column for the quantiles


@dataclass
class ColumnProfile:
    """Mergeable summary of one column of one sample, for planning.

    Keeps counts, extrema, whether all values are integers, up to ``MAX_DISTINCT`` distinct
    values, sentinel counts and a uniform reservoir sample: the ``capacity`` values with the
    smallest keys, where a key is a hash of the event's position in the sample
    (:func:`uniform_keys`). Merging keeps the smallest keys of both, so the reservoir, and the
    binning made from it, do not depend on how the input was split into chunks.
    """

    n: int = 0
    n_nonfinite: int = 0
    n_sentinel: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    integral: bool = True
    distinct: frozenset[float] | None = frozenset()
    keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    values: np.ndarray = field(default_factory=lambda: np.empty(0))
    capacity: int = RESERVOIR_SIZE

    @classmethod
    def of(cls, x: np.ndarray, keys: np.ndarray, capacity: int = RESERVOIR_SIZE,
           smallest: tuple[np.ndarray, np.ndarray] | None = None) -> ColumnProfile:
        """Profile of one chunk; ``keys`` are the events' reservoir keys (same length as x).
        ``smallest``, if given, is ``(np.argpartition(keys, capacity)[:capacity]``, the keys
        at those indices), computed once for every column of the chunk and used where all of
        a column's values are valid: those columns' profiles then hold one and the same
        array of kept keys (see :meth:`merged`)."""
        finite = np.isfinite(x)
        sentinel = is_sentinel(x)
        good_mask = finite & ~sentinel
        all_good = bool(good_mask.all())
        good = x if all_good else x[good_mask]
        prof = cls(n=len(x), n_nonfinite=int((~finite).sum()), n_sentinel=int(sentinel.sum()),
                   capacity=capacity)
        if good.size:
            prof.minimum = float(good.min())
            prof.maximum = float(good.max())
            prof.integral = bool(np.all(good == np.round(good)))
            # a column with many values shows it in its first few: no sort of the whole chunk
            many = np.unique(good[:DISTINCT_PROBE]).size > MAX_DISTINCT
            uniq = None if many else np.unique(good)
            prof.distinct = (frozenset(uniq.tolist())
                             if uniq is not None and uniq.size <= MAX_DISTINCT else None)
            kept = keys if all_good else keys[good_mask]
            if good.size > capacity:
                if all_good and smallest is not None:
                    kept, good = smallest[1], good[smallest[0]]
                else:
                    sel = np.argpartition(kept, capacity)[:capacity]
                    kept, good = kept[sel], good[sel]
            prof.keys, prof.values = kept, single_if_exact(good)
        return prof

    def __add__(self, other: ColumnProfile) -> ColumnProfile:
        return self.merged(other, {})

    def merged(self, other: ColumnProfile,
               shared: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]],
               ) -> ColumnProfile:
        """The sum of two profiles. Columns valid on every event keep the same events, so
        their profiles hold the same arrays of keys: ``shared`` (one dict for all the columns
        of two scans) keeps the selection made for a pair of key arrays, and the columns that
        share them share the result, so the reservoir is selected once per scan, not once
        per column."""
        capacity = min(self.capacity, other.capacity)
        if self.n == 0 or other.n == 0:  # an empty side: the other's arrays as they are
            kept = other if self.n == 0 else self
            if kept.keys.size <= capacity:
                return replace(kept, capacity=capacity)
        pair = (id(self.keys), id(other.keys))
        if pair not in shared:
            keys = np.concatenate([self.keys, other.keys])
            sel = np.argpartition(keys, capacity)[:capacity] if keys.size > capacity else None
            shared[pair] = (keys if sel is None else keys[sel], sel)
        keys, sel = shared[pair]
        values = np.concatenate([self.values, other.values])
        if sel is not None:
            values = values[sel]
        distinct = None
        if self.distinct is not None and other.distinct is not None:
            union = self.distinct | other.distinct
            distinct = union if len(union) <= MAX_DISTINCT else None
        return ColumnProfile(
            n=self.n + other.n,
            n_nonfinite=self.n_nonfinite + other.n_nonfinite,
            n_sentinel=self.n_sentinel + other.n_sentinel,
            minimum=min(self.minimum, other.minimum),
            maximum=max(self.maximum, other.maximum),
            integral=self.integral and other.integral,
            distinct=distinct,
            keys=keys,
            values=values,
            capacity=capacity,
        )

    @property
    def n_valid(self) -> int:
        return self.n - self.n_nonfinite - self.n_sentinel


def uniform_keys(entries: np.ndarray, files: np.ndarray | int, seed: int) -> np.ndarray:
    """Uniform [0, 1) keys for events, a hash of (file index, row in the file, seed).

    SplitMix64 (Steele, Lea & Flood, OOPSLA 2014) finalisation of the event's position: an
    event's key depends only on where it sits in its file, not on the chunk, the partition or
    the worker that read it, nor on which events a selection kept around it.
    """
    entries = np.asarray(entries, dtype=np.float64).astype(np.uint64)
    files = np.broadcast_to(np.asarray(files, dtype=np.float64).astype(np.uint64), entries.shape)
    with np.errstate(over="ignore"):
        z = entries + (files << np.uint64(40)) + np.uint64(seed % (1 << 63))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def smallest_keys(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest ``keys`` (:func:`uniform_keys`) in increasing order,
    ties in the order of their positions: ``numpy.argsort(keys, kind="stable")[:k]``, with a
    partition first (the event reservoirs of the audit and the multivariate tests keep a few
    hundred to thousands of a chunk's events)."""
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    if keys.size <= k:
        return np.argsort(keys, kind="stable")
    kth = keys[np.argpartition(keys, k - 1)[k - 1]]
    candidates = np.flatnonzero(keys <= kth)  # every key tied with the k-th included
    return candidates[np.argsort(keys[candidates], kind="stable")[:k]]


def reservoir_capacity(n_columns: int) -> int:
    """Values kept per column: up to ``RESERVOIR_SIZE``, less with very many columns."""
    return int(max(5_000, min(RESERVOIR_SIZE, 20_000_000 // max(n_columns, 1))))


@dataclass(frozen=True)
class PlanConfig:
    """Choices that shape the binning. Defaults follow the CMS/KIT practice."""

    n_bins: int = 10
    min_data_per_bin: float = 20.0
    min_data_per_cell: float = 10.0
    max_discrete_values: int = 20
    n_fine_bins: int = 1000
    max_pairs: int = 1000


@dataclass(frozen=True)
class FeaturePlan:
    """How one feature is binned.

    ``edges`` bin the 1D tests, ``pair_edges`` the 2D tests (the same or coarser),
    ``fine_edges`` the unbinned-style tests (KS, AD, Wasserstein). Values below the first or
    above the last edge are folded into the edge bins. ``plot_edges`` bin the histograms drawn
    for a reviewer (equal widths over the central range, under/overflow kept apart).
    ``loc``/``scale`` standardise the feature before moment sums are accumulated, so
    correlations are numerically stable.
    """

    name: str
    kind: str  # continuous | discrete
    edges: tuple[float, ...]
    pair_edges: tuple[float, ...]
    fine_edges: tuple[float, ...]
    loc: float
    scale: float
    n_sentinel_sim: int = 0
    n_sentinel_data: int = 0
    values: tuple[float, ...] = ()  # a discrete feature's values, one per fine bin
    plot_edges: tuple[float, ...] = ()  # equal-width bins over the central range, for plots

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1


@dataclass(frozen=True)
class Plan:
    """Everything a run tests: features, their binning, the pairs, the categories."""

    features: tuple[FeaturePlan, ...]
    pairs: tuple[tuple[int, int], ...]
    weight: str | None
    category: str | None
    skipped: dict[str, str]
    config: PlanConfig
    notes: tuple[str, ...] = ()

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json(self) -> str:
        payload: dict[str, Any] = {"plan_version": PLAN_VERSION, **asdict(self)}
        return json.dumps(payload, default=float)

    def binning_json(self) -> str:
        """The features' binnings and the pairs: what accumulators must share to add."""
        return json.dumps({"features": [asdict(f) for f in self.features],
                           "pairs": self.pairs}, default=float)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Rebuild a plan stored by any release (older versions are migrated)."""
        raw = json.loads(text)
        version = raw.pop("plan_version", 1)
        if version > PLAN_VERSION:
            raise ValueError(f"plan version {version} is newer than this validator reads "
                             f"({PLAN_VERSION}); upgrade validator")
        for migrate in _PLAN_MIGRATIONS[version - 1:]:
            raw = migrate(raw)
        feats = tuple(
            FeaturePlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in f.items()})
            for f in raw["features"]
        )
        return cls(
            features=feats,
            pairs=tuple(tuple(p) for p in raw["pairs"]),  # type: ignore[misc]
            weight=raw["weight"],
            category=raw["category"],
            skipped=raw["skipped"],
            config=PlanConfig(**raw["config"]),
            notes=tuple(raw.get("notes", ())),
        )


def _plan_v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added plotting edges; a version-1 plan has none."""
    for f in raw["features"]:
        f.setdefault("plot_edges", [])
    return raw


#: Version of the plan's JSON; ``_PLAN_MIGRATIONS[v - 1]`` turns version v into v + 1.
PLAN_VERSION = 2
_PLAN_MIGRATIONS = (_plan_v1_to_v2,)


def classify_columns(columns: dict[str, str], exclude: Iterable[str]) -> tuple[list[str],
                                                                             dict[str, str]]:
    """Split columns into candidate features and skipped columns with the reason.

    Numeric and boolean columns are candidates; strings, jagged branches, weights,
    identifiers and labels are not.
    """
    excluded = set(exclude)
    candidates: list[str] = []
    skipped: dict[str, str] = {}
    for name, kind in columns.items():
        lower = name.lower()
        if name in excluded:
            skipped[name] = "weight/category column"
        elif kind == "string":
            skipped[name] = "string (usable as --category)"
        elif kind == "jagged":
            skipped[name] = "jagged (name an element, e.g. NAME[0], in --features)"
        elif kind == "other":
            skipped[name] = "unsupported type"
        elif lower in ID_COLUMNS:
            skipped[name] = "identifier"
        elif lower in LABEL_COLUMNS:
            skipped[name] = "label/bookkeeping"
        elif "weight" in lower:
            skipped[name] = "weight-like"
        else:
            candidates.append(name)
    return candidates, skipped


def sorted_quantiles(ordered: np.ndarray, probs: ArrayLike) -> np.ndarray:
    """``np.quantile(values, probs)`` (its default "linear" method, Hyndman & Fan's type 7)
    of values given sorted and free of NaN, equal to it bit for bit.

    numpy selects every requested quantile with a partition of its own; a plan asks for
    about 1,100 quantiles of each feature's reservoir (its fine binning), so one sort and
    an interpolation take a fifth of the time. The virtual index ``(n - 1) p`` lies between
    ``ordered[floor]`` and the next value; the interpolation is numpy's, from the nearer end
    (``b - (b - a)(1 - t)`` for ``t >= 1/2``), so that both agree to the last bit.
    """
    p = np.asarray(probs, dtype=np.float64)
    last = ordered.size - 1
    virtual = last * p
    lower = np.floor(virtual)
    top = virtual >= last
    lo = np.where(top, last, lower).astype(np.intp)
    hi = np.where(top, last, lower + 1).astype(np.intp)
    t = virtual - np.where(top, -1.0, lower)  # numpy's weight: the last value exactly
    a, b = ordered[lo], ordered[hi]
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)


def _quantile_edges(ordered: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-population edges from a sorted sample, duplicate edges merged.

    A value holding at least one bin's worth of events (a spike: zeros, a default, a capped
    maximum) repeats among the quantiles; it gets a bin of its own, ``[v, next float)``, so
    it never shares a bin with the continuum beside it.
    """
    quantiles = sorted_quantiles(ordered, np.linspace(0.0, 1.0, n_bins + 1))
    edges, repeats = np.unique(quantiles, return_counts=True)
    spikes = edges[repeats > 1]
    return np.unique(np.concatenate([edges, np.nextafter(spikes, np.inf)]))


def _discrete_edges(values: np.ndarray, counts: np.ndarray, min_count: float) -> np.ndarray:
    """One bin per value, neighbouring values merged until each bin has ``min_count`` events."""
    groups: list[list[float]] = []
    acc = 0.0
    for value, count in zip(values, counts, strict=True):
        if not groups or acc >= min_count:
            groups.append([value])
            acc = float(count)
        else:
            groups[-1].append(value)
            acc += float(count)
    if len(groups) > 1 and acc < min_count:
        groups[-2].extend(groups.pop())
    values = np.asarray(values, dtype=float)
    mids = [(g[-1] + h[0]) / 2.0 for g, h in itertools.pairwise(groups)]
    return np.array([values[0] - 0.5, *mids, values[-1] + 0.5])


def plan_feature(name: str, sim: ColumnProfile, data: ColumnProfile, kind_hint: str,
                 config: PlanConfig) -> FeaturePlan | str:
    """Bin one feature, or say (as a string) why it cannot be tested.

    Bins come from the data's quantiles. Where the data alone give fewer than two bins (one
    value, or one value holding nearly all events) while the simulation spreads out, the bins
    come from both samples pooled: that is a mismodelling to test, not a column to skip.
    """
    if data.n_valid == 0:
        return "no valid value in data"
    if sim.n_valid == 0:
        return "no valid value in simulation"
    if sim.minimum == sim.maximum == data.minimum == data.maximum:
        return "constant in both samples"
    # every quantile below from one sort (sorted_quantiles), in double precision
    values = np.sort(data.values).astype(np.float64)
    pooled = np.sort(np.concatenate([data.values, sim.values])).astype(np.float64)
    distinct = None
    if sim.distinct is not None and data.distinct is not None:
        distinct = sorted(sim.distinct | data.distinct)
    is_discrete = kind_hint == "bool" or (
        distinct is not None and len(distinct) <= config.max_discrete_values)
    q16, q50, q84 = sorted_quantiles(values, [0.16, 0.5, 0.84])
    scale = float(q84 - q16) / 2.0 or float(np.std(pooled)) or 1.0
    common = dict(name=name, loc=float(q50), scale=scale,
                  n_sentinel_sim=sim.n_sentinel, n_sentinel_data=data.n_sentinel)
    n_data = data.n_valid
    if is_discrete:
        assert distinct is not None
        grid = np.asarray(distinct, dtype=float)
        # expected data counts per value, estimated from the reservoir
        counts = np.array([(values == v).sum() for v in grid], dtype=float)
        counts *= n_data / max(len(values), 1)
        edges = _discrete_edges(grid, counts, config.min_data_per_bin)
        if len(edges) < 3:  # data in one group: bin on both samples
            pooled_counts = np.array([(pooled == v).sum() for v in grid], dtype=float)
            edges = _discrete_edges(grid, pooled_counts, config.min_data_per_bin)
            counts = pooled_counts
        if len(edges) < 3:
            return f"fewer than two values with {config.min_data_per_bin:g} events each"
        fine = _discrete_edges(grid, np.ones_like(grid), 0.0)
        n_pair = max(2, int(math.sqrt(n_data / config.min_data_per_cell)))
        pair = edges if len(edges) - 1 <= n_pair else _discrete_edges(
            grid, counts, counts.sum() / n_pair)
        return FeaturePlan(kind="discrete", edges=tuple(edges.tolist()),
                           pair_edges=tuple(pair.tolist()), fine_edges=tuple(fine.tolist()),
                           values=tuple(grid.tolist()), plot_edges=tuple(fine.tolist()),
                           **common)
    n_bins = int(min(config.n_bins, n_data // config.min_data_per_bin))
    if n_bins < 2:
        return f"too few data events ({n_data}) for two bins of {config.min_data_per_bin:g}"
    source = values
    edges = _quantile_edges(values, n_bins)
    if len(edges) < 3:  # the data sit on one value: bin on both samples
        source = pooled
        edges = _quantile_edges(pooled, n_bins)
    if len(edges) < 3:
        return "a single populated value"
    n_pair = int(min(n_bins, math.sqrt(n_data / config.min_data_per_cell)))
    pair = edges if n_pair >= n_bins else _quantile_edges(source, max(n_pair, 2))
    n_fine = int(min(config.n_fine_bins, max(len(source) // 5, n_bins)))
    fine = _quantile_edges(source, n_fine)
    plot = plot_edges(pooled, integral=sim.integral and data.integral)
    return FeaturePlan(kind="continuous", edges=tuple(edges.tolist()),
                       pair_edges=tuple(pair.tolist()), fine_edges=tuple(fine.tolist()),
                       plot_edges=tuple(plot.tolist()), **common)


#: Bins of a plotting histogram, over the central range of both samples: enough to show a
#: shape, few enough that a bin holds ~1/50 of the events; the tails go to under/overflow.
PLOT_BINS = 50
PLOT_RANGE_QUANTILES = (0.005, 0.995)


def plot_edges(ordered: np.ndarray, integral: bool = False) -> np.ndarray:
    """Equal-width plotting edges over the central 99% of the sorted values ``ordered``.

    Integer-valued features get edges at half-integers, each bin a whole number of values
    wide, so no bin holds one more value than its neighbour.
    """
    lo, hi = sorted_quantiles(ordered, PLOT_RANGE_QUANTILES)
    if hi <= lo:
        lo, hi = float(ordered[0]), float(ordered[-1])
    if integral:
        lo, hi = math.floor(lo), math.ceil(hi)
        width = max(1, math.ceil((hi - lo + 1) / PLOT_BINS))
        return np.arange(lo - 0.5, hi + 0.5 + width, width, dtype=float)[
            : math.ceil((hi - lo + 1) / width) + 1]
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, PLOT_BINS + 1)


def choose_pairs(n_features: int, max_pairs: int) -> tuple[list[tuple[int, int]], int]:
    """All pairs of the first ``k`` features, ``k`` as large as ``max_pairs`` allows.

    Returns the pairs and ``k``.
    """
    k = n_features
    while k > 1 and k * (k - 1) // 2 > max_pairs:
        k -= 1
    return [(i, j) for i in range(k) for j in range(i + 1, k)], k


def make_plan(
    sim_profiles: dict[str, ColumnProfile],
    data_profiles: dict[str, ColumnProfile],
    kinds: dict[str, str],
    *,
    weight: str | None,
    category: str | None,
    requested: Sequence[str] | None,
    skipped: dict[str, str],
    config: PlanConfig,
    notes: Sequence[str] = (),
) -> Plan:
    """Turn the column profiles of both samples into a :class:`Plan`.

    Raises :class:`InputError` when a requested feature cannot be tested or nothing is left.
    """
    skipped = dict(skipped)
    features: list[FeaturePlan] = []
    notes = list(notes)
    for name in sim_profiles:
        if name not in data_profiles:
            continue
        sim, data = sim_profiles[name], data_profiles[name]
        if sim.n_valid == 0 and data.n_valid == 0 and requested is None:
            # e.g. a NanoAOD branch left at its default in this sample: nothing to compare
            skipped[name] = "no valid value in either sample (all NaN/inf/sentinel)"
            continue
        for label, prof in (("data", data), ("simulation", sim)):
            if prof.n_valid == 0:
                hint = "" if requested is not None else f"; leave it out with --exclude {name}"
                raise InputError(f"{label}: feature '{name}' has no finite value "
                                 f"(all NaN/inf/sentinel){hint}")
        planned = plan_feature(name, sim, data, kinds.get(name, "float"), config)
        if isinstance(planned, str):
            if requested is not None and planned != "constant in both samples":
                raise InputError(f"feature '{name}': {planned}")
            skipped[name] = planned
        else:
            features.append(planned)
    if not features:
        raise InputError("no feature left to test (all columns were skipped: "
                         + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5]) + ")")
    n_all = len(features) * (len(features) - 1) // 2
    pairs, k = choose_pairs(len(features), config.max_pairs)
    if len(pairs) < n_all:
        notes.append(
            f"{len(features)} features make {n_all:,} pairs, more than --max-pairs "
            f"{config.max_pairs:,}: 2D tests cover the first {k} features ({len(pairs):,} pairs); "
            "choose them with --features or raise --max-pairs"
        )
    return Plan(features=tuple(features), pairs=tuple(pairs), weight=weight, category=category,
                skipped=skipped, config=config, notes=tuple(notes))


# ------------------------------------------------------------------ choosing the features


@dataclass(frozen=True)
class FeatureChoice:
    """Candidate features with their kinds, the columns left out (with the reason), notes."""

    candidates: list[str]
    kinds: dict[str, str]
    skipped: dict[str, str]
    notes: list[str]


def _not_found(sample: Sample, name: str) -> InputError:
    kind = sample.columns.get(name)
    if kind == "jagged":
        why = f"is jagged: name an element, e.g. {name}[0]"
    else:
        why = "not found" + sample.did_you_mean(name)
    return InputError(f"{sample.label_lacking(name)}: feature '{name}' {why}")


def select_features(sim: Sample, data: Sample, *, weight: str | None, category: str | None,
                    features: Sequence[str] | None, exclude: Sequence[str] = (),
                    derived: Sequence[str] = (), roles: Sequence[str] = ()) -> FeatureChoice:
    """The candidate features of a run, before their values are seen.

    ``features`` given: exactly those (each must exist in both samples and be numeric).
    Otherwise every numeric column both samples share, less weights, identifiers, labels,
    the category column and ``exclude``. ``derived`` columns (``--define``, model outputs)
    exist in both samples and are candidates too, but those with another ``role`` (a
    systematic's weight, the category, the process column).
    """
    for sample in (sim, data):
        for name in derived:
            if name in sample.columns:
                raise InputError(f"{sample.sources[0].label}: --define '{name}' is already a "
                                 "column of the file; choose another name")
        if category and category not in derived:
            if category not in sample.columns:
                raise InputError(f"{sample.label_lacking(category)}: category column "
                                 f"'{category}' not found{sample.did_you_mean(category)}")
            if sample.columns[category] == "jagged":
                raise InputError(f"{sample.sources[0].label}: category column "
                                 f"'{category}' is jagged")
    notes: list[str] = []
    skipped: dict[str, str] = {}
    if features:
        requested = list(dict.fromkeys(features))
        for name in requested:
            if name in derived:
                continue
            for sample in (sim, data):
                if not sample.has(name):
                    raise _not_found(sample, name)
                if sample.columns.get(name) in ("string", "other"):
                    raise InputError(f"{sample.sources[0].label}: feature '{name}' is not "
                                     f"numeric ({sample.columns[name]})")
        kinds = {n: "float" if n in derived else common_kind(
            sim.columns.get(n, "float"), data.columns.get(n, "float")) or "float"
            for n in requested}
        notes += _mixed_kind_notes(sim, data, requested)
        return FeatureChoice(requested, kinds, skipped, notes)
    excluded = [c for c in (weight, category) if c]
    shared = {c: common_kind(k, data.columns.get(c)) for c, k in sim.columns.items()}
    shared = {c: k for c, k in shared.items() if k is not None}
    for c in sorted(set(sim.columns) ^ set(data.columns)):
        if c not in excluded:
            where = "simulation" if c in sim.columns else "data"
            skipped[c] = f"only in {where}"
    for sample in (sim, data):
        for c in sample.partial_columns:
            skipped[c] = f"not in every {sample.name} file"
    for c in sorted(set(sim.columns) & set(data.columns)):
        if c not in shared and c not in excluded:
            skipped[c] = f"type differs ({sim.columns[c]} in simulation, {data.columns[c]} in data)"
    candidates, more = classify_columns(shared, excluded)
    skipped.update({k: v for k, v in more.items() if k not in excluded})
    unknown = [c for c in exclude if c not in shared and c not in skipped and c not in derived]
    if unknown:
        raise InputError(f"--exclude: column '{unknown[0]}' is in neither sample"
                         + sim.did_you_mean(unknown[0]))
    candidates += [d for d in derived if d not in candidates and d not in roles]
    for c in exclude:
        if c in candidates:
            candidates.remove(c)
            skipped[c] = "excluded (--exclude)"
    if not candidates:
        raise InputError("no shared numeric feature between simulation and data")
    kinds = {c: shared.get(c, "float") for c in candidates}
    notes += _mixed_kind_notes(sim, data, candidates)
    return FeatureChoice(candidates, kinds, skipped, notes)


def _mixed_kind_notes(sim: Sample, data: Sample, names: Sequence[str]) -> list[str]:
    mixed = [f"{n} ({sim.columns[n]} in simulation, {data.columns[n]} in data)" for n in names
             if n in sim.columns and n in data.columns and sim.columns[n] != data.columns[n]]
    if not mixed:
        return []
    return ["columns stored with different types, compared as numbers: " + ", ".join(mixed[:8])
            + (f" and {len(mixed) - 8} more" if len(mixed) > 8 else "")]


# ------------------------------------------------------------------ the planning scan

#: Columns that together name an event, in the order of the key; an event column must exist.
EVENT_KEY_COLUMNS = ("run", "luminosityblock", "lumi", "lumiblock", "event", "evt",
                     "eventnumber", "event_id", "eventid")
#: Rows whose event keys are kept to look for rows sharing an event (a bounded check).
MAX_KEYS_CHECKED = 2_000_000


def event_key_columns(sample: Sample) -> list[str]:
    """The columns naming an event (e.g. Run, Event), or none if there is no event number."""
    by_lower = {c.lower(): c for c, k in sample.columns.items() if k in ("int", "float")}
    cols = [by_lower[n] for n in EVENT_KEY_COLUMNS if n in by_lower]
    has_event = any(n in by_lower for n in EVENT_KEY_COLUMNS[4:])
    # files number their events independently: the file is part of the key
    return [FILE, *cols] if has_event else []


def _shared_event_note(sample: Sample, keys: list[np.ndarray], key_cols: list[str]) -> str | None:
    """A note when several rows carry the same event number (they are not independent)."""
    if not keys:
        return None
    table = np.concatenate(keys)
    n_distinct = len(np.unique(table, axis=0))
    if n_distinct == len(table):
        return None
    names = ", ".join(c for c in key_cols if c != FILE)
    return (f"{sample.name}: {len(table):,} rows but {n_distinct:,} distinct ({names}): rows "
            "of one event are not independent and the p-values assume independent events; "
            "select one row per event")


@dataclass(frozen=True)
class SampleScan:
    """What the planning pass learns about one sample."""

    profiles: dict[str, ColumnProfile]
    sumw: float
    n_events: int
    note: str | None


@dataclass(frozen=True)
class ScanPart:
    """The planning pass over part of a sample (a partition of its files); parts add up.

    Adding is associative, and every sum but Σw is exact; the engine adds the parts of a
    sample in partition order, however many processes scanned them, so the result is the same.
    """

    profiles: dict[str, ColumnProfile]
    sumw: float
    n_events: int
    event_keys: tuple[np.ndarray, ...]  # rows' event keys, while fewer than MAX_KEYS_CHECKED
    collected: tuple[Any, ...] = ()  # the state of each collector (None: no chunk seen)

    def __add__(self, other: ScanPart) -> ScanPart:
        if set(self.profiles) != set(other.profiles):
            raise ValueError("cannot add scans of different columns")
        if len(self.collected) != len(other.collected):
            raise ValueError("cannot add scans of different collectors")
        keys = self.event_keys + (other.event_keys if self.n_events < MAX_KEYS_CHECKED
                                  else ())
        shared: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]] = {}
        return ScanPart({c: p.merged(other.profiles[c], shared)
                         for c, p in self.profiles.items()},
                        self.sumw + other.sumw, self.n_events + other.n_events, keys,
                        tuple(add_states(a, b)
                              for a, b in zip(self.collected, other.collected, strict=True)))


def add_states(a: Any, b: Any) -> Any:
    """Two collector states added, either of them None where its collector saw no chunk (the
    scan's and the fill's collectors, :class:`validator.engine.pool.Collector`)."""
    return b if a is None else a if b is None else a + b


def scan_part(reader: Reader, columns: list[str], seed: int, key_cols: list[str],
              observe: Callable[[dict[str, np.ndarray]], None] | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              collectors: Sequence[Any] = ()) -> ScanPart:
    """The planning pass over every chunk of ``reader`` (a whole sample or a partition).
    ``collectors`` (:class:`validator.engine.pool.Collector`) see every chunk with its
    nominal weights; their states add into :attr:`ScanPart.collected`."""
    sample = reader.sample
    capacity = reservoir_capacity(len(columns))
    profiles = {c: ColumnProfile(capacity=capacity) for c in columns}
    sumw = 0.0
    n_events = 0
    event_keys: list[np.ndarray] = []
    states: list[Any] = [None] * len(collectors)
    for chunk in reader:
        n = len(chunk[ENTRY])
        if observe is not None:
            observe(chunk)
        w = weights_of(chunk, sample)
        sumw += float(w.sum())
        for i, collector in enumerate(collectors):
            states[i] = add_states(states[i], collector.collect(chunk, w[0]))
        keys = uniform_keys(chunk[ENTRY], chunk[FILE], seed)
        smallest = None
        if n > capacity:
            first = np.argpartition(keys, capacity)[:capacity]
            smallest = (first, keys[first])
        shared: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]] = {}
        for c in columns:
            profiles[c] = profiles[c].merged(ColumnProfile.of(chunk[c], keys, capacity,
                                                              smallest), shared)
        if key_cols and n_events < MAX_KEYS_CHECKED:
            event_keys.append(np.column_stack([chunk[c] for c in key_cols]))
        n_events += n
        if progress:
            progress(f"scan {sample.name}", n_events, sample.n_rows)
    return ScanPart(profiles, sumw, n_events, tuple(event_keys), tuple(states))


def finish_scan(reader: Reader, part: ScanPart, key_cols: list[str]) -> SampleScan:
    """The sample's scan from all its parts added; an input error if no event was read."""
    sample = reader.sample
    if part.n_events == 0:
        chain, why = reader.chain, []
        if chain.selection:
            why.append(f"passes the selection '{chain.selection.text}'")
        if chain.blind:
            why.append(f"lies outside the blinded region '{chain.blind.text}'")
        raise InputError(f"{', '.join(s.label for s in sample.sources)}: no {sample.name} event "
                         + (" and ".join(why) or "was read"))
    return SampleScan(part.profiles, part.sumw, part.n_events,
                      _shared_event_note(sample, list(part.event_keys), key_cols))


def scan_sample(reader: Reader, columns: list[str], seed: int, key_cols: list[str],
                progress: Callable[[str, int, int], None] | None = None,
                observe: Callable[[dict[str, np.ndarray]], None] | None = None) -> SampleScan:
    """First pass: column profiles (for the plan), Σw, the event count, and a note if rows
    share an event. Reservoir keys come from each event's (file, row). ``observe(chunk)``
    sees every chunk (e.g. to collect the values of a process column). In one process, in
    one piece; :func:`validator.engine.pool.scan_samples` scans partitions in parallel."""
    return finish_scan(reader, scan_part(reader, columns, seed, key_cols, observe, progress),
                       key_cols)
