"""The CI gate: judge one stored run against a rules file (:mod:`validator.gate.rules`).

:func:`judge` is a pure function of a run's tables (as
:func:`validator.results.tables.load_run_tables` reads them from DuckDB, or
:func:`validator.results.tables.outcome_tables` builds them from a run just finished) and the
rules: it recomputes no test, only reads the stored p-values, effect sizes, counts and
configuration, and judges the tests that decide (:func:`validator.results.summary.verdict_roles`).
:func:`judge_stored` loads a run, judges it and adds the verdict to the ``gate_results`` table
(a new verdict set each time; ``runs.gate_passed`` holds the latest).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from validator.errors import InputError
from validator.gate.rules import (
    ALL,
    ClosureRule,
    CoverageRule,
    FailureCountRule,
    ImportanceRule,
    PerTestRule,
    RulesFile,
    RunConfigRule,
    Selection,
    UniformityRule,
    load_rules,
)
from validator.results.format import format_p
from validator.results.summary import DECISIVE, SYST_METHOD, verdict_roles

#: The inclusive category of the ``tests`` and ``features`` tables.
INCLUSIVE = "all"
#: How many offending items a reason names before "and N more" (one line per rule).
N_NAMED = 5
#: Column of the ``tests`` table read for each ``p_value`` choice of a per-test rule.
P_COLUMNS = {"raw": "pvalue", "holm": "p_holm", "bh": "p_bh"}
P_LABELS = {"raw": "p", "holm": "Holm p", "bh": "BH p"}
#: Test kinds whose failures a ``failure_count`` (and a recomputed ``uniformity``) counts.
COUNTED_KINDS = ("1d", "2d", "corr", "output")
#: Tables :func:`judge` reads (histograms are never needed).
GATE_TABLES = ("runs", "features", "tests", "skipped_columns", "models", "criticality",
               "corrections")


@dataclass(frozen=True)
class RuleVerdict:
    """One rule's verdict: whether it passed, why (one line), and figures behind it."""

    name: str
    kind: str
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    severity: str = "error"

    @property
    def blocking(self) -> bool:
        """A failure that fails the gate (a failing ``warning`` rule does not)."""
        return not self.passed and self.severity == "error"


@dataclass(frozen=True)
class Verdict:
    """All rules' verdicts over one run; ``passed`` when no error-level rule fails.

    ``failing_tests`` are the rows of the ``tests`` table a per-test rule failed (with the
    rule's name in ``rule`` and why in ``why``), for JUnit and reports.
    """

    run_id: str
    rules_name: str
    rules_sha256: str
    rules: list[RuleVerdict]
    failing_tests: list[dict[str, Any]] = field(default_factory=list)
    verdict_id: str | None = None
    judged_at: datetime | None = None

    @property
    def passed(self) -> bool:
        """True when every error-level rule passes."""
        return not any(r.blocking for r in self.rules)

    @property
    def failed_rules(self) -> list[RuleVerdict]:
        """The rules that fail the gate."""
        return [r for r in self.rules if r.blocking]


# ------------------------------------------------------------------ helpers


def _null(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _matches(value: Any, globs: Sequence[str]) -> bool:
    return not _null(value) and any(fnmatchcase(str(value), g) for g in globs)


def _match_column(column: pd.Series, globs: Sequence[str]) -> np.ndarray:
    """fnmatch of every value of a column against any glob (evaluated once per value)."""
    if tuple(globs) == ALL:
        return column.notna().to_numpy()
    lookup = {v: _matches(v, globs) for v in column.dropna().unique()}
    return column.map(lambda v: lookup.get(v, False) if not _null(v) else False).to_numpy(bool)


def _select(tests: pd.DataFrame, sel: Selection) -> np.ndarray:
    """The tests a selection picks (a pair when either feature matches)."""
    if not len(tests):
        return np.zeros(0, dtype=bool)
    mask = (_match_column(tests["kind"], sel.kinds) & _match_column(tests["method"], sel.methods)
            & _match_column(tests["category"], sel.categories))
    x, y = tests["feature_x"], tests["feature_y"]
    mask &= _match_column(x, sel.features) | _match_column(y, sel.features)
    if sel.exclude_features:
        mask &= ~(_match_column(x, sel.exclude_features)
                  | _match_column(y, sel.exclude_features))
    return mask


def _decisive(tests: pd.DataFrame) -> np.ndarray:
    """Tests that may fail a rule (:func:`validator.results.summary.verdict_roles`): under
    systematics a stat-only test whose histogram's saturated_syst passes never does."""
    return (tests["role"] == DECISIVE).to_numpy(bool)


def _ran(tests: pd.DataFrame) -> np.ndarray:
    """Tests that ran: a p-value, no not_run_reason, a passed flag."""
    return (tests["pvalue"].notna() & tests["not_run_reason"].isna()
            & tests["passed"].notna()).to_numpy(bool)


def _reliable(tests: pd.DataFrame) -> np.ndarray:
    return tests["reliable"].fillna(False).astype(bool).to_numpy()


def _test_label(t: Mapping[str, Any]) -> str:
    feats = t["feature_x"] if _null(t.get("feature_y")) else f"{t['feature_x']} × {t['feature_y']}"
    cat = "" if t.get("category") == INCLUSIVE else f" [{t.get('category')}]"
    return f"{feats}{cat} {t['method']}"


def _place_label(t: Mapping[str, Any]) -> str:
    """The feature or pair of a test, with its category (and network output for Taylor)."""
    feats = t["feature_x"] if _null(t.get("feature_y")) else f"{t['feature_x']} × {t['feature_y']}"
    cat = "" if t.get("category") == INCLUSIVE else f" [{t.get('category')}]"
    return f"{feats}{cat}"


def _listing(items: Sequence[str]) -> str:
    more = f" and {len(items) - N_NAMED} more" if len(items) > N_NAMED else ""
    return "; ".join(items[:N_NAMED]) + more


def _run_row(tables: Mapping[str, pd.DataFrame]) -> Mapping[str, Any]:
    runs = tables.get("runs")
    if runs is None or len(runs) != 1:
        raise InputError(f"the gate judges one run; got {0 if runs is None else len(runs)}")
    return _table(tables, "runs").iloc[0]


def _config(run: Mapping[str, Any]) -> dict[str, Any]:
    raw = run.get("config_json")
    return {} if _null(raw) or not raw else json.loads(raw)


def _model_audited(run: Mapping[str, Any]) -> bool:
    return not _null(run.get("model_id"))


def _table(tables: Mapping[str, pd.DataFrame], name: str) -> pd.DataFrame:
    from validator.results.schema import SCHEMA

    frame = tables.get(name)
    columns = [c for c, _ in SCHEMA[name]]
    if frame is None:
        frame = pd.DataFrame(columns=columns)
    missing = [c for c in columns if c not in frame.columns]  # a run of an older schema
    frame = frame.assign(**dict.fromkeys(missing)) if missing else frame
    if name == "tests" and "role" not in frame.columns:
        from validator.results.reading import records

        alpha = float(_run_row(tables)["alpha"])
        frame = frame.assign(role=verdict_roles(records(frame), alpha) if len(frame) else [])
    return frame


# ------------------------------------------------------------------ the rule kinds


def _per_test(rule: PerTestRule, tables: Mapping[str, pd.DataFrame],
              failing: list[dict[str, Any]]) -> RuleVerdict:
    tests = _table(tables, "tests")
    selected = _select(tests, rule.select)
    n_selected = int(selected.sum())
    if n_selected == 0:
        return RuleVerdict(rule.name, rule.kind, rule.allow_empty,
                           "the selection matches no test" + (
                               "" if rule.allow_empty else " (check its globs)"),
                           {"n_selected": 0}, rule.severity)
    ran, reliable, decisive = _ran(tests), _reliable(tests), _decisive(tests)
    p_col = P_COLUMNS[rule.p_value]
    label = P_LABELS[rule.p_value]
    failed, small, unrun = [], [], []
    for i in np.flatnonzero(selected):
        t = tests.iloc[i]
        feats = [f for f in (t["feature_x"], t["feature_y"]) if not _null(f)]
        if not ran[i]:
            if any(_matches(f, rule.require_run) for f in feats):
                unrun.append(t)
            continue
        if not reliable[i] or not decisive[i]:
            continue
        threshold, floors = rule.threshold, dict(rule.effect_floors)
        for o in rule.overrides:
            if any(_matches(f, o.features) for f in feats):
                threshold = o.threshold if o.threshold is not None else threshold
                floors.update(o.effect_floors)
                break
        p = t[p_col]
        if _null(p) or not p < threshold:
            continue
        effect = t["effect_size"]
        floor = floors.get(t["effect_name"], rule.default_effect_floor) \
            if not _null(t["effect_name"]) else rule.default_effect_floor
        if not _null(effect) and abs(effect) < floor:
            small.append(t)  # significant, but too small a difference to matter
        else:
            failed.append((t, p, threshold))
    for t, p, threshold in failed:
        effect = "" if _null(t["effect_size"]) else f", {t['effect_name']} {t['effect_size']:.3g}"
        bound = not _null(t.get("pvalue_is_bound")) and bool(t["pvalue_is_bound"])
        failing.append({**t.to_dict(), "rule": rule.name,
                        "why": f"{label} {'≤ ' if bound else ''}{format_p(p)} < {threshold:g}"
                               f"{effect}"})
    for t in unrun:
        failing.append({**t.to_dict(), "rule": rule.name,
                        "why": f"did not run: {t['not_run_reason']}"})
    details = {"n_selected": n_selected, "p_value": rule.p_value, "threshold": rule.threshold,
               "failing_test_ids": [int(t["test_id"]) for t, _, _ in failed],
               "below_floor_test_ids": [int(t["test_id"]) for t in small],
               "not_run_test_ids": [int(t["test_id"]) for t in unrun]}
    below = f" ({len(small)} more significant but below their effect floor)" if small else ""
    if not failed and not unrun:
        return RuleVerdict(rule.name, rule.kind, True,
                           f"{n_selected} tests, none with {label} < {rule.threshold:g} and an "
                           f"effect above its floor{below}", details, rule.severity)
    parts = []
    if failed:
        failed.sort(key=lambda f: f[1])
        # one item per feature or pair (its failing methods, its smallest p): a reviewer
        # reads which inputs fail, not five tests of the same pair
        groups: dict[str, list[tuple[Any, Any]]] = {}
        for t, p, _ in failed:
            groups.setdefault(_place_label(t), []).append((t, p))
        parts.append(f"{len(failed)} of {n_selected} tests fail ({label} < threshold and "
                     f"effect above floor) in {len(groups)} features and pairs: " + _listing([
                         f"{place} ({', '.join(t['method'] for t, _ in items)}) {label} "
                         f"{format_p(items[0][1])}" + (
                             "" if _null(items[0][0]["effect_size"]) else
                             f" {items[0][0]['effect_name']} {items[0][0]['effect_size']:.3g}")
                         for place, items in groups.items()]))
    if unrun:
        parts.append(f"{len(unrun)} required tests did not run: " + _listing(
            [f"{_test_label(t)} ({t['not_run_reason']})" for t in unrun]))
    return RuleVerdict(rule.name, rule.kind, False, "; ".join(parts) + below, details,
                       rule.severity)


def binomial_pvalue(n_failed: int, n_reliable: int, alpha: float) -> float:
    """P(X >= n_failed) for X ~ Binomial(n_reliable, alpha) (scipy ``binomtest``, greater)."""
    if n_reliable == 0:
        return 1.0
    return float(stats.binomtest(n_failed, n_reliable, alpha, alternative="greater").pvalue)


def _failure_count(rule: FailureCountRule, tables: Mapping[str, pd.DataFrame]) -> RuleVerdict:
    run, tests = _run_row(tables), _table(tables, "tests")
    run_alpha = float(run["alpha"])
    alpha = rule.alpha if rule.alpha is not None else run_alpha
    source = rule.source
    has_global = not _null(run.get("p_global_nfail")) and math.isclose(alpha, run_alpha)
    syst = bool((tests["method"] == SYST_METHOD).any())
    if source == "auto":  # the run-level test is systematics-aware (stages.globaltest)
        source = "global" if has_global else "binomial"
    # a count of failures is meaningful over the histogram tests; the network's Taylor
    # coefficients (strongly correlated among themselves) and the multivariate tests are
    # judged per test only
    usable = _ran(tests) & _reliable(tests) & _decisive(tests) & \
        tests["kind"].isin(COUNTED_KINDS).to_numpy(bool)
    p_values = tests["pvalue"].to_numpy(float)[usable]
    n_rel, n_failed = len(p_values), int((p_values < alpha).sum())
    expected = alpha * n_rel
    details: dict[str, Any] = {"source": source, "alpha": alpha, "n_failed": n_failed,
                               "n_reliable": n_rel, "n_expected": expected,
                               "threshold": rule.threshold}
    if source == "binomial":
        p = binomial_pvalue(n_failed, n_rel, alpha)
        family = "deciding histogram tests (systematics-aware)" if syst \
            else "reliable histogram tests"
        what = (f"{n_failed} failures of {n_rel} {family} at alpha={alpha:g} (expected "
                f"{expected:.1f}): binomial P(>= {n_failed}) = {format_p(p)}")
    else:
        column = "p_global_nfail" if source == "global" else "p_global_min"
        p = run.get(column)
        if _null(p):
            return RuleVerdict(rule.name, rule.kind, False,
                               f"the run has no run-level test ({column})", details,
                               rule.severity)
        if source == "global" and not math.isclose(alpha, run_alpha):
            return RuleVerdict(rule.name, rule.kind, False,
                               f"the run-level test counts failures at the run's alpha="
                               f"{run_alpha:g}, not {alpha:g}", details, rule.severity)
        p = float(p)
        n_glob = run.get("n_global_failed")
        what = (f"run-level test: P(>= {int(n_glob)} failures of {int(run['n_global_tests'])} "
                f"histogram tests) = {format_p(p)}" if source == "global"
                else f"run-level test: P(smallest p) = {format_p(p)}")
    details["p_value"] = p
    passed = not p < rule.threshold
    return RuleVerdict(rule.name, rule.kind, passed,
                       f"{what} {'>=' if passed else '<'} {rule.threshold:g}", details,
                       rule.severity)


def _uniformity(rule: UniformityRule, tables: Mapping[str, pd.DataFrame]) -> RuleVerdict:
    run, tests = _run_row(tables), _table(tables, "tests")
    everything = rule.select == Selection()
    syst = bool((tests["method"] == SYST_METHOD).any())
    source = rule.source
    if source == "auto":  # the stored figure is over every test, stat-only ones included
        source = "stored" if everything and not syst and not _null(run.get("p_uniformity")) \
            else "recompute"
    if source == "stored":
        p = run.get("p_uniformity")
        if _null(p):
            return RuleVerdict(rule.name, rule.kind, False, "the run has no stored "
                               "p_uniformity", {"source": source}, rule.severity)
        n = int(run["n_reliable"])
    else:
        usable = _ran(tests) & _reliable(tests) & _decisive(tests) & \
            _select(tests, rule.select) & tests["kind"].isin(COUNTED_KINDS).to_numpy(bool)
        values = tests["pvalue"].to_numpy(float)[usable]
        n = len(values)
        if n < 2:
            return RuleVerdict(rule.name, rule.kind, True, f"{n} reliable p-values selected: "
                               "too few to test uniformity", {"source": source, "n": n},
                               rule.severity)
        p = float(stats.kstest(values, "uniform").pvalue)
    p = float(p)
    passed = not p < rule.threshold
    return RuleVerdict(rule.name, rule.kind, passed,
                       f"{n} reliable p-values against U(0,1): KS p = {format_p(p)} "
                       f"{'>=' if passed else '<'} {rule.threshold:g}",
                       {"source": source, "n": n, "p_value": p, "threshold": rule.threshold},
                       rule.severity)


def _model_inputs(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    models = _table(tables, "models")
    inputs: list[str] = []
    for value in models["inputs"] if len(models) else []:
        if value is not None and not _null(value):
            inputs += [str(v) for v in value if str(v) not in inputs]
    return inputs


def _coverage(rule: CoverageRule, tables: Mapping[str, pd.DataFrame]) -> RuleVerdict:
    run, tests, features = _run_row(tables), _table(tables, "tests"), _table(tables, "features")
    audited = _model_audited(run)
    if rule.inputs == "model" and not audited:
        return RuleVerdict(rule.name, rule.kind, False, "no model audited: no inputs to cover",
                           {}, rule.severity)
    if rule.inputs == "features" or not audited:
        inputs = list(dict.fromkeys(features["feature"].astype(str))) if len(features) else []
        what = "features"
    else:
        inputs = _model_inputs(tables)
        what = "model inputs"
    if not inputs:
        return RuleVerdict(rule.name, rule.kind, False, f"no {what} to cover", {}, rule.severity)
    in_cats = _match_column(tests["category"], rule.categories) if len(tests) \
        else np.zeros(0, dtype=bool)
    checked = tests[in_cats]
    categories = sorted(set(checked["category"])) or [INCLUSIVE]
    ran = checked[_ran(checked)] if len(checked) else checked
    problems: list[str] = []
    details: dict[str, Any] = {"inputs": inputs, "categories": categories}
    if rule.require_1d:
        tested = set(zip(ran.loc[ran["feature_y"].isna(), "category"],
                         ran.loc[ran["feature_y"].isna(), "feature_x"], strict=True))
        missing = [f"{f}" + ("" if c == INCLUSIVE else f" [{c}]")
                   for c in categories for f in inputs if (c, f) not in tested]
        details["missing_1d"] = missing
        if missing:
            problems.append(f"{len(missing)} inputs without a 1D test that ran: "
                            + _listing(missing))
    if rule.require_pairs:
        paired = ran[ran["feature_y"].notna()]
        have = {(c, frozenset((x, y))) for c, x, y in zip(
            paired["category"], paired["feature_x"], paired["feature_y"], strict=True)}
        missing = [f"{a} × {b}" + ("" if c == INCLUSIVE else f" [{c}]")
                   for c in categories for a, b in combinations(inputs, 2)
                   if (c, frozenset((a, b))) not in have]
        details["missing_pairs"] = missing
        if missing:
            n_pairs = len(inputs) * (len(inputs) - 1) // 2 * len(categories)
            problems.append(f"{len(missing)} of {n_pairs} input pairs without a 2D test that "
                            "ran: " + _listing(missing))
    for limit, col, label in ((rule.max_nan_fraction, "n_nan", "NaN/inf"),
                              (rule.max_sentinel_fraction, "n_sentinel", "sentinel")):
        if limit is None:
            continue
        over = []
        incl = features[features["category"] == INCLUSIVE] if len(features) else features
        n_sim, n_data = max(int(run["n_sim"]), 1), max(int(run["n_data"]), 1)
        for _, f in incl.iterrows():
            if f["feature"] not in inputs:
                continue
            fs, fd = f[f"{col}_sim"] / n_sim, f[f"{col}_data"] / n_data
            if max(fs, fd) > limit:
                over.append(f"{f['feature']} (sim {fs:.1%}, data {fd:.1%})")
        details[f"over_{col}_fraction"] = over
        if over:
            problems.append(f"{len(over)} inputs above {limit:.1%} {label} values: "
                            + _listing(over))
    if rule.no_unrun:
        involved = checked["feature_x"].isin(inputs) | checked["feature_y"].isin(inputs)
        unrun = checked[involved & checked["not_run_reason"].notna()]
        details["not_run_test_ids"] = [int(i) for i in unrun["test_id"]]
        if len(unrun):
            problems.append(f"{len(unrun)} tests of inputs left unrun: " + _listing(
                [f"{_test_label(t)} ({t['not_run_reason']})" for _, t in unrun.iterrows()]))
    if problems:
        return RuleVerdict(rule.name, rule.kind, False, "; ".join(problems), details,
                           rule.severity)
    checks = [c for c, on in (("tested in 1D", rule.require_1d),
                              ("in every pair", rule.require_pairs),
                              ("NaN/sentinel fractions within limits",
                               rule.max_nan_fraction is not None
                               or rule.max_sentinel_fraction is not None),
                              ("no test left unrun", rule.no_unrun)) if on]
    return RuleVerdict(rule.name, rule.kind, True,
                       f"{len(inputs)} {what}: " + (", ".join(checks) or "nothing required"),
                       details, rule.severity)


def _importance(rule: ImportanceRule, tables: Mapping[str, pd.DataFrame]) -> RuleVerdict:
    run, crit = _run_row(tables), _table(tables, "criticality")
    if not _model_audited(run):
        return RuleVerdict(rule.name, rule.kind, not rule.required,
                           "no model audited" + (" (required)" if rule.required else ""), {},
                           rule.severity)
    if not len(crit):
        return RuleVerdict(rule.name, rule.kind, not rule.required,
                           "no importance ranking stored for the audited model"
                           + (" (required)" if rule.required else ""), {}, rule.severity)
    crit = crit.assign(_node=crit["node"].fillna(""), _param=crit["param_label"].fillna(""))
    chosen = []
    for _, group in crit.groupby(["_node", "_param"], sort=True):
        ranked = group.sort_values("importance_rank", kind="stable")
        inputs = ranked[ranked["degree"] == 1].head(rule.top_k)
        pairs = ranked[ranked["degree"] == 2]
        picked = pairs.head(rule.top_k_pairs)
        if rule.important_pairs:
            picked = pd.concat([picked, pairs[pairs["important"].fillna(False).astype(bool)]])
        chosen.append(inputs)
        chosen.append(picked.drop_duplicates(subset=["feature_x", "feature_y"]))
    items = pd.concat(chosen) if chosen else crit.head(0)
    failed = []
    for _, c in items.iterrows():
        label = c["feature_x"] if _null(c["feature_y"]) else f"{c['feature_x']} × {c['feature_y']}"
        where = ", ".join(str(v) for v in (c["node"], c["param_label"]) if not _null(v))
        label += f" ({where}, rank {int(c['importance_rank'])})" if where \
            else f" (rank {int(c['importance_rank'])})"
        if _null(c["worst_test_id"]):
            failed.append(f"{label}: not tested")
            continue
        if rule.threshold is None:
            bad = bool(c["mismodelled"]) if not _null(c["mismodelled"]) else False
        else:
            floor = rule.effect_floors.get(c["worst_effect_name"], 0.0)
            effect = c["worst_effect_size"]
            bad = (not _null(c["worst_p_holm"]) and c["worst_p_holm"] < rule.threshold
                   and (_null(effect) or abs(effect) >= floor))
        if bad:
            effect = "" if _null(c["worst_effect_size"]) else \
                f" {c['worst_effect_name']} {c['worst_effect_size']:.3g}"
            failed.append(f"{label}: {c['worst_method']} Holm p "
                          f"{format_p(c['worst_p_holm'])}{effect}")
    details = {"n_items": len(items), "failing": failed}
    n_in, n_pair = int((items["degree"] == 1).sum()), int((items["degree"] == 2).sum())
    if failed:
        return RuleVerdict(rule.name, rule.kind, False,
                           f"{len(failed)} of {len(items)} important inputs/pairs fail: "
                           + _listing(failed), details, rule.severity)
    return RuleVerdict(rule.name, rule.kind, True,
                       f"the {n_in} most important inputs and {n_pair} important pairs pass",
                       details, rule.severity)


def _run_config(rule: RunConfigRule, tables: Mapping[str, pd.DataFrame]) -> RuleVerdict:
    run, tests = _run_row(tables), _table(tables, "tests")
    config = _config(run)
    checks = {
        "systematics": (rule.require_systematics, bool(config.get("systematics")),
                        "no systematics"),
        "toys": (rule.require_toys, bool((tests["pvalue_method"] == "toys").any()),
                 "no toy p-values"),
        "model": (rule.require_model, _model_audited(run), "no model audited"),
        "blinding": (rule.require_blinding, not _null(config.get("blind"))
                     and bool(config.get("blind")), "no blinding (--blind)"),
    }
    missing = [why for required, ok, why in checks.values() if required and not ok]
    required = [k for k, (req, _, _) in checks.items() if req]
    details = {k: ok for k, (_, ok, _) in checks.items()}
    if missing:
        return RuleVerdict(rule.name, rule.kind, False, "; ".join(missing), details,
                           rule.severity)
    return RuleVerdict(rule.name, rule.kind, True,
                       ("present: " + ", ".join(required)) if required else "nothing required",
                       details, rule.severity)


def _closure(rule: ClosureRule, tables: Mapping[str, pd.DataFrame]) -> RuleVerdict:
    """Every correction the run applies has a closure run on ``rule.half`` whose gate passed
    (``closure_runs``: the other runs that applied the same file, by its sha256, as the one
    loader gives them); the run that is itself such a closure is judged by the other rules."""
    applied = _table(tables, "corrections")
    if len(applied):
        applied = applied[applied["role"] == "closure"]
    if not len(applied):
        return RuleVerdict(rule.name, rule.kind, True, "the run applies no correction", {},
                           rule.severity)
    closures = tables.get("closure_runs")
    closed, missing = [], []
    for _, c in applied.iterrows():
        if c["half"] == rule.half:
            closed.append(f"{c['name']}: this run is its {rule.half} closure")
            continue
        if closures is None:
            missing.append(f"{c['name']}: the runs of the database are not at hand (a run "
                           "not stored: judge it with 'validator gate --db')")
            continue
        runs = closures[(closures["sha256"] == c["sha256"]) & (closures["half"] == rule.half)]
        passing = [r for r, ok in zip(runs["run_id"], runs["gate_passed"], strict=True)
                   if not _null(ok) and bool(ok)]
        if passing:
            closed.append(f"{c['name']}: {rule.half} closure run {passing[-1]} passed")
        else:
            tried = f" ({len(runs)} {rule.half} closure run(s), none passed its gate)" \
                if len(runs) else ""
            missing.append(f"{c['name']} (sha256 {str(c['sha256'])[:12]}): no passing "
                           f"{rule.half} closure{tried}")
    details = {"closed": closed, "missing": missing}
    if missing:
        return RuleVerdict(rule.name, rule.kind, False, "; ".join(missing), details,
                           rule.severity)
    return RuleVerdict(rule.name, rule.kind, True, "; ".join(closed), details, rule.severity)


def judge(tables: Mapping[str, pd.DataFrame], rules: RulesFile) -> Verdict:
    """Judge one run's tables against the rules; recomputes no test.

    ``tables`` maps table names (``runs`` with one row, ``tests``, ``features``, and optionally
    ``models`` and ``criticality``) to DataFrames with the columns of docs/schema.md.
    """
    run = _run_row(tables)
    verdicts: list[RuleVerdict] = []
    failing: list[dict[str, Any]] = []
    for rule in rules.rules:
        if isinstance(rule, PerTestRule):
            verdicts.append(_per_test(rule, tables, failing))
        elif isinstance(rule, FailureCountRule):
            verdicts.append(_failure_count(rule, tables))
        elif isinstance(rule, UniformityRule):
            verdicts.append(_uniformity(rule, tables))
        elif isinstance(rule, CoverageRule):
            verdicts.append(_coverage(rule, tables))
        elif isinstance(rule, ImportanceRule):
            verdicts.append(_importance(rule, tables))
        elif isinstance(rule, RunConfigRule):
            verdicts.append(_run_config(rule, tables))
        elif isinstance(rule, ClosureRule):
            verdicts.append(_closure(rule, tables))
        else:  # pragma: no cover - the discriminated union admits no other kind
            raise TypeError(f"unknown rule kind {type(rule).__name__}")
    seen: set[int] = set()
    unique = []
    for t in failing:  # a test failing several rules is one failing test
        if int(t["test_id"]) not in seen:
            seen.add(int(t["test_id"]))
            unique.append(t)
    return Verdict(run_id=str(run["run_id"]), rules_name=rules.name or "rules",
                   rules_sha256=rules.sha256, rules=verdicts, failing_tests=unique)


# ------------------------------------------------------------------ stored runs


def _details_json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def verdict_rows(verdict: Verdict) -> list[dict[str, Any]]:
    """The ``gate_results`` rows of a verdict (one per rule)."""
    judged = verdict.judged_at or datetime.now(timezone.utc).replace(tzinfo=None)
    return [{"run_id": verdict.run_id, "verdict_id": verdict.verdict_id, "judged_at": judged,
             "rules_name": verdict.rules_name, "rules_sha256": verdict.rules_sha256,
             "rule": r.name, "rule_kind": r.kind, "passed": r.passed, "reason": r.reason,
             "details": json.dumps({**r.details, "severity": r.severity},
                                   default=_details_json)}
            for r in verdict.rules]


def stamp(verdict: Verdict) -> Verdict:
    """The verdict with a new ``verdict_id`` and ``judged_at`` (UTC), ready to store."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    return replace(verdict, judged_at=now,
                   verdict_id=f"{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}")


def save(db: str | Path, verdict: Verdict) -> Verdict:
    """Add a verdict to the run's ``gate_results`` and set ``runs.gate_passed``."""
    from validator.results.store import DatabaseBusy, save_verdict

    verdict = stamp(verdict) if verdict.verdict_id is None else verdict
    try:
        save_verdict(db, verdict.run_id, verdict_rows(verdict), verdict.passed,
                     verdict.rules_name, verdict.rules_sha256)
    except DatabaseBusy as exc:  # the verdict is not lost: judging again recomputes nothing
        raise InputError(f"{exc}; the verdict was not stored (judge the run again with "
                         "'validator gate' once the database is free)") from exc
    return verdict


def judge_stored(db: str | Path, run: str, rules: str | Path | RulesFile) -> Verdict:
    """Judge a stored run (``latest``, an id or a prefix) and add the verdict to the database.

    The rules are validated before the database is read. Nothing is recomputed: re-judging
    with another rules file adds another verdict set.
    """
    from validator.results.tables import load_run_tables

    spec = rules if isinstance(rules, RulesFile) else load_rules(rules)
    db = Path(db)
    verdict = judge(load_run_tables(db, run, tables=GATE_TABLES), spec)
    return save(db, verdict)


# ------------------------------------------------------------------ terminal


def verdict_lines(verdict: Verdict) -> list[str]:
    """One line per rule, then the gate's verdict (plain text, for the terminal and logs),
    worded as every face words it (:class:`validator.results.reading.VerdictSummary`)."""
    from validator.results.reading import verdict_summary

    summary = verdict_summary(verdict_rows(verdict))
    lines = [f"{r.status}  {r.name} ({r.kind}): {r.reason}" for r in summary.rules]
    sha = f", sha256 {verdict.rules_sha256[:12]}" if verdict.rules_sha256 else ""
    lines.append(f"{summary.headline()[:-1]}{sha}; run {verdict.run_id})")
    return lines
