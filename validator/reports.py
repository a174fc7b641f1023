"""Reports a reviewer reads: Markdown for a merge-request comment, one self-contained HTML file
with the figures, and the figures as PNG/PDF (``validator report``, ``validator run --report``).

Everything is built from the stored tables (docs/schema.md), so any stored run can be reported
again from its DuckDB file alone: :func:`load_report_tables` reads them, :func:`markdown_report`
and :func:`html_report` render them, :func:`write_report` writes ``report.md``,
``report.html`` and ``figures/*.png|pdf``.

Order of both reports: the verdict first (the latest ``gate_results`` verdict of the run, else
"not judged"), the failing rules with their reasons, the worst problems (one row per feature
or pair, with the methods that flag it after the Holm correction), the data/simulation
normalisation, and the counts (tests, failures vs expected, the run-level test).
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

from validator.summary import findings
from validator.transform import INCLUSIVE

#: Problems listed, figures drawn per kind, unless told otherwise (``--top``).
DEFAULT_TOP = 10
#: Failing rules listed in the Markdown: a merge-request comment stays short (GitHub cuts a
#: comment at 65,536 characters); the HTML lists them all.
MAX_RULES_MARKDOWN = 20
#: The tables a report reads (``histograms`` only for the figures).
REPORT_TABLES = ("runs", "features", "tests", "skipped_columns", "gate_results",
                 "criticality", "models")

#: How each class of problem is named, in the order a reviewer reads them (as the terminal
#: summary: 1D mismodellings, then correlations, then pairs, then pairs explained by 1D).
WHAT = {"feature": "1D", "correlation": "correlation", "pair": "2D",
        "from_marginals": "2D (from a 1D failure)", "output": "network output",
        "taylor": "network response", "": "not significant"}


# ------------------------------------------------------------------ loading


def _has_table(db: Path, table: str) -> bool:
    from validator.store import query

    found = query(db, "SELECT count(*) AS n FROM information_schema.tables "
                      "WHERE table_schema = 'main' AND table_name = ?", [table])
    return bool(found["n"].iloc[0])


def load_report_tables(db: str | Path, run: str = "latest", histograms: bool = True,
                       ) -> dict[str, pd.DataFrame]:
    """One stored run's rows for a report: table name -> DataFrame.

    ``histograms`` adds the ``plot`` 1D and the ``test`` 2D histograms (the figures' input;
    the fine binning is not needed). Tables a file of an older schema lacks are empty.
    """
    from validator.store import SCHEMA, query, resolve_run

    db = Path(db)
    run_id = resolve_run(db, run)
    names = (*REPORT_TABLES, "histograms") if histograms else REPORT_TABLES
    tables = {}
    for t in names:
        if not _has_table(db, t):
            tables[t] = pd.DataFrame(columns=[c for c, _ in SCHEMA[t]])
            continue
        sql = f"SELECT * FROM {t} WHERE run_id = ?"
        if t == "tests":
            sql += " ORDER BY test_id"
        elif t == "histograms":
            sql += (" AND ((binning = 'plot' AND feature_y IS NULL) OR "
                    "(binning = 'test' AND feature_y IS NOT NULL))")
        tables[t] = query(db, sql, [run_id])
    return tables


# ------------------------------------------------------------------ what the reports say


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        value is pd.NA or value is pd.NaT


def _rows(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    if frame is None or not len(frame):
        return []
    return [{k: (None if not isinstance(v, (list, np.ndarray)) and _missing(v) else v)
             for k, v in r.items()} for r in frame.to_dict("records")]


@dataclass(frozen=True)
class Problem:
    """One feature or pair of one category, with its tests summarised.

    ``what``: ``feature`` (1D mismodelling), ``correlation``, ``pair`` (plain 2D),
    ``from_marginals`` (a pair failing through a feature already failing in 1D), ``output``
    (a test of a network output, alone or with an input), ``taylor``
    (a Taylor coefficient of the audited network's ``node`` differs between data and
    simulation), or ``""`` (not significant after Holm). ``methods``: those significant after
    Holm (reliable tests only). ``p_holm``/``pvalue``/effect: of the test with the smallest
    p-value.
    """

    category: str
    feature_x: str
    feature_y: str | None
    what: str
    methods: tuple[str, ...]
    p_holm: float
    pvalue: float
    bound: bool
    effect_size: float | None
    effect_name: str | None
    node: str | None = None  # the network output of a Taylor-coefficient test

    @property
    def name(self) -> str:
        pair = self.feature_x if self.feature_y is None else f"{self.feature_x} × {self.feature_y}"
        if self.node is not None:
            return f"Taylor coefficient of {self.node or 'the output'} in {pair}"
        return pair + (f" [{self.category}]" if self.category != INCLUSIVE else "")

    @property
    def key(self) -> tuple[str, str, str | None]:
        """(category, x, y): the key of the histograms; Taylor tests have none of their own."""
        if self.node is not None:
            return f"taylor:{self.node}", self.feature_x, self.feature_y
        return self.category, self.feature_x, self.feature_y


def _test_key(t: Mapping[str, Any]) -> tuple[str, str, str | None]:
    if t.get("kind") == "taylor":
        return f"taylor:{t.get('node') or ''}", t["feature_x"], t.get("feature_y")
    return t["category"], t["feature_x"], t.get("feature_y")


def problems(tests: pd.DataFrame, alpha: float) -> list[Problem]:
    """Every tested feature and pair, worst first: the significant ones (Holm < alpha) in the
    order of :data:`WHAT`, each class by p-value; then the rest by p-value.

    Tests that did not run or are not reliable (low statistics) never make a problem
    significant; a feature or pair whose tests are all unreliable sorts after the others.
    """
    rows = _rows(tests)
    found = findings(rows, alpha)
    label: dict[tuple[str, str, str | None], tuple[str, list[str]]] = {}
    for (cat, x), methods in found.features.items():
        label[(cat, x, None)] = ("feature", methods)
    for kind, group in (("correlation", found.correlations), ("pair", found.pairs_other),
                        ("from_marginals", found.pairs_from_marginals)):
        for key, methods in group.items():
            label[key] = (kind, methods)
    for key, methods in getattr(found, "outputs", {}).items():
        label[key] = ("output", methods)
    for (node, x, y), methods in getattr(found, "taylor", {}).items():
        label[(f"taylor:{node}", x, y)] = ("taylor", methods)
    best: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for t in rows:
        if t.get("pvalue") is None:
            continue
        key = _test_key(t)
        rank = (not bool(t.get("reliable")), t["pvalue"])
        if key not in best or rank < best[key]["_rank"]:
            best[key] = {**t, "_rank": rank}
    order = list(WHAT)
    out = []
    for key, t in best.items():
        what, methods = label.get(key, ("", []))
        taylor = t.get("kind") == "taylor"
        out.append(Problem(
            category=t["category"], feature_x=key[1], feature_y=key[2], what=what,
            methods=tuple(methods), p_holm=_float(t.get("p_holm")), pvalue=_float(t["pvalue"]),
            bound=bool(t.get("pvalue_is_bound")), effect_size=t.get("effect_size"),
            effect_name=t.get("effect_name"), node=(t.get("node") or "") if taylor else None))
    out.sort(key=lambda p: (order.index(p.what), not _reliable_key(best[p.key]),
                            p.p_holm if math.isfinite(p.p_holm) else 2.0, p.pvalue))
    return out


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


def _reliable_key(row: Mapping[str, Any]) -> bool:
    return not row["_rank"][0]


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Verdict:
    """The latest gate verdict on the run (``gate_results``), or none (``judged`` False)."""

    judged: bool
    passed: bool | None = None
    rules_name: str | None = None
    rules_sha256: str | None = None
    judged_at: Any = None
    n_rules: int = 0
    failing: list[dict[str, Any]] = field(default_factory=list)


def verdict(gate_results: pd.DataFrame | None) -> Verdict:
    """The run's latest verdict: the rows of the most recently judged ``verdict_id``."""
    rows = _rows(gate_results)
    if not rows:
        return Verdict(judged=False)
    latest = max(rows, key=lambda r: (str(r.get("judged_at")), str(r.get("verdict_id"))))
    mine = [r for r in rows if r.get("verdict_id") == latest.get("verdict_id")]
    failing = [r for r in mine if r.get("passed") is not True]
    return Verdict(judged=True, passed=not failing, rules_name=latest.get("rules_name"),
                   rules_sha256=latest.get("rules_sha256"), judged_at=latest.get("judged_at"),
                   n_rules=len(mine), failing=failing)


@dataclass(frozen=True)
class Normalisation:
    """Data / simulation normalisation of the inclusive selection: N_data / Σw, with the
    statistical error from Poisson data and the simulation's Σw²."""

    n_data: int
    sumw: float
    ratio: float
    error: float


def normalisation(run: Mapping[str, Any]) -> Normalisation:
    """N_data / Σw_sim of the run (``runs`` row), error sqrt(1/N + Σw²/(Σw)²) relative."""
    n, sumw, sumw2 = int(run["n_data"]), float(run["sumw_sim"]), float(run["sumw2_sim"] or 0)
    if sumw <= 0 or n <= 0:
        return Normalisation(n, sumw, math.nan, math.nan)
    ratio = n / sumw
    return Normalisation(n, sumw, ratio, ratio * math.sqrt(1.0 / n + sumw2 / sumw**2))


def fmt_p(p: float, bound: bool = False) -> str:
    """A p-value as the terminal prints it: 3 decimals, scientific below 10⁻³, ``<`` for a toy
    p-value that no toy reached (an upper bound)."""
    if p is None or not math.isfinite(p):
        return "-"
    text = f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"
    return ("< " if bound else "") + text


def _fmt_time(value: Any) -> str:
    """A stored UTC timestamp to the minute."""
    try:
        return f"{pd.Timestamp(value):%Y-%m-%d %H:%M} UTC"
    except (TypeError, ValueError):
        return str(value)


def _fmt_global(p: Any, run: Mapping[str, Any]) -> str:
    """``= p``, or ``< bound`` at the floor 1/(1 + replicas) of a randomization p-value."""
    if _missing(p):
        return "= -"
    floor = 1.0 / (1.0 + float(run["n_global_replicas"]))
    return f"< {floor * 1.0001:.1e}" if p <= floor * 1.0001 else f"= {fmt_p(float(p))}"


def _effect(p: Problem) -> str:
    if p.effect_size is None or not math.isfinite(p.effect_size):
        return "-"
    return f"{p.effect_name or 'effect'} {p.effect_size:.3g}"


def counts_lines(run: Mapping[str, Any]) -> list[str]:
    """The run's counts in words: tests, failures vs expected, Holm/BH, run-level test."""
    n_not_run = 0 if _missing(run.get("n_not_run")) else int(run["n_not_run"])
    lines = [
        f"{int(run['n_tests']):,} tests ({int(run['n_reliable']):,} reliable"
        + (f", {n_not_run:,} could not run" if n_not_run else "") + f") on "
        f"{int(run['n_features'])} features and {int(run['n_pairs'])} pairs",
        f"failures at alpha = {float(run['alpha']):g}: {int(run['n_failed'])} where "
        f"{float(run['n_expected_failures']):.1f} are expected; significant after Holm: "
        f"{int(run['n_significant_holm'])}, after Benjamini-Hochberg: "
        f"{int(run['n_significant_bh'])}",
    ]
    if not _missing(run.get("p_global_min")):
        lines.append(
            f"run-level test (keeps the correlations between tests; "
            f"{int(run['n_global_tests'])} histogram tests, {int(run['n_global_replicas'])} "
            f"replicas): P(smallest p) {_fmt_global(run['p_global_min'], run)}, "
            f"P(≥ {int(run['n_global_failed'])} failures) "
            f"{_fmt_global(run['p_global_nfail'], run)}")
    return lines


def _headline(run: Mapping[str, Any], v: Verdict, found: list[Problem]) -> str:
    n_sig = sum(1 for p in found if p.what)
    what = f"{n_sig} significant problem{'s' * (n_sig != 1)}" if n_sig else \
        "no significant mismodelling after Holm"
    if not v.judged:
        return f"not judged (no rules applied): {what}"
    word = "PASSED" if v.passed else "FAILED"
    fails = "" if v.passed else f", {len(v.failing)} of {v.n_rules} rules fail"
    return f"gate {word} (rules `{v.rules_name}`{fails}): {what}"


# ------------------------------------------------------------------ Markdown


def _md(text: Any) -> str:
    """Text safe in a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text.replace('`', '')}`"


def markdown_report(tables: Mapping[str, pd.DataFrame], top: int = DEFAULT_TOP,
                    figure_links: Mapping[tuple[str, str, str | None], str] | None = None,
                    ) -> str:
    """The Markdown report of one run (tables as :func:`load_report_tables` returns them).

    Short enough for a merge-request comment: the verdict, failing rules with reasons, the
    ``top`` worst problems, normalisation and counts. ``figure_links`` (problem key ->
    relative path) adds a link to each problem's figure.
    """
    run = _rows(tables["runs"])[0]
    v = verdict(tables.get("gate_results"))
    found = problems(tables["tests"], float(run["alpha"]))
    links = figure_links or {}
    out = [f"## validator run `{run['run_id']}`: {_headline(run, v, found)}", ""]
    if v.judged:
        sha = (v.rules_sha256 or "")[:12]
        out.append(f"Verdict of rules `{v.rules_name}`" + (f" (sha256 {sha}…)" if sha else "")
                   + f", judged {_fmt_time(v.judged_at)}: {v.n_rules - len(v.failing)} of "
                   f"{v.n_rules} "
                   "rules pass.")
        if v.failing:
            out += ["", "**Failing rules**", ""]
            for r in v.failing[:MAX_RULES_MARKDOWN]:
                out.append(f"- {_code(str(r.get('rule')))} ({r.get('rule_kind')}): "
                           f"{_md(r.get('reason') or 'failed')}")
            if len(v.failing) > MAX_RULES_MARKDOWN:
                out.append(f"- … and {len(v.failing) - MAX_RULES_MARKDOWN} more (see the HTML "
                           "report or `gate_results`)")
    else:
        out.append("No rules file has judged this run (`validator gate --rules FILE`).")
    shown = found[:top]
    n_sig = sum(1 for p in found if p.what)
    out += ["", f"**Worst problems** ({n_sig} significant after Holm at alpha = "
                f"{float(run['alpha']):g}; showing {len(shown)} of {len(found)} features and "
                "pairs)", ""]
    if shown:
        head = ["", "feature / pair", "flagged by (Holm < alpha)", "p (Holm)", "effect size"]
        if links:
            head.append("figure")
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in shown:
            cells = [WHAT[p.what], _code(p.name), ", ".join(p.methods) or "-",
                     fmt_p(p.p_holm, p.bound), _md(_effect(p))]
            if links:
                cells.append(f"[plot]({links[p.key]})" if p.key in links else "")
            out.append("| " + " | ".join(cells) + " |")
    norm = normalisation(run)
    out += ["", f"**Normalisation**: data / simulation = {norm.ratio:.4f} ± {norm.error:.4f} "
                f"({norm.n_data:,} data events, simulation Σw = {norm.sumw:,.1f}); the tests "
                "compare shapes (normalisation free)", "", "**Counts**", ""]
    out += [f"- {line}" for line in counts_lines(run)]
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
    out = {}
    for t in tests:
        if _test_key(t) == (category, x, y) and t.get("p_holm") is not None:
            out[t["method"]] = float(t["p_holm"])
    return out


def _worst(found: list[Problem], pairs: bool, top: int, available: set) -> list[Problem]:
    chosen = [p for p in found if (p.feature_y is not None) == pairs and p.key in available
              and math.isfinite(p.pvalue)]
    return chosen[:top]


def iter_figures(tables: Mapping[str, pd.DataFrame], top: int = DEFAULT_TOP,
                 ) -> Iterator[tuple[ReportFigure, Any]]:
    """The report's figures, one at a time (each is closed by the caller through
    :func:`validator.figures.save_figure`): the ``top`` worst features (1D, ``plot``
    binning), the ``top`` worst pairs' pull maps, and the p-value matrix of all pairs."""
    from validator import figures

    run = _rows(tables["runs"])[0]
    tests = _rows(tables["tests"])
    found = problems(tables["tests"], float(run["alpha"]))
    hists: dict[tuple, Mapping[str, Any]] = {}
    processes: dict[tuple, dict[str, Any]] = {}
    variations: dict[tuple, dict[str, np.ndarray]] = {}
    for h in _rows(tables.get("histograms")):
        key = (h["category"], h["feature_x"], h.get("feature_y"))
        variation = h.get("variation")
        if _missing(variation):
            hists[key] = h
        elif str(variation).startswith("process:"):  # stacked by process (--process-column)
            edges = figures._array(h["edges_x"])
            processes.setdefault(key, {})[str(variation)[len("process:"):]] = figures.Hist1D(
                edges, figures._array(h["sim_sumw"]), figures._array(h["sim_sumw2"]))
        else:  # a systematic's NAME_up / NAME_down
            variations.setdefault(key, {})[str(variation)] = figures._array(h["sim_sumw"])
    for p in _worst(found, False, top, set(hists)):
        sim, data = figures.hist1d_from_row(hists[p.key])
        band = syst_band(sim.sumw, variations.get(p.key, {}))
        if p.key in processes:
            sim = processes[p.key]
        pv = _pvalues_of(tests, *p.key)
        fig = figures.plot_feature(sim, data, p.feature_x, pvalues=pv, category=p.category,
                                   syst=band)
        yield ReportFigure(
            _stem("feature", p.feature_x, p.category if p.category != INCLUSIVE else ""),
            p.name, "simulation (normalised to data) vs data; p (Holm): "
            + ", ".join(f"{m} {fmt_p(v)}" for m, v in pv.items()), p.key), fig
    for p in _worst(found, True, top, set(hists)):
        pv = _pvalues_of(tests, *p.key)
        fig = figures.plot_pull_map(figures.hist2d_from_row(hists[p.key]), p.feature_x,
                                    p.feature_y, pvalues=pv, category=p.category)
        yield ReportFigure(
            _stem("pull", p.feature_x, "vs", p.feature_y or "",
                  p.category if p.category != INCLUSIVE else ""),
            p.name, "pull (data − k·sim)/sqrt(data + k²·Σw²), k = N_data/Σw; p (Holm): "
            + ", ".join(f"{m} {fmt_p(v)}" for m, v in pv.items()), p.key), fig
    feats = [r["feature"] for r in _rows(tables["features"]) if r["category"] == INCLUSIVE]
    if len(feats) >= 2 and any(t.get("feature_y") is not None for t in tests):
        crit = _rows(tables.get("criticality"))
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


def render_figures(tables: Mapping[str, pd.DataFrame], top: int = DEFAULT_TOP,
                   out_dir: str | Path | None = None) -> list[ReportFigure]:
    """Draw the report's figures; with ``out_dir``, write each as PNG and PDF there."""
    from validator.figures import PNG_DPI, close_figure, save_figure

    out = []
    for item, fig in iter_figures(tables, top):
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


def html_report(tables: Mapping[str, pd.DataFrame], top: int = DEFAULT_TOP,
                figures: Sequence[ReportFigure] | None = None) -> str:
    """One self-contained HTML page (inline CSS, figures as base64 PNG ``data:`` URIs, no
    script and no external resource): the Markdown report's content and the figures of the
    ``top`` worst features, the worst pairs' pull maps and the p-value matrix.

    ``figures`` are drawn from the tables when not given (the tables then need
    ``histograms``).
    """
    run = _rows(tables["runs"])[0]
    v = verdict(tables.get("gate_results"))
    found = problems(tables["tests"], float(run["alpha"]))
    figs = list(figures) if figures is not None else render_figures(tables, top)
    by_key = {f.key: f for f in figs}
    cls = "none" if not v.judged else ("pass" if v.passed else "fail")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>validator run {_e(run['run_id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>validator run <code>{_e(run['run_id'])}</code></h1>",
        f'<p class="verdict {cls}">{_md_inline(_headline(run, v, found))}</p>',
        f"<p>simulation: {_e(', '.join(run.get('sim_paths') or []))}<br>data: "
        f"{_e(', '.join(run.get('data_paths') or []))}<br>started "
        f"{_e(_fmt_time(run['started_at']))}, validator {_e(run.get('tool_version'))}</p>",
    ]
    if v.judged:
        parts.append(f"<h2>Rules <code>{_e(v.rules_name)}</code>: {v.n_rules - len(v.failing)} "
                     f"of {v.n_rules} pass</h2>")
        if v.failing:
            parts.append("<table><tr><th>rule</th><th>kind</th><th>reason</th></tr>")
            parts += [f"<tr><td><code>{_e(r.get('rule'))}</code></td><td>"
                      f"{_e(r.get('rule_kind'))}</td><td>{_e(r.get('reason') or 'failed')}"
                      "</td></tr>" for r in v.failing]
            parts.append("</table>")
    else:
        parts.append("<p>No rules file has judged this run (<code>validator gate --rules "
                     "FILE</code>).</p>")
    shown = found[:top]
    parts.append(f"<h2>Worst problems</h2><p>{sum(1 for p in found if p.what)} significant "
                 f"after Holm at alpha = {float(run['alpha']):g}; showing {len(shown)} of "
                 f"{len(found)} features and pairs.</p>")
    if shown:
        parts.append("<table><tr><th></th><th>feature / pair</th><th>flagged by (Holm &lt; "
                     "alpha)</th><th>p (Holm)</th><th>p (raw)</th><th>effect size</th></tr>")
        for p in shown:
            name = _e(p.name)
            if p.key in by_key:
                name = f'<a href="#{_e(by_key[p.key].stem)}">{name}</a>'
            parts.append(f"<tr><td>{_e(WHAT[p.what])}</td><td><code>{name}</code></td><td>"
                         f"{_e(', '.join(p.methods) or '-')}</td><td>"
                         f"{_e(fmt_p(p.p_holm, p.bound))}</td><td>{_e(fmt_p(p.pvalue, p.bound))}"
                         f"</td><td>{_e(_effect(p))}</td></tr>")
        parts.append("</table>")
    norm = normalisation(run)
    parts.append(f"<h2>Normalisation and counts</h2><p>data / simulation = {norm.ratio:.4f} "
                 f"± {norm.error:.4f} ({norm.n_data:,} data events, simulation Σw = "
                 f"{norm.sumw:,.1f}); the tests compare shapes.</p><ul>"
                 + "".join(f"<li>{_e(line)}</li>" for line in counts_lines(run)) + "</ul>")
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
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    try:
        import matplotlib  # noqa: F401
        import mplhep  # noqa: F401
    except ImportError as exc:
        raise InputError(f"the figures need matplotlib and mplhep ({exc}); install them with "
                         "pip install 'validator[hist]'") from exc
    tables = load_report_tables(db, run, histograms=True)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = render_figures(tables, top, fig_dir)
    links = {f.key: f"figures/{f.stem}.png" for f in figs}
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(markdown_report(tables, top, links), encoding="utf-8")
    html_path.write_text(html_report(tables, top, figs), encoding="utf-8")
    return ReportFiles(md_path, html_path, [p for f in figs for p in f.files])


def write_markdown(path: str | Path, tables: Mapping[str, pd.DataFrame],
                   top: int = DEFAULT_TOP) -> Path:
    """Write the Markdown report of ``tables`` to ``path`` (``validator run --report``)."""
    path = Path(path)
    path.write_text(markdown_report(tables, top), encoding="utf-8")
    return path
