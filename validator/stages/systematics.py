"""Systematic uncertainties of the simulation: what the user gives, and the weight rows they fill.

Three kinds (issue 16), all filled in the same read pass as the nominal histograms:

* **weight variations** (``--syst pileup=weight_pu_up:weight_pu_down``): columns of the
  simulation holding the event weight with the variation applied. Each fills its own row of
  the accumulators' variation axis (:mod:`validator.stages.fill`), so every histogram of every
  feature and pair has its up and down version. A one-sided variation (``name=col``) is
  symmetrised by the statistics (down = 2·nominal − up, the linear mirror).
* **shape variations** (``--syst-file jes=up.parquet:down.parquet``): alternative simulation
  files with the same columns, read through the same selection, definitions and blinding, and
  filled into the same binning as samples of their own.
* **normalisation uncertainties** (``--norm-unc 0.05``, or per process with
  ``--process-column process --norm-unc drell_yan=0.05,ttbar=0.06``): log-normal. The tests
  compare shapes (the overall data/simulation normalisation is free), so a normalisation
  uncertainty changes a shape only through the mixture of processes: each process then fills
  its own row (its nominal histograms), which the statistics scale with the process's
  nuisance, and which the plots stack.

:class:`Systematics` is the parsed request; :class:`VariationRows` the weight rows of the
simulation's accumulators once the processes are known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from validator.errors import InputError
from validator.inputs.sources import ENTRY, FILE, Sample

#: A process column may hold this many values at most (each fills a row of every histogram).
MAX_PROCESSES = 20
#: Label of the nominal weight row.
NOMINAL = "nominal"


def _name(text: str, option: str) -> str:
    name = text.strip()
    if not name or not name.replace("_", "a").replace("-", "a").isalnum():
        raise InputError(f"{option}: '{text}' is not a systematic's name (letters, digits, _ -)")
    return name


@dataclass(frozen=True)
class WeightVariation:
    """A weight systematic: the columns of the varied event weight (down None: one-sided)."""

    name: str
    up: str
    down: str | None = None

    @classmethod
    def parse(cls, text: str, option: str = "--syst") -> WeightVariation:
        name, sep, cols = text.partition("=")
        up, _, down = cols.partition(":")
        if not sep or not up.strip():
            raise InputError(f"{option}: '{text}' is not NAME=UP_COLUMN[:DOWN_COLUMN]")
        return cls(_name(name, option), up.strip(), down.strip() or None)


@dataclass(frozen=True)
class ShapeVariation:
    """A shape systematic: alternative simulation files up (and down; None: one-sided)."""

    name: str
    up: tuple[str, ...]
    down: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, text: str, option: str = "--syst-file") -> ShapeVariation:
        name, sep, files = text.partition("=")
        up, _, down = files.partition(":")
        ups = tuple(f.strip() for f in up.split(",") if f.strip())
        downs = tuple(f.strip() for f in down.split(",") if f.strip())
        if not sep or not ups:
            raise InputError(f"{option}: '{text}' is not NAME=UP_FILE[,UP_FILE...]"
                             "[:DOWN_FILE[,...]]")
        return cls(_name(name, option), ups, downs or None)


@dataclass(frozen=True)
class Systematics:
    """The systematic uncertainties of a run (see the module docstring)."""

    weights: tuple[WeightVariation, ...] = ()
    shapes: tuple[ShapeVariation, ...] = ()
    norm_default: float | None = None  # every process's log-normal uncertainty
    norms: Mapping[str, float] = field(default_factory=dict)  # per process
    process_column: str | None = None

    @classmethod
    def parse(cls, syst: Sequence[str] = (), syst_files: Sequence[str] = (),
              norm_unc: Sequence[str] | str | None = None,
              process_column: str | None = None) -> Systematics:
        """From the command-line forms (``--syst``, ``--syst-file``, ``--norm-unc``)."""
        weights = tuple(WeightVariation.parse(t) for t in syst)
        shapes = tuple(ShapeVariation.parse(t) for t in syst_files)
        names = [v.name for v in (*weights, *shapes)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(f"--syst/--syst-file: '{twice[0]}' is given twice")
        default, norms = None, {}
        texts = [norm_unc] if isinstance(norm_unc, str) else list(norm_unc or [])
        for text in (t.strip() for chunk in texts for t in chunk.split(",") if t.strip()):
            key, sep, value = text.rpartition("=")
            try:
                number = float(value)
            except ValueError:
                raise InputError(f"--norm-unc: '{text}' is not a relative uncertainty "
                                 "(0.05) or PROCESS=0.05") from None
            if not 0 < number < 10:
                raise InputError(f"--norm-unc: {value} must be a relative uncertainty > 0 "
                                 "(0.05 for 5%)")
            if sep:
                norms[key.strip()] = number
            else:
                default = number
        if norms and not process_column:
            raise InputError("--norm-unc: per-process uncertainties need --process-column")
        return cls(weights, shapes, default, norms, process_column)

    @property
    def empty(self) -> bool:
        return not (self.weights or self.shapes or self.norm_default or self.norms)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the shape-changing systematics (weight and file variations)."""
        return tuple(v.name for v in (*self.weights, *self.shapes))

    def columns(self) -> list[str]:
        """Columns of the simulation that the variations read."""
        cols = [c for v in self.weights for c in (v.up, v.down) if c]
        return cols + ([self.process_column] if self.process_column else [])

    def check_columns(self, sample: Sample, derived: Sequence[str] = ()) -> None:
        """InputError naming the first column of a variation the simulation lacks (a
        ``derived`` column, ``--define``d, is made per chunk and exists)."""
        for v in self.weights:
            for col in (v.up, v.down):
                if col and col in derived:
                    continue
                if col and col not in sample.columns:
                    hint = sample.did_you_mean(col) if hasattr(sample, "did_you_mean") else ""
                    raise InputError(f"{sample.sources[0].label}: --syst {v.name}: no column "
                                     f"'{col}'{hint}")
                if col and sample.columns[col] not in ("float", "int"):
                    raise InputError(f"{sample.sources[0].label}: --syst {v.name}: column "
                                     f"'{col}' is not numeric")
        if self.process_column and self.process_column not in sample.columns \
                and self.process_column not in derived:
            raise InputError(f"{sample.sources[0].label}: --process-column: no column "
                             f"'{self.process_column}'")

    def process_norms(self, processes: Sequence[str]) -> dict[str, float]:
        """Each process's relative normalisation uncertainty (the default where not given)."""
        unknown = [p for p in self.norms if p not in processes]
        if unknown:
            raise InputError(f"--norm-unc: '{unknown[0]}' is not a value of --process-column "
                             f"{self.process_column} (values: {', '.join(processes)})")
        out = {p: self.norms.get(p, self.norm_default) for p in processes}
        return {p: v for p, v in out.items() if v}

    def to_dict(self) -> dict[str, Any]:
        return {"weights": [vars(v) for v in self.weights],
                "shapes": [{"name": v.name, "up": list(v.up),
                            "down": list(v.down) if v.down else None} for v in self.shapes],
                "norm_default": self.norm_default, "norms": dict(self.norms),
                "process_column": self.process_column}


@dataclass(frozen=True)
class VariationRows:
    """The weight rows of the simulation's accumulators: the nominal, then each weight
    variation's up (and down), then each process's nominal (``process:<name>``)."""

    labels: tuple[str, ...]
    weights: tuple[WeightVariation, ...] = ()
    processes: tuple[str, ...] = ()
    process_column: str | None = None

    @classmethod
    def make(cls, syst: Systematics | None, processes: Sequence[str] = ()) -> VariationRows:
        if syst is None:
            return cls((NOMINAL,))
        labels = [NOMINAL]
        for v in syst.weights:
            labels.append(f"{v.name}_up")
            if v.down:
                labels.append(f"{v.name}_down")
        labels += [f"process:{p}" for p in processes]
        return cls(tuple(labels), syst.weights, tuple(processes), syst.process_column)

    def index(self, label: str) -> int | None:
        return self.labels.index(label) if label in self.labels else None

    def empty_variation(self, sumw: np.ndarray) -> str | None:
        """Why a weight variation cannot be tested, or None. ``sumw``: the simulation's total
        weight in each row (``Accumulator.sumw``). A variation whose weights sum to 0 or less
        (a column of zeros, or of sign-flipped weights) is a template of nothing, which the
        profiled fit takes as covering any mismodelling: a false pass."""
        for v in self.weights:
            for side, col in (("up", v.up), ("down", v.down)):
                if col is None:
                    continue
                total = float(sumw[self.labels.index(f"{v.name}_{side}")])
                if not total > 0:
                    return (f"--syst {v.name}: the {side} weight column '{col}' sums to "
                            f"{total:g} over the selected simulated events (a variation's "
                            "weights must sum to more than 0)")
        return None

    def weight_rows(self, chunk: Mapping[str, np.ndarray], nominal: np.ndarray,
                    sample: Sample) -> np.ndarray:
        """``(len(labels), n)``: the chunk's weight in every row."""
        rows = [nominal]
        for v in self.weights:
            for col in (v.up, v.down):
                if col is None:
                    continue
                w = np.asarray(chunk[col], dtype=np.float64)
                with np.errstate(over="ignore"):
                    bad = ~np.isfinite(w * w)
                if bad.any():
                    where = sample.sources[int(chunk[FILE][bad][0])].label
                    raise InputError(f"{where}: --syst {v.name}: column '{col}' has NaN/inf "
                                     f"values, e.g. at row {int(chunk[ENTRY][bad][0])}")
                rows.append(w)
        if self.processes:
            values = process_values(chunk[self.process_column])
            rows += [np.where(values == p, nominal, 0.0) for p in self.processes]
        return np.stack(rows) if len(rows) > 1 else nominal[None, :]


def process_values(values: np.ndarray) -> np.ndarray:
    """A process column's values as strings (numbers as their text: 3.0 -> '3')."""
    if values.dtype == object or values.dtype.kind in "US":
        return values.astype(str)
    as_float = np.asarray(values, dtype=np.float64)
    whole = np.isfinite(as_float) & (as_float == np.round(as_float))
    return np.where(whole, np.round(as_float).astype(np.int64).astype(str),
                    as_float.astype(str))


@dataclass
class ProcessCollector:
    """The distinct values of the process column, seen in the planning pass."""

    column: str
    seen: set[str] = field(default_factory=set)

    def add(self, chunk: Mapping[str, np.ndarray], w: np.ndarray | None = None) -> None:
        if len(chunk[self.column]):
            self.seen.update(np.unique(process_values(chunk[self.column])).tolist())
        if len(self.seen) > MAX_PROCESSES:
            raise InputError(f"--process-column {self.column}: more than {MAX_PROCESSES} "
                             "values; a process column names a few processes (drell_yan, ...)")

    def processes(self) -> tuple[str, ...]:
        return tuple(sorted(self.seen))
