"""Reports a reviewer reads: Markdown for a merge-request comment, one self-contained HTML file
with the figures, and the figures as PNG/PDF (``validator report``, ``validator run --report``).

Both render the :class:`~validator.results.reading.RunReading` of a stored run (or a run just
finished), so any stored run can be reported again from its DuckDB file alone
(:func:`write_report`), and the reports say what the terminal and the gate say.

Order of both reports: the verdict first (the latest ``gate_results`` verdict of the run, else
"not judged"), the failing rules and the warnings with their reasons, the worst problems (one
row per feature or pair, with the methods that flag it after the Holm correction), the
data/simulation normalisation, and the counts (tests, failures vs expected, the run-level
test).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from validator.results.format import format_p
from validator.results.reading import INCLUSIVE, WHAT, Problem, RunReading, read_run, records

#: Problems listed, figures drawn per kind, unless told otherwise (``--top``).
DEFAULT_TOP = 10
#: Failing rules listed in the Markdown: a merge-request comment stays short (GitHub cuts a
#: comment at 65,536 characters); the HTML lists them all.
MAX_RULES_MARKDOWN = 20


def _fmt_time(value: Any) -> str:
    """A stored UTC timestamp to the minute."""
    try:
        return f"{pd.Timestamp(value):%Y-%m-%d %H:%M} UTC"
    except (TypeError, ValueError):
        return str(value)


def syst_band(nominal: np.ndarray, variations: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The simulation's systematic uncertainty per bin: the quadrature sum over systematics
    of the larger of |up − nominal| and |down − nominal| (a one-sided one: |up − nominal|),
    each variation first scaled to the nominal's total (the tests compare shapes)."""
    names = {v.rsplit("_", 1)[0] for v in variations if v.endswith(("_up", "_down"))}
    if not names:
        return None
    total = float(np.sum(nominal))
    squares = np.zeros_like(nominal, dtype=float)
    for name in names:
        shifts = []
        for side in ("up", "down"):
            t = variations.get(f"{name}_{side}")
            if t is not None and np.sum(t) > 0:
                shifts.append(np.abs(t * (total / np.sum(t)) - nominal))
        if shifts:
            squares += np.max(shifts, axis=0) ** 2
    return np.sqrt(squares)


# ------------------------------------------------------------------ Markdown


def _md(text: Any) -> str:
    """Text safe in a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text.replace('`', '')}`"


def _rule_lines(reading: RunReading, limit: int | None = None) -> list[str]:
    """The failing rules, then the warnings, as Markdown list items."""
    v = reading.verdict
    out = []
    for title, items in (("Failing rules", v.failed), ("Warnings (do not fail the gate)",
                                                        v.warnings)):
        if not items:
            continue
        out += ["", f"**{title}**", ""]
        shown = items if limit is None else items[:limit]
        out += [f"- {_code(r.name)} ({r.kind}): {_md(r.reason or 'failed')}" for r in shown]
        if len(shown) < len(items):
            out.append(f"- … and {len(items) - len(shown)} more (see the HTML report or "
                       "`gate_results`)")
    return out


def markdown_report(reading: RunReading, top: int = DEFAULT_TOP,
                    figure_links: Mapping[tuple[str, str, str | None], str] | None = None,
                    ) -> str:
    """The Markdown report of one run.

    Short enough for a merge-request comment: the verdict, failing rules and warnings with
    reasons, the ``top`` worst problems, normalisation and counts. ``figure_links`` (problem
    key -> relative path) adds a link to each problem's figure.
    """
    v = reading.verdict
    links = figure_links or {}
    out = [f"## validator run `{reading.run_id}`: {reading.headline()}", ""]
    if v.judged:
        sha = (v.rules_sha256 or "")[:12]
        out.append(f"Verdict of rules `{v.rules_name}`" + (f" (sha256 {sha}…)" if sha else "")
                   + f", judged {_fmt_time(v.judged_at)}: {len(v.failed)} of {len(v.rules)} "
                   f"rules fail, {len(v.warnings)} warnings.")
        out += _rule_lines(reading, MAX_RULES_MARKDOWN)
    else:
        out.append("No rules file has judged this run (`validator gate --rules FILE`).")
    found = reading.problems
    shown = found[:top]
    out += ["", f"**Worst problems** ({reading.significance_line()} at alpha = "
                f"{reading.alpha:g}; showing {len(shown)} of {len(found)} features and "
                "pairs)", ""]
    if shown:
        head = ["", "feature / pair", "flagged by (Holm < alpha)", "p (Holm)", "effect size"]
        if links:
            head.append("figure")
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in shown:
            cells = [WHAT[p.what], _code(p.name), _md(p.flagged_by),
                     format_p(p.p_holm, bound=p.bound), _md(p.effect)]
            if links:
                cells.append(f"[plot]({links[p.key]})" if p.key in links else "")
            out.append("| " + " | ".join(cells) + " |")
    norm = reading.normalisation
    out += ["", f"**Normalisation**: data / simulation = {norm.ratio:.4f} ± {norm.error:.4f} "
                f"({norm.n_data:,} data events, simulation Σw = {norm.sumw:,.1f}); the tests "
                "compare shapes (normalisation free)", "", "**Counts**", ""]
    out += [f"- {line}" for line in reading.count_lines()]
    if links.get(("matrix", "", None)):
        out += ["", f"p-value matrix of all pairs: [figure]({links[('matrix', '', None)]})"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ figures


@dataclass
class ReportFigure:
    """A figure of a report: ``stem`` (file name without suffix), ``title``, ``caption``,
    ``key`` (the problem it shows, or ``("matrix", "", None)``), the PNG bytes once drawn and
    the files once written."""

    stem: str
    title: str
    caption: str
    key: tuple[str, str, str | None]
    png: bytes = b""
    files: list[Path] = field(default_factory=list)


def _stem(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "_", p).strip("_") for p in parts if p)


def _pvalues_of(tests: list[dict[str, Any]], category: str, x: str, y: str | None,
                ) -> dict[str, float]:
    from validator.results.reading import test_key

    out = {}
    for t in tests:
        if test_key(t) == (category, x, y) and t.get("p_holm") is not None:
            out[t["method"]] = float(t["p_holm"])
    return out


def _bounds_of(tests: list[dict[str, Any]], category: str, x: str, y: str | None,
               ) -> dict[str, bool]:
    from validator.results.reading import test_key

    return {t["method"]: bool(t.get("pvalue_is_bound") or False) for t in tests
            if test_key(t) == (category, x, y)}


def _worst(found: list[Problem], pairs: bool, top: int, available: set) -> list[Problem]:
    chosen = [p for p in found if (p.feature_y is not None) == pairs and p.key in available
              and math.isfinite(p.pvalue)]
    return chosen[:top]


def iter_figures(reading: RunReading, top: int = DEFAULT_TOP,
                 ) -> Iterator[tuple[ReportFigure, Any]]:
    """The report's figures, one at a time (each is closed by the caller through
    :func:`validator.output.figures.save_figure`): the ``top`` worst features (1D, ``plot``
    binning), the ``top`` worst pairs' pull maps, and the p-value matrix of all pairs."""
    from validator.output import figures

    tables = reading.tables
    tests = records(tables["tests"])
    found = reading.problems
    display = reading.display
    hists: dict[tuple, Mapping[str, Any]] = {}
    processes: dict[tuple, dict[str, Any]] = {}
    variations: dict[tuple, dict[str, np.ndarray]] = {}
    for h in records(tables.get("histograms")):
        key = (h["category"], h["feature_x"], h.get("feature_y"))
        variation = h.get("variation")
        if variation is None:
            hists[key] = h
        elif str(variation).startswith("process:"):  # stacked by process (--process-column)
            edges = figures.as_array(h["edges_x"])
            processes.setdefault(key, {})[str(variation)[len("process:"):]] = figures.Hist1D(
                edges, figures.as_array(h["sim_sumw"]), figures.as_array(h["sim_sumw2"]))
        else:  # a systematic's NAME_up / NAME_down
            variations.setdefault(key, {})[str(variation)] = figures.as_array(h["sim_sumw"])
    for p in _worst(found, False, top, set(hists)):
        sim, data = figures.hist1d_from_row(hists[p.key])
        band = syst_band(sim.sumw, variations.get(p.key, {}))
        if p.key in processes:
            sim = processes[p.key]
        pv = _pvalues_of(tests, *p.key)
        fig = figures.plot_feature(sim, data, p.feature_x, pvalues=pv, category=p.category,
                                   syst=band, display=display.of(p.feature_x),
                                   experiment=display.experiment)
        yield ReportFigure(
            _stem("feature", p.feature_x, p.category if p.category != INCLUSIVE else ""),
            p.name, "simulation (normalised to data) vs data; p (Holm): "
            + ", ".join(f"{m} {format_p(v)}" for m, v in pv.items()), p.key), fig
    for p in _worst(found, True, top, set(hists)):
        pv = _pvalues_of(tests, *p.key)
        fig = figures.plot_pull_map(figures.hist2d_from_row(hists[p.key]), p.feature_x,
                                    p.feature_y, pvalues=pv, category=p.category,
                                    display_x=display.of(p.feature_x),
                                    display_y=display.of(p.feature_y or ""),
                                    experiment=display.experiment,
                                    bounds=_bounds_of(tests, *p.key))
        yield ReportFigure(
            _stem("pull", p.feature_x, "vs", p.feature_y or "",
                  p.category if p.category != INCLUSIVE else ""),
            p.name, "pull (data − k·sim)/sqrt(data + k²·Σw²), k = N_data/Σw, over "
            "equal-population bins; p (Holm): " + ", ".join(
                f"{m} {format_p(v, bound=_bounds_of(tests, *p.key).get(m, False))}"
                for m, v in pv.items()), p.key), fig
    feats = [r["feature"] for r in records(tables["features"]) if r["category"] == INCLUSIVE]
    if len(feats) >= 2 and any(t.get("feature_y") is not None for t in tests):
        crit = records(tables.get("criticality"))
        important = sorted({(c["feature_x"], c["feature_y"]) for c in crit
                            if c.get("important") and c.get("degree") == 2
                            and c.get("feature_y") is not None})
        fig = figures.plot_pvalue_matrix(tests, feats, important=important)
        a, b = figures.MATRIX_METHODS
        yield ReportFigure(
            "pvalue_matrix", "p-value matrix of all pairs",
            f"Holm-adjusted p: green ≥ {figures.P_GREEN:g}, yellow ≥ {figures.P_RED:g}, red "
            f"below; lower triangle {a}, upper {b}, diagonal the feature's smallest 1D p"
            + (f"; {len(important)} important pairs of the audited model boxed"
               if important else ""), ("matrix", "", None)), fig


def render_figures(reading: RunReading, top: int = DEFAULT_TOP,
                   out_dir: str | Path | None = None) -> list[ReportFigure]:
    """Draw the report's figures; with ``out_dir``, write each as PNG and PDF there."""
    from validator.output.figures import PNG_DPI, close_figure, save_figure

    out = []
    for item, fig in iter_figures(reading, top):
        if out_dir is not None:
            item.files = save_figure(fig, Path(out_dir) / item.stem)
            item.png = item.files[0].read_bytes()
        else:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight")
            close_figure(fig)
            item.png = buffer.getvalue()
        out.append(item)
    return out


# ------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:70em;color:#222;line-height:1.4}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
.verdict{padding:.6em 1em;border-radius:4px;font-weight:bold}
.pass{background:#e3f4e6;border-left:6px solid #2e9e44}.fail{background:#fbe3df;
border-left:6px solid #d7301f}.none{background:#eee;border-left:6px solid #888}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;font-size:.92em}th{background:#f3f3f3}code{font-size:.95em}
figure{display:inline-block;margin:.6em;vertical-align:top;max-width:46%}
figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444}.wide{max-width:95%}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _md_inline(text: str) -> str:
    """Escape, then turn Markdown `code` spans into <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _e(text))


def html_report(reading: RunReading, top: int = DEFAULT_TOP,
                figures: Sequence[ReportFigure] | None = None) -> str:
    """One self-contained HTML page (inline CSS, figures as base64 PNG ``data:`` URIs, no
    script and no external resource): the Markdown report's content and the figures of the
    ``top`` worst features, the worst pairs' pull maps and the p-value matrix.

    ``figures`` are drawn from the reading when not given (its tables then need
    ``histograms``).
    """
    run, v, found = reading.run, reading.verdict, reading.problems
    figs = list(figures) if figures is not None else render_figures(reading, top)
    by_key = {f.key: f for f in figs}
    cls = "none" if not v.judged else ("pass" if v.passed else "fail")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>validator run {_e(run['run_id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>validator run <code>{_e(run['run_id'])}</code></h1>",
        f'<p class="verdict {cls}">{_md_inline(reading.headline())}</p>',
        f"<p>simulation: {_e(', '.join(run.get('sim_paths') or []))}<br>data: "
        f"{_e(', '.join(run.get('data_paths') or []))}<br>started "
        f"{_e(_fmt_time(run['started_at']))}, validator {_e(run.get('tool_version'))}</p>",
    ]
    if v.judged:
        parts.append(f"<h2>Rules <code>{_e(v.rules_name)}</code>: {len(v.failed)} of "
                     f"{len(v.rules)} fail, {len(v.warnings)} warnings</h2>")
        for title, items in (("failing rules", v.failed),
                             ("warnings (do not fail the gate)", v.warnings)):
            if not items:
                continue
            parts.append(f"<table><caption>{_e(title)}</caption><tr><th>rule</th><th>kind"
                         "</th><th>reason</th></tr>")
            parts += [f"<tr><td><code>{_e(r.name)}</code></td><td>{_e(r.kind)}</td><td>"
                      f"{_e(r.reason or 'failed')}</td></tr>" for r in items]
            parts.append("</table>")
    else:
        parts.append("<p>No rules file has judged this run (<code>validator gate --rules "
                     "FILE</code>).</p>")
    shown = found[:top]
    parts.append(f"<h2>Worst problems</h2><p>{_e(reading.significance_line())} at alpha = "
                 f"{reading.alpha:g}; showing {len(shown)} of {len(found)} features and "
                 "pairs.</p>")
    if shown:
        parts.append("<table><tr><th></th><th>feature / pair</th><th>flagged by (Holm &lt; "
                     "alpha)</th><th>p (Holm)</th><th>p (raw)</th><th>effect size</th></tr>")
        for p in shown:
            name = _e(p.name)
            if p.key in by_key:
                name = f'<a href="#{_e(by_key[p.key].stem)}">{name}</a>'
            parts.append(f"<tr><td>{_e(WHAT[p.what])}</td><td><code>{name}</code></td><td>"
                         f"{_e(p.flagged_by)}</td><td>"
                         f"{_e(format_p(p.p_holm, bound=p.bound))}</td><td>"
                         f"{_e(format_p(p.pvalue, bound=p.bound))}</td><td>{_e(p.effect)}"
                         "</td></tr>")
        parts.append("</table>")
    norm = reading.normalisation
    parts.append(f"<h2>Normalisation and counts</h2><p>data / simulation = {norm.ratio:.4f} "
                 f"± {norm.error:.4f} ({norm.n_data:,} data events, simulation Σw = "
                 f"{norm.sumw:,.1f}); the tests compare shapes.</p><ul>"
                 + "".join(f"<li>{_e(line)}</li>" for line in reading.count_lines())
                 + "</ul>")
    notes = run.get("notes")
    if notes is not None and len(notes):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes)
                     + "</ul>")
    for title, select in (("Worst features", lambda f: f.stem.startswith("feature")),
                          ("Worst pairs: pull maps", lambda f: f.stem.startswith("pull")),
                          ("All pairs", lambda f: f.stem == "pvalue_matrix")):
        chosen = [f for f in figs if select(f)]
        if not chosen:
            continue
        parts.append(f"<h2>{_e(title)}</h2>")
        for f in chosen:
            data = base64.b64encode(f.png).decode("ascii")
            wide = ' class="wide"' if f.stem == "pvalue_matrix" else ""
            parts.append(f'<figure id="{_e(f.stem)}"{wide}><img alt="{_e(f.title)}" '
                         f'src="data:image/png;base64,{data}"><figcaption><b>{_e(f.title)}'
                         f"</b>: {_e(f.caption)}</figcaption></figure>")
    config = run.get("config_json")
    if config:
        pretty = json.dumps(json.loads(config), indent=1, sort_keys=True)
        parts.append(f"<h2>Configuration</h2><details><summary>the run's effective "
                     f"configuration</summary><pre>{_e(pretty)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ files


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    figures: list[Path]


def write_report(db: str | Path, run: str = "latest", out_dir: str | Path = "report",
                 top: int = DEFAULT_TOP) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and ``figures/*.png|pdf`` for a stored run, from
    the database alone."""
    from validator.errors import InputError

    out = Path(out_dir)
    existing = next(p for p in (out, *out.resolve().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{out}: {existing} exists and is not a folder")
    try:
        import matplotlib  # noqa: F401
        import mplhep  # noqa: F401
    except ImportError as exc:
        raise InputError(f"the figures need matplotlib and mplhep ({exc}); install them with "
                         "pip install 'hep-validator[hist]'") from exc
    from validator.results.tables import load_run_tables

    reading = read_run(load_run_tables(db, run, histograms="report"))
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = render_figures(reading, top, fig_dir)
    links = {f.key: f"figures/{f.stem}.png" for f in figs}
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(markdown_report(reading, top, links), encoding="utf-8")
    html_path.write_text(html_report(reading, top, figs), encoding="utf-8")
    return ReportFiles(md_path, html_path, [p for f in figs for p in f.files])


def write_markdown(path: str | Path, reading: RunReading, top: int = DEFAULT_TOP) -> Path:
    """Write the Markdown report of a run to ``path`` (``validator run --report``)."""
    path = Path(path)
    path.write_text(markdown_report(reading, top), encoding="utf-8")
    return path
