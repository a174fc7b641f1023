"""One validation run, stage by stage: read -> plan -> fill -> test -> summarise -> store.

:func:`run_validation` is what the CLI calls; a physicist can call it from a notebook too and
get a :class:`RunOutcome` with every intermediate value.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from validator import __version__
from validator.compare import CompareOptions, TestRecord, run_tests, untested_categories
from validator.errors import InputError
from validator.fill import Accumulator, Layout, accumulate
from validator.plan import (
    ColumnProfile,
    Plan,
    PlanConfig,
    classify_columns,
    make_plan,
    reservoir_capacity,
    uniform_keys,
)
from validator.sources import (
    DEFAULT_CHUNK_ROWS,
    FILE,
    Sample,
    Selection,
    common_kind,
    iter_chunks,
    open_sample,
)
from validator.summary import RunSummary, adjust_pvalues, summarise

#: Category label of the inclusive selection (all events).
INCLUSIVE = "all"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RunConfig:
    """What to compare and how."""

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
    seed: int = 20261123
    sim_selection: str | None = None
    data_selection: str | None = None
    exclude: Sequence[str] = ()
    command: str | None = None


@dataclass
class RunOutcome:
    """Everything a run produced."""

    run_id: str
    plan: Plan
    layout: Layout
    sim: dict[str, Accumulator]
    data: dict[str, Accumulator]
    records: list[TestRecord]
    summary: RunSummary
    p_holm: np.ndarray
    p_bh: np.ndarray
    passed: np.ndarray
    started_at: datetime
    finished_at: datetime
    n_sim: int
    n_data: int
    db: Path | None
    sim_paths: list[str]
    data_paths: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def n_tests(self) -> int:
        return len(self.records)


MAX_CATEGORIES = 50


def _category_label(value: object, column: str) -> str:
    if isinstance(value, float):
        value = int(value) if value.is_integer() else value
    label = str(value)
    # the inclusive selection is called "all": a category of that name keeps its column
    return f"{column}={label}" if label == INCLUSIVE else label


def _categories_of(chunk: dict[str, np.ndarray], column: str | None) -> np.ndarray | None:
    if column is None:
        return None
    values = chunk[column]
    uniq, inverse = np.unique(values.astype(str) if values.dtype == object else values,
                              return_inverse=True)
    if len(uniq) > MAX_CATEGORIES:
        raise InputError(f"category column '{column}' has more than {MAX_CATEGORIES} values; "
                         "a category column needs a few (a channel, a muon type, a run period)")
    labels = np.array([_category_label(u.item() if hasattr(u, "item") else u, column)
                       for u in uniq], dtype=object)
    return labels[inverse.ravel()]


def _weights_of(chunk: dict[str, np.ndarray], sample: Sample, n: int) -> np.ndarray:
    if sample.weight is None:
        return np.ones((1, n))
    w = chunk[sample.weight]
    with np.errstate(over="ignore"):
        bad = int((~np.isfinite(w * w)).sum())
    if bad:
        raise InputError(f"{sample.sources[0].label}: weight column '{sample.weight}' has "
                         f"{bad} NaN/inf values (or values so large their square overflows)")
    return w[None, :]


Chunks = Callable[[], Iterator[dict[str, np.ndarray]]]


def _chunk_supplier(sample: Sample, columns: list[str], chunk_rows: int,
                    selection: Selection | None) -> Chunks:
    """Chunks for the two passes; a sample that fits in one chunk is read only once."""
    if sample.n_rows > chunk_rows:
        return lambda: iter_chunks(sample, columns, chunk_rows, selection)
    cache: list[dict[str, np.ndarray]] = []

    def cached() -> Iterator[dict[str, np.ndarray]]:
        if not cache:
            cache.extend(iter_chunks(sample, columns, chunk_rows, selection))
        return iter(cache)

    return cached


#: Columns that together name an event, in the order of the key; an event column must exist.
EVENT_KEY_COLUMNS = ("run", "luminosityblock", "lumi", "lumiblock", "event", "evt",
                     "eventnumber", "event_id", "eventid")
MAX_KEYS_CHECKED = 2_000_000


def event_key_columns(sample: Sample) -> list[str]:
    """The columns naming an event (e.g. Run, Event), or none if there is no event number."""
    by_lower = {c.lower(): c for c, k in sample.columns.items() if k in ("int", "float")}
    cols = [by_lower[n] for n in EVENT_KEY_COLUMNS if n in by_lower]
    has_event = any(n in by_lower for n in EVENT_KEY_COLUMNS[4:])
    # files number their events independently: the file is part of the key
    return [FILE, *cols] if has_event else []


def _shared_event_note(sample: Sample, keys: list[np.ndarray], key_cols: list[str]) -> str | None:
    """A note when several rows carry the same event number (they are not independent)."""
    if not keys:
        return None
    table = np.concatenate(keys)
    n_distinct = len(np.unique(table, axis=0))
    if n_distinct == len(table):
        return None
    names = ", ".join(c for c in key_cols if c != FILE)
    return (f"{sample.name}: {len(table):,} rows but {n_distinct:,} distinct ({names}): rows "
            "of one event are not independent and the p-values assume independent events; "
            "select one row per event")


def _profile(sample: Sample, chunks: Chunks, columns: list[str], seed: int,
             progress: Progress | None, selection: Selection | None, key_cols: list[str],
             ) -> tuple[dict[str, ColumnProfile], float, int, str | None]:
    """First pass: column profiles (for the plan), the sum of weights, the event count, and
    a note if rows share an event."""
    capacity = reservoir_capacity(len(columns))
    profiles = {c: ColumnProfile(capacity=capacity) for c in columns}
    sumw = 0.0
    n_events = 0
    event_keys: list[np.ndarray] = []
    for chunk in chunks():
        n = len(next(iter(chunk.values())))
        sumw += float(_weights_of(chunk, sample, n).sum())
        keys = uniform_keys(n_events, n, seed)
        for c in columns:
            profiles[c] = profiles[c] + ColumnProfile.of(chunk[c], keys, capacity)
        if key_cols and n_events < MAX_KEYS_CHECKED:
            event_keys.append(np.column_stack([chunk[c] for c in key_cols]))
        n_events += n
        if progress:
            progress(f"scan {sample.name}", n_events, sample.n_rows)
    if n_events == 0:
        raise InputError(f"{', '.join(s.label for s in sample.sources)}: no {sample.name} event "
                         f"passes the selection '{selection.text if selection else ''}'")
    return profiles, sumw, n_events, _shared_event_note(sample, event_keys, key_cols)


def _fill(sample: Sample, chunks: Chunks, layout: Layout, category: str | None,
          progress: Progress | None) -> dict[str, Accumulator]:
    """Second pass: one accumulator per category; the inclusive one is their sum."""
    names = layout.plan.feature_names
    per_category: dict[str, Accumulator] = {}
    done = 0
    for chunk in chunks():
        n = len(chunk[names[0]])
        x = np.column_stack([chunk[c] for c in names])
        w = _weights_of(chunk, sample, n)
        cats = _categories_of(chunk, category)
        if cats is None:
            parts = {INCLUSIVE: slice(None)}
        else:
            parts = {str(c): cats == c for c in np.unique(cats)}
        for cat, sel in parts.items():
            acc = accumulate(x[sel], w[:, sel], layout)
            per_category[cat] = per_category[cat] + acc if cat in per_category else acc
        done += n
        if progress:
            progress(f"fill {sample.name}", done, sample.n_rows)
    if category is not None and per_category:
        per_category = {INCLUSIVE: sum(per_category.values()), **dict(sorted(per_category.items()))}
    return per_category


def _select_features(sim: Sample, data: Sample, config: RunConfig,
                     ) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Candidate features, skipped columns with reasons, and each candidate's kind."""
    if config.category:
        for sample in (sim, data):
            if config.category not in sample.columns:
                raise InputError(f"{sample.sources[0].label}: category column "
                                 f"'{config.category}' not found")
            if sample.columns[config.category] == "jagged":
                raise InputError(f"{sample.sources[0].label}: category column "
                                 f"'{config.category}' is jagged")
    skipped: dict[str, str] = {}
    if config.features:
        requested = list(dict.fromkeys(config.features))
        for name in requested:
            for sample in (sim, data):
                if not sample.has(name):
                    kind = sample.columns.get(name)
                    why = f"is {kind}: name an element, e.g. {name}[0]" if kind == "jagged" \
                        else "not found"
                    raise InputError(f"{sample.sources[0].label}: feature '{name}' {why}")
                if sample.columns.get(name) in ("string", "other"):
                    raise InputError(f"{sample.sources[0].label}: feature '{name}' is not "
                                     f"numeric ({sample.columns[name]})")
        kinds = {n: sim.columns.get(n, "float") for n in requested}
        return requested, skipped, kinds
    exclude = [c for c in (config.weight, config.category) if c]
    shared = {c: common_kind(k, data.columns.get(c)) for c, k in sim.columns.items()}
    shared = {c: k for c, k in shared.items() if k is not None}
    for c in sorted(set(sim.columns) ^ set(data.columns)):
        if c not in exclude:
            where = "simulation" if c in sim.columns else "data"
            skipped[c] = f"only in {where}"
    for sample in (sim, data):
        for c in sample.partial_columns:
            skipped[c] = f"not in every {sample.name} file"
    for c in sorted(set(sim.columns) & set(data.columns)):
        if c not in shared and c not in exclude:
            skipped[c] = f"type differs ({sim.columns[c]} in simulation, {data.columns[c]} in data)"
    candidates, more = classify_columns(shared, exclude)
    skipped.update({k: v for k, v in more.items() if k not in exclude})
    unknown = [c for c in config.exclude if c not in shared and c not in skipped]
    if unknown:
        raise InputError(f"--exclude: column '{unknown[0]}' is in neither sample")
    for c in config.exclude:
        if c in candidates:
            candidates.remove(c)
            skipped[c] = "excluded (--exclude)"
    if not candidates:
        raise InputError("no shared numeric feature between simulation and data")
    return candidates, skipped, {c: shared[c] for c in candidates}


def run_validation(config: RunConfig, progress: Progress | None = None) -> RunOutcome:
    """Run every test of ``config`` and store the run (unless ``config.db`` is None)."""
    started = datetime.now(timezone.utc).replace(tzinfo=None)
    if config.db and not Path(config.db).resolve().parent.is_dir():
        raise InputError(f"{config.db}: the folder {Path(config.db).parent} does not exist")
    sim = open_sample("sim", config.sim, config.weight)
    data = open_sample("data", config.data, None)
    sim_sel = Selection.parse(config.sim_selection, "--sim-selection") \
        if config.sim_selection else None
    data_sel = Selection.parse(config.data_selection, "--data-selection") \
        if config.data_selection else None
    candidates, skipped, kinds = _select_features(sim, data, config)

    columns = candidates + ([config.category] if config.category else [])
    sim_keys, data_keys = event_key_columns(sim), event_key_columns(data)
    sim_chunks = _chunk_supplier(sim, list(dict.fromkeys(columns + sim_keys)), config.chunk_rows,
                                 sim_sel)
    data_chunks = _chunk_supplier(data, list(dict.fromkeys(columns + data_keys)),
                                  config.chunk_rows, data_sel)
    sim_prof, sumw_sim, n_sim, sim_note = _profile(sim, sim_chunks, candidates, config.seed,
                                                   progress, sim_sel, sim_keys)
    data_prof, _, n_data, data_note = _profile(data, data_chunks, candidates, config.seed + 1,
                                               progress, data_sel, data_keys)
    if not sumw_sim > 0:
        raise InputError(f"{sim.sources[0].label}: the simulation's sum of weights is "
                         f"{sumw_sim:g} (must be > 0)")
    plan = make_plan(sim_prof, data_prof, kinds, weight=config.weight, category=config.category,
                     requested=config.features, skipped=skipped, config=config.plan,
                     notes=[n for n in (sim_note, data_note) if n])
    layout = Layout(plan)

    sim_acc = _fill(sim, sim_chunks, layout, config.category, progress)
    data_acc = _fill(data, data_chunks, layout, config.category, progress)
    if progress:
        progress("tests", 0, 1)
    records = run_tests(layout, sim_acc, data_acc, config.compare)
    if progress:
        progress("tests", 1, 1)
    pvalues = np.array([r.result.pvalue for r in records], dtype=float)
    reliable = np.array([r.result.reliable for r in records], dtype=bool)
    p_holm, p_bh = adjust_pvalues(pvalues)
    summary = summarise(pvalues, reliable, config.alpha, adjusted=(p_holm, p_bh))
    # an unreliable test is never reported as a confident failure
    passed = ~(reliable & (pvalues < config.alpha))
    finished = datetime.now(timezone.utc).replace(tzinfo=None)
    run_id = f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    outcome = RunOutcome(
        run_id=run_id, plan=plan, layout=layout, sim=sim_acc, data=data_acc, records=records,
        summary=summary, p_holm=p_holm, p_bh=p_bh, passed=passed, started_at=started,
        finished_at=finished, n_sim=n_sim, n_data=n_data,
        db=Path(config.db) if config.db else None,
        sim_paths=[s.label for s in sim.sources], data_paths=[s.label for s in data.sources],
        notes=[*plan.notes, *untested_categories(sim_acc, data_acc).values()],
    )
    if config.db:
        from validator.store import write_run

        write_run(config.db, run_rows(outcome, config))
    return outcome


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


def run_rows(outcome: RunOutcome, config: RunConfig) -> dict[str, list[dict[str, Any]]]:
    """The rows of every table for one run (see validator.store.SCHEMA)."""
    run_id = outcome.run_id
    plan, layout = outcome.plan, outcome.layout
    sim_all = outcome.sim[INCLUSIVE]
    s = outcome.summary
    runs = [{
        "run_id": run_id, "started_at": outcome.started_at, "finished_at": outcome.finished_at,
        "tool_version": __version__, "sim_paths": outcome.sim_paths,
        "data_paths": outcome.data_paths, "weight_column": config.weight,
        "category_column": config.category, "plan_json": plan.to_json(),
        "n_sim": outcome.n_sim, "n_data": outcome.n_data,
        "sumw_sim": float(sim_all.sumw[0]), "sumw2_sim": float(sim_all.sumw2[0]),
        "n_features": len(plan.features), "n_pairs": len(plan.pairs), "alpha": s.alpha,
        "n_tests": s.n_tests, "n_reliable": s.n_reliable, "n_failed": s.n_failed,
        "n_expected_failures": s.n_expected, "p_binomial": _finite(s.p_binomial),
        "p_uniformity": _finite(s.p_uniformity), "n_significant_holm": s.n_significant_holm,
        "n_significant_bh": s.n_significant_bh, "command": config.command,
        "notes": outcome.notes,
    }]
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
            lo, hi = layout.offsets_1d[k], layout.offsets_1d[k + 1]
            histograms.append({
                "run_id": run_id, "category": cat, "feature_x": f.name, "feature_y": None,
                "edges_x": list(f.edges), "edges_y": None,
                "sim_sumw": sim.h1_sumw[0, lo:hi].tolist(),
                "sim_sumw2": sim.h1_sumw2[0, lo:hi].tolist(),
                "data_counts": data.h1_sumw[0, lo:hi].tolist(),
            })
        for p, (i, j) in enumerate(plan.pairs):
            lo, hi = layout.offsets_2d[p], layout.offsets_2d[p + 1]
            histograms.append({
                "run_id": run_id, "category": cat, "feature_x": plan.features[i].name,
                "feature_y": plan.features[j].name,
                "edges_x": list(plan.features[i].pair_edges),
                "edges_y": list(plan.features[j].pair_edges),
                "sim_sumw": sim.h2_sumw[0, lo:hi].tolist(),
                "sim_sumw2": sim.h2_sumw2[0, lo:hi].tolist(),
                "data_counts": data.h2_sumw[0, lo:hi].tolist(),
            })
    tests = []
    for t, rec in enumerate(outcome.records):
        r = rec.result
        tests.append({
            "run_id": run_id, "test_id": t, "category": rec.category, "kind": rec.kind,
            "method": r.method, "feature_x": rec.feature_x, "feature_y": rec.feature_y,
            "statistic": _finite(r.statistic), "ndf": _finite(r.ndf),
            "pvalue": _finite(r.pvalue), "pvalue_method": r.pvalue_method,
            "n_toys": r.n_toys, "effect_size": _finite(r.effect_size),
            "effect_name": r.effect_name, "reliable": bool(r.reliable),
            "p_holm": _finite(outcome.p_holm[t]), "p_bh": _finite(outcome.p_bh[t]),
            "passed": bool(outcome.passed[t]),
            "details": json.dumps(r.details, default=_json_default),
        })
    skipped = [{"run_id": run_id, "column_name": c, "reason": why}
               for c, why in plan.skipped.items()]
    return {"runs": runs, "features": features, "tests": tests, "histograms": histograms,
            "skipped_columns": skipped}
