"""History / monitoring: the runs of one model over time or by tag (e.g. one run per era):
failures, the worst p-values and the importances as they move; and two runs side by side
with the tests that newly fail or newly pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from validator.dashboard import common, data, plots, static
from validator.results.format import UNDERFLOW, format_p, neg_log10

#: Tests of two runs are the same test when these agree.
MATCH = ["category", "kind", "method", "feature_x", "feature_y", "node"]
NO_MODEL = "(runs without a model)"
BY_TIME = "start time"


def _key(frame: pd.DataFrame) -> pd.Series:
    return frame[MATCH].astype(str).agg(" | ".join, axis=1)


def compare_runs(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Tests of run A and run B matched on (category, kind, method, feature_x, feature_y,
    node), with ``change``: ``newly fails``, ``newly passes``, ``still fails``, ``passes``,
    ``only in A``, ``only in B``, ``not run`` (``passed`` NULL in either)."""
    keep = [*MATCH, "pvalue", "p_holm", "effect_size", "passed"]
    left = a[keep].assign(_k=_key(a))
    right = b[keep].assign(_k=_key(b))
    merged = left.merge(right[["_k", "pvalue", "p_holm", "effect_size", "passed"]], on="_k",
                        how="outer", suffixes=(" A", " B"), indicator=True)
    for c in MATCH:  # rows only in B take their identity from B
        only_b = merged["_merge"] == "right_only"
        if only_b.any():
            ids = right.set_index("_k")[c]
            merged.loc[only_b, c] = merged.loc[only_b, "_k"].map(ids)

    def change(r: pd.Series) -> str:
        if r["_merge"] == "left_only":
            return "only in A"
        if r["_merge"] == "right_only":
            return "only in B"
        pa, pb = r["passed A"], r["passed B"]
        if pa is None or pb is None or pd.isna(pa) or pd.isna(pb):
            return "not run"
        if bool(pa) and not bool(pb):
            return "newly fails"
        if not bool(pa) and bool(pb):
            return "newly passes"
        return "still fails" if not bool(pb) else "passes"

    merged["change"] = merged.apply(change, axis=1) if len(merged) else []
    order = {"newly fails": 0, "newly passes": 1, "still fails": 2, "only in B": 3,
             "only in A": 4, "not run": 5, "passes": 6}
    merged["_o"] = merged["change"].map(order)
    merged = merged.sort_values(["_o", "p_holm B"], na_position="last")
    return merged[["change", *MATCH, "p_holm A", "p_holm B", "pvalue A", "pvalue B",
                   "effect_size A", "effect_size B"]].reset_index(drop=True)


def _x_labels(runs: pd.DataFrame, by: str) -> list[str]:
    out = []
    for r in data.records(runs):
        if by == BY_TIME:
            out.append(f"{str(r['started_at'])[:16]} ({r['run_id'][-6:]})")
        else:
            out.append(f"{by}={data.tags(r.get('tags')).get(by, '?')} ({r['run_id'][-6:]})")
    return out


def _neglog(p: Any) -> float:
    value = neg_log10(p)
    return float("nan") if value is None else value


def _flag(value: Any) -> bool:
    return bool(value) if value is not None and not pd.isna(value) else False


def worst_points(pvalues: Sequence[Any], is_bound: Sequence[Any] | None = None,
                 ) -> tuple[list[float], list[str | None]]:
    """-log10 of each run's smallest p-value, and for each None (an exact p) or the label
    of a bound: an underflowed p (0 or below 1e-300) sits at the cap -log10 1e-300 = 300
    and is labelled ``p < 1e-300``; a toy bound (``pvalue_is_bound``) at its value, labelled
    ``p < 1.0e-04`` (the one formatter, :func:`validator.results.format.format_p`)."""
    values, marks = [], []
    flags = list(is_bound) if is_bound is not None else [False] * len(pvalues)
    for p, b in zip(pvalues, flags, strict=True):
        values.append(_neglog(p))
        bound = _flag(b)
        underflow = p is not None and not pd.isna(p) and float(p) < UNDERFLOW
        marks.append(format_p(p, bound=bound) if (underflow or bound) else None)
    return values, marks


def render() -> None:
    """Draw the History page."""
    db = common.db()
    st.title("History / monitoring")
    runs_all = data.runs(db)
    if not len(runs_all):
        st.info("this database holds no run yet")
        return
    models = [m for m in dict.fromkeys(runs_all["model_id"]) if isinstance(m, str)]
    options = models + ([NO_MODEL] if runs_all["model_id"].isna().any() else [])
    current = data.run(db, common.run_id()) if common.run_id() else {}
    default = current.get("model_id") or NO_MODEL
    paths = {r["model_id"]: r["path"] for r in data.records(data.all_models(db))}
    c1, c2 = st.columns(2)
    with c1:
        model = st.selectbox(
            "model", options, index=options.index(default) if default in options else 0,
            key="hi-model", format_func=lambda m: m if m == NO_MODEL else
            f"{m[:12]}… {paths.get(m, '')}")
    runs = data.model_runs(db, None if model == NO_MODEL else model)
    keys = sorted({k for t in runs["tags"] for k in data.tags(t)})
    with c2:
        by = st.selectbox("runs by", [BY_TIME, *keys], key="hi-by",
                          index=1 if keys else 0)
    if by != BY_TIME:
        runs = runs.assign(_t=[data.tags(t).get(by, "") for t in runs["tags"]])
        runs = runs.sort_values(["_t", "started_at"]).drop(columns="_t")
    x = _x_labels(runs, by)
    st.caption(f"{len(runs)} runs" + (f" of model {model[:12]}…" if model != NO_MODEL else
                                      " without a model"))
    overview = pd.DataFrame({
        "run": x, "run_id": runs["run_id"].to_numpy(),
        "tags": [", ".join(f"{k}={v}" for k, v in data.tags(t).items()) for t in runs["tags"]],
        "tests": runs["n_tests"].to_numpy(), "failed": runs["n_failed"].to_numpy(),
        "expected": runs["n_expected_failures"].to_numpy(),
        "significant (Holm)": runs["n_significant_holm"].to_numpy(),
        "smallest p": [format_p(p, bound=_flag(b)) for p, b in
                       zip(runs["min_p"], runs["min_p_is_bound"], strict=True)],
        "smallest p (Holm)": [format_p(p, bound=_flag(b)) for p, b in
                              zip(runs["min_p_holm"], runs["min_p_holm_is_bound"],
                                  strict=True)],
        "gate passed": runs["gate_passed"].to_numpy()})
    common.table(overview, f"history_{model[:12]}", "hi-runs")
    left, right = st.columns(2)
    fails = {"failed": [float(v) for v in overview["failed"]],
             "expected": [float(v) for v in overview["expected"]],
             "significant (Holm)": [float(v) for v in overview["significant (Holm)"]]}
    with left:
        common.show_figure(lambda: plots.lines_figure(x, fails, "tests", "failures per run"),
                           lambda: static.lines(x, fails, "tests", "failures per run"),
                           "history_failures", "hi-fails")
    worst: dict[str, list[float]] = {}
    marks: dict[str, list[str | None]] = {}
    for name, column, flag in (("smallest p", "min_p", "min_p_is_bound"),
                               ("smallest p (Holm)", "min_p_holm", "min_p_holm_is_bound")):
        worst[name], marks[name] = worst_points(list(runs[column]), list(runs[flag]))
    with right:
        common.show_figure(
            lambda: plots.lines_figure(x, worst, "−log10 p", "worst p-values", bounds=marks),
            lambda: static.lines(x, worst, "−log10 p", "worst p-values", bounds=marks),
            "history_worst_p", "hi-worst")
        n_bounds = sum(m is not None for v in marks.values() for m in v)
        if n_bounds:
            st.caption(f"▲ {n_bounds} bounds: a p-value that underflowed (p < 1e-300) is "
                       "drawn at the cap −log10 p = 300, a toy bound at its bound; the true "
                       "−log10 p is at least the marker")
    if model != NO_MODEL:
        imp = data.model_importances(db, model)
        imp = imp[(imp["method"] == "taylor") & (imp["sample"] == "data")
                  & imp["param_label"].isna()]
        nodes = sorted(set(imp["node"]), key=lambda n: (not str(n).startswith("all"), str(n)))
        if nodes:
            st.subheader("Importances as they move (first-order Taylor, data, scaled)")
            node = st.selectbox("node", nodes, key="hi-node")
            sel = imp[imp["node"] == node]
            table = sel.pivot_table(index="feature_x", columns="run_id", values="scaled_value")
            table = table.reindex(columns=[r for r in runs["run_id"] if r in table.columns])
            top = table.mean(axis=1).sort_values(ascending=False).index[:8]
            lab = dict(zip(runs["run_id"], x, strict=True))
            xs = [lab[r] for r in table.columns]
            series = {str(f): [float(v) for v in table.loc[f]] for f in top}
            common.show_figure(
                lambda: plots.lines_figure(xs, series, "⟨|t_i|⟩·σ_i (data)",
                                           f"the 8 most important inputs, node {node}"),
                lambda: static.lines(xs, series, "⟨|t_i|⟩·σ_i (data)",
                                     f"the 8 most important inputs, node {node}"),
                "history_importances", "hi-imp")
    chains = data.correction_chains(db)
    if len(chains):
        st.subheader("Corrections: run → correction → closure runs")
        st.dataframe(chains.assign(
            sha256=[str(s)[:12] for s in chains["sha256"]],
            gate=["passed" if g is True or g == 1 else "failed" if g is False or g == 0
                  else "—" for g in chains["gate_passed"]]).drop(columns="gate_passed"),
            hide_index=True)
        st.caption("validator correct derives a correction on the training half of a run's "
                   "events; a closure run (validator run --apply) tests it on the held-out "
                   "half; the gate's closure rule asks for a passing held-out closure")
    st.subheader("Two runs side by side")
    ids = list(runs["run_id"]) if len(runs) >= 2 else list(runs_all["run_id"])
    if len(ids) < 2:
        st.info("one run only: nothing to compare yet")
        return
    label = {r["run_id"]: data.run_label(r) for r in data.records(runs_all)}
    a_col, b_col = st.columns(2)
    with a_col:
        run_a = st.selectbox("run A (before)", ids, index=len(ids) - 2, key="hi-a",
                             format_func=lambda r: label.get(r, r))
    with b_col:
        run_b = st.selectbox("run B (after)", ids, index=len(ids) - 1, key="hi-b",
                             format_func=lambda r: label.get(r, r))
    diff = compare_runs(data.tests(db, run_a), data.tests(db, run_b))
    counts = diff["change"].value_counts()
    cols = st.columns(4)
    for col, what in zip(cols, ("newly fails", "newly passes", "still fails", "only in B"),
                         strict=True):
        col.metric(what, int(counts.get(what, 0)))
    changed = diff[diff["change"] != "passes"]
    st.caption(f"{len(diff):,} tests matched on {', '.join(MATCH)}; {len(changed):,} not "
               "passing in both")
    common.table(changed, f"compare_{run_a}_{run_b}", "hi-diff", column_config={
        c: st.column_config.NumberColumn(format="%.3e") for c in
        ("p_holm A", "p_holm B", "pvalue A", "pvalue B")})
    ra, rb = data.run(db, run_a), data.run(db, run_b)
    def column(r: dict) -> list[str]:
        expected = r.get("n_expected_failures")
        return [str(r.get("n_tests")), str(r.get("n_failed")),
                "-" if expected is None else f"{float(expected):.3g}",
                str(r.get("n_significant_holm")), str(r.get("gate_passed")),
                str(r.get("tags")), str(r.get("model_id"))[:12]]

    side = pd.DataFrame({
        "": ["tests", "failed", "expected failures", "significant (Holm)", "gate passed",
             "tags", "model"], "A": column(ra), "B": column(rb)})
    st.dataframe(side, hide_index=True)
