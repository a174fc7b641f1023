"""A finished run as the rows of every table of the schema (:mod:`validator.results.schema`):
what :mod:`validator.results.store` writes and :mod:`validator.results.tables` reads back.

The run is taken as the :class:`~validator.pipeline.RunOutcome` the pipeline returns (read by
its attributes; this module imports nothing above it)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

#: A finished run: a :class:`~validator.pipeline.RunOutcome` (its attributes are read).
RunOutcome = Any

def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _hist_row(run_id: str, category: str, binning: str, x: str, y: str | None, sim: Any,
              data: Any) -> dict[str, Any]:
    return {
        "run_id": run_id, "category": category, "binning": binning, "feature_x": x,
        "feature_y": y, "edges_x": sim.edges[0].tolist(),
        "edges_y": sim.edges[1].tolist() if sim.ndim == 2 else None,
        "sim_sumw": sim.values.ravel().tolist(), "sim_sumw2": sim.variances.ravel().tolist(),
        "data_counts": data.values.ravel().tolist(),
    }


def run_rows(outcome: RunOutcome, with_histograms: bool = True,
             ) -> dict[str, list[dict[str, Any]]]:
    """The rows of every table for one run (see :data:`SCHEMA` and docs/schema.md).

    ``with_histograms=False`` leaves the (largest) histograms table empty, for a summary."""
    from validator.inputs.transform import INCLUSIVE

    config = outcome.config
    run_id = outcome.run_id
    plan, layout = outcome.plan, outcome.layout
    sim_all = outcome.sim[INCLUSIVE]
    s = outcome.summary
    runs = [{
        "run_id": run_id, "started_at": outcome.started_at, "finished_at": outcome.finished_at,
        "tool_version": outcome.versions.get("validator"), "sim_paths": outcome.sim_paths,
        "data_paths": outcome.data_paths, "weight_column": config.weight,
        "category_column": config.category, "plan_json": plan.to_json(),
        "n_sim": outcome.n_sim, "n_data": outcome.n_data,
        "sumw_sim": float(sim_all.sumw[0]), "sumw2_sim": float(sim_all.sumw2[0]),
        "n_features": len(plan.features), "n_pairs": len(plan.pairs), "alpha": s.alpha,
        "n_tests": s.n_tests, "n_reliable": s.n_reliable, "n_failed": s.n_failed,
        "n_expected_failures": s.n_expected, "p_binomial": _finite(s.p_binomial),
        "p_uniformity": _finite(s.p_uniformity), "n_significant_holm": s.n_significant_holm,
        "n_significant_bh": s.n_significant_bh, "command": config.command,
        "notes": outcome.notes, "seed": config.seed, "n_not_run": s.n_not_run,
        "config_json": json.dumps(config.to_dict(), default=_json_default),
        "versions_json": json.dumps(outcome.versions),
        "tags": [f"{k}={v}" for k, v in sorted(config.tags.items())],
    }]
    models = []
    if outcome.model is not None:
        m = outcome.model
        runs[0]["model_id"] = m["model_id"]
        models.append({"run_id": run_id, "model_id": m["model_id"], "path": m["path"],
                       "format": m["format"], "kind": m["kind"], "inputs": m["inputs"],
                       "outputs": m["outputs"], "params_json": json.dumps(m["params"]),
                       "derivative_method": m["derivative_method"],
                       "added_at": outcome.finished_at})
    g = outcome.global_result
    if g is not None:
        runs[0].update({"p_global_min": g.p_min, "p_global_nfail": g.p_nfail,
                        "n_global_tests": g.n_tests, "n_global_failed": g.n_failed,
                        "n_global_replicas": g.n_replicas,
                        "n_global_nuisances": g.n_nuisances})
    importances, criticality = [], []
    if outcome.audit is not None:
        a = outcome.audit
        runs[0].update({"taylor_rank_corr_first": _finite(a.rank_corr_first),
                        "taylor_rank_corr_second": _finite(a.rank_corr_second),
                        "shap_rank_corr": _finite(a.shap_rank_corr)})
        importances = [{**r, "run_id": run_id, "value": _finite(r["value"]),
                        "uncertainty": _finite(r["uncertainty"]),
                        "scaled_value": _finite(r["scaled_value"]),
                        "scaled_uncertainty": _finite(r["scaled_uncertainty"])}
                       for r in a.importances]
        criticality = [{**r, "run_id": run_id, "importance": _finite(r["importance"])}
                       for r in outcome.criticality]
    if outcome.multivariate is not None:  # the learned tests' Taylor attributions
        importances = [*importances, *({**r, "run_id": run_id, "value": _finite(r["value"]),
                                        "uncertainty": _finite(r["uncertainty"]),
                                        "scaled_value": _finite(r["scaled_value"]),
                                        "scaled_uncertainty": _finite(r["scaled_uncertainty"])}
                                       for r in outcome.multivariate.importances)]
    features, histograms = [], []
    for cat in outcome.sim:
        if cat not in outcome.data:
            continue
        sim, data = outcome.sim[cat], outcome.data[cat]
        for k, f in enumerate(plan.features):
            ms, ss = sim.mean_std(layout, k)
            md, sd = data.mean_std(layout, k)
            features.append({
                "run_id": run_id, "category": cat, "feature": f.name, "kind": f.kind,
                "edges": list(f.edges), "n_nan_sim": int(sim.n_nonfinite[k]),
                "n_nan_data": int(data.n_nonfinite[k]), "n_sentinel_sim": int(sim.n_sentinel[k]),
                "n_sentinel_data": int(data.n_sentinel[k]), "mean_sim": _finite(ms),
                "std_sim": _finite(ss), "mean_data": _finite(md), "std_data": _finite(sd),
            })
            for binning, view in (("test", "hist_1d"), ("fine", "hist_fine"),
                                  ("plot", "hist_plot")) if with_histograms else ():
                histograms.append(_hist_row(run_id, cat, binning, f.name, None,
                                            getattr(sim, view)(layout, k),
                                            getattr(data, view)(layout, k)))
            if with_histograms and outcome.syst is not None:
                histograms.extend(_variation_rows(outcome, run_id, cat, k))
        for p, (i, j) in enumerate(plan.pairs if with_histograms else ()):
            histograms.append(_hist_row(run_id, cat, "test", plan.features[i].name,
                                        plan.features[j].name, sim.hist_2d(layout, p),
                                        data.hist_2d(layout, p)))
    skipped = [{"run_id": run_id, "column_name": c, "reason": why}
               for c, why in plan.skipped.items()]
    outputs = set(outcome.model["outputs"]) if outcome.model is not None else set()
    effects = [{**r, "run_id": run_id, "is_output": r["feature"] in outputs,
                "shape_change_up": _finite(r["shape_change_up"]),
                "shape_change_down": _finite(r["shape_change_down"])}
               for r in outcome.syst_effects]
    return {"runs": runs, "features": features, "tests": test_rows(outcome),
            "histograms": histograms, "skipped_columns": skipped, "models": models,
            "importances": importances, "criticality": criticality,
            "syst_effects": effects, "corrections": closure_rows(outcome)}


def closure_rows(outcome: RunOutcome) -> list[dict[str, Any]]:
    """The ``corrections`` row of a closure run (``validator run --apply``): the correction
    applied (its file's sha256, its source run) and the half of the events the run kept."""
    described = getattr(outcome, "correction", None)
    if not described:
        return []
    return [{"run_id": outcome.run_id, "role": "closure", "name": described["name"],
             "source_run_id": described.get("source_run_id"), "sha256": described["sha256"],
             "path": described.get("path"), "method": described.get("method"),
             "features": list(described.get("features") or []),
             "corrections": list(described.get("systematics") or []),
             "derived_on": described.get("derived_on"), "half": described.get("half"),
             "created_at": outcome.finished_at, "details": None}]


def _variation_rows(outcome: RunOutcome, run_id: str, category: str, k: int
                    ) -> list[dict[str, Any]]:
    """Plotting histograms of feature ``k`` under each weight row beyond the nominal
    (systematic variations, processes) and each shape variation's files (``variation``
    names it; ``data_counts`` NULL)."""
    layout, syst = outcome.layout, outcome.syst
    name = layout.plan.features[k].name
    rows = []
    hist = outcome.sim[category].hist_plot(layout, k)
    for r, label in enumerate(syst.rows.labels[1:], 1):
        rows.append({"run_id": run_id, "category": category, "binning": "plot",
                     "feature_x": name, "feature_y": None, "variation": label,
                     "edges_x": hist.edges[0].tolist(), "sim_sumw": hist.sumw[r].tolist(),
                     "sim_sumw2": hist.sumw2[r].tolist()})
    for syst_name, sides in syst.shapes.items():
        for side, accs in zip(("up", "down"), sides, strict=True):
            if accs is None or category not in accs:
                continue
            h = accs[category].hist_plot(layout, k)
            rows.append({"run_id": run_id, "category": category, "binning": "plot",
                         "feature_x": name, "feature_y": None,
                         "variation": f"{syst_name}_{side}", "edges_x": h.edges[0].tolist(),
                         "sim_sumw": h.values.tolist(), "sim_sumw2": h.variances.tolist()})
    return rows


def test_rows(outcome: RunOutcome) -> list[dict[str, Any]]:
    """The rows of the ``tests`` table for one run."""
    tests = []
    run_id = outcome.run_id
    for t, rec in enumerate(outcome.records):
        r = rec.result
        row = {"run_id": run_id, "test_id": t, "category": rec.category, "kind": rec.kind,
               "method": rec.method, "feature_x": rec.feature_x, "feature_y": rec.feature_y,
               "node": rec.node,
               "not_run_reason": rec.not_run_reason, "passed": outcome.passed[t],
               "reliable": bool(rec.reliable)}
        if r is not None:
            row.update({
                "statistic": _finite(r.statistic), "ndf": _finite(r.ndf),
                "pvalue": _finite(r.pvalue), "pvalue_method": r.pvalue_method,
                "pvalue_is_bound": bool(r.pvalue_is_bound),
                "n_toys": r.n_toys, "effect_size": _finite(r.effect_size),
                "effect_name": r.effect_name, "p_holm": _finite(outcome.p_holm[t]),
                "p_bh": _finite(outcome.p_bh[t]),
                "details": json.dumps(r.details, default=_json_default),
            })
        tests.append(row)
    return tests
