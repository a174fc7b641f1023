"""Histograms as small values: edges, Σw and Σw² per bin, with a leading variation axis.

The tests, the store and the plots share one :class:`Hist`. Like ``hist``/``boost-histogram``
objects they carry their axes and add (``+`` checks that the binnings match), but they are plain
numpy arrays cut out of an :class:`~validator.stages.fill.Accumulator`'s flat vectors, so filling
stays
one ``bincount`` per chunk.

They are scikit-hep values too: :meth:`Hist.to_hist` gives a ``hist.Hist`` with its axes and
``Weight`` storage (Σw, Σw²), which ``mplhep.histplot`` draws and ``hist`` refills or
rebins; :func:`from_stored` reads one row of the ``histograms`` table back.

``sumw`` and ``sumw2`` have the shape ``(n_var, *bins)``: row 0 is the nominal weight, the
others are systematic weight variations. A histogram with ``flow=True`` (the plotting
histograms) has one more bin at each end of its single axis: values below the first edge and
above the last one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: What a stored histogram is binned for (``histograms.binning`` in DuckDB).
BINNINGS = ("test", "fine", "plot")


@dataclass(frozen=True)
class Hist:
    """A weighted histogram with its axes; see the module docstring."""

    edges: tuple[np.ndarray, ...]
    sumw: np.ndarray
    sumw2: np.ndarray
    flow: bool = False
    count: np.ndarray | None = None  # events per bin (nominal), where kept
    sumw3: np.ndarray | None = None  # Σw³ per bin (nominal), where kept
    sumw4: np.ndarray | None = None  # Σw⁴ per bin (nominal), where kept

    def __post_init__(self) -> None:
        shape = tuple(len(e) - 1 + (2 if self.flow else 0) for e in self.edges)
        if self.sumw.shape[1:] != shape or self.sumw2.shape != self.sumw.shape:
            raise ValueError(f"histogram contents {self.sumw.shape}/{self.sumw2.shape} do not "
                             f"match its edges (bins {shape})")

    @property
    def ndim(self) -> int:
        return len(self.edges)

    @property
    def n_var(self) -> int:
        return self.sumw.shape[0]

    @property
    def values(self) -> np.ndarray:
        """Nominal Σw per bin."""
        return self.sumw[0]

    @property
    def variances(self) -> np.ndarray:
        """Nominal Σw² per bin (the simulation's statistical variance; counts for data)."""
        return self.sumw2[0]

    def total(self) -> float:
        return float(self.sumw[0].sum())

    def __add__(self, other: Hist) -> Hist:
        if self.flow != other.flow or len(self.edges) != len(other.edges) or any(
                not np.array_equal(a, b) for a, b in zip(self.edges, other.edges, strict=True)):
            raise ValueError("cannot add histograms with different binnings")
        if self.n_var != other.n_var:
            raise ValueError(f"cannot add histograms with {self.n_var} and {other.n_var} "
                             "weight variations")
        def both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return a + b if a is not None and b is not None else None

        return Hist(self.edges, self.sumw + other.sumw, self.sumw2 + other.sumw2, self.flow,
                    both(self.count, other.count), both(self.sumw3, other.sumw3),
                    both(self.sumw4, other.sumw4))

    def density(self) -> np.ndarray:
        """Nominal Σw per unit of bin width (1D, in-range bins only), for plotting."""
        if self.ndim != 1:
            raise ValueError("density is defined for 1D histograms")
        values = self.values[1:-1] if self.flow else self.values
        return values / np.diff(self.edges[0])

    def to_hist(self, variation: int = 0, names: tuple[str, ...] = ("x", "y"),
                labels: tuple[str, ...] | None = None) -> Any:
        """This histogram (one weight variation, the nominal by default) as a scikit-hep
        ``hist.Hist`` with ``Variable`` axes named ``names`` and ``Weight`` storage: values Σw,
        variances Σw²; a ``flow`` histogram's outer bins are the axis' under/overflow."""
        import hist

        axes = [hist.axis.Variable(np.asarray(e, dtype=float), name=names[i],
                                   label=(labels or names)[i], underflow=self.flow,
                                   overflow=self.flow)
                for i, e in enumerate(self.edges)]
        out = hist.Hist(*axes, storage=hist.storage.Weight())
        view = out.view(flow=self.flow)
        view.value = self.sumw[variation]
        view.variance = self.sumw2[variation]
        return out


def from_stored(row: Mapping[str, Any], sample: str = "sim") -> Hist:
    """One row of the ``histograms`` table (docs/schema.md) as a :class:`Hist` of the
    simulation (Σw, Σw²) or of the data (counts, Poisson variances). A ``plot`` row has its
    under/overflow bins (``flow``); a pair's contents are stored flat, x major."""
    if sample not in ("sim", "data"):
        raise ValueError(f"sample must be 'sim' or 'data', not {sample!r}")
    edges = [np.asarray(row["edges_x"], dtype=float)]
    if row.get("edges_y") is not None:
        edges.append(np.asarray(row["edges_y"], dtype=float))
    values = np.asarray(row["sim_sumw" if sample == "sim" else "data_counts"], dtype=float)
    variances = np.asarray(row["sim_sumw2"], dtype=float) if sample == "sim" else values
    bins = tuple(len(e) - 1 for e in edges)
    flow = len(edges) == 1 and len(values) == bins[0] + 2
    shape = (bins[0] + 2,) if flow else bins
    return Hist(tuple(edges), values.reshape(1, *shape), variances.reshape(1, *shape), flow)

