"""PNG/PDF (matplotlib, the CMS style of :mod:`validator.output.figures`) versions of the
dashboard's
figures that :mod:`validator.output.figures` does not draw: the p-value histogram, bars of
importances, square matrices, nuisance pulls and lines over runs. Pure: arrays in, a
:class:`matplotlib.figure.Figure` out (released by the download helper)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from validator.output.figures import PROCESS_COLOURS, mpl_style, new_figure


def pvalue_hist(pvalues: Sequence[float], n_bins: int = 20, title: str = "") -> Any:
    """Histogram of p-values with the uniform expectation and its binomial ±1σ band."""
    p = np.asarray([v for v in pvalues if v is not None and math.isfinite(v)], dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    counts, _ = np.histogram(np.clip(p, 0, 1), edges)
    expected = len(p) / n_bins
    sigma = math.sqrt(len(p) * (1 / n_bins) * (1 - 1 / n_bins))
    with mpl_style():
        fig = new_figure((9, 6))
        ax = fig.subplots()
        ax.stairs(counts, edges, fill=True, color=PROCESS_COLOURS[0], alpha=0.8, label="tests")
        ax.fill_between([0, 1], max(expected - sigma, 0), expected + sigma, color="0.5",
                        alpha=0.35, label="uniform ± 1σ")
        ax.axhline(expected, color="black", linestyle="--", label="uniform")
        ax.set_xlim(0, 1)
        ax.set_xlabel("p-value")
        ax.set_ylabel("tests")
        ax.legend(fontsize="x-small")
        ax.set_title(title, loc="left", fontsize="small")
    return fig


def bars(labels: Sequence[str], series: Mapping[str, tuple[Sequence[float],
         Sequence[float] | None]], ylabel: str, title: str = "") -> Any:
    """Grouped bars with error bars (e.g. importances in simulation and data)."""
    n = max(1, len(series))
    x = np.arange(len(labels))
    width = 0.8 / n
    with mpl_style():
        fig = new_figure((max(9.0, 0.55 * len(labels) + 3), 6.5))
        ax = fig.subplots()
        for k, (name, (values, errors)) in enumerate(series.items()):
            colour = "black" if name == "data" else PROCESS_COLOURS[k % len(PROCESS_COLOURS)]
            ax.bar(x + (k - (n - 1) / 2) * width, values, width, label=name, color=colour,
                   alpha=0.85, yerr=errors, capsize=2,
                   error_kw={"ecolor": "0.3", "elinewidth": 1})
        ax.set_xticks(x, list(labels), rotation=60, ha="right", fontsize="x-small")
        ax.minorticks_off()
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="x-small")
        ax.set_title(title, loc="left", fontsize="small")
    return fig


def matrix(values: np.ndarray, labels: Sequence[str], *, title: str = "", label: str = "",
           diverging: bool = False) -> Any:
    """A square matrix over ``labels`` (numbers written in for small ones)."""
    from matplotlib.colors import TwoSlopeNorm

    n = len(labels)
    size = min(max(8.0, 0.8 * n), 24.0)  # the map's side: a written number fits its cell
    cell_font = min(9.0, 72 * size / max(n, 1) / 4.0)
    finite = values[np.isfinite(values)]
    with mpl_style():
        fig = new_figure((size + 3.0, size + 1.5))
        ax = fig.subplots()
        if diverging:
            vmax = float(np.max(np.abs(finite), initial=1e-12))
            mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap="RdBu_r",
                                 norm=TwoSlopeNorm(0.0, -vmax, vmax))
        else:
            mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap="viridis")
        fig.colorbar(mesh, ax=ax, label=label)
        if n <= 16:
            for i in range(n):
                for j in range(n):
                    if np.isfinite(values[i, j]):
                        ax.text(j + 0.5, i + 0.5, f"{values[i, j]:.2g}", ha="center",
                                va="center", fontsize=cell_font, color="0.1")
        ticks = np.arange(n) + 0.5
        ax.set_xticks(ticks, list(labels), rotation=90, fontsize="x-small")
        ax.set_yticks(ticks, list(labels), fontsize="x-small")
        ax.minorticks_off()
        ax.set_ylim(n, 0)
        ax.set_aspect("equal")
        ax.set_title(title, loc="left", fontsize="small")
    return fig


def pulls(names: Sequence[str], values: Sequence[float], errors: Sequence[float],
          title: str = "") -> Any:
    """Post-fit nuisance parameters with ±1σ (green) and ±2σ (yellow) bands."""
    y = np.arange(len(names))
    with mpl_style():
        fig = new_figure((11, 3.5 + 0.7 * len(names)))
        ax = fig.subplots()
        ax.axvspan(-2, 2, color="#fdd835", alpha=0.5)
        ax.axvspan(-1, 1, color="#2e9e44", alpha=0.4)
        ax.errorbar(values, y, xerr=errors, fmt="o", color="black")
        ax.set_yticks(y, list(names), fontsize="x-small")
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlim(-3, 3)
        ax.set_xlabel("(θ̂ − θ₀) / Δθ")
        ax.set_title(title, loc="left", fontsize="small")
    return fig


def lines(x: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str,
          title: str = "", log_y: bool = False,
          bounds: Mapping[str, Sequence[str | None]] | None = None) -> Any:
    """Lines with markers over runs; ``bounds`` as in
    :func:`validator.dashboard.plots.lines_figure` (a bound is a labelled ▲, off the
    line)."""
    with mpl_style():
        fig = new_figure((12, 8))
        ax = fig.subplots()
        pos = np.arange(len(x))
        for k, (name, values) in enumerate(series.items()):
            colour = PROCESS_COLOURS[k % len(PROCESS_COLOURS)]
            marks = list((bounds or {}).get(name) or [None] * len(values))
            vals = np.asarray(values, dtype=float)
            exact = np.where([m is None for m in marks], vals, np.nan)
            ax.plot(pos, exact, marker="o", label=name, color=colour)
            capped = [i for i, m in enumerate(marks) if m is not None]
            if capped:
                ax.plot(pos[capped], vals[capped], linestyle="none", marker="^",
                        markersize=12, color=colour, markeredgecolor="black",
                        label=f"{name}: bound")
                for i in capped:
                    ax.annotate(marks[i], (pos[i], vals[i]), xytext=(0, -14),
                                textcoords="offset points", ha="center", va="top",
                                fontsize="xx-small")
        ax.set_xticks(pos, list(x), rotation=45, ha="right", fontsize="x-small")
        ax.minorticks_off()
        if log_y:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        if series:
            ax.legend(fontsize="x-small")
        ax.set_title(title, loc="left", fontsize="small")
    return fig
