"""The per-chunk transform chain: selection -> derived columns -> blinding.

Every pass over a sample (the planning scan and the fill) reads chunks through one
:class:`TransformChain`, so both passes see exactly the same events:

1. **selection**: a SQL condition (``--sim-selection``/``--data-selection``); events where it is
   false or NULL are dropped.
2. **derived columns**: columns computed per chunk from the selected events, in order. Today
   ``--define NAME=EXPR`` (a SQL expression, like ROOT's ``RDataFrame::Define``); the audited
   network's outputs are derived columns too, evaluated chunk by chunk.
3. **blinding**: events inside the blinded region (``--blind EXPR``, which may use derived
   columns such as a network output) are removed from data *and* simulation here, before any
   quantile, histogram or number is computed or stored.
4. **reweighting** (``--apply corrections.json``, the simulation only): the event weight is
   multiplied by the corrections' factors, and their up/down weights are added as columns
   (weight systematics); see :mod:`validator.stages.correct`.

Before all of them, a closure run keeps one **half** of the events (``split``: a hash of the
event's file and row, :class:`validator.stages.correct.HalfFilter`).

The chunk's ``_file`` and ``_entry`` columns (the event's file and row in it) travel through
the chain: they key the planning reservoir, so the binning does not depend on chunking.

The audited network's outputs are evaluated once per event, in the scan: a :class:`Reader`
records them per chunk (``record``: every derived column but a ``--define``, which is
cheaper to compute again than to keep), the engine keeps them per partition
(:attr:`Reader.kept`) and the fill's reader of that partition takes them back (``replay``)
instead of running the network again. Both passes read a partition's chunks identically, so
the values are the same floats (kept as float32 where that is exact: a float32 network's
outputs); a chunk whose event count does not match is evaluated again. A worker writes the
values it recorded to a file of the run's pool (:class:`KeptFile`) and sends back its name:
the run's process then holds none of them, however many events there are.

Also here: the weights of a chunk (nominal first, then variations) and its category labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from validator.errors import InputError
from validator.inputs.sources import ENTRY, FILE, Partition, Sample, Selection, expression_errors

Chunk = dict[str, np.ndarray]

#: A category column may hold this many values at most (a channel, a run period, a muon type).
MAX_CATEGORIES = 50
#: Category label of the inclusive selection (all events).
INCLUSIVE = "all"


class DerivedColumns(Protocol):
    """Columns computed per chunk from other columns (``--define``, a network's outputs).

    A derived column set may also return, under the names of its optional ``carried``
    attribute, per-event arrays that are no column (a network's derivatives for the scan's
    collectors, :class:`validator.stages.audit.OutputsWithFirstOrder`): the chain's row
    selections apply to them, the reader passes them on, and a pass never records them for
    the next (:func:`carried_names`)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def inputs(self) -> tuple[str, ...]: ...

    def __call__(self, chunk: Chunk, label: str) -> dict[str, np.ndarray]: ...


class EventSplit(Protocol):
    """Which events a run keeps (one half of a deterministic split)."""

    def mask(self, chunk: Chunk, label: str) -> np.ndarray: ...


class Reweighting(Protocol):
    """Multiplies the weight column and adds weight-variation columns (``names``)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def inputs(self) -> tuple[str, ...]: ...

    def apply(self, chunk: Chunk, label: str) -> Chunk: ...


@dataclass(frozen=True)
class Definition:
    """``NAME=EXPR``: a column computed with a SQL expression over the chunk's columns."""

    name: str
    expression: Selection  # parsed once: its text and the columns it reads

    @classmethod
    def parse(cls, text: str, option: str = "--define") -> Definition:
        name, sep, expr = text.partition("=")
        name = name.strip()
        if not sep or not name or not expr.strip():
            raise InputError(f"{option}: '{text}' is not NAME=EXPR")
        if not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise InputError(f"{option}: '{name}' is not a column name (letters, digits, _)")
        return cls(name=name, expression=Selection.parse(expr.strip(), option))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.expression.columns

    def __call__(self, chunk: Chunk, label: str) -> dict[str, np.ndarray]:
        import polars as pl

        n = len(chunk[ENTRY])
        frame = pl.DataFrame({c: chunk[c] for c in self.expression.columns})
        try:
            result = frame.select(pl.sql_expr(self.expression.text)).to_series()
        except expression_errors() as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InputError(f"{label}: --define {self.name}={self.expression.text} failed "
                             f"({first})") from exc
        if not (result.dtype.is_numeric() or result.dtype == pl.Boolean):
            raise InputError(f"{label}: --define {self.name}={self.expression.text} is not a "
                             f"number ({result.dtype})")
        values = result.cast(pl.Float64).fill_null(np.nan).to_numpy()
        if len(values) != n:  # a constant expression gives one value
            values = np.full(n, values[0] if len(values) else np.nan)
        return {self.name: values}


@dataclass(frozen=True)
class TransformChain:
    """Selection, derived columns and blinding of one sample; see the module docstring."""

    selection: Selection | None = None
    derived: tuple[DerivedColumns, ...] = ()
    blind: Selection | None = None
    split: EventSplit | None = None
    reweight: Reweighting | None = None

    @property
    def derived_names(self) -> list[str]:
        made = [n for d in self.derived for n in d.names]
        return made + (list(self.reweight.names) if self.reweight is not None else [])

    @property
    def carried_names(self) -> list[str]:
        """Keys of the per-event arrays that are no column (:class:`DerivedColumns`)."""
        return [n for d in self.derived for n in carried_names(d)]

    def columns_read(self) -> list[str]:
        """Columns the chain itself needs from the file (besides the features)."""
        made = set(self.derived_names)
        needed = [*(self.selection.columns if self.selection else ()),
                  *(c for d in self.derived for c in d.inputs),
                  *(self.blind.columns if self.blind else ()),
                  *(self.reweight.inputs if self.reweight is not None else ())]
        return [c for c in dict.fromkeys(needed) if c not in made]

    def apply(self, chunk: Chunk, label: str, reuse: Chunk | None = None,
              keep: Chunk | None = None) -> Chunk:
        """The chunk's selected, extended, blinded (and reweighted) events (all columns
        kept). A selection that reads a derived column (``--define``) is applied once the
        columns are made.

        ``reuse``: values of derived columns already made for this chunk (by an earlier
        pass), taken instead of computing them; ``keep``: a dict that receives the values of
        the derived columns worth keeping (:func:`reusable`) that were computed."""
        if self.split is not None:
            in_half = self.split.mask(chunk, label)
            chunk = {c: v[in_half] for c, v in chunk.items()}
        early = self.selection is not None and not set(self.selection.columns) & set(
            self.derived_names)
        if early:
            selected = self.selection.mask(chunk, label)
            chunk = {c: v[selected] for c, v in chunk.items()}
        for derived in self.derived:
            values = _reused(derived, reuse, len(chunk[ENTRY])) if reuse else None
            if values is None:
                values = derived(chunk, label)
                if keep is not None and reusable(derived):
                    keep.update({c: single_if_exact(values[c]) for c in derived.names})
            chunk = {**chunk, **values}
        if self.selection is not None and not early:
            selected = self.selection.mask(chunk, label)
            chunk = {c: v[selected] for c, v in chunk.items()}
        if self.blind is not None:
            inside = self.blind.mask(chunk, label, missing=True)
            chunk = {c: v[~inside] for c, v in chunk.items()}
        if self.reweight is not None:
            chunk = self.reweight.apply(chunk, label)
        return chunk


def carried_names(derived: DerivedColumns) -> tuple[str, ...]:
    """The keys of what ``derived`` carries besides its columns (``()`` for most)."""
    return tuple(getattr(derived, "carried", ()))


def reusable(derived: DerivedColumns) -> bool:
    """Whether a pass keeps a derived column's values for the next one: every derived
    column but a ``--define`` (a SQL expression, cheaper to compute again than to keep)."""
    return not isinstance(derived, Definition)


def single_if_exact(values: np.ndarray) -> np.ndarray:
    """A copy of ``values`` in single precision where that is exact (a float32 column read
    as float64, a float32 network's outputs), else in double: half the memory and half what
    a worker sends back."""
    with np.errstate(over="ignore", invalid="ignore"):
        single = values.astype(np.float32)
    return single if np.array_equal(single, values, equal_nan=True) \
        else values.astype(np.float64)


def _reused(derived: DerivedColumns, reuse: Chunk, n: int) -> dict[str, np.ndarray] | None:
    """``derived``'s values from ``reuse`` (float64 again), or None when a name is missing
    or an array's length is not the chunk's."""
    if not all(c in reuse and len(reuse[c]) == n for c in derived.names):
        return None
    return {c: reuse[c].astype(np.float64, copy=False) for c in derived.names}


@dataclass(frozen=True)
class KeptFile:
    """A partition's recorded derived values (:class:`Reader`), written by the worker that
    scanned it to a file in the run's pool's directory
    (:meth:`validator.engine.pool.WorkerPool.kept_directory`); the fill's worker reads them
    back. Plain numpy arrays in one ``.npz``, no pickle: entry ``"{k}:{name}"`` is column
    ``name`` of chunk ``k``, and ``_chunks`` the number of chunks (some may be empty)."""

    path: str

    @classmethod
    def write(cls, values: Sequence[Chunk], path: str) -> KeptFile:
        arrays = {f"{k}:{name}": v for k, chunk in enumerate(values)
                  for name, v in chunk.items()}
        with open(path, "wb") as out:
            np.savez(out, _chunks=np.array(len(values)), **arrays)
        return cls(path)

    def load(self) -> list[Chunk]:
        with np.load(self.path, allow_pickle=False) as stored:
            values: list[Chunk] = [{} for _ in range(int(stored["_chunks"]))]
            for key in stored.files:
                if key != "_chunks":
                    k, name = key.split(":", 1)
                    values[int(k)][name] = stored[key]
        return values


@dataclass
class Reader:
    """Chunks of one sample through its transform chain, for both passes.

    A sample that fits in one chunk is read (and transformed) only once. A reader restricted
    to a ``partition`` (:meth:`part`) reads only that part of one file.

    Derived values from one pass to the next (module docstring): with ``record`` set, an
    iteration leaves the values it computed of each chunk in ``recorded``, in chunk order;
    ``replay`` gives a partition's reader the values of its chunks to reuse; ``kept`` holds,
    on a whole sample's reader, the recorded values per partition (:meth:`keep`), which
    :meth:`part` hands to each partition's reader.
    """

    sample: Sample
    columns: list[str]
    chunk_rows: int
    chain: TransformChain = field(default_factory=TransformChain)
    _cache: list[Chunk] | None = None
    partition: Partition | None = None
    replay: list[Chunk] | None = None
    record: bool = False
    recorded: list[Chunk] | None = None
    kept: dict[tuple[int, int], list[Chunk] | KeptFile] | None = None

    def keep(self, partition: Partition, values: list[Chunk] | KeptFile | None) -> None:
        """Keep a partition's recorded derived values for its next pass (:meth:`part`), or
        the file they were written to."""
        if isinstance(values, KeptFile) or (values is not None and any(values)):
            if self.kept is None:
                self.kept = {}
            self.kept[(partition.file, partition.start)] = values

    def kept_for(self, partition: Partition) -> list[Chunk] | KeptFile | None:
        """The derived values kept for ``partition``, or their file (None: none kept)."""
        return self.kept.get((partition.file, partition.start)) if self.kept else None

    def without_kept(self) -> Reader:
        """This reader without the kept values (what is sent to a worker with a task: each
        partition's values travel with that partition alone)."""
        return replace(self, kept=None, recorded=None) if self.kept or self.recorded \
            else self

    @property
    def records(self) -> bool:
        """Whether an iteration would record anything (a derived column worth keeping)."""
        return any(reusable(d) for d in self.chain.derived)

    def part(self, partition: Partition, replay: list[Chunk] | KeptFile | None = None
             ) -> Reader:
        """The same reader restricted to one partition (see ``sample_partitions``); a sample
        read whole into the cache (one file, one chunk) is that partition: it is not read
        again. ``replay``: the partition's derived values from an earlier pass, or their file
        (default: those this reader keeps for it)."""
        if replay is None:
            replay = self.kept_for(partition)
        if isinstance(replay, KeptFile):
            replay = replay.load()
        return Reader(self.sample, self.columns, self.chunk_rows, self.chain,
                      self._cache if self.partition is None and self._cache is not None
                      and self.sample.n_rows <= self.chunk_rows
                      and len(self.sample.sources) == 1 else None, partition,
                      replay=replay)

    def __iter__(self):
        from validator.inputs.sources import iter_chunks

        if self._cache is not None:
            return iter(self._cache)
        made = set(self.chain.derived_names)
        to_read = [c for c in dict.fromkeys([*self.columns, *self.chain.columns_read()])
                   if c not in made]
        keep = list(dict.fromkeys([*self.columns, FILE, ENTRY,
                                   *([self.sample.weight] if self.sample.weight else [])]))
        # where the derived values are recomputed (not replayed): what they carry
        carried = [c for c in self.chain.carried_names if c not in keep]

        recorded: list[Chunk] | None = [] if self.record and self.records else None
        self.recorded = recorded
        replay = self.replay or []

        def chunks():
            for k, raw in enumerate(iter_chunks(self.sample, [*to_read, FILE, ENTRY],
                                                self.chunk_rows, partition=self.partition)):
                label = self.sample.sources[int(raw[FILE][0])].label if len(raw[FILE]) \
                    else self.sample.sources[0].label
                made: Chunk | None = {} if recorded is not None else None
                out = self.chain.apply(raw, label, reuse=replay[k] if k < len(replay) else None,
                                       keep=made)
                # neither the chunk as read nor its columns not passed on are held while
                # the consumer works on what is yielded
                raw = None
                if recorded is not None:
                    recorded.append(made)
                out = {c: out[c] for c in keep} | {c: out[c] for c in carried if c in out}
                yield out

        if self.partition is None and self.sample.n_rows <= self.chunk_rows:
            self._cache = list(chunks())
            return iter(self._cache)
        return chunks()


def weights_of(chunk: Chunk, sample: Sample) -> np.ndarray:
    """The chunk's weights, shape ``(n_var, n)``: the nominal weight first (1 for data)."""
    n = len(chunk[ENTRY])
    if sample.weight is None:
        return np.ones((1, n))
    w = chunk[sample.weight]
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(w * w)
    if bad.any():
        where = sample.sources[int(chunk[FILE][bad][0])].label
        raise InputError(f"{where}: weight column '{sample.weight}' has NaN/inf values (or "
                         f"values so large their square overflows), e.g. at row "
                         f"{int(chunk[ENTRY][bad][0])}")
    return w[None, :]


def category_label(value: object, column: str) -> str:
    """The label of a category value (``3`` for 3.0; ``COL=all`` for a value named ``all``)."""
    if isinstance(value, float):
        value = int(value) if value.is_integer() else value
    label = str(value)
    # the inclusive selection is called "all": a category of that name keeps its column
    return f"{column}={label}" if label == INCLUSIVE else label


def categories_of(chunk: Chunk, column: str | None) -> np.ndarray | None:
    """Category label per event, or None without a category column."""
    if column is None:
        return None
    values = chunk[column]
    uniq, inverse = np.unique(values.astype(str) if values.dtype == object else values,
                              return_inverse=True)
    if len(uniq) > MAX_CATEGORIES:
        raise InputError(f"category column '{column}' has more than {MAX_CATEGORIES} values; "
                         "a category column needs a few (a channel, a muon type, a run period)")
    labels = np.array([category_label(u.item() if hasattr(u, "item") else u, column)
                       for u in uniq], dtype=object)
    return labels[inverse.ravel()]


def parse_definitions(texts: Sequence[str]) -> tuple[Definition, ...]:
    """``--define`` options, in order; a name defined twice is an error."""
    defs = tuple(Definition.parse(t) for t in texts)
    seen: set[str] = set()
    for d in defs:
        if d.name in seen:
            raise InputError(f"--define: '{d.name}' is defined twice")
        seen.add(d.name)
    return defs
