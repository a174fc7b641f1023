"""The one interpretation of a stored run: what is mismodelled, by which tests, how the run
compares with its null as a whole, and the verdict of rules.

:func:`read_run` computes it once from the run's tables (:mod:`validator.results.tables`);
the terminal summary, ``validator show``, the Markdown and HTML reports, JUnit, the
dashboard's overview and the gate's lines render the :class:`RunReading` it returns, so they
cannot disagree.

Which tests decide (:func:`validator.results.summary.verdict_roles`): with systematics, a
histogram is
mismodelled when its systematics-aware test (``saturated_syst``) is significant; its
stat-only tests are then listed beside it ("flagged by"), and when it passes they are "stat.
only": stored, shown as covered by the systematics, never a finding and never a failed rule.
A multivariate test (``c2st``, ``nplm``) significant after Holm is a finding like any other,
with the inputs that drive it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from validator.results.display import RunDisplay, run_display
from validator.results.format import format_p
from validator.results.summary import (
    DECISIVE,
    STAT_ONLY,
    SYST_METHOD,
    UNRELIABLE,
    Findings,
    findings,
    verdict_roles,
)

#: The inclusive category of the ``tests`` and ``features`` tables.
INCLUSIVE = "all"
#: How each class of problem is named, in the order a reviewer reads them: findings first
#: (1D, correlations, pairs, pairs explained by 1D, multivariate, the network's outputs and
#: response), then what the systematics cover, then the rest.
WHAT = {"feature": "1D", "correlation": "correlation", "pair": "2D",
        "from_marginals": "2D (from a 1D failure)", "multivariate": "multivariate",
        "output": "network output", "taylor": "network response",
        "covered": "covered by the systematics", "": "not significant"}
#: ``feature_x`` of a test over every input at once (the multivariate tests).
EVERY_INPUT = "*"
#: Inputs named as driving a multivariate finding.
N_ATTRIBUTION = 3
#: What the stored run-level test covers, said in every face that shows it.
RUN_LEVEL_FAMILY = ("each 1D and 2D histogram's likelihood-ratio test (profiled under "
                    "systematics) and each feature's KS, with the laws they used; not the "
                    "correlation, dependence, network and multivariate tests")


def _missing(value: Any) -> bool:
    if isinstance(value, (list, tuple, np.ndarray)):
        return False
    return value is None or value is pd.NA or value is pd.NaT or (
        isinstance(value, float) and math.isnan(value))


def records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    """A table's rows as dicts, NULLs as None."""
    if frame is None or not len(frame):
        return []
    return [{k: (None if _missing(v) else v) for k, v in r.items()}
            for r in frame.to_dict("records")]


def _float(value: Any) -> float:
    return math.nan if _missing(value) else float(value)


# ------------------------------------------------------------------ problems


@dataclass(frozen=True)
class Problem:
    """One feature or pair of one category (or a network response, or a multivariate test),
    with its tests summarised.

    ``what``: a key of :data:`WHAT`. ``methods``: the decisive tests significant after Holm
    ("flagged by"); ``stat_only``: the stat-only tests significant after Holm whose
    systematics-aware test passes. ``p_holm``/``pvalue``/effect: of the deciding test (the
    smallest Holm p among the flagging tests; for a covered histogram its
    ``saturated_syst``; else the smallest p). ``attribution``: the inputs that drive a
    multivariate finding, most first.
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
    stat_only: tuple[str, ...] = ()
    attribution: tuple[str, ...] = ()

    @property
    def significant(self) -> bool:
        return self.what not in ("", "covered")

    @property
    def name(self) -> str:
        if self.what == "multivariate" or self.feature_x == EVERY_INPUT:
            name = "every input at once"
        else:
            name = self.feature_x if self.feature_y is None else \
                f"{self.feature_x} × {self.feature_y}"
        if self.node is not None:
            return f"Taylor coefficient of {self.node or 'the output'} in {name}"
        return name + (f" [{self.category}]" if self.category != INCLUSIVE else "")

    @property
    def key(self) -> tuple[str, str, str | None]:
        """(category, x, y): the key of the histograms; Taylor tests have none of their own."""
        if self.node is not None:
            return f"taylor:{self.node}", self.feature_x, self.feature_y
        return self.category, self.feature_x, self.feature_y

    @property
    def flagged_by(self) -> str:
        """The flagging methods, and the inputs that drive a multivariate finding."""
        text = ", ".join(self.methods)
        if self.attribution:
            text += " (driven by " + ", ".join(self.attribution) + ")"
        if self.stat_only:
            text += ("; " if text else "") + "stat. only: " + ", ".join(self.stat_only)
        return text or "-"

    @property
    def effect(self) -> str:
        if self.effect_size is None or not math.isfinite(self.effect_size):
            return "-"
        return f"{self.effect_name or 'effect'} {self.effect_size:.3g}"


def test_key(t: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(category, x, y) of a test; a Taylor test is keyed by its network output."""
    if t.get("kind") == "taylor":
        return f"taylor:{t.get('node') or ''}", t["feature_x"], t.get("feature_y")
    return t["category"], t["feature_x"], t.get("feature_y")


def _labels(found: Findings) -> dict[tuple[str, str, str | None], tuple[str, list[str]]]:
    label: dict[tuple[str, str, str | None], tuple[str, list[str]]] = {}
    for (cat, x), methods in found.features.items():
        label[(cat, x, None)] = ("feature", methods)
    for kind, group in (("correlation", found.correlations), ("pair", found.pairs_other),
                        ("from_marginals", found.pairs_from_marginals)):
        for key, methods in group.items():
            label[key] = (kind, methods)
    for key, methods in found.outputs.items():
        label[key] = ("output", methods)
    for (node, x, y), methods in found.taylor.items():
        label[(f"taylor:{node}", x, y)] = ("taylor", methods)
    return label


def _attributions(importances: pd.DataFrame | None) -> dict[tuple[str, str], tuple[str, ...]]:
    """(category, method) -> the inputs with the largest first-order Taylor coefficient of a
    multivariate test's learned function (``c2st_taylor``/``nplm_taylor`` importances)."""
    rows = [r for r in records(importances)
            if str(r.get("method", "")).endswith("_taylor") and r.get("feature_y") is None
            and r.get("value") is not None]
    out: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for r in rows:
        method = str(r["method"])[: -len("_taylor")]
        category = r.get("category") or INCLUSIVE
        out.setdefault((category, method), []).append((abs(float(r["value"])),
                                                       str(r["feature_x"])))
    return {k: tuple(name for _, name in sorted(v, reverse=True)[:N_ATTRIBUTION])
            for k, v in out.items()}


def problems(tests: list[dict[str, Any]], roles: Sequence[str], alpha: float,
             attributions: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
             ) -> tuple[list[Problem], Findings]:
    """Every tested feature and pair, worst first, and the grouped findings (see
    :data:`WHAT` for the order); each class sorted by Holm p, then p."""
    decisive = [t for t, r in zip(tests, roles, strict=True) if r == DECISIVE]
    found = findings(decisive, alpha)
    label = _labels(found)
    for category, methods in found.multivariate.items():
        label[(category, EVERY_INPUT, None)] = ("multivariate", methods)
    stat_only: dict[tuple[str, str, str | None], list[str]] = {}
    syst_row: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for t, role in zip(tests, roles, strict=True):
        key = test_key(t)
        if role == STAT_ONLY and t.get("p_holm") is not None and t["p_holm"] < alpha:
            stat_only.setdefault(key, []).append(t["method"])
        if t["method"] == SYST_METHOD and t.get("pvalue") is not None:
            syst_row[key] = t
    best: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for t, role in zip(tests, roles, strict=True):
        if t.get("pvalue") is None or t.get("kind") == "evidently":
            continue
        key = test_key(t)
        flagged = label.get(key, ("", []))[1]
        # the deciding test: a flagging one; for a covered histogram its syst-aware test
        rank = (t["method"] not in flagged if flagged else
                (key in stat_only and t["method"] != SYST_METHOD),
                role == UNRELIABLE, _float(t.get("p_holm")) if flagged else 0.0, t["pvalue"])
        rank = tuple(2.0 if isinstance(v, float) and math.isnan(v) else v for v in rank)
        if key not in best or rank < best[key]["_rank"]:
            best[key] = {**t, "_rank": rank}
    order = list(WHAT)
    out = []
    for key, t in best.items():
        what, methods = label.get(key, ("", []))
        if not what and key in stat_only:
            what = "covered"
        taylor = t.get("kind") == "taylor"
        attribution = ()
        if what == "multivariate" and attributions:
            attribution = tuple(dict.fromkeys(
                n for m in methods for n in attributions.get((key[0], m), ())))
        out.append(Problem(
            category=t["category"], feature_x=key[1], feature_y=key[2], what=what,
            methods=tuple(methods), p_holm=_float(t.get("p_holm")), pvalue=_float(t["pvalue"]),
            bound=bool(t.get("pvalue_is_bound")), effect_size=t.get("effect_size"),
            effect_name=t.get("effect_name"), node=(t.get("node") or "") if taylor else None,
            stat_only=tuple(stat_only.get(key, ())), attribution=attribution))
    out.sort(key=lambda p: (order.index(p.what), math.isnan(p.p_holm),
                            p.p_holm if math.isfinite(p.p_holm) else 2.0, p.pvalue))
    return out, found


# ------------------------------------------------------------------ the verdict


@dataclass(frozen=True)
class RuleResult:
    """One rule's stored result."""

    name: str
    kind: str
    passed: bool
    severity: str
    reason: str

    @property
    def status(self) -> str:
        """PASS, FAIL (an error-level rule fails) or WARN (a warning-level rule fails)."""
        return "PASS" if self.passed else ("FAIL" if self.severity == "error" else "WARN")


@dataclass(frozen=True)
class VerdictSummary:
    """The run's latest verdict (``gate_results``), or none (``judged`` False)."""

    judged: bool
    rules_name: str | None = None
    rules_sha256: str | None = None
    judged_at: Any = None
    verdict_id: str | None = None
    rules: tuple[RuleResult, ...] = ()

    @property
    def failed(self) -> list[RuleResult]:
        """The error-level rules that fail: they fail the gate."""
        return [r for r in self.rules if r.status == "FAIL"]

    @property
    def warnings(self) -> list[RuleResult]:
        """The warning-level rules that fail: reported, the gate still passes."""
        return [r for r in self.rules if r.status == "WARN"]

    @property
    def passed(self) -> bool | None:
        return None if not self.judged else not self.failed

    def headline(self) -> str:
        """``gate FAILED: 1 of 4 rules fail, 1 warning (rules default)``."""
        if not self.judged:
            return "not judged (no rules applied)"
        warned = len(self.warnings)
        warn = f", {warned} warning{'s' * (warned != 1)}" if warned else ""
        if self.passed:
            n_ok = len(self.rules) - warned
            return (f"gate PASSED: {n_ok} of {len(self.rules)} rules pass{warn} "
                    f"(rules {self.rules_name})")
        return (f"gate FAILED: {len(self.failed)} of {len(self.rules)} rules fail{warn} "
                f"(rules {self.rules_name})")


def _severity(details: Any) -> str:
    try:
        parsed = json.loads(details) if isinstance(details, str) else (details or {})
    except ValueError:
        parsed = {}
    return str(parsed.get("severity", "error")) if isinstance(parsed, dict) else "error"


def verdict_summary(gate_results: pd.DataFrame | Sequence[Mapping[str, Any]] | None
                    ) -> VerdictSummary:
    """The latest verdict among ``gate_results`` rows (those of its ``verdict_id``)."""
    rows = records(gate_results) if isinstance(gate_results, pd.DataFrame) else [
        dict(r) for r in (gate_results or [])]
    if not rows:
        return VerdictSummary(judged=False)
    latest = max(rows, key=lambda r: (str(r.get("judged_at")), str(r.get("verdict_id"))))
    mine = [r for r in rows if r.get("verdict_id") == latest.get("verdict_id")]
    return VerdictSummary(
        judged=True, rules_name=latest.get("rules_name"), rules_sha256=latest.get("rules_sha256"),
        judged_at=latest.get("judged_at"), verdict_id=latest.get("verdict_id"),
        rules=tuple(RuleResult(str(r.get("rule")), str(r.get("rule_kind")),
                               bool(r.get("passed")), _severity(r.get("details")),
                               str(r.get("reason") or "")) for r in mine))


# ------------------------------------------------------------------ counts


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
    n, sumw = int(run["n_data"]), float(run["sumw_sim"])
    sumw2 = 0.0 if _missing(run.get("sumw2_sim")) else float(run["sumw2_sim"])
    if sumw <= 0 or n <= 0:
        return Normalisation(n, sumw, math.nan, math.nan)
    ratio = n / sumw
    return Normalisation(n, sumw, ratio, ratio * math.sqrt(1.0 / n + sumw2 / sumw**2))


@dataclass(frozen=True)
class Counts:
    """The run's tests counted by their role (:func:`validator.results.summary.verdict_roles`).

    ``n_failed``: decisive tests with p < alpha; ``n_significant``: decisive tests with Holm
    p < alpha (``n_significant_bh``: Benjamini-Hochberg); ``n_stat_only``: stat-only tests
    significant after Holm, covered by their histogram's systematics.
    """

    n_tests: int
    n_not_run: int
    n_reliable: int
    n_decisive: int
    n_failed: int
    n_expected: float
    n_significant: int
    n_significant_bh: int
    n_stat_only: int


@dataclass(frozen=True)
class RunLevel:
    """The stored run-level test (:mod:`validator.stages.globaltest`) and the family it covers."""

    p_min: float
    p_nfail: float
    n_tests: int
    n_failed: int
    n_replicas: int
    n_nuisances: int

    @property
    def floor(self) -> float:
        return 1.0 / (1.0 + self.n_replicas)

    def line(self) -> str:
        nuisances = f", {self.n_nuisances} nuisances varied" if self.n_nuisances else ""
        return (f"run-level test ({self.n_tests} tests: {RUN_LEVEL_FAMILY}; "
                f"{self.n_replicas} sign-flip replicas{nuisances}): P(smallest p) "
                f"{_eq(format_p(self.p_min, floor=self.floor))}, P(≥ {self.n_failed} "
                f"failures) {_eq(format_p(self.p_nfail, floor=self.floor))}")


def _eq(text: str) -> str:
    return text if text.startswith("<") else f"= {text}"


@dataclass(frozen=True)
class RunReading:
    """Everything a face shows of one run, computed once (:func:`read_run`)."""

    run: dict[str, Any]
    tables: Mapping[str, pd.DataFrame]
    tests: pd.DataFrame  # the tests table with the ``role`` of each test
    alpha: float
    systematics: bool
    problems: list[Problem]
    findings: Findings
    counts: Counts
    run_level: RunLevel | None
    verdict: VerdictSummary
    normalisation: Normalisation
    covered: list[Problem] = field(default_factory=list)  # stat-only significant, syst passes
    beyond: list[Problem] = field(default_factory=list)  # saturated_syst significant

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def display(self) -> RunDisplay:
        """How the run's features are drawn (labels, units, scales) and the figures'
        experiment label, from its stored configuration."""
        return run_display(self.run.get("config_json"))

    @property
    def significant(self) -> list[Problem]:
        """The findings: problems significant after Holm."""
        return [p for p in self.problems if p.significant]

    def significance_line(self) -> str:
        """``3 significant problems after Holm (12 tests)``, the same in every face."""
        n, t = len(self.significant), self.counts.n_significant
        if not n:
            return "no significant mismodelling after Holm"
        return (f"{n} significant problem{'s' * (n != 1)} after Holm ({t} test"
                f"{'s' * (t != 1)})")

    def headline(self) -> str:
        """The verdict and what is significant, in one line."""
        return f"{self.verdict.headline()}: {self.significance_line()}"

    def count_lines(self) -> list[str]:
        """The run's counts in words: tests, failures vs expected, significance, what the
        systematics cover, the run-level test."""
        c = self.counts
        lines = [
            f"{c.n_tests:,} tests ({c.n_reliable:,} reliable"
            + (f", {c.n_not_run:,} could not run" if c.n_not_run else "") + ") on "
            f"{int(self.run['n_features'])} features and {int(self.run['n_pairs'])} pairs",
            f"failures at alpha = {self.alpha:g}: {c.n_failed} of {c.n_decisive:,} deciding "
            f"tests where {c.n_expected:.1f} are expected; significant after Holm: "
            f"{c.n_significant} tests, after Benjamini-Hochberg: {c.n_significant_bh}",
        ]
        if self.systematics:
            lines.append(f"systematics decide: {c.n_stat_only} stat-only tests significant "
                         f"after Holm are covered by their histogram's {SYST_METHOD} "
                         f"({len(self.covered)} features and pairs)")
        if self.run_level is not None:
            lines.append(self.run_level.line())
        return lines


def _run_level(run: Mapping[str, Any]) -> RunLevel | None:
    if _missing(run.get("p_global_min")):
        return None
    return RunLevel(float(run["p_global_min"]), float(run["p_global_nfail"]),
                    int(run["n_global_tests"]), int(run["n_global_failed"]),
                    int(run["n_global_replicas"]),
                    0 if _missing(run.get("n_global_nuisances"))
                    else int(run["n_global_nuisances"]))


def read_run(tables: Mapping[str, pd.DataFrame],
             verdict: VerdictSummary | None = None) -> RunReading:
    """The reading of one run's tables (:func:`validator.results.tables.load_run_tables`);
    ``verdict``: one just judged, instead of the latest stored."""
    runs = tables["runs"]
    if len(runs) != 1:
        raise ValueError(f"a reading is of one run; got {len(runs)}")
    run = records(runs)[0]
    alpha = float(run["alpha"])
    tests_frame = tables["tests"]
    rows = records(tests_frame)
    roles = verdict_roles(rows, alpha)
    found_problems, found = problems(rows, roles, alpha,
                                     _attributions(tables.get("importances")))
    decisive = [t for t, r in zip(rows, roles, strict=True) if r == DECISIVE]
    def significant(t: Mapping[str, Any], column: str) -> bool:
        return t.get(column) is not None and t[column] < alpha

    n_reliable = sum(1 for t in rows if t.get("pvalue") is not None and t.get("reliable")
                     and t.get("kind") != "evidently")
    counts = Counts(
        n_tests=len(rows), n_not_run=sum(1 for r in roles if r == "not_run"),
        n_reliable=n_reliable, n_decisive=len(decisive),
        n_failed=sum(1 for t in decisive if t["pvalue"] < alpha),
        n_expected=alpha * len(decisive),
        n_significant=sum(1 for t in decisive if significant(t, "p_holm")),
        n_significant_bh=sum(1 for t in decisive if significant(t, "p_bh")),
        n_stat_only=sum(1 for t, r in zip(rows, roles, strict=True)
                        if r == STAT_ONLY and significant(t, "p_holm")))
    has_syst = any(t["method"] == SYST_METHOD and t.get("pvalue") is not None for t in rows)
    syst_keys = {test_key(t) for t in rows if t["method"] == SYST_METHOD
                 and t.get("pvalue") is not None}
    tests_with_roles = tests_frame.assign(role=roles) if len(tests_frame) else \
        tests_frame.assign(role=pd.Series(dtype=object))
    return RunReading(
        run=run, tables=tables, tests=tests_with_roles, alpha=alpha, systematics=has_syst,
        problems=found_problems, findings=found, counts=counts, run_level=_run_level(run),
        verdict=verdict if verdict is not None else verdict_summary(
            tables.get("gate_results")),
        normalisation=normalisation(run),
        covered=sorted((p for p in found_problems if p.what == "covered"),
                       key=lambda p: (p.node is not None, p.feature_y is not None)),
        beyond=[p for p in found_problems if p.significant and p.key in syst_keys
                and SYST_METHOD in p.methods])
