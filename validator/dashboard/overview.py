"""Overview of a run: the gate verdict and failing rules, tests vs expected failures, the
p-value distribution against the uniform expectation, and the worst problems (grouped by
feature and pair as in the terminal summary and the reports), each linking to its detail."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from validator.dashboard import common, data, plots, static
from validator.results.reading import WHAT, Problem, RunReading

#: Worst problems listed with a link by default.
TOP = 10


def problem_link(p: Problem, run_id: str) -> tuple[str, dict[str, str]]:
    """The page file and query parameters of a problem's detail."""
    if p.node is not None:  # a Taylor coefficient of the network
        return common.PAGE_FILES["model"], {"run": run_id}
    if p.feature_y is None:
        return common.PAGE_FILES["inputs"], {"run": run_id, "feature": p.feature_x,
                                             "category": p.category}
    return common.PAGE_FILES["pairs"], {"run": run_id, "x": p.feature_x, "y": p.feature_y,
                                        "category": p.category}


def problems_frame(found: list[Problem]) -> pd.DataFrame:
    """The worst problems as a table."""
    return pd.DataFrame([{
        "what": WHAT[p.what], "feature / pair": p.name, "category": p.category,
        "flagged by (Holm < alpha)": p.flagged_by, "p (Holm)": p.p_holm,
        "p": p.pvalue, "p is a bound": p.bound, "effect": p.effect_size,
        "effect name": p.effect_name} for p in found],
        columns=["what", "feature / pair", "category", "flagged by (Holm < alpha)",
                 "p (Holm)", "p", "p is a bound", "effect", "effect name"])


def _verdict(reading: RunReading) -> None:
    v = reading.verdict
    if not v.judged:
        st.info("not judged: no rules file has judged this run (validator gate --db ... "
                "--rules rules/default.yaml)")
        return
    text = f"{v.headline()} · judged {str(v.judged_at)[:16]} UTC"
    (st.success if v.passed else st.error)(text)
    for title, items in (("Failing rules", v.failed),
                         ("Warnings (do not fail the gate)", v.warnings)):
        if items:
            st.markdown(f"**{title}**")
            st.dataframe(pd.DataFrame([{"rule": r.name, "kind": r.kind, "reason": r.reason}
                                       for r in items]), hide_index=True, width="stretch")


def _counts(reading: RunReading) -> None:
    c = reading.counts
    cols = st.columns(6)
    cols[0].metric("tests", f"{c.n_tests:,}", help=f"{c.n_reliable:,} reliable, "
                                                   f"{c.n_decisive:,} deciding")
    cols[1].metric("failed at alpha", c.n_failed, delta=f"{c.n_expected:.1f} expected",
                   delta_color="off", delta_arrow="off")
    cols[2].metric("significant (Holm)", c.n_significant,
                   help=reading.significance_line())
    cols[3].metric("covered by systematics" if reading.systematics else "significant (BH)",
                   c.n_stat_only if reading.systematics else c.n_significant_bh)
    cols[4].metric("not run", c.n_not_run)
    norm = reading.normalisation
    cols[5].metric("data / sim", f"{norm.ratio:.4f}", delta=f"± {norm.error:.4f}",
                   delta_color="off", delta_arrow="off")
    for line in reading.count_lines()[2:]:
        st.caption(line)


def _evidently(run: dict) -> None:
    """A link to (and a download of) evidently's drift report, when the run wrote one
    (``--evidently-report``): its per-column results are the ``evidently`` rows."""
    config = data.details(run.get("config_json")) if run.get("config_json") else {}
    path = config.get("evidently_report") if isinstance(config, dict) else None
    if not path:
        return
    report = Path(path)
    st.subheader("evidently's drift report")
    if not report.is_file():
        st.caption(f"written to {report} by the run, no longer there")
        return
    st.caption(f"{report} (evidently's DataDriftPreset on the multivariate subsample, "
               "unweighted; its per-column results are the tests of kind 'evidently')")
    st.download_button("evidently report (HTML)", report.read_bytes(), file_name=report.name,
                       mime="text/html", key="ov-evidently")


def render() -> None:
    """Draw the Overview page."""
    db, run_id = common.db(), common.run_id()
    st.title("Overview")
    if run_id is None:
        st.info("this database holds no run yet: validator run --sim ... --data ... --db "
                f"{db.name}")
        return
    run = data.run(db, run_id)
    tags = data.tags(run.get("tags"))
    st.markdown(f"Run `{run_id}`" + (" · " + ", ".join(f"`{k}={v}`" for k, v in tags.items())
                                     if tags else "")
                + f" · started {str(run.get('started_at'))[:16]} UTC · validator "
                  f"{run.get('tool_version')}")
    st.caption(f"simulation: {', '.join(run.get('sim_paths') or [])} · data: "
               f"{', '.join(run.get('data_paths') or [])}"
               + (f" · model {run['model_id'][:12]}…" if run.get("model_id") else
                  " · no model audited (--model)"))
    reading = data.reading(db, run_id)
    _verdict(reading)
    _counts(reading)

    tests = reading.tests
    found = reading.problems
    reliable = tests[(tests["reliable"] == True) & tests["pvalue"].notna()  # noqa: E712
                     & (tests["kind"] != "taylor")]
    left, right = st.columns([3, 2])
    with right:
        st.subheader("p-values vs uniform")
        pv = [float(p) for p in reliable["pvalue"]]
        p_unif = run.get("p_uniformity")
        st.caption(f"{len(pv):,} reliable goodness-of-fit tests; under the null they are "
                   "uniform. KS p-value of uniformity "
                   f"{common.fmt_p(p_unif)} (an indicator: the tests are correlated)")
        if pv:
            common.show_figure(lambda: plots.pvalue_hist_figure(pv),
                               lambda: static.pvalue_hist(pv, title=f"run {run_id}"),
                               f"pvalues_{run_id}", "ov-phist")
    with left:
        st.subheader(f"Worst problems ({reading.significance_line()})")
        top = st.slider("listed", 1, max(1, min(50, len(found))), min(TOP, max(1, len(found))),
                        key="ov-top") if len(found) > 1 else len(found)
        for n, p in enumerate(found[:top], 1):
            page, params = problem_link(p, run_id)
            flag = f":red[**{WHAT[p.what]}**]" if p.significant else f":gray[{WHAT[p.what]}]"
            eff = "" if p.effect_size is None or not math.isfinite(p.effect_size) else \
                f" · {p.effect_name} {p.effect_size:.3g}"
            by = f" · flagged by {p.flagged_by}" if p.methods or p.stat_only else ""
            link, what = st.columns([2, 3], vertical_alignment="center")
            link.page_link(page, label=f"{n}. {p.name}", query_params=params,
                           icon=":material/arrow_forward:")
            what.markdown(f"{flag} · p (Holm) {common.fmt_p(p.p_holm, p.bound)}{eff}{by}")
    st.subheader("All features and pairs, worst first")
    common.table(problems_frame(found), f"problems_{run_id}", "ov-problems",
                 column_config={"p (Holm)": st.column_config.NumberColumn(format="%.3e"),
                                "p": st.column_config.NumberColumn(format="%.3e"),
                                "effect": st.column_config.NumberColumn(format="%.4g")})
    notes = run.get("notes") or []
    skipped = data.skipped(db, run_id)
    if notes or len(skipped):
        with st.expander(f"notes ({len(notes)}) and columns not tested ({len(skipped)})"):
            for note in notes:
                st.markdown(f"- {note}")
            if len(skipped):
                st.dataframe(skipped[["column_name", "reason"]], hide_index=True)
    _evidently(run)
    if run.get("config_json"):
        with st.expander("the run's effective configuration"):
            st.json(data.details(run["config_json"]), expanded=False)
            if run.get("command"):
                st.code(run["command"], language="bash")
