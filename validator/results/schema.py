"""The DuckDB schema of validator's results: the public contract (docs/schema.md) that the
dashboard, the gate and users' notebooks read. Versioned: a file of an earlier version is
migrated when a run is next written to it (:mod:`validator.results.store`); columns are added,
never renamed."""

from __future__ import annotations

import pyarrow as pa

#: Version of the schema this release writes. 1: release 0.1.0 (no ``schema_info`` table).
SCHEMA_VERSION = 4

#: table -> ordered (column, DuckDB type). Adding a column here migrates existing files.
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("run_id", "VARCHAR"), ("started_at", "TIMESTAMP"), ("finished_at", "TIMESTAMP"),
        ("tool_version", "VARCHAR"), ("sim_paths", "VARCHAR[]"), ("data_paths", "VARCHAR[]"),
        ("weight_column", "VARCHAR"), ("category_column", "VARCHAR"), ("model_id", "VARCHAR"),
        ("rules_name", "VARCHAR"), ("plan_json", "VARCHAR"), ("n_sim", "BIGINT"),
        ("n_data", "BIGINT"), ("sumw_sim", "DOUBLE"), ("sumw2_sim", "DOUBLE"),
        ("n_features", "INTEGER"), ("n_pairs", "INTEGER"), ("alpha", "DOUBLE"),
        ("n_tests", "INTEGER"), ("n_reliable", "INTEGER"), ("n_failed", "INTEGER"),
        ("n_expected_failures", "DOUBLE"), ("p_binomial", "DOUBLE"), ("p_uniformity", "DOUBLE"),
        ("n_significant_holm", "INTEGER"), ("n_significant_bh", "INTEGER"),
        ("gate_passed", "BOOLEAN"), ("command", "VARCHAR"), ("notes", "VARCHAR[]"),
        ("seed", "BIGINT"), ("n_not_run", "INTEGER"), ("config_json", "VARCHAR"),
        ("versions_json", "VARCHAR"), ("p_global_min", "DOUBLE"), ("p_global_nfail", "DOUBLE"),
        ("n_global_tests", "INTEGER"), ("n_global_failed", "INTEGER"),
        ("n_global_replicas", "INTEGER"), ("taylor_rank_corr_first", "DOUBLE"),
        ("taylor_rank_corr_second", "DOUBLE"), ("shap_rank_corr", "DOUBLE"),
        ("gate_rules_sha256", "VARCHAR"), ("tags", "VARCHAR[]"),
        ("n_global_nuisances", "INTEGER"),
    ],
    "features": [
        ("run_id", "VARCHAR"), ("category", "VARCHAR"), ("feature", "VARCHAR"),
        ("kind", "VARCHAR"), ("edges", "DOUBLE[]"), ("n_nan_sim", "BIGINT"),
        ("n_nan_data", "BIGINT"), ("n_sentinel_sim", "BIGINT"), ("n_sentinel_data", "BIGINT"),
        ("mean_sim", "DOUBLE"), ("std_sim", "DOUBLE"), ("mean_data", "DOUBLE"),
        ("std_data", "DOUBLE"),
    ],
    "tests": [
        ("run_id", "VARCHAR"), ("test_id", "INTEGER"), ("category", "VARCHAR"),
        ("kind", "VARCHAR"), ("method", "VARCHAR"), ("feature_x", "VARCHAR"),
        ("feature_y", "VARCHAR"), ("statistic", "DOUBLE"), ("ndf", "DOUBLE"),
        ("pvalue", "DOUBLE"), ("pvalue_method", "VARCHAR"), ("n_toys", "INTEGER"),
        ("effect_size", "DOUBLE"), ("effect_name", "VARCHAR"), ("reliable", "BOOLEAN"),
        ("p_holm", "DOUBLE"), ("p_bh", "DOUBLE"), ("passed", "BOOLEAN"),
        ("details", "VARCHAR"), ("not_run_reason", "VARCHAR"), ("pvalue_is_bound", "BOOLEAN"),
        ("node", "VARCHAR"),
    ],
    "histograms": [
        ("run_id", "VARCHAR"), ("category", "VARCHAR"), ("feature_x", "VARCHAR"),
        ("feature_y", "VARCHAR"), ("edges_x", "DOUBLE[]"), ("edges_y", "DOUBLE[]"),
        ("sim_sumw", "DOUBLE[]"), ("sim_sumw2", "DOUBLE[]"), ("data_counts", "DOUBLE[]"),
        ("binning", "VARCHAR"), ("variation", "VARCHAR"),
    ],
    "syst_effects": [
        ("run_id", "VARCHAR"), ("category", "VARCHAR"), ("systematic", "VARCHAR"),
        ("feature", "VARCHAR"), ("is_output", "BOOLEAN"), ("shape_change_up", "DOUBLE"),
        ("shape_change_down", "DOUBLE"),
    ],
    "skipped_columns": [
        ("run_id", "VARCHAR"), ("column_name", "VARCHAR"), ("reason", "VARCHAR"),
    ],
    "models": [
        ("run_id", "VARCHAR"), ("model_id", "VARCHAR"), ("path", "VARCHAR"),
        ("format", "VARCHAR"), ("kind", "VARCHAR"), ("inputs", "VARCHAR[]"),
        ("outputs", "VARCHAR[]"), ("params_json", "VARCHAR"), ("derivative_method", "VARCHAR"),
        ("added_at", "TIMESTAMP"),
    ],
    "importances": [
        ("run_id", "VARCHAR"), ("model_id", "VARCHAR"), ("sample", "VARCHAR"),
        ("method", "VARCHAR"), ("degree", "INTEGER"), ("node", "VARCHAR"),
        ("feature_x", "VARCHAR"), ("feature_y", "VARCHAR"), ("value", "DOUBLE"),
        ("uncertainty", "DOUBLE"), ("scaled_value", "DOUBLE"), ("scaled_uncertainty", "DOUBLE"),
        ("n_events", "BIGINT"), ("sum_weights", "DOUBLE"), ("param_label", "VARCHAR"),
        ("param_value", "DOUBLE"), ("details", "VARCHAR"),
    ],
    "criticality": [
        ("run_id", "VARCHAR"), ("model_id", "VARCHAR"), ("node", "VARCHAR"),
        ("param_label", "VARCHAR"), ("feature_x", "VARCHAR"), ("feature_y", "VARCHAR"),
        ("degree", "INTEGER"), ("importance", "DOUBLE"), ("importance_rank", "INTEGER"),
        ("important", "BOOLEAN"), ("worst_test_id", "INTEGER"), ("worst_method", "VARCHAR"),
        ("worst_category", "VARCHAR"), ("worst_p_holm", "DOUBLE"),
        ("worst_effect_size", "DOUBLE"), ("worst_effect_name", "VARCHAR"),
        ("mismodelled", "BOOLEAN"), ("criticality_rank", "INTEGER"),
    ],
    "gate_results": [
        ("run_id", "VARCHAR"), ("verdict_id", "VARCHAR"), ("judged_at", "TIMESTAMP"),
        ("rules_name", "VARCHAR"), ("rules_sha256", "VARCHAR"), ("rule", "VARCHAR"),
        ("rule_kind", "VARCHAR"), ("passed", "BOOLEAN"), ("reason", "VARCHAR"),
        ("details", "VARCHAR"),
    ],
    "corrections": [
        ("run_id", "VARCHAR"), ("role", "VARCHAR"), ("name", "VARCHAR"),
        ("source_run_id", "VARCHAR"), ("sha256", "VARCHAR"), ("path", "VARCHAR"),
        ("method", "VARCHAR"), ("features", "VARCHAR[]"), ("corrections", "VARCHAR[]"),
        ("derived_on", "VARCHAR"), ("half", "VARCHAR"), ("created_at", "TIMESTAMP"),
        ("details", "VARCHAR"),
    ],
    "schema_info": [
        ("version", "INTEGER"), ("applied_at", "TIMESTAMP"), ("tool_version", "VARCHAR"),
    ],
}
#: Tables holding one run's rows (``schema_info`` describes the file).
RUN_TABLES = ("runs", "features", "tests", "histograms", "skipped_columns", "models",
              "importances", "criticality", "gate_results", "syst_effects", "corrections")

#: The arrow type of each DuckDB column type (the rows are written as arrow tables).
ARROW_TYPES = {
    "VARCHAR": pa.string(), "TIMESTAMP": pa.timestamp("us"), "BIGINT": pa.int64(),
    "INTEGER": pa.int32(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
    "VARCHAR[]": pa.list_(pa.string()), "DOUBLE[]": pa.list_(pa.float64()),
}
