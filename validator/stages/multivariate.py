"""The multivariate stage: learned tests over all inputs at once, and evidently beside them.

``validator run --multivariate c2st,nplm`` (``RunConfig.multivariate``) tests every input
together (the network's inputs with ``--model``, else the tested features; network outputs
are functions of the inputs and left out) with the classifier two-sample test and the New
Physics Learning Machine (:mod:`validator.stats.multivariate`, where the methods, their
references and how negative weights enter are described).

Events: a deterministic subsample of each sample, collected in the fill pass through
:class:`validator.engine.pool.FillTask`'s collectors (the data are read once) by the
hash-key reservoir of the network audit: each event gets the uniform key of its position in
its file (:func:`validator.stages.plan.uniform_keys`) and the ``capacity`` smallest keys are kept,
so the subsample does not depend on the chunking and reservoirs merge with ``+``. The
simulation's reservoir is :data:`SIM_RESERVOIR_FACTOR` times the data's (nplm splits it into
a reference and a toy pool; c2st unweights it). With weight systematics (``--syst``), the
varied weights ride along, and nplm profiles them (the imperfect-machine statistic).

Rows: one test per method, ``kind='multivariate'``, ``category='all'``, ``feature_x='*'``
(every input; the list is in ``details['inputs']``), ``feature_y`` NULL, in the Holm family
like every test; the first-order Taylor coefficients of the learned function on the data
(``importances``: method ``c2st_taylor`` / ``nplm_taylor``, sample ``data``, degree 1,
``model_id`` NULL).

``--evidently-report drift.html`` (:func:`evidently_drift`) writes evidently's
``DataDriftPreset`` report on the same subsample and stores its per-column results as tests
``kind='evidently'``, ``method='evidently:<method>'``. They sit beside ours for comparison
and are kept out of the Holm/BH family, the run's counts and the run-level test (their
criteria, a distance over a threshold for large samples, are not p-values, and the same
inputs are already tested by ours). evidently ignores event weights: it is given the
simulation unweighted exactly (cell resampling of the negative weights, then acceptance
∝ w, as c2st), so it compares data with the weighted simulation. Handing it the weighted
events directly would count a negative-weight event as a positive one (adding its
distribution where it should be subtracted) and give every process the same weight per
event, which is not the simulation's prediction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validator.inputs.sources import ENTRY, FILE
from validator.inputs.transform import INCLUSIVE
from validator.stages.compare import TestRecord, test_rng
from validator.stats.result import GofResult

#: The multivariate methods ``--multivariate`` accepts.
METHODS = ("c2st", "nplm")
#: The simulation's reservoir holds this many times the data's: nplm splits it into a
#: reference and a toy pool, and c2st's exact unweighting keeps a fraction of it.
SIM_RESERVOIR_FACTOR = 5
#: ``feature_x`` of a multivariate test: every input.
ALL_INPUTS = "*"
#: Salt of the reservoir's hash keys (independent of the planning's and the audit's).
_KEY_SALT = 0x3D5A_17C2

@dataclass
class EventReservoir:
    """The events with the ``capacity`` smallest hash keys: ``x`` ``(n, len(columns))``,
    nominal weights ``w``, and ``extra`` columns (varied weights); mergeable with ``+``."""

    columns: tuple[str, ...]
    capacity: int
    seed: int
    extra: tuple[str, ...] = ()
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0))
    x: np.ndarray | None = None
    w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    e: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x is None:
            self.x = np.zeros((0, len(self.columns)))
        if self.e is None:
            self.e = np.zeros((0, len(self.extra)))

    def add(self, chunk: Mapping[str, np.ndarray], w: np.ndarray) -> None:
        """Keep a chunk's events whose keys are among the smallest."""
        self.absorb(self.collect(chunk, w))

    def absorb(self, other: EventReservoir) -> None:
        """Merge a reservoir gathered elsewhere into this one."""
        merged = self + other
        self.keys, self.x, self.w, self.e = merged.keys, merged.x, merged.w, merged.e

    def collect(self, chunk: Mapping[str, np.ndarray], w: np.ndarray) -> EventReservoir:
        """A chunk's reservoir (the fill pass's collector, :class:`validator.engine.pool.Collector`:
        run wherever the chunk is filled; reservoirs add with ``+``)."""
        from validator.stages.plan import smallest_keys, uniform_keys

        keys = uniform_keys(chunk[ENTRY], chunk[FILE], self.seed ^ _KEY_SALT)
        keep = smallest_keys(keys, self.capacity)
        n = len(keys)

        def matrix(names: tuple[str, ...]) -> np.ndarray:
            if not names:
                return np.zeros((len(keep), 0))
            return np.column_stack([np.asarray(chunk[c], dtype=float)[keep] for c in names]) \
                if n else np.zeros((0, len(names)))

        return EventReservoir(self.columns, self.capacity, self.seed, self.extra, keys[keep],
                              matrix(self.columns), np.asarray(w, dtype=float)[keep],
                              matrix(self.extra))

    def __add__(self, other: EventReservoir) -> EventReservoir:
        if not isinstance(other, EventReservoir):
            return NotImplemented
        if other.columns != self.columns or other.extra != self.extra:
            raise ValueError("cannot merge reservoirs of different columns")
        from validator.stages.plan import smallest_keys

        keys = np.concatenate([self.keys, other.keys])
        keep = smallest_keys(keys, self.capacity)
        return EventReservoir(self.columns, self.capacity, self.seed, self.extra, keys[keep],
                              np.concatenate([self.x, other.x])[keep],
                              np.concatenate([self.w, other.w])[keep],
                              np.concatenate([self.e, other.e])[keep])


@dataclass
class MultivariateResult:
    """The stage's products: test ``records`` (Holm family), ``evidently`` records (kept
    out of it), ``importances`` rows and notes."""

    records: list[TestRecord]
    evidently: list[TestRecord]
    importances: list[dict[str, Any]]
    notes: list[str]
    inputs: tuple[str, ...]


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The requested methods, checked (a ValueError names an unknown one)."""
    out = tuple(dict.fromkeys(m.strip() for m in methods if m.strip()))
    unknown = [m for m in out if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown multivariate method '{unknown[0]}' (choose from "
                         f"{', '.join(METHODS)})")
    return out


def weight_systematics(sim: EventReservoir, variations: Sequence[Any]
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (weights up, weights down) from the reservoir's extra columns; a one-sided
    variation is mirrored in the logarithm (down = w²/up)."""
    out = {}
    col = {c: i for i, c in enumerate(sim.extra)}
    for v in variations:
        up = sim.e[:, col[v.up]]
        if v.down is not None:
            down = sim.e[:, col[v.down]]
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                down = np.where(up != 0, sim.w * sim.w / up, sim.w)
        out[v.name] = (up, down)
    return out


def multivariate_results(methods: Sequence[str], sim: EventReservoir, data: EventReservoir,
                         seed: int, *, systematics: Mapping[str, tuple[np.ndarray, np.ndarray]]
                         | None = None, time_budget_s: float | None = None,
                         n_toys: int | None = None, evidently_report: str | Path | None = None,
                         progress: Callable[[str, int, int], None] | None = None,
                         ) -> MultivariateResult:
    """Run each method on the two reservoirs (and evidently's report when asked).

    ``n_toys``: permutations (c2st) / toys (nplm) per test, None for each test's default;
    ``time_budget_s``: per test, None for the default.
    """
    from validator.stats import multivariate as mv

    inputs = sim.columns
    records: list[TestRecord] = []
    importances: list[dict[str, Any]] = []
    notes: list[str] = []
    budget: dict[str, Any] = {} if time_budget_s is None else {"time_budget_s": time_budget_s}
    for method in methods:
        rng = test_rng(seed, INCLUSIVE, method, ALL_INPUTS)
        why = None
        if len(data.w) == 0 or len(sim.w) == 0:
            why = "no data or no simulated event in the subsample"
        if why:
            records.append(TestRecord(INCLUSIVE, "multivariate", method, ALL_INPUTS, None, None,
                                      why))
            continue

        def step(done: int, total: int, name: str = method) -> None:
            if progress:
                progress(f"multivariate {name}", done, total)

        try:
            if method == "c2st":
                count = {} if n_toys is None else {"n_permutations": n_toys}
                result = mv.c2st(sim.x, sim.w, data.x, rng, inputs=inputs, progress=step,
                                 **budget, **count)
            else:
                count = {} if n_toys is None else {"n_toys": n_toys}
                result = mv.nplm(sim.x, sim.w, data.x, rng, inputs=inputs,
                                 systematics=systematics or None, progress=step, **budget,
                                 **count)
        except ValueError as exc:
            records.append(TestRecord(INCLUSIVE, "multivariate", method, ALL_INPUTS, None, None,
                                      str(exc)))
            continue
        attribution = result.details.pop("_attribution")
        result.details["inputs"] = list(inputs)
        records.append(TestRecord(INCLUSIVE, "multivariate", method, ALL_INPUTS, None, result))
        summary = {"statistic": result.statistic, "pvalue": result.pvalue}
        for row in attribution.rows():
            importances.append({"model_id": None, "sample": "data",
                                "method": f"{method}_taylor", "degree": 1, "node": None,
                                "feature_y": None, "param_label": None, "param_value": None,
                                "details": json.dumps(summary), **row})
        if result.details.get("stopped_by_time_budget"):
            asked = result.details.get("n_permutations_requested",
                                       result.details.get("n_toys_requested"))
            notes.append(f"multivariate {method}: the time budget stopped it after "
                         f"{result.n_toys} of {asked} toys/permutations")
    evidently: list[TestRecord] = []
    if evidently_report:
        evidently = evidently_drift(sim.x, sim.w, data.x, inputs, evidently_report,
                                    test_rng(seed, INCLUSIVE, "evidently", ALL_INPUTS))
        notes.append(f"evidently data-drift report: {evidently_report}")
    return MultivariateResult(records, evidently, importances, notes, inputs)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def evidently_drift(x_sim: np.ndarray, w_sim: np.ndarray, x_data: np.ndarray,
                    inputs: Sequence[str], path: str | Path, rng: np.random.Generator,
                    ) -> list[TestRecord]:
    """evidently's ``DataDriftPreset`` report (HTML at ``path``) and one record per column.

    The simulation is unweighted exactly first (module docstring). Each column's drift
    method is evidently's choice (e.g. the normed Wasserstein distance above 1,000 events,
    Kolmogorov-Smirnov below): ``method='evidently:<method>'``, ``statistic`` its value,
    ``pvalue`` that value for a p-value method and NULL for a distance, ``passed`` whether
    evidently found no drift, ``details`` the threshold and verdict.
    """
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    from validator.stats.multivariate import prepare_samples, unweight

    prep = prepare_samples(x_sim, w_sim, x_data)
    kept = unweight(prep.ws, rng)
    xs = prep.zs[kept] * prep.sigma + prep.mean
    xd = prep.zd * prep.sigma + prep.mean
    names = list(inputs)
    reference = pd.DataFrame(xs, columns=names)
    current = pd.DataFrame(xd, columns=names)
    snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    records = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        method, value = str(config.get("method")), float(metric["value"])
        threshold = float(config.get("threshold", np.nan))
        is_p = "p_value" in method.lower() or "p-value" in method.lower()
        drift = value < threshold if is_p else value >= threshold
        result = GofResult(
            method=f"evidently:{_slug(method)}", statistic=value,
            pvalue=value if is_p else float("nan"), effect_size=None if is_p else value,
            effect_name=None if is_p else _slug(method), pvalue_method="evidently",
            details={"evidently_method": method, "threshold": threshold,
                     "drift_detected": bool(drift), "n_reference": len(xs),
                     "n_current": len(xd), "reference": "simulation unweighted exactly"})
        records.append(TestRecord(INCLUSIVE, "evidently", result.method,
                                  str(config.get("column")), None, result))
    return records
