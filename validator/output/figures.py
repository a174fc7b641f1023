"""Figures of a stored run, drawn from the stored tables only (so a report can be rebuilt from
DuckDB alone, years later, without the input files).

Every function is pure: it takes rows of the ``histograms``/``tests``/``criticality`` tables
(see docs/schema.md) and returns a :class:`matplotlib.figure.Figure` drawn on an Agg canvas,
made without pyplot: no display is needed, a notebook's backend is left alone, and no figure
stays registered in pyplot's state (:func:`save_figure` writes PNG and PDF and releases it).

Conventions, following the CMS style of ``mplhep`` (``mplhep.style.CMS``; Lange et al.,
https://github.com/scikit-hep/mplhep) and the usual CMS/KIT validation plots:

* 1D: the simulation as a filled histogram (stacked by process when per-process histograms
  are given), normalised to the data count (the tests compare shapes: ``chi2_uw`` and
  ``saturated`` leave the normalisation free, KS/AD compare distributions), with its
  statistical uncertainty sqrt(Σw²) as a hatched band; data as black points with Garwood
  (central 68.3 %) Poisson intervals, ``mplhep.error_estimation.poisson_interval``; a
  data/simulation ratio panel with the band. The ``plot`` binning is drawn; its underflow and
  overflow (kept apart in the stored arrays) are written on the figure.
* 2D: the pull map (data − k·sim)/σ over the pair's ``test`` binning (equal-population bins,
  drawn in bin-index space with the edges as tick labels), a diverging colormap centred at 0.
* The p-value matrix of all pairs, coloured green / yellow / red by the Holm-adjusted p-value
  (thresholds :data:`P_GREEN` and :data:`P_RED`), important pairs of an audited network boxed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import mplhep
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from mplhep.error_estimation import poisson_interval

from validator.results.display import ExperimentLabel, FeatureDisplay
from validator.results.format import format_p, neg_log10

#: p-value colour thresholds of the matrix (CMS/KIT convention): green p >= P_GREEN (no
#: evidence at the usual 5 % test size), yellow P_RED <= p < P_GREEN (worth a look), red
#: p < P_RED (mismodelled at 1 %). Applied to Holm-adjusted p-values by default, so a red cell
#: is not one of the failures expected by chance among many tests.
P_GREEN = 0.05
P_RED = 0.01
#: Colours of the matrix classes (red, yellow, green) and of a test that did not run.
MATRIX_COLOURS = ("#d7301f", "#fdd835", "#2e9e44")
NOT_RUN_COLOUR = "#d9d9d9"
#: Default methods of the p-value matrix: the plain 2D chi² (lower triangle: any difference in
#: the pair histogram) and the dependence test (upper triangle: the correlation alone, after
#: the marginals are matched); the diagonal holds the feature's smallest 1D p-value.
MATRIX_METHODS = ("chi2_uw", "dependence")
#: Smallest half-range of the pull colour scale: pulls within ±3 stay pale (no evidence).
PULL_MIN_RANGE = 3.0
#: Half-range of the ratio panel is at least this (±20 %) and at most 1 (0 to 2).
RATIO_MIN_RANGE, RATIO_MAX_RANGE = 0.2, 1.0
#: Largest grid (cells per axis) whose cells get their number written in.
MAX_ANNOTATED = 16
#: Resolution of the PNG files (the PDF is vector).
PNG_DPI = 110
#: A y axis turns logarithmic when the drawn contents span more than this many decades
#: (the issue's rule: a falling tail or the network output's peaks at 0 and 1 vanish on a
#: linear scale beyond two decades).
AUTO_LOG_DECADES = 2.0
#: Free space kept between the data and a legend drawn inside the axes, as a fraction of the
#: axes' height.
LEGEND_GAP = 0.03
#: Bin edges are written with this many significant digits; an edge closer to 0 than
#: :data:`EDGE_ZERO` of its gap to the next edge is written 0 (:func:`edge_labels`).
EDGE_DIGITS = 3
EDGE_ZERO = 1e-3
#: Fill colours of the simulation's processes (mplhep's CMS colour cycle, Petroff 10).
PROCESS_COLOURS = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6", "#a96b59",
                   "#e76300", "#b9ac70", "#717581", "#92dadd")


@dataclass(frozen=True)
class Hist1D:
    """A 1D histogram of the ``plot`` binning: ``len(edges) + 1`` contents, element 0 the
    underflow and the last the overflow (docs/schema.md)."""

    edges: np.ndarray
    sumw: np.ndarray
    sumw2: np.ndarray

    @property
    def inner(self) -> slice:
        return slice(1, len(self.edges))


@dataclass(frozen=True)
class Hist2D:
    """A pair's ``test`` histogram: contents unrolled row-major, ``(ix, iy)`` at
    ``ix * (len(edges_y) - 1) + iy``; under/overflow folded into the edge bins."""

    edges_x: np.ndarray
    edges_y: np.ndarray
    sim_sumw: np.ndarray
    sim_sumw2: np.ndarray
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.edges_x) - 1, len(self.edges_y) - 1


def as_array(value: Any) -> np.ndarray:
    return np.asarray(list(value) if value is not None else [], dtype=float)


def hist1d_from_row(row: Mapping[str, Any]) -> tuple[Hist1D, np.ndarray]:
    """The simulation histogram and the data counts of a ``plot`` row of ``histograms``."""
    edges = as_array(row["edges_x"])
    sim = Hist1D(edges, as_array(row["sim_sumw"]), as_array(row["sim_sumw2"]))
    data = as_array(row["data_counts"])
    if len(sim.sumw) != len(edges) + 1 or len(data) != len(edges) + 1:
        raise ValueError(f"{row.get('feature_x')}: not a plot histogram (expected "
                         f"{len(edges) + 1} contents with under/overflow, got {len(sim.sumw)})")
    return sim, data


def hist2d_from_row(row: Mapping[str, Any]) -> Hist2D:
    """A pair's histogram from a ``test`` row of ``histograms``."""
    hist = Hist2D(as_array(row["edges_x"]), as_array(row["edges_y"]), as_array(row["sim_sumw"]),
                  as_array(row["sim_sumw2"]), as_array(row["data_counts"]))
    nx, ny = hist.shape
    if not len(hist.sim_sumw) == len(hist.data) == nx * ny:
        raise ValueError(f"{row.get('feature_x')} × {row.get('feature_y')}: {len(hist.data)} "
                         f"contents for {nx} × {ny} bins")
    return hist


def normalisation(sim_sumw: np.ndarray, data: np.ndarray) -> float:
    """k = N_data / Σw_sim over the histogram (NaN when Σw <= 0): the simulation scaled by k
    has the data's count, as the shape tests assume."""
    total = float(np.sum(sim_sumw))
    return float(np.sum(data)) / total if total > 0 else math.nan


def pull_values(hist: Hist2D) -> np.ndarray:
    """Pulls (d − k·s) / sqrt(d + k²·Σw²) per cell, shape ``(nx, ny)``.

    ``k`` is :func:`normalisation` over the pair histogram; the variance is the data's Poisson
    variance estimated by the observed count plus the scaled simulation's statistical variance
    (the uncertainty of ``k`` itself is neglected). NaN where that variance is 0 (no data and
    no simulation in the cell) or ``k`` is undefined.
    """
    k = normalisation(hist.sim_sumw, hist.data)
    var = hist.data + k * k * hist.sim_sumw2
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = np.where(var > 0, (hist.data - k * hist.sim_sumw) / np.sqrt(var), np.nan)
    return pull.reshape(hist.shape)


def mpl_style():
    return matplotlib.style.context(mplhep.style.CMS)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas (not pyplot's: nothing global to close or switch)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def safe_text(text: str) -> str:
    """``text`` as matplotlib can draw it: a label whose mathtext (``$...$``) does not parse
    is written with its dollars escaped, so a bad label in a configuration file never stops a
    report."""
    if text.count("$") < 2:
        return text
    from matplotlib.mathtext import MathTextParser

    try:
        MathTextParser("path").parse(text)
    except ValueError:
        return text.replace("$", r"\$")
    return text


def draw_experiment_label(ax: Any, label: ExperimentLabel | None) -> float | None:
    """The experiment label above ``ax`` (``mplhep.label.exp_label``, loc 0: the experiment
    and text on the left, luminosity and energy on the right; mplhep docs, "Labels").
    Returns the pad (points) that puts a title above it, None when no label is drawn."""
    if label is None:
        return None
    kwargs: dict[str, Any] = {"exp": label.experiment, "text": label.text, "data": label.data,
                              "loc": 0, "ax": ax, "fontsize": "small"}
    if label.lumi is not None:
        kwargs["lumi"] = f"{label.lumi:g}"
    if label.year is not None:
        kwargs["year"] = label.year
    kwargs["com"] = f"{label.com:g}" if label.com is not None else None
    if label.lumi is None and label.com is None and label.year is None:
        kwargs["rlabel"] = ""
    texts = [t for t in mplhep.label.exp_label(**kwargs) if t is not None]
    renderer = ax.figure.canvas.get_renderer()
    top = max(t.get_window_extent(renderer).y1 for t in texts)
    # + 12 points: the title's descent below its baseline and a gap
    return max(0.0, (top - ax.get_window_extent(renderer).y1) * 72 / ax.figure.dpi) + 12


def auto_log(values: Sequence[np.ndarray] | np.ndarray) -> bool:
    """Whether the positive values span more than :data:`AUTO_LOG_DECADES` decades."""
    arrays = values if isinstance(values, (list, tuple)) else [values]
    flat = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    positive = flat[np.isfinite(flat) & (flat > 0)]
    if len(positive) < 2:
        return False
    return bool(np.log10(positive.max() / positive.min()) > AUTO_LOG_DECADES)


def place_legend(ax: Any, tops: np.ndarray, edges: np.ndarray, **kwargs: Any) -> Any:
    """A legend inside the upper corner of ``ax`` where it hides no data: the upper right or
    left corner, whichever needs less room, with the y axis raised until the legend sits
    above every bin it spans (``tops``: the highest point drawn per bin, ``edges`` the bins).
    matplotlib's ``loc="best"`` only minimises overlap with the data already on the axes and
    never makes room; this makes room."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    log = ax.get_yscale() == "log"
    ymin, ymax = ax.get_ylim()

    def to_axes(v: np.ndarray) -> np.ndarray:
        if log:
            return (np.log10(np.clip(v, ymin, None)) - math.log10(ymin)) / (
                math.log10(ymax) - math.log10(ymin))
        return (v - ymin) / (ymax - ymin)

    best: tuple[float, Any] | None = None
    for loc in ("upper right", "upper left"):
        legend = ax.legend(loc=loc, **kwargs)
        box = legend.get_window_extent(renderer).transformed(ax.transAxes.inverted())
        x0, x1 = box.x0, box.x1
        xs = ax.transAxes.inverted().transform(
            ax.transData.transform(np.column_stack([edges, np.full(len(edges), ymin)])))[:, 0]
        under = (xs[1:] > x0) & (xs[:-1] < x1)
        highest = float(np.nanmax(to_axes(tops[under]), initial=0.0)) if under.any() else 0.0
        need = highest + LEGEND_GAP - box.y0  # how far the data reach into the legend
        if best is None or need < best[0]:
            best = (need, loc)
        legend.remove()
    assert best is not None
    need, loc = best
    if need > 0:  # raise the top so the data end below the legend's lower edge
        legend = ax.legend(loc=loc, **kwargs)
        box = legend.get_window_extent(renderer).transformed(ax.transAxes.inverted())
        legend.remove()
        frac = max(box.y0 - LEGEND_GAP, 0.2)  # axes fraction left for the data
        if log:
            top_data = math.log10(ymin) + (math.log10(ymax) - math.log10(ymin)) * (
                frac + need)
            ax.set_ylim(ymin, 10 ** (math.log10(ymin) + (top_data - math.log10(ymin)) / frac))
        else:
            top_data = ymin + (ymax - ymin) * (frac + need)
            ax.set_ylim(ymin, ymin + (top_data - ymin) / frac)
    return ax.legend(loc=loc, **kwargs)


def plot_feature(sim: Hist1D | Mapping[str, Hist1D], data: np.ndarray, feature: str, *,
                 pvalues: Mapping[str, float] | None = None, category: str | None = None,
                 normalise: bool = True, title: str | None = None,
                 syst: np.ndarray | None = None, display: FeatureDisplay | None = None,
                 experiment: ExperimentLabel | None = None) -> Figure:
    """Simulation vs data of one feature in the ``plot`` binning, with a ratio panel.

    ``sim`` is the total simulation, or a mapping process -> histogram (drawn stacked, in the
    given order, the band from their summed Σw²). ``data`` has the same ``len(edges) + 1``
    elements. ``pvalues`` (method -> Holm-adjusted p-value) go into the legend title.
    With ``normalise`` the simulation is scaled to the data count (``k`` in the legend).
    Bins with negative Σw (negative weights) are drawn below zero and have no ratio.
    ``syst``: the simulation's systematic uncertainty per bin (Σw units, the same
    ``len(edges) + 1`` elements): the band is then statistical ⊕ systematic, labelled so.
    ``display``: the feature's label, unit, scales and range (the run configuration's
    ``display``); the y axis is logarithmic when asked, or by default when the contents span
    more than :data:`AUTO_LOG_DECADES` decades. ``experiment``: the experiment label drawn
    above the axes (:func:`draw_experiment_label`). The legend is placed where it hides no
    data (:func:`place_legend`).
    """
    display = display or FeatureDisplay()
    processes = dict(sim) if isinstance(sim, Mapping) else {"Simulation": sim}
    if not processes:
        raise ValueError("no simulation histogram")
    first = next(iter(processes.values()))
    edges, inner = first.edges, first.inner
    total_w = np.sum([h.sumw for h in processes.values()], axis=0)
    total_w2 = np.sum([h.sumw2 for h in processes.values()], axis=0)
    data = np.asarray(data, dtype=float)
    k = normalisation(total_w, data) if normalise else 1.0
    if not np.isfinite(k):
        k = 1.0
    variance = np.clip(total_w2[inner], 0, None)
    if syst is not None:
        variance = variance + np.asarray(syst, dtype=float)[inner] ** 2
    sim_w, sim_err = k * total_w[inner], k * np.sqrt(variance)
    d = data[inner]
    lo, hi = poisson_interval(d, d)
    lo, hi = np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=0.0)
    centres = 0.5 * (edges[1:] + edges[:-1])
    logx = bool(display.logx) and edges[0] > 0
    logy = display.logy if display.logy is not None else auto_log([sim_w, d])
    logy = bool(logy) and bool(np.any(sim_w > 0) or np.any(d > 0))

    with mpl_style():
        fig = new_figure((10, 9.5))
        ax, rax = fig.subplots(2, 1, sharex=True,
                               gridspec_kw={"height_ratios": (3, 1), "hspace": 0.06})
        baseline = np.zeros_like(sim_w)
        for n, (name, h) in enumerate(processes.items()):
            top = baseline + k * h.sumw[inner]
            ax.stairs(top, edges, baseline=baseline, fill=True, alpha=0.8,
                      color=PROCESS_COLOURS[n % len(PROCESS_COLOURS)],
                      label=name + (f" (× {k:.3f})" if normalise and len(processes) == 1
                                    else ""))
            baseline = top
        ax.stairs(sim_w - sim_err, edges, baseline=sim_w + sim_err, fill=True, hatch="////",
                  facecolor="none", edgecolor="0.3", linewidth=0,
                  label=r"Sim. stat. $\oplus$ syst. unc." if syst is not None
                  else "Sim. stat. unc.")
        ax.errorbar(centres, d, yerr=(d - lo, hi - d), fmt="o", color="black", markersize=4,
                    label="Data", gid="data")
        tops = np.fmax(hi, sim_w + sim_err)
        ymax = float(np.max(tops, initial=0.0))
        if logy:
            ax.set_yscale("log")
            positive = np.concatenate([sim_w[sim_w > 0], d[d > 0]])
            floor = float(np.min(positive)) if len(positive) else 1.0
            ax.set_ylim(floor / 3, ymax * 3 if ymax > 0 else 10.0)
        else:
            ymin = min(0.0, float(np.min(sim_w - sim_err, initial=0.0)))
            ax.set_ylim(ymin * 1.1, ymax * 1.08 if ymax > 0 else 1.0)
            if ymin < 0:
                ax.axhline(0, color="0.4", linewidth=0.8)
        ax.set_ylabel("Events / bin")
        if logx:
            ax.set_xscale("log")
        rax.set_xlim(*(display.range or (edges[0], edges[-1])))
        head = safe_text(title or (feature + (f"  [{category}]" if category and
                                              category != "all" else "")))
        pad = draw_experiment_label(ax, experiment)
        ax.set_title(head, loc="left", fontsize="medium", pad=pad)
        handles, labels = ax.get_legend_handles_labels()
        first = labels.index("Data")  # data first, then the simulation, the band
        order = [first] + [i for i in range(len(labels)) if i != first]
        place_legend(ax, tops, edges, handles=[handles[i] for i in order],
                     labels=[labels[i] for i in order], title=_pvalue_caption(pvalues),
                     fontsize="x-small", title_fontsize="x-small", handlelength=1.2,
                     ncols=2 if len(labels) > 3 else 1, columnspacing=0.8)
        # under/overflow and negative bins: a caption under the figure, never over the data
        negative = int(np.sum(total_w[inner] < 0))
        notes = [*_flow_notes(k * total_w, data),
                 *([f"{negative} bins with Σw < 0"] if negative else [])]

        # ratio panel: data / sim and the band sim_err / sim, only where sim > 0
        ok = sim_w > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ok, d / sim_w, np.nan)
            r_lo, r_hi = np.where(ok, lo / sim_w, np.nan), np.where(ok, hi / sim_w, np.nan)
            band = np.where(ok, sim_err / sim_w, np.nan)
        rax.stairs(1 + band, edges, baseline=1 - band, fill=True, hatch="////",
                   facecolor="none", edgecolor="0.3", linewidth=0)
        rax.axhline(1, color="0.3", linewidth=0.8, linestyle="--")
        rax.errorbar(centres, ratio, yerr=(ratio - r_lo, r_hi - ratio), fmt="o", color="black",
                     markersize=4, gid="ratio")
        dev = np.nanmax(np.abs(ratio[ok & (d > 0)] - 1), initial=0.0)
        half = float(np.clip(1.3 * dev, RATIO_MIN_RANGE, RATIO_MAX_RANGE))
        rax.set_ylim(1 - half, 1 + half)
        rax.set_ylabel("Data / Sim.")
        rax.set_xlabel(safe_text(display.axis_label(feature)))
        if notes:
            caption_below(rax, "; ".join(notes))
    return fig


def caption_below(ax: Any, text: str) -> Any:
    """A small caption under ``ax``'s x label, left-aligned with the axes (its position
    follows the label's drawn extent, so rotated tick labels never overlap it)."""
    return ax.annotate(text, xy=(0.0, 0.0), xycoords=("axes fraction", ax.xaxis.label),
                       xytext=(0, -6), textcoords="offset points", ha="left", va="top",
                       fontsize="xx-small", gid="caption")


def _pvalue_caption(pvalues: Mapping[str, float] | None) -> str | None:
    if not pvalues:
        return None
    parts = [f"{m}: {format_p(p)}" for m, p in pvalues.items()]
    lines = ["p (Holm)"] + [", ".join(parts[i:i + 2]) for i in range(0, len(parts), 2)]
    return "\n".join(lines)


def _flow_notes(sim: np.ndarray, data: np.ndarray) -> list[str]:
    return [f"{name}: data {data[i]:.0f}, sim {sim[i]:.1f}"
            for name, i in (("underflow", 0), ("overflow", -1)) if sim[i] or data[i]]


def edge_labels(edges: np.ndarray) -> list[str]:
    """Bin edges as tick labels: :data:`EDGE_DIGITS` significant digits, written plainly
    (``1230``, ``0.0462``) where the axis' largest |edge| is within 1e-3 to 1e5, else in
    scientific notation; an edge closer to 0 than :data:`EDGE_ZERO` of its gap to the
    neighbouring edge is ``0`` (a quantile at 4.6e-07 beside an edge at 0.0026 is the
    distribution's lower end)."""
    edges = np.asarray(edges, dtype=float)
    scale = float(np.max(np.abs(edges[np.isfinite(edges)]), initial=0.0))
    gaps = np.abs(np.diff(edges)) if len(edges) > 1 else np.array([scale])
    nearest = np.minimum(np.append(gaps, np.inf), np.insert(gaps, 0, np.inf))
    out = []
    for e, gap in zip(edges, nearest, strict=True):
        if not np.isfinite(e):
            out.append(str(e))
        elif scale == 0 or abs(e) < EDGE_ZERO * gap:
            out.append("0")
        elif not 1e-3 <= scale < 1e5:
            out.append(f"{e:.{EDGE_DIGITS - 1}e}")
        else:
            text = f"{float(f'{e:.{EDGE_DIGITS}g}'):f}".rstrip("0").rstrip(".")
            out.append(text if text not in ("-0", "") else "0")
    return out


def pull_caption(pvalues: Mapping[str, float] | None, bounds: Mapping[str, bool] | None = None,
                 ) -> str:
    """Every test of a pair with its Holm p-value, by the one formatter, for a pull map's
    caption (three to a line)."""
    if not pvalues:
        return ""
    parts = [f"{m} {format_p(p, bound=bool((bounds or {}).get(m)))}"
             for m, p in pvalues.items()]
    return "p (Holm): " + "\n".join(", ".join(parts[i:i + 3]) for i in range(0, len(parts), 3))


def plot_pull_map(hist: Hist2D, feature_x: str, feature_y: str, *,
                  pvalues: Mapping[str, float] | None = None,
                  category: str | None = None, display_x: FeatureDisplay | None = None,
                  display_y: FeatureDisplay | None = None,
                  experiment: ExperimentLabel | None = None,
                  bounds: Mapping[str, bool] | None = None) -> Figure:
    """The pull map of a pair: :func:`pull_values` per cell of the ``test`` binning.

    Drawn in bin-index space (the bins are equal-population, so their widths vary by orders
    of magnitude; the axis labels say so) with the bin edges as tick labels
    (:func:`edge_labels`); ``RdBu_r`` centred at 0, symmetric, at least
    ±:data:`PULL_MIN_RANGE`; the colour bar beside the square map. Grey cells have no pull
    (empty in both samples). The title is short (the pair and its worst Holm p); every
    test's Holm p-value is in the caption under the map (:func:`pull_caption`; ``bounds``:
    method -> whether its p is an upper bound).
    """
    pull = pull_values(hist)
    nx, ny = hist.shape
    finite = pull[np.isfinite(pull)]
    vmax = max(PULL_MIN_RANGE, float(np.max(np.abs(finite), initial=0.0)))
    dx, dy = display_x or FeatureDisplay(), display_y or FeatureDisplay()
    with mpl_style():
        # large enough that the map, not its labels, title and caption, fills the canvas
        fig = new_figure((16.5, 16.0))
        ax = fig.subplots()
        ax.set_box_aspect(1)  # square: a map, whatever the numbers of bins
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=NOT_RUN_COLOUR)
        mesh = ax.pcolormesh(np.arange(nx + 1), np.arange(ny + 1),
                             np.ma.masked_invalid(pull.T), cmap=cmap,
                             norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax))
        mesh.set_gid("pulls")
        bar = fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label("(data − k·sim) / σ", fontsize="small")
        if nx <= MAX_ANNOTATED and ny <= MAX_ANNOTATED:
            for ix in range(nx):
                for iy in range(ny):
                    if np.isfinite(pull[ix, iy]):
                        ax.text(ix + 0.5, iy + 0.5, f"{pull[ix, iy]:.1f}", ha="center",
                                va="center", fontsize="xx-small",
                                color="white" if abs(pull[ix, iy]) > 0.6 * vmax else "black")
        step_x, step_y = max(1, math.ceil(nx / 10)), max(1, math.ceil(ny / 10))
        ax.set_xticks(np.arange(0, nx + 1, step_x),
                      edge_labels(hist.edges_x)[::step_x], rotation=45, fontsize="x-small")
        ax.set_yticks(np.arange(0, ny + 1, step_y),
                      edge_labels(hist.edges_y)[::step_y], fontsize="x-small")
        ax.minorticks_off()
        ax.tick_params(length=0)
        ax.set_xlabel(safe_text(dx.axis_label(feature_x)) + " (equal-population bins)",
                      fontsize="small")
        ax.set_ylabel(safe_text(dy.axis_label(feature_y)) + " (equal-population bins)",
                      fontsize="small")
        cat = f"  [{category}]" if category and category != "all" else ""
        # a short title (the pair and its worst Holm p); every test's p-value is in the
        # caption under the map, so the title never runs off the canvas
        finite = {m: p for m, p in (pvalues or {}).items() if np.isfinite(p)}
        worst = min(finite, key=finite.get, default=None)
        pad = draw_experiment_label(ax, experiment)
        ax.set_title(f"{feature_x} × {feature_y}{cat}" + (
            f"\nworst Holm p {format_p(finite[worst], bound=(bounds or {}).get(worst, False))}"
            if worst is not None else ""),
            loc="left", fontsize="small", pad=pad)
        caption = pull_caption(pvalues, bounds)
        if caption:
            caption_below(ax, caption)
    return fig


def _neg_log10_label(p: float, bound: bool = False) -> str:
    """-log10 p as a matrix cell shows it: one decimal below 10, none above; a p-value that
    underflowed (the cap of :func:`validator.results.format.neg_log10`) as ``≥300``, and an
    upper bound on p (``tests.pvalue_is_bound``: p < value) as a lower bound on -log10 p,
    ``>2.5``."""
    value = neg_log10(p)
    if value is None:
        return ""
    if value >= neg_log10(0.0):
        return f"≥{value:.0f}"
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return f">{text}" if bound else text


def matrix_cells(tests: Iterable[Mapping[str, Any]], features: Sequence[str], *,
                 methods: tuple[str, str] = MATRIX_METHODS, diagonal: str | None = None,
                 category: str = "all", column: str = "p_holm",
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The matrix's p-values (:func:`pvalue_matrix`) and, beside them, whether each is an
    upper bound (``tests.pvalue_is_bound``: no toy reached the statistic; the Holm and BH
    adjustments of a bound are bounds too)."""
    index = {f: i for i, f in enumerate(features)}
    out = np.full((len(features), len(features)), np.nan)
    bound = np.zeros(out.shape, dtype=bool)
    for t in tests:
        if t["category"] != category or t.get("kind") == "taylor":  # not a data test
            continue
        p = t.get(column)
        if p is None or not np.isfinite(p) or not bool(t.get("reliable")):
            continue
        is_bound = bool(t.get("pvalue_is_bound") or False)
        x, y = t["feature_x"], t.get("feature_y")
        if x not in index:
            continue
        if y is None or (isinstance(y, float) and np.isnan(y)):
            if diagonal is None or t["method"] == diagonal:
                i = index[x]
                if not p >= out[i, i]:  # the smallest (NaN: none yet)
                    out[i, i], bound[i, i] = p, is_bound
            continue
        if y not in index:
            continue
        i, j = sorted((index[x], index[y]))  # i < j
        if t["method"] == methods[0]:
            out[j, i], bound[j, i] = p, is_bound
        elif t["method"] == methods[1]:
            out[i, j], bound[i, j] = p, is_bound
    return out, bound


def pvalue_matrix(tests: Iterable[Mapping[str, Any]], features: Sequence[str], *,
                  methods: tuple[str, str] = MATRIX_METHODS, diagonal: str | None = None,
                  category: str = "all", column: str = "p_holm") -> np.ndarray:
    """The p-values of the matrix, shape ``(n, n)``: ``[i, j]`` with i > j (lower triangle)
    is ``methods[0]`` for the pair, i < j ``methods[1]``, the diagonal the 1D ``diagonal``
    test (None: the smallest p-value of the feature's 1D tests); NaN where the test did not
    run or is not reliable (a low-statistics p-value is no verdict). ``column``: ``p_holm``
    (default), ``p_bh`` or ``pvalue``. :func:`matrix_cells` says which are bounds."""
    return matrix_cells(tests, features, methods=methods, diagonal=diagonal,
                        category=category, column=column)[0]


#: Size of a matrix cell (inches): its -log10 p (``≥300``, ``>2.5``) written at
#: :data:`MATRIX_CELL_FONT` points fits with a margin; small matrices get larger cells so
#: the map, not its labels, fills the figure.
MATRIX_CELL_IN, MATRIX_MIN_IN, MATRIX_CELL_FONT = 0.55, 13.0, 10.0


def plot_pvalue_matrix(tests: Iterable[Mapping[str, Any]], features: Sequence[str], *,
                       methods: tuple[str, str] = MATRIX_METHODS,
                       diagonal: str | None = None, category: str = "all",
                       column: str = "p_holm",
                       important: Iterable[tuple[str, str]] = ()) -> Figure:
    """The CMS/KIT red/yellow/green p-value matrix of all pairs (see :func:`pvalue_matrix`):
    green p >= :data:`P_GREEN`, yellow :data:`P_RED` <= p < :data:`P_GREEN`, red below; grey
    not run or not reliable. Cells of ``important`` pairs (from the ``criticality`` table,
    ``important`` and degree 2) are boxed in black. Numbers written in are -log10(p); a
    bound is written as one (``>2.5``: p below 10^-2.5; ``≥300``: an underflow) and coloured
    by its bound, the class the true p is at least in. The figure is sized from the cells
    (:data:`MATRIX_CELL_IN`) and the longest feature name, the legend in a row above the
    map, so the labels fit and the map fills the figure.
    """
    matrix, bound = matrix_cells(tests, features, methods=methods, diagonal=diagonal,
                                 category=category, column=column)
    n = len(features)
    cmap = ListedColormap(list(MATRIX_COLOURS)).with_extremes(bad=NOT_RUN_COLOUR)
    norm = BoundaryNorm([0.0, P_RED, P_GREEN, 1.0], cmap.N)
    side = min(max(MATRIX_MIN_IN, MATRIX_CELL_IN * n), 30.0)
    longest = max((len(f) for f in features), default=1)
    labels_in = 0.14 * longest + 0.3  # x-small names, about 0.14 in a character
    with mpl_style():
        fig = new_figure((side + labels_in + 0.3, side + labels_in + 1.6))
        width, height = fig.get_size_inches()
        ax = fig.add_axes((labels_in / width, labels_in / height, side / width,
                           side / height))
        mesh = ax.pcolormesh(np.arange(n + 1), np.arange(n + 1),
                             np.ma.masked_invalid(np.clip(matrix, 0.0, 1.0)), cmap=cmap,
                             norm=norm, edgecolors="white", linewidth=0.5)
        mesh.set_gid("pvalues")
        cell_font = min(MATRIX_CELL_FONT, 72 * side / n / 3.2)
        if n <= 2 * MAX_ANNOTATED:
            for i in range(n):
                for j in range(n):
                    p = matrix[i, j]
                    if np.isfinite(p):
                        ax.text(j + 0.5, i + 0.5, _neg_log10_label(p, bool(bound[i, j])),
                                ha="center", va="center", fontsize=cell_font)
        index = {f: i for i, f in enumerate(features)}
        boxed = 0
        for x, y in important:
            if x in index and y in index:
                a, b = sorted((index[x], index[y]))
                for i, j in ((b, a), (a, b)):
                    ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="black",
                                           linewidth=2.0))
                boxed += 1
        ticks = np.arange(n) + 0.5
        fontsize = "x-small" if n <= 30 else "xx-small"
        ax.set_xticks(ticks, list(features), rotation=90, fontsize=fontsize)
        ax.set_yticks(ticks, list(features), fontsize=fontsize)
        ax.minorticks_off()
        ax.tick_params(length=0)
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        label = {"p_holm": "Holm", "p_bh": "BH", "pvalue": "raw"}.get(column, column)
        handles = [Patch(color=MATRIX_COLOURS[2], label=f"p ≥ {P_GREEN:g}"),
                   Patch(color=MATRIX_COLOURS[1], label=f"{P_RED:g} ≤ p < {P_GREEN:g}"),
                   Patch(color=MATRIX_COLOURS[0], label=f"p < {P_RED:g}"),
                   Patch(color=NOT_RUN_COLOUR, label="not run / low stats")]
        if boxed:
            handles.append(Patch(facecolor="none", edgecolor="black", linewidth=2,
                                 label="important pair"))
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.01),
                  ncols=3, fontsize="xx-small", borderaxespad=0.0, handlelength=1.0,
                  columnspacing=1.0)
        cat = f"  [{category}]" if category != "all" else ""
        ax.set_title(f"p ({label}) of all pairs{cat}: −log10 p, > a bound\n"
                     f"lower {methods[0]}, upper {methods[1]}, diagonal 1D "
                     f"{diagonal or '(smallest p)'}", loc="left", fontsize="xx-small",
                     pad=62 if boxed else 44)
    return fig


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf"),
                ) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.pdf`` (PNG at :data:`PNG_DPI`), release its
    artists and return the paths."""
    stem = Path(stem)
    paths = []
    try:
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")  # a name may hold dots
            fig.savefig(path, dpi=PNG_DPI, bbox_inches="tight")
            paths.append(path)
    finally:
        close_figure(fig)
    return paths


def close_figure(fig: Figure) -> None:
    """Release a figure's artists (and close it in pyplot, should it be registered there)."""
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    fig.clear()
