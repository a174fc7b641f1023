"""Models: the audited networks, with their hashes, inputs, outputs and the runs that
audited them."""

from __future__ import annotations

import streamlit as st

from validator.dashboard import common, data


def render() -> None:
    """Draw the Models page."""
    db = common.db()
    st.title("Models")
    models = data.all_models(db)
    if not len(models):
        st.info("no model audited in this database: pass --model to validator run")
        return
    frame = models.assign(
        sha256=models["model_id"],
        inputs=[", ".join(v) if v is not None else "" for v in models["inputs"]],
        n_inputs=[len(v) if v is not None else 0 for v in models["inputs"]],
        outputs=[", ".join(v) if v is not None else "" for v in models["outputs"]])
    cols = ["sha256", "path", "format", "kind", "n_inputs", "inputs", "outputs",
            "derivative_method", "params_json", "n_runs", "first_added", "last_added"]
    common.table(frame[cols], "models", "md-models")
    runs = data.runs(db)
    label = {r["model_id"]: r["path"] for r in data.records(models)}
    model = st.selectbox("runs of model", list(models["model_id"]), key="md-model",
                         format_func=lambda m: f"{m[:12]}… {label.get(m, '')}")
    mine = runs[runs["model_id"] == model]
    st.dataframe(mine.assign(tags=[", ".join(f"{k}={v}" for k, v in data.tags(t).items())
                                   for t in mine["tags"]])[
        ["run_id", "started_at", "tags", "n_tests", "n_failed", "n_significant_holm",
         "taylor_rank_corr_first", "shap_rank_corr", "gate_passed"]],
        hide_index=True, width="stretch")
