"""Inputs (1D): per feature and category, simulation (stacked by process when the run stored
processes) vs data with the simulation's statistical (and systematic) band and the
data/simulation ratio, every test of the feature, and the post-fit nuisance pulls of the
systematic test when the run has systematics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from validator.dashboard import common, data, plots, static


def pick(label: str, options: list[str], key: str, wanted: str | None) -> str:
    """A selectbox whose first value may come from a link (``?feature=...``)."""
    if wanted in options and st.session_state.get(f"_{key}_link") != wanted:
        st.session_state[key] = wanted
        st.session_state[f"_{key}_link"] = wanted
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    return st.selectbox(label, options, key=key)


def static_feature(nominal: dict[str, Any], variations: list[dict[str, Any]], feature: str,
                    category: str, pvalues: dict[str, float], display: Any = None) -> Any:
    """The report's figure of a feature (``display``: the run's
    :class:`~validator.results.display.RunDisplay`, its labels and experiment label)."""
    from validator.output import figures
    from validator.output.documents import syst_band

    sim, counts = figures.hist1d_from_row(nominal)
    procs = {str(v["variation"])[len("process:"):]: figures.Hist1D(
        sim.edges, figures.as_array(v["sim_sumw"]), figures.as_array(v["sim_sumw2"]))
        for v in variations if str(v.get("variation", "")).startswith("process:")}
    systs = {str(v["variation"]): figures.as_array(v["sim_sumw"]) for v in variations
             if not str(v.get("variation", "")).startswith("process:")}
    return figures.plot_feature(procs or sim, counts, feature, pvalues=pvalues,
                                category=category, syst=syst_band(sim.sumw, systs),
                                display=display.of(feature) if display else None,
                                experiment=display.experiment if display else None)


def nuisance_pulls(tests: pd.DataFrame) -> list[dict[str, Any]]:
    """The post-fit nuisances of ``saturated_syst`` tests (``details.nuisances``, or
    ``details.pulls``): one row per test and nuisance."""
    rows = []
    for t in data.records(tests[tests["method"] == "saturated_syst"]):
        d = data.details(t.get("details"))
        found = d.get("nuisances") or d.get("pulls") or {}
        if isinstance(found, dict):
            for name, v in found.items():
                v = v if isinstance(v, dict) else {"pull": v}
                rows.append({"nuisance": name, "kind": v.get("kind"),
                             "pull": v.get("pull", v.get("value")), "error": v.get("error"),
                             "category": t.get("category"), "test_id": t.get("test_id")})
    return rows


def render() -> None:
    """Draw the Inputs (1D) page."""
    db, run_id = common.db(), common.run_id()
    st.title("Inputs (1D)")
    if run_id is None:
        st.info("this database holds no run yet")
        return
    feats = data.features(db, run_id)
    if not len(feats):
        st.info("this run has no tested feature")
        return
    qp = st.query_params
    categories = sorted(set(feats["category"]), key=lambda c: (c != "all", c))
    left, right = st.columns(2)
    with left:
        category = pick("category", categories, "in-category", qp.get("category"))
    tests = data.tests(db, run_id)
    mine = tests[tests["category"] == category]
    names = list(dict.fromkeys(feats[feats["category"] == category]["feature"]))
    # worst first: the order of the terminal summary
    order = [p.feature_x for p in data.reading(db, run_id).problems
             if p.category == category and p.feature_y is None and p.node is None]
    names = [n for n in dict.fromkeys(order) if n in names] + \
        [n for n in names if n not in order]
    with right:
        feature = pick("feature (worst first)", names, "in-feature", qp.get("feature"))

    one_d = mine[(mine["feature_x"] == feature) & mine["feature_y"].isna()]
    pvalues = {str(t["method"]): float(t["p_holm"]) for t in data.records(one_d)
               if t.get("p_holm") is not None and t.get("kind") != "taylor"}
    nominal, variations = data.hist_plot(db, run_id, category, feature)
    if nominal is None:
        st.info("no plotting histogram stored for this feature (a run of an older "
                "validator): the tests are below")
    else:
        name = f"{feature}_{category}_{run_id}"
        title = feature + (f" [{category}]" if category != "all" else "") + (
            "  ·  p (Holm): " + ", ".join(f"{m} {common.fmt_p(p)}" for m, p in pvalues.items())
            if pvalues else "")
        display = data.reading(db, run_id).display  # labels, units, scales of the run
        shown = display.of(feature)
        common.show_figure(
            lambda: plots.feature_figure(nominal, variations, feature, title=title,
                                         xtitle=plots.plotly_label(shown.axis_label(feature)),
                                         log_y=shown.logy, log_x=bool(shown.logx),
                                         x_range=shown.range),
            lambda: static_feature(nominal, variations, feature, category, pvalues,
                                   display=display),
            name, "in-fig")
        bands = plots.feature_bands(nominal, variations)
        st.caption(f"simulation normalised to data (k = {bands['k']:.4f}); band: statistical "
                   "sqrt(Σw²)" + (" ⊕ systematic (" + ", ".join(bands["systematics"])
                                  + ", each normalised to data)" if bands["systematics"]
                                  else "") + "; data: Garwood 68% Poisson intervals"
                   + ("; stacked by process" if bands["processes"] else ""))
    f_row = data.records(feats[(feats["category"] == category) & (feats["feature"] == feature)])
    if f_row:
        r = f_row[0]
        st.caption(f"mean sim {r.get('mean_sim') or float('nan'):.4g} vs data "
                   f"{r.get('mean_data') or float('nan'):.4g}; std sim "
                   f"{r.get('std_sim') or float('nan'):.4g} vs data "
                   f"{r.get('std_data') or float('nan'):.4g}; NaN/inf sim {r.get('n_nan_sim')}, "
                   f"data {r.get('n_nan_data')}; sentinels sim {r.get('n_sentinel_sim')}, "
                   f"data {r.get('n_sentinel_data')} ({r.get('kind')})")
    st.subheader(f"Tests of {feature}")
    common.table(common.test_table(one_d), f"tests_{feature}_{category}_{run_id}", "in-tests",
                 column_config=common.P_FORMAT)
    pairs = mine[mine["feature_y"].notna() & ((mine["feature_x"] == feature)
                                              | (mine["feature_y"] == feature))]
    if len(pairs):
        with st.expander(f"{len(pairs)} pair tests involving {feature}"):
            common.table(common.test_table(pairs.sort_values("pvalue")),
                         f"pair_tests_{feature}_{category}_{run_id}", "in-pairs",
                         column_config=common.P_FORMAT)
    pulls = nuisance_pulls(one_d)
    if pulls:
        st.subheader("Post-fit nuisance pulls (systematics)")
        names_ = [str(p["nuisance"]) for p in pulls]
        values = [float(p["pull"]) if p["pull"] is not None else np.nan for p in pulls]
        errors = [float(p["error"]) if p["error"] is not None else 0.0 for p in pulls]
        common.show_figure(
            lambda: plots.pulls_figure(names_, values, errors, f"saturated_syst fit: {feature}"),
            lambda: static.pulls(names_, values, errors, f"saturated_syst fit: {feature}"),
            f"pulls_{feature}_{category}_{run_id}", "in-pulls")
        st.dataframe(pd.DataFrame(pulls), hide_index=True)
    effects = data.syst_effects(db, run_id)
    effects = effects[(effects["feature"] == feature) & (effects["category"] == category)]
    if len(effects):
        with st.expander("shape change of each systematic on this feature"):
            st.dataframe(effects[["systematic", "shape_change_up", "shape_change_down"]],
                         hide_index=True)
