"""Pairs (2D): the feature × feature matrix of Holm p-values (or raw p-values, or effect
sizes), red/yellow/green as CMS/KIT show it, the pairs important to the audited network
boxed; a selected pair's pull map (data − k·sim)/σ and its two correlations in simulation and
data with their errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from validator.dashboard import common, data, plots
from validator.dashboard.inputs import pick
from validator.output import figures as mfig

#: What the matrix shows: label -> (tests column, effect scale).
VALUES = {"p-value (Holm)": ("p_holm", False), "p-value (raw)": ("pvalue", False),
          "effect size": ("effect_size", True)}


def clicked_pair(points: list[dict[str, Any]], names: list[str]) -> tuple[str, str] | None:
    """The pair of a clicked matrix cell (its x and y are feature indices), None for a
    click on the diagonal or none."""
    for point in points:
        try:
            i, j = int(point["x"]), int(point["y"])
        except (KeyError, TypeError, ValueError):
            continue
        if i != j and 0 <= i < len(names) and 0 <= j < len(names):
            return names[min(i, j)], names[max(i, j)]
    return None


def important_pairs(crit: pd.DataFrame) -> list[tuple[str, str]]:
    """Pairs the audited network relies on (``criticality``: important, degree 2)."""
    rows = data.records(crit)
    return sorted({(str(c["feature_x"]), str(c["feature_y"])) for c in rows
                   if c.get("important") and c.get("degree") == 2 and c.get("feature_y")})


def effect_matrix(rows: list[dict[str, Any]], names: list[str], methods: tuple[str, str],
                  category: str, alpha: float) -> np.ndarray:
    """Effect sizes of the pairs' tests, robust to sparse cells: a pair's effect size where
    its Holm p-value is below ``alpha``, 0 where it is not (NaN: not run).

    The stored 2D effect size is the largest |data/sim − 1| over the pair's cells
    (``max_abs_ratio_dev``): a cell holding a handful of events swings it to 0.9 with no
    evidence at all (``lep_delta_phi × delta_r_ll`` of the sample data: 0.94 at Holm p = 1;
    the sparse ``n_jets`` cells the issue saw). Gating by significance, rather than
    weighting each cell's pull by its significance, keeps the number a reader knows (the
    stored effect, as every face reports it) and shows only what the data resolve: a
    yellow-to-red cell is both significant and large."""
    effect = mfig.pvalue_matrix(rows, names, methods=methods, category=category,
                                column="effect_size")
    p_holm = mfig.pvalue_matrix(rows, names, methods=methods, category=category,
                                column="p_holm")
    out = np.where(np.isfinite(p_holm) & (p_holm < alpha), np.abs(effect), 0.0)
    out[~np.isfinite(effect) | ~np.isfinite(p_holm)] = np.nan
    np.fill_diagonal(out, np.nan)  # 1D effect sizes of different names: not comparable
    return out


def correlations(tests: pd.DataFrame) -> pd.DataFrame:
    """The pair's correlation tests with both correlations and their errors."""
    rows = []
    for t in data.records(tests[tests["method"].isin(["corr_pearson", "corr_spearman"])]):
        d = data.details(t.get("details"))
        rows.append({"estimator": d.get("estimator", t["method"]),
                     "simulation": d.get("r_sim"), "± sim": d.get("se_sim"),
                     "data": d.get("r_data"), "± data": d.get("se_data"),
                     "data − sim": t.get("effect_size"), "z": t.get("statistic"),
                     "p (Holm)": t.get("p_holm"), "reliable": t.get("reliable")})
    return pd.DataFrame(rows)


def render() -> None:
    """Draw the Pairs (2D) page."""
    db, run_id = common.db(), common.run_id()
    st.title("Pairs (2D)")
    if run_id is None:
        st.info("this database holds no run yet")
        return
    tests = data.tests(db, run_id)
    pair_tests = tests[tests["feature_y"].notna() & (tests["kind"] != "taylor")]
    if not len(pair_tests):
        st.info("no pair was tested in this run (one feature, or --max-pairs 0)")
        return
    feats = data.features(db, run_id)
    qp = st.query_params
    categories = sorted(set(pair_tests["category"]), key=lambda c: (c != "all", c))
    c1, c2, c3 = st.columns(3)
    with c1:
        category = pick("category", categories, "pa-category", qp.get("category"))
    with c2:
        shown = st.selectbox("matrix shows", list(VALUES), key="pa-values")
    column, effect = VALUES[shown]
    with c3:
        lower = st.selectbox("lower triangle", ["chi2_uw", "saturated"], key="pa-lower")
    names = list(dict.fromkeys(feats[feats["category"] == category]["feature"]))
    rows = data.records(tests)
    crit = data.criticality(db, run_id)
    important = important_pairs(crit)
    methods = (lower, "dependence")
    alpha = float(data.run(db, run_id).get("alpha") or 0.05)
    if effect:
        matrix = effect_matrix(rows, names, methods, category, alpha)
        bounds = None
    else:
        matrix, bounds = mfig.matrix_cells(rows, names, methods=methods, category=category,
                                           column=column)
    title = (f"lower: {methods[0]}, upper: {methods[1]}, diagonal: smallest 1D "
             f"{'p' if not effect else '(none)'}")
    st.caption(title + (f"; {len(important)} pairs important to the network boxed"
                        if important else "; no audited network (or no important pair)")
               + "; grey: not run or not reliable"
               + (f"; effect shown only where Holm p < {alpha:g} (0 elsewhere: a sparse "
                  "cell's large ratio is no evidence)" if effect else "")
               + "; click a cell to show its pair")
    event = common.show_figure(
        lambda: plots.pvalue_matrix_figure(matrix, names, important=important,
                                           value_name=column if not effect else
                                           "|effect| (Holm p < alpha)", effect=effect,
                                           bounds=bounds),
        None if effect else lambda: mfig.plot_pvalue_matrix(
            rows, names, methods=methods, category=category, column=column,
            important=important),
        f"pvalue_matrix_{category}_{run_id}", "pa-matrix", fit=True, select=True)
    clicked = clicked_pair(common.selected_points(event), names)

    st.subheader("One pair")
    mine = pair_tests[pair_tests["category"] == category]
    pairs = list(dict.fromkeys(zip(mine.sort_values("pvalue")["feature_x"],
                                   mine.sort_values("pvalue")["feature_y"], strict=True)))
    labels = [f"{x} × {y}" for x, y in pairs]
    wanted = f"{qp.get('x')} × {qp.get('y')}" if qp.get("x") and qp.get("y") else None
    if clicked is not None and st.session_state.get("_pa-clicked") != clicked:
        st.session_state["_pa-clicked"] = clicked  # a new click: its pair, once
        for a, b in (clicked, clicked[::-1]):
            if f"{a} × {b}" in labels:
                st.session_state["pa-pair"] = f"{a} × {b}"
    chosen = pick("pair (smallest p first)", labels, "pa-pair", wanted)
    x, y = pairs[labels.index(chosen)]
    this = mine[(mine["feature_x"] == x) & (mine["feature_y"] == y)]
    left, right = st.columns([3, 2])
    with left:
        row = data.hist_pair(db, run_id, category, x, y)
        if row is None:
            st.info("no pair histogram stored for this pair")
        else:
            hist = mfig.hist2d_from_row(row)
            pv = {str(t["method"]): float(t["p_holm"]) for t in data.records(this)
                  if t.get("p_holm") is not None and t["kind"] != "corr"}
            display = data.reading(db, run_id).display
            bounds = {str(t["method"]): bool(t.get("pvalue_is_bound") or False)
                      for t in data.records(this)}
            common.show_figure(lambda: plots.pull_map_figure(hist, x, y),
                               lambda: mfig.plot_pull_map(
                                   hist, x, y, pvalues=pv, category=category,
                                   display_x=display.of(x), display_y=display.of(y),
                                   experiment=display.experiment, bounds=bounds),
                               f"pull_{x}_vs_{y}_{category}_{run_id}", "pa-pull")
    with right:
        corr = correlations(this)
        if len(corr):
            st.markdown("**Correlations** (simulation weighted; delta-method errors)")
            st.dataframe(corr, hide_index=True, column_config={
                "p (Holm)": st.column_config.NumberColumn(format="%.3e"),
                **{c: st.column_config.NumberColumn(format="%.4f") for c in
                   ("simulation", "± sim", "data", "± data", "data − sim")}})
        else:
            st.info("no correlation test for this pair")
        flag: Any = [c for c in data.records(crit) if c.get("degree") == 2 and
                     {c.get("feature_x"), c.get("feature_y")} == {x, y}]
        if flag:
            c = flag[0]
            st.caption(f"network: importance rank {c.get('importance_rank')} of the pairs"
                       + (" (important)" if c.get("important") else ""))
    st.markdown(f"**Tests of {x} × {y}**")
    common.table(common.test_table(this), f"tests_{x}_{y}_{category}_{run_id}", "pa-tests",
                 column_config=common.P_FORMAT)
