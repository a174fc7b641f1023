"""Model: what the audited network relies on, in simulation and in data: first-order Taylor
coefficients (bars, simulation vs data), the second-order matrix, SHAP, the output
distributions, and the criticality table (importance beside mismodelling); per parameter
value for a parametric network."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from validator.dashboard import common, data, plots, static


def first_order(imp: pd.DataFrame, method: str, scaled: bool) -> pd.DataFrame:
    """One row per input: simulation and data values and errors, most important (in
    simulation) first."""
    sel = imp[(imp["method"] == method) & (imp["degree"] == 1)]
    value, err = ("scaled_value", "scaled_uncertainty") if scaled else ("value", "uncertainty")
    out = []
    for x, group in sel.groupby("feature_x", sort=False):
        row: dict[str, Any] = {"input": x}
        for sample, name in (("sim", "simulation"), ("data", "data")):
            g = group[group["sample"] == sample]
            row[name] = float(g[value].iloc[0]) if len(g) and pd.notna(g[value].iloc[0]) \
                else np.nan
            row[f"± {name}"] = float(g[err].iloc[0]) if len(g) and pd.notna(g[err].iloc[0]) \
                else np.nan
        out.append(row)
    frame = pd.DataFrame(out, columns=["input", "simulation", "± simulation", "data",
                                       "± data"])
    return frame.sort_values("simulation", ascending=False, na_position="last")


def second_order(imp: pd.DataFrame, sample: str, inputs: list[str]) -> np.ndarray:
    """The symmetric matrix of scaled second-order Taylor coefficients of one sample."""
    index = {f: i for i, f in enumerate(inputs)}
    m = np.full((len(inputs), len(inputs)), np.nan)
    sel = imp[(imp["method"] == "taylor") & (imp["degree"] == 2) & (imp["sample"] == sample)]
    for r in data.records(sel):
        i, j = index.get(r["feature_x"]), index.get(r["feature_y"])
        if i is not None and j is not None and r.get("scaled_value") is not None:
            m[i, j] = m[j, i] = float(r["scaled_value"])
    return m


def _bars(frame: pd.DataFrame, ylabel: str, title: str, name: str, key: str) -> None:
    labels = list(frame["input"])
    series = {"simulation": (list(frame["simulation"]), list(frame["± simulation"])),
              "data": (list(frame["data"]), list(frame["± data"]))}
    common.show_figure(lambda: plots.bars_figure(labels, series, ylabel, title),
                       lambda: static.bars(labels, series, ylabel, title), name, key)


def _outputs(db: Any, run_id: str, outputs: list[str], tests: pd.DataFrame) -> None:
    from validator.dashboard.inputs import static_feature

    for out in outputs:
        nominal, variations = data.hist_plot(db, run_id, "all", out)
        mine = tests[(tests["feature_x"] == out) & tests["feature_y"].isna()
                     & (tests["category"] == "all")]
        pv = {str(t["method"]): float(t["p_holm"]) for t in data.records(mine)
              if t.get("p_holm") is not None}
        if nominal is None:
            st.caption(f"{out}: no plotting histogram stored")
            continue
        title = out + ("  ·  p (Holm): " + ", ".join(f"{m} {common.fmt_p(p)}"
                                                     for m, p in pv.items()) if pv else "")
        common.show_figure(
            lambda n=nominal, v=variations, o=out, t=title: plots.feature_figure(n, v, o,
                                                                                 title=t),
            lambda n=nominal, v=variations, o=out, p=pv: static_feature(n, v, o, "all", p),
            f"{out}_{run_id}", f"mo-out-{out}")


def render() -> None:
    """Draw the Model page."""
    db, run_id = common.db(), common.run_id()
    st.title("Model")
    if run_id is None:
        st.info("this database holds no run yet")
        return
    models = data.run_models(db, run_id)
    if not len(models):
        st.info("no model audited in this run: pass --model (validator run ... --model "
                "classifier.onnx)")
        return
    m = data.records(models)[0]
    run = data.run(db, run_id)
    st.markdown(f"`{m['path']}` · {m.get('format')} · {m.get('kind')} · "
                f"{len(m.get('inputs') or [])} inputs · outputs "
                f"{', '.join(m.get('outputs') or [])} · derivatives "
                f"{m.get('derivative_method')} · sha256 `{m['model_id'][:16]}…`")
    cols = st.columns(3)
    for col, (label, key) in zip(cols, (("rank corr. Taylor 1st order", "taylor_rank_corr_first"),
                                        ("rank corr. Taylor 2nd order",
                                         "taylor_rank_corr_second"),
                                        ("rank corr. SHAP", "shap_rank_corr")), strict=True):
        v = run.get(key)
        col.metric(label, "-" if v is None else f"{float(v):.3f}",
                   help="Spearman correlation of the simulation's and the data's importance "
                        "rankings: 1 when the network ranks its inputs the same way in data")
    imp = data.importances(db, run_id)
    crit = data.criticality(db, run_id)
    tests = data.tests(db, run_id)
    params = sorted({str(p) for p in imp["param_label"].dropna()}) if len(imp) else []
    c1, c2 = st.columns(2)
    param = None
    if params:
        with c1:
            param = st.selectbox("parameter point", params, key="mo-param")
        imp = imp[imp["param_label"] == param]
        crit = crit[crit["param_label"] == param]
    nodes = list(dict.fromkeys(imp["node"])) if len(imp) else []
    nodes.sort(key=lambda n: (not str(n).startswith("all"), str(n)))
    if not nodes:
        st.info("the run stored no importances for this model")
    else:
        with c2:
            node = st.selectbox("node (multi-class: 'all' gathers each event at its highest "
                                "node)", nodes, key="mo-node")
        imp = imp[imp["node"] == node]
        tag = f"{node}" + (f"_{param}" if param else "")
        st.subheader("Taylor coefficients, first order")
        scaled = st.toggle("scaled to standardised inputs (t_i·σ_i: ranks the inputs)",
                           value=True, key="mo-scaled")
        fo = first_order(imp, "taylor", scaled)
        if len(fo):
            _bars(fo, "⟨|t_i|⟩" + (" · σ_i" if scaled else ""),
                  f"first-order Taylor coefficients, node {node}", f"taylor1_{tag}_{run_id}",
                  "mo-t1")
            common.download_csv(fo, f"taylor1_{tag}_{run_id}", "mo-t1-csv")
        st.subheader("Taylor coefficients, second order")
        inputs = list(fo["input"]) if len(fo) else list(m.get("inputs") or [])
        sample = st.radio("sample", ["simulation", "data", "data − simulation"],
                          horizontal=True, key="mo-t2-sample")
        sim2, dat2 = second_order(imp, "sim", inputs), second_order(imp, "data", inputs)
        mat = {"simulation": sim2, "data": dat2, "data − simulation": dat2 - sim2}[sample]
        if np.isfinite(mat).any():
            diverging = sample == "data − simulation"
            common.show_figure(
                lambda: plots.heatmap_figure(mat, inputs, title=f"⟨|t_ij|⟩·σ_i·σ_j ({sample})",
                                             value_name="scaled", diverging=diverging),
                lambda: static.matrix(mat, inputs, title=f"second-order Taylor, {sample}, "
                                      f"node {node}", label="⟨|t_ij|⟩·σ_i·σ_j",
                                      diverging=diverging),
                f"taylor2_{sample.replace(' ', '')}_{tag}_{run_id}", "mo-t2", fit=True)
        else:
            st.caption("no second-order coefficient stored")
        st.subheader("SHAP")
        sh = first_order(imp, "shap", scaled=False)
        if len(sh) and sh["simulation"].notna().any():
            _bars(sh, "mean |SHAP|", f"mean |SHAP| per input, node {node}",
                  f"shap_{tag}_{run_id}", "mo-shap")
        else:
            st.caption("no SHAP values stored for this node (the shap package was not "
                       "installed, or the run skipped them)")
    st.subheader("Output distributions")
    outputs = [str(o) for o in (m.get("outputs") or [])]
    if param:
        outputs = [o for o in outputs if o.endswith(param.replace("=", ""))] or outputs
    _outputs(db, run_id, outputs, tests)
    st.subheader("Criticality: importance beside mismodelling")
    st.caption("important and mismodelled first, then mismodelled, then important; inputs "
               "before pairs, by importance")
    if len(crit):
        node_crit = sorted(set(crit["node"].dropna()))
        if len(node_crit) > 1:
            which = st.selectbox("criticality of node", node_crit, key="mo-crit-node")
            crit = crit[crit["node"] == which]
        cols = ["criticality_rank", "feature_x", "feature_y", "degree", "importance",
                "importance_rank", "important", "mismodelled", "worst_method",
                "worst_category", "worst_p_holm", "worst_effect_size", "worst_effect_name",
                "node", "param_label"]
        common.table(crit[cols], f"criticality_{run_id}", "mo-crit", column_config={
            "worst_p_holm": st.column_config.NumberColumn("worst p (Holm)", format="%.3e"),
            "importance": st.column_config.NumberColumn(format="%.4g"),
            "worst_effect_size": st.column_config.NumberColumn(format="%.4g")})
    else:
        st.caption("no criticality rows stored")
