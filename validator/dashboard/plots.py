"""Interactive (plotly) figures of the dashboard, in the conventions of ``mplhep``/``hist``
and of :mod:`validator.output.figures` (their PNG/PDF twins): step histograms, the simulation
normalised to the data count with its uncertainty band, data as points with Garwood Poisson
intervals, a data/simulation ratio panel; the red/yellow/green p-value matrix; pull maps.

Every function takes plain arrays or stored rows (docs/schema.md) and returns a
``plotly.graph_objects.Figure``; nothing here reads the database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from validator.output.figures import (
    MATRIX_COLOURS,
    NOT_RUN_COLOUR,
    P_GREEN,
    P_RED,
    PROCESS_COLOURS,
    PULL_MIN_RANGE,
    Hist2D,
    auto_log,
    edge_labels,
    pull_values,
)

#: Central 68.3 % of a Poisson count (Garwood), as ``mplhep.error_estimation``.
_ONE_SIGMA = 0.5 * (1 - math.erf(1 / math.sqrt(2)))
_BAND = "rgba(80, 80, 80, 0.35)"
#: A square heatmap's cells (pixels), and the bounds of the map's side.
HEATMAP_CELL_PX, HEATMAP_MIN_PX, HEATMAP_MAX_PX = 32, 240, 900


def _go():
    import plotly.graph_objects as go

    return go


def garwood(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ends of the central 68.3 % Poisson interval of each count (Garwood
    1936; the interval ``mplhep.error_estimation.poisson_interval`` draws)."""
    n = np.asarray(counts, dtype=float)
    lo = np.where(n > 0, stats.chi2.ppf(_ONE_SIGMA, 2 * np.maximum(n, 1e-12)) / 2, 0.0)
    hi = stats.chi2.ppf(1 - _ONE_SIGMA, 2 * (n + 1)) / 2
    return lo, hi


def _array(value: Any) -> np.ndarray:
    return np.asarray(list(value) if value is not None else [], dtype=float)


def _steps(edges: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x, y of a step outline over ``edges``."""
    return np.repeat(edges, 2)[1:-1], np.repeat(values, 2)


def feature_bands(nominal: Mapping[str, Any], variations: Sequence[Mapping[str, Any]],
                  ) -> dict[str, Any]:
    """The numbers of a 1D figure from stored ``plot`` rows: edges, data counts, the
    simulation normalised to data (per process when stored), its statistical error and its
    systematic error (:func:`validator.output.documents.syst_band`, as the reports draw it: per bin,
    each variation scaled to the nominal total as the shape tests do, the larger of up and
    down, summed in quadrature over systematics)."""
    edges = _array(nominal["edges_x"])
    inner = slice(1, len(edges))
    sumw, sumw2 = _array(nominal["sim_sumw"]), _array(nominal["sim_sumw2"])
    data = _array(nominal["data_counts"])
    total = float(np.sum(sumw))
    k = float(np.sum(data)) / total if total > 0 else 1.0
    from validator.output.documents import syst_band

    processes = {}
    systs: dict[str, np.ndarray] = {}
    for v in variations:
        label = str(v.get("variation"))
        w = _array(v.get("sim_sumw"))
        if len(w) != len(sumw):
            continue
        if label.startswith("process:"):
            processes[label[len("process:"):]] = k * w[inner]
        else:
            systs[label] = w
    band = syst_band(sumw, systs)
    syst = np.zeros(len(edges) - 1) if band is None else k * band[inner]
    nom = k * sumw
    names = sorted({name.rsplit("_", 1)[0] for name in systs
                    if name.endswith(("_up", "_down"))})
    return {"edges": edges, "data": data[inner], "sim": nom[inner], "k": k,
            "stat": k * np.sqrt(np.clip(sumw2[inner], 0, None)), "syst": syst,
            "processes": processes, "systematics": names,
            "underflow": (float(data[0]), float(nom[0])),
            "overflow": (float(data[-1]), float(nom[-1]))}


def plotly_label(text: str) -> str:
    """A matplotlib mathtext label for plotly: plotly renders LaTeX only when the whole
    label is one ``$...$`` (MathJax), so a mixed label (``$p_T^{miss}$ [GeV]``) becomes one
    math string with the words in ``\\text{}``."""
    if text.count("$") < 2:
        return text
    parts = text.split("$")
    out = []
    for k, part in enumerate(parts):
        if k % 2:
            out.append(part)
        elif part:
            out.append(r"\text{" + part.replace("{", "").replace("}", "") + "}")
    return "$" + "".join(out) + "$"


def feature_figure(nominal: Mapping[str, Any], variations: Sequence[Mapping[str, Any]],
                   feature: str, *, title: str | None = None, xtitle: str | None = None,
                   log_y: bool | None = None, log_x: bool = False,
                   x_range: tuple[float, float] | None = None) -> Any:
    """Simulation (stacked by process when stored) vs data in the ``plot`` binning, the
    simulation's statistical (and systematic) band, and the data/simulation ratio panel.
    ``xtitle``, ``log_y`` (None: automatic, beyond two decades), ``log_x`` and ``x_range``
    come from the run's display settings (:mod:`validator.results.display`); the legend sits
    outside the axes, to the right, where it hides no bin."""
    from plotly.subplots import make_subplots

    go = _go()
    b = feature_bands(nominal, variations)
    edges, d, sim = b["edges"], b["data"], b["sim"]
    unc = np.sqrt(b["stat"] ** 2 + b["syst"] ** 2)
    centres = 0.5 * (edges[1:] + edges[:-1])
    lo, hi = garwood(d)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28],
                        vertical_spacing=0.03)
    stack = b["processes"] or {f"Simulation (× {b['k']:.3f})": sim}
    base = np.zeros_like(sim)
    for n, (name, values) in enumerate(stack.items()):
        top = base + values
        xs, ys = _steps(edges, top)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, line={"width": 1},
                                 line_color=PROCESS_COLOURS[n % len(PROCESS_COLOURS)],
                                 fill="tozeroy" if n == 0 else "tonexty",
                                 hoverinfo="skip"), row=1, col=1)
        base = top
    band_name = "Sim. stat." + (" ⊕ syst." if b["systematics"] else "") + " unc."
    for row, lower, upper in ((1, sim - unc, sim + unc),
                              (2, *(np.where(sim > 0, 1 + s * unc / np.where(sim > 0, sim, 1),
                                             np.nan) for s in (-1, 1)))):
        xs, ylo = _steps(edges, lower)
        _, yhi = _steps(edges, upper)
        fig.add_trace(go.Scatter(x=xs, y=ylo, mode="lines", line={"width": 0},
                                 showlegend=False, hoverinfo="skip"), row=row, col=1)
        fig.add_trace(go.Scatter(x=xs, y=yhi, mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=_BAND, fillpattern={"shape": "/"}, name=band_name,
                                 showlegend=row == 1, hoverinfo="skip"), row=row, col=1)
    fig.add_trace(go.Scatter(
        x=centres, y=d, mode="markers", name="Data", marker={"color": "black", "size": 6},
        error_y={"type": "data", "symmetric": False, "array": hi - d, "arrayminus": d - lo,
                 "color": "black", "width": 0},
        customdata=np.stack([sim, unc], axis=-1),
        hovertemplate="%{x:.4g}: data %{y:.0f}, sim %{customdata[0]:.1f} ± "
                      "%{customdata[1]:.1f}<extra></extra>"), row=1, col=1)
    ok = sim > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ok, d / sim, np.nan)
        r_lo, r_hi = np.where(ok, lo / sim, np.nan), np.where(ok, hi / sim, np.nan)
    fig.add_trace(go.Scatter(
        x=centres, y=ratio, mode="markers", showlegend=False, marker={"color": "black",
                                                                      "size": 5},
        error_y={"type": "data", "symmetric": False, "array": r_hi - ratio,
                 "arrayminus": ratio - r_lo, "color": "black", "width": 0},
        hovertemplate="%{x:.4g}: data/sim %{y:.3f}<extra></extra>"), row=2, col=1)
    fig.add_hline(y=1, line_dash="dash", line_color="grey", row=2, col=1)
    dev = np.nanmax(np.abs(ratio[ok & (d > 0)] - 1), initial=0.0)
    half = float(np.clip(1.3 * dev, 0.2, 1.0))
    notes = [f"{name}: data {dd:.0f}, sim {ss:.1f}" for name, (dd, ss) in
             (("underflow", b["underflow"]), ("overflow", b["overflow"])) if dd or ss]
    logy = auto_log([sim, d]) if log_y is None else bool(log_y)
    fig.update_yaxes(title_text="Events / bin", type="log" if logy else "linear", row=1,
                     col=1)
    fig.update_yaxes(title_text="Data / Sim.", range=[1 - half, 1 + half], row=2, col=1)
    lo_x, hi_x = x_range or (edges[0], edges[-1])
    logx = log_x and lo_x > 0
    fig.update_xaxes(type="log" if logx else "linear", row=1, col=1)
    fig.update_xaxes(title_text=xtitle or feature, type="log" if logx else "linear",
                     range=[math.log10(lo_x), math.log10(hi_x)] if logx else [lo_x, hi_x],
                     row=2, col=1)
    fig.update_layout(title={"text": (title or feature) + (
        "<br><sup>" + "; ".join(notes) + "</sup>" if notes else "")},
        height=560, margin={"t": 70, "b": 40, "l": 60, "r": 20},
        legend={"x": 1.01, "xanchor": "left", "y": 1.0, "yanchor": "top"})
    return fig


def matrix_classes(matrix: np.ndarray) -> np.ndarray:
    """0 red (p < P_RED), 1 yellow, 2 green (p >= P_GREEN), NaN not run / not reliable."""
    out = np.full(matrix.shape, np.nan)
    finite = np.isfinite(matrix)
    out[finite] = np.where(matrix[finite] < P_RED, 0, np.where(matrix[finite] < P_GREEN, 1, 2))
    return out


def pvalue_matrix_figure(matrix: np.ndarray, features: Sequence[str], *,
                         important: Sequence[tuple[str, str]] = (), value_name: str = "p",
                         effect: bool = False, title: str = "",
                         bounds: np.ndarray | None = None) -> Any:
    """The red/yellow/green matrix of :func:`validator.output.figures.pvalue_matrix` (p-values), or
    effect sizes on a continuous scale (``effect``); important pairs boxed in black.
    ``bounds`` (:func:`validator.output.figures.matrix_cells`): cells whose p is an upper
    bound, written as one by :func:`validator.results.format.format_p` (``< 1.0e-04``) and
    coloured by the bound. Clicking a cell selects its pair (the Pairs page)."""
    go = _go()
    n = len(features)
    labels = list(features)
    if effect:
        z = matrix
        colorscale: Any = "Viridis"
        colorbar = {"title": value_name}
        zmin = zmax = None
    else:
        z = matrix_classes(matrix)
        red, yellow, green = MATRIX_COLOURS
        colorscale = [[0, red], [1 / 3, red], [1 / 3, yellow], [2 / 3, yellow], [2 / 3, green],
                      [1, green]]
        colorbar = {"tickvals": [1 / 3, 1, 5 / 3], "ticktext": [
            f"p < {P_RED:g}", f"{P_RED:g} ≤ p < {P_GREEN:g}", f"p ≥ {P_GREEN:g}"]}
        zmin, zmax = 0, 2
    from validator.results.format import format_p

    flags = bounds if bounds is not None else np.zeros(matrix.shape, dtype=bool)
    text = np.array([[("not run" if not np.isfinite(matrix[i, j]) else
                       f"{matrix[i, j]:.3g}" if effect else
                       format_p(matrix[i, j], bound=bool(flags[i, j])))
                      for j in range(n)] for i in range(n)], dtype=object)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=list(range(n)), colorscale=colorscale, zmin=zmin, zmax=zmax,
        colorbar=colorbar, xgap=1, ygap=1, customdata=np.array(
            [[[labels[i], labels[j], text[i, j]] for j in range(n)] for i in range(n)]),
        hovertemplate="%{customdata[0]} × %{customdata[1]}: " + value_name
                      + " %{customdata[2]}<extra></extra>"))
    index = {f: i for i, f in enumerate(labels)}
    for x, y in important:
        if x in index and y in index:
            a, c = sorted((index[x], index[y]))
            for i, j in ((c, a), (a, c)):
                fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                              line={"color": "black", "width": 3})
    size = min(max(420, 28 * n + 200), 1100)
    axis = {"tickvals": list(range(n)), "ticktext": labels, "showgrid": False,
            "zeroline": False, "constrain": "domain"}
    fig.update_layout(
        title={"text": title}, height=size, width=size + 160, plot_bgcolor=NOT_RUN_COLOUR,
        xaxis={**axis, "tickangle": -60, "range": [-0.5, n - 0.5]},
        yaxis={**axis, "range": [n - 0.5, -0.5], "scaleanchor": "x"},
        margin={"t": 50, "l": 10, "r": 10, "b": 10})
    return fig


def pull_map_figure(hist: Hist2D, feature_x: str, feature_y: str, title: str = "") -> Any:
    """The pull map (data − k·sim)/sqrt(data + k²·Σw²) of a pair's ``test`` binning, in
    bin-index space with the bin edges as tick labels."""
    go = _go()
    pull = pull_values(hist)
    nx, ny = hist.shape
    finite = pull[np.isfinite(pull)]
    vmax = max(PULL_MIN_RANGE, float(np.max(np.abs(finite), initial=0.0)))
    fig = go.Figure(go.Heatmap(
        z=pull.T, x=np.arange(nx) + 0.5, y=np.arange(ny) + 0.5, colorscale="RdBu",
        reversescale=True, zmid=0, zmin=-vmax, zmax=vmax, colorbar={"title": "pull"},
        text=np.where(np.isfinite(pull.T), np.round(np.nan_to_num(pull.T), 1).astype(str), ""),
        texttemplate="%{text}" if nx * ny <= 256 else None,
        hovertemplate="bin (%{x:.0f}, %{y:.0f}): pull %{z:.2f}<extra></extra>"))
    fig.update_layout(
        title={"text": title or f"{feature_x} × {feature_y}: (data − k·sim) / σ"}, height=520,
        xaxis={"title": f"{feature_x} (equal-population bins)", "tickvals": list(range(nx + 1)),
               "ticktext": edge_labels(hist.edges_x), "showgrid": False},
        yaxis={"title": f"{feature_y} (equal-population bins)", "tickvals": list(range(ny + 1)),
               "ticktext": edge_labels(hist.edges_y), "showgrid": False},
        plot_bgcolor=NOT_RUN_COLOUR, margin={"t": 50})
    return fig


def pvalue_hist_figure(pvalues: Sequence[float], n_bins: int = 20) -> Any:
    """Histogram of p-values against the uniform expectation (with its binomial ±1σ)."""
    go = _go()
    p = np.asarray([v for v in pvalues if v is not None and math.isfinite(v)], dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    counts, _ = np.histogram(np.clip(p, 0, 1), edges)
    expected = len(p) / n_bins
    sigma = math.sqrt(len(p) * (1 / n_bins) * (1 - 1 / n_bins))
    centres = 0.5 * (edges[1:] + edges[:-1])
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centres, y=counts, width=1 / n_bins, name="tests",
                         marker_color="#3f90da", opacity=0.85,
                         hovertemplate="p near %{x:.3f}: %{y} tests<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[expected + sigma] * 2, mode="lines",
                             line={"width": 1, "color": "grey", "dash": "dot"},
                             name="uniform ± 1σ", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[max(expected - sigma, 0)] * 2, mode="lines",
                             line={"width": 1, "color": "grey", "dash": "dot"},
                             showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[expected] * 2, mode="lines", name="uniform",
                             line={"color": "black", "dash": "dash"}))
    fig.update_layout(height=330, bargap=0, xaxis={"title": "p-value", "range": [0, 1]},
                      yaxis={"title": "tests"}, margin={"t": 20, "b": 40},
                      legend={"x": 0.99, "xanchor": "right"})
    return fig


def bars_figure(labels: Sequence[str], series: Mapping[str, tuple[Sequence[float],
                Sequence[float] | None]], ytitle: str, title: str = "") -> Any:
    """Grouped bars (e.g. simulation vs data importances) with error bars."""
    go = _go()
    fig = go.Figure()
    colours = {"simulation": "#3f90da", "data": "black"}
    for n, (name, (values, errors)) in enumerate(series.items()):
        fig.add_trace(go.Bar(
            x=list(labels), y=list(values), name=name,
            marker_color=colours.get(name, PROCESS_COLOURS[n % len(PROCESS_COLOURS)]),
            error_y={"type": "data", "array": list(errors)} if errors is not None else None))
    fig.update_layout(barmode="group", height=420, title={"text": title},
                      yaxis={"title": ytitle}, xaxis={"tickangle": -45}, margin={"t": 40})
    return fig


def heatmap_figure(matrix: np.ndarray, labels: Sequence[str], *, title: str = "",
                   value_name: str = "", diverging: bool = False) -> Any:
    """A square matrix over ``labels`` (e.g. second-order Taylor coefficients)."""
    go = _go()
    n = len(labels)
    finite = matrix[np.isfinite(matrix)]
    kwargs: dict[str, Any] = {"colorscale": "Viridis"}
    if diverging:
        vmax = float(np.max(np.abs(finite), initial=1e-12))
        kwargs = {"colorscale": "RdBu", "reversescale": True, "zmid": 0, "zmin": -vmax,
                  "zmax": vmax}
    fig = go.Figure(go.Heatmap(z=matrix, x=list(labels), y=list(labels), xgap=1, ygap=1,
                               colorbar={"title": value_name},
                               hovertemplate="%{y} × %{x}: %{z:.4g}<extra></extra>", **kwargs))
    # sized to its content: HEATMAP_CELL_PX per cell, room for the longest label and the
    # colour bar, so the square map is not centred in a stretched, grey canvas
    cells = min(max(HEATMAP_MIN_PX, HEATMAP_CELL_PX * n), HEATMAP_MAX_PX)
    labels_px = 7 * max((len(str(v)) for v in labels), default=1) + 20
    fig.update_layout(title={"text": title}, height=cells + labels_px + 70,
                      width=cells + labels_px + 120, autosize=False,
                      plot_bgcolor=NOT_RUN_COLOUR,
                      yaxis={"autorange": "reversed", "scaleanchor": "x",
                             "constrain": "domain"},
                      xaxis={"tickangle": -60, "constrain": "domain"},
                      margin={"t": 50, "l": 10, "r": 10, "b": 10})
    return fig


def pulls_figure(names: Sequence[str], values: Sequence[float], errors: Sequence[float],
                 title: str = "") -> Any:
    """Post-fit nuisance parameters (pull ± post-fit error) against the ±1σ and ±2σ bands of
    their prior, as in a CMS impacts/pulls plot."""
    go = _go()
    y = list(range(len(names)))
    fig = go.Figure()
    for width, colour in ((2, "rgba(253, 216, 53, 0.5)"), (1, "rgba(46, 158, 68, 0.4)")):
        fig.add_shape(type="rect", x0=-width, x1=width, y0=-0.5, y1=len(names) - 0.5,
                      fillcolor=colour, line={"width": 0}, layer="below")
    fig.add_trace(go.Scatter(x=list(values), y=y, mode="markers", marker={"color": "black"},
                             error_x={"type": "data", "array": list(errors)},
                             customdata=list(names), name="post-fit",
                             hovertemplate="%{customdata}: %{x:.2f}<extra></extra>"))
    fig.update_layout(title={"text": title}, height=120 + 30 * len(names),
                      xaxis={"title": "(θ̂ − θ₀) / Δθ", "range": [-3, 3], "zeroline": True},
                      yaxis={"tickvals": y, "ticktext": list(names), "autorange": "reversed"},
                      margin={"t": 40}, showlegend=False)
    return fig


def lines_figure(x: Sequence[str], series: Mapping[str, Sequence[float]], ytitle: str,
                 title: str = "", log_y: bool = False,
                 bounds: Mapping[str, Sequence[str | None]] | None = None) -> Any:
    """Lines with markers over runs (x: the run labels in order).

    ``bounds``: per series, for each run None (an exact value) or the label of a bound (e.g.
    ``p < 1e-300``, the cap of an underflowed p-value): such a point is drawn as a ▲ marker
    with its label, apart from the line, which joins only the exact values (a run of p = 0
    is no flat line at the cap but a row of labelled markers)."""
    go = _go()
    fig = go.Figure()
    for n, (name, values) in enumerate(series.items()):
        colour = PROCESS_COLOURS[n % len(PROCESS_COLOURS)]
        marks = list((bounds or {}).get(name) or [None] * len(values))
        exact = [None if m is not None else v for v, m in zip(values, marks, strict=True)]
        fig.add_trace(go.Scatter(x=list(x), y=exact, mode="lines+markers", name=name,
                                 line={"color": colour}, connectgaps=False))
        capped = [i for i, m in enumerate(marks) if m is not None]
        if capped:
            fig.add_trace(go.Scatter(
                x=[x[i] for i in capped], y=[values[i] for i in capped],
                mode="markers+text", name=f"{name}: bound ▲",
                text=[marks[i] for i in capped], textposition="bottom center",
                marker={"symbol": "triangle-up", "size": 13, "color": colour,
                        "line": {"color": "black", "width": 1}},
                hovertemplate="%{x}: %{text}<extra></extra>"))
    fig.update_layout(title={"text": title}, height=360, yaxis={"title": ytitle,
                                                                "type": "log" if log_y
                                                                else "linear"},
                      xaxis={"type": "category"}, margin={"t": 40})
    return fig
