"""The whole effective configuration of a run (:class:`RunConfig`): what
:func:`validator.pipeline.run_validation` runs, what the option table
(:mod:`validator.config.options`) builds from the command line or a config file, and what is
stored with the run (``runs.config_json``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from validator.config.defaults import DEFAULT_DB_WAIT_S, DEFAULT_SEED, MULTIVARIATE_EVENTS
from validator.inputs.sources import DEFAULT_CHUNK_ROWS
from validator.stages.audit import SECOND_ORDER_EVENTS, SHAP_EVENTS
from validator.stages.compare import CompareOptions
from validator.stages.plan import PlanConfig
from validator.stages.systematics import Systematics

__all__ = ["RunConfig"]


@dataclass(frozen=True)
class RunConfig:
    """What to compare and how: the whole effective configuration of a run.

    ``defines`` are ``NAME=EXPR`` derived columns; ``blind`` a SQL condition whose events are
    removed from both samples before anything is computed. ``unweighted`` acknowledges that
    a simulation with a weight-like column is compared unweighted.
    """

    sim: Sequence[str]
    data: Sequence[str]
    weight: str | None = None
    features: Sequence[str] | None = None
    category: str | None = None
    db: str | Path | None = "validation.duckdb"
    alpha: float = 0.05
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    plan: PlanConfig = field(default_factory=PlanConfig)
    compare: CompareOptions = field(default_factory=CompareOptions)
    seed: int = DEFAULT_SEED
    sim_selection: str | None = None
    data_selection: str | None = None
    exclude: Sequence[str] = ()
    defines: Sequence[str] = ()
    blind: str | None = None
    unweighted: bool = False
    model: str | None = None
    model_inputs: Sequence[str] | None = None
    model_scaler: str | None = None
    model_kind: str | None = None
    model_params: dict[str, list[float]] | None = None
    systematics: Systematics | None = None
    shap_events: int = SHAP_EVENTS
    second_order_events: int = SECOND_ORDER_EVENTS
    multivariate: Sequence[str] = ()  # c2st, nplm (validator.stages.multivariate)
    multivariate_events: int = MULTIVARIATE_EVENTS  # data events; the simulation 5x as many
    multivariate_time_s: float | None = None  # per test; None: the default budget
    multivariate_toys: int | None = None  # permutations / toys per test; None: the defaults
    evidently_report: str | None = None  # evidently's drift report (HTML) on the subsample
    jobs: int | None = None  # processes for the fill and the tests; None: every core
    engine: str = "local"  # local | dask (validator.engine.pool)
    scheduler: str | None = None  # the Dask scheduler's address; None: a local cluster
    db_wait_s: float = DEFAULT_DB_WAIT_S
    tags: dict[str, str] = field(default_factory=dict)
    # how features are drawn ({feature: {label, unit, logx, logy, range}}) and the figures'
    # experiment label (validator.results.display); stored with the run for its report
    display: dict[str, dict[str, Any]] = field(default_factory=dict)
    experiment_label: dict[str, Any] | None = None
    command: str | None = None
    apply: str | None = None  # a correction file of validator correct (a closure run)
    apply_half: str = "held-out"  # held-out | training | all (validator.stages.correct)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON values (stored with the run)."""
        raw = asdict(self)
        raw["sim"], raw["data"] = list(self.sim), list(self.data)
        raw["db"] = str(self.db) if self.db else None
        for key in ("features", "exclude", "defines", "model_inputs", "multivariate"):
            raw[key] = list(raw[key]) if raw[key] is not None else None
        syst = self.systematics
        raw["systematics"] = syst.to_dict() if syst is not None and not syst.empty else None
        raw["process_column"] = syst.process_column if syst is not None else None
        return raw
