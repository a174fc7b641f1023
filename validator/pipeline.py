"""One validation run, stage by stage: read -> transform -> plan -> fill -> test -> summarise
-> store.

:func:`run_validation` is what the CLI calls; a physicist can call it from a notebook too and
get a :class:`RunOutcome` with every intermediate value. The stages live in their own modules
(:mod:`validator.inputs.sources`, :mod:`validator.inputs.transform`, :mod:`validator.stages.plan`,
:mod:`validator.stages.fill`, :mod:`validator.stages.compare`, :mod:`validator.results.summary`,
:mod:`validator.results.store`); this module only orders them.
"""

from __future__ import annotations

import platform
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from validator import __version__
from validator.config.run import RunConfig
from validator.engine.pool import (
    FillTask,
    Later,
    ScanTask,
    WorkerPool,
    default_jobs,
    fill_samples,
    fork_map,
    scan_samples,
    worth_workers,
)
from validator.errors import InputError
from validator.inputs.sources import (
    Sample,
    Selection,
    column_titles,
    open_sample,
)
from validator.inputs.transform import INCLUSIVE, Reader, TransformChain, parse_definitions
from validator.results.display import with_branch_titles
from validator.results.summary import (
    DECISIVE,
    Findings,
    RunSummary,
    adjusted_by_family,
    summarise,
    verdict_roles,
)
from validator.stages.audit import (
    AuditResult,
    FirstOrderTaylor,
    ModelAudit,
    OutputsWithFirstOrder,
    audit_results,
    criticality_rows,
)
from validator.stages.compare import (
    SystInputs,
    TestRecord,
    run_tests,
    shape_changes,
    untested_categories,
    warm_in_background,
)
from validator.stages.correct import correct as correct  # validator.correct (notebooks)
from validator.stages.fill import Accumulator, Layout, fill_sample
from validator.stages.globaltest import (
    GlobalResult,
    global_test,
    observed_pvalues,
    sign_flip_replicas,
)
from validator.stages.multivariate import (
    SIM_RESERVOIR_FACTOR,
    EventReservoir,
    MultivariateResult,
    multivariate_results,
    weight_systematics,
)
from validator.stages.plan import (
    Plan,
    event_key_columns,
    make_plan,
    select_features,
)
from validator.stages.systematics import ProcessCollector, Systematics, VariationRows

#: Column names that are a simulation's event weight when --weight is not given.
WEIGHT_NAMES = ("weight", "weights", "evtweight", "eventweight", "event_weight", "genweight",
                "mcweight", "mc_weight", "w")
#: Packages whose versions are stored with a run (the numbers depend on them).
KEY_PACKAGES = ("numpy", "scipy", "pyarrow", "polars", "duckdb", "uproot",
                "awkward")

Progress = Callable[[str, int, int], None]


def package_versions() -> dict[str, str]:
    """Versions of validator, Python and the packages the numbers depend on."""
    versions = {"validator": __version__, "python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class RunOutcome:
    """Everything a run produced."""

    run_id: str
    config: RunConfig
    plan: Plan
    layout: Layout
    sim: dict[str, Accumulator]
    data: dict[str, Accumulator]
    records: list[TestRecord]
    summary: RunSummary
    p_holm: np.ndarray
    p_bh: np.ndarray
    passed: np.ndarray  # True, False, or None for a test that did not run
    started_at: datetime
    finished_at: datetime
    n_sim: int
    n_data: int
    sim_paths: list[str]
    data_paths: list[str]
    versions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    global_result: GlobalResult | None = None  # the run-level test (validator.stages.globaltest)
    model: dict[str, Any] | None = None  # the audited network (AuditedModel.describe())
    audit: AuditResult | None = None  # its importances, Taylor tests, rank correlations
    criticality: list[dict[str, Any]] = field(default_factory=list)
    syst: SystInputs | None = None  # the systematics' rows and shape-variation accumulators
    syst_effects: list[dict[str, Any]] = field(default_factory=list)
    multivariate: MultivariateResult | None = None  # learned tests, evidently, attributions
    correction: dict[str, Any] | None = None  # the correction applied (--apply), described
    db: Path | None = None  # where the run was stored
    side_file: Path | None = None  # where it went when the database stayed busy

    @property
    def n_tests(self) -> int:
        return len(self.records)

    def findings(self) -> Findings:
        """The significant tests after Holm, grouped as the terminal summary shows them."""
        return self.reading().findings

    def reading(self) -> Any:
        """The run's :class:`~validator.results.reading.RunReading`, as every face shows it
        (the verdict: none, a run just finished is judged by :mod:`validator.gate.judge`)."""
        from validator.results.reading import read_run
        from validator.results.tables import outcome_tables

        return read_run(outcome_tables(self))


def _check_weighting(sim: Sample, config: RunConfig) -> None:
    """A simulation with a weight column compared unweighted is a mistake unless said so."""
    if config.weight or config.unweighted:
        return
    found = [c for c, k in sim.columns.items()
             if c.lower() in WEIGHT_NAMES and k in ("float", "int")]
    if found:
        raise InputError(f"{sim.sources[0].label}: has a weight column '{found[0]}' but no "
                         f"--weight was given; pass --weight {found[0]}, or --unweighted to "
                         "compare the simulation unweighted")


def _check_distinct_inputs(sim: Sample, data: Sample, config: RunConfig) -> None:
    """The same files with the same selection on both sides compare a sample with itself."""
    same = sorted(str(s.path.resolve()) for s in sim.sources) == \
        sorted(str(s.path.resolve()) for s in data.sources)
    if same and (config.sim_selection or "") == (config.data_selection or ""):
        raise InputError(f"{data.sources[0].label}: simulation and data are the same files with "
                         "the same selection; every test would pass trivially (split a file "
                         "with --sim-selection/--data-selection to test the chain)")


def _load_model(config: RunConfig, sim: Sample, data: Sample, defined: Sequence[str] = ()
                ) -> Any:
    """The audited network (``--model``), checked against both samples' columns and the
    ``defined`` ones (``--define``: made before the network runs)."""
    if not config.model:
        return None
    from validator.model import load_model

    model = load_model(config.model, inputs=config.model_inputs, scaler=config.model_scaler,
                       kind=config.model_kind, params=config.model_params or None)
    for sample in (sim, data):
        model.check_columns([*sample.columns, *defined], sample.sources[0].label)
    return model


def _identical_note(sims: dict[str, Accumulator], datas: dict[str, Accumulator]) -> str | None:
    sim, data = sims.get(INCLUSIVE), datas.get(INCLUSIVE)
    if sim is None or data is None or sim.n_events != data.n_events:
        return None
    if np.array_equal(sim.h1_sumw, data.h1_sumw) and np.array_equal(sim.fine_sumw,
                                                                     data.fine_sumw):
        return ("simulation and data hold the same events (identical histograms of every "
                "feature): every test passes trivially; are the same events on both sides?")
    return None


def _systematic_inputs(config: RunConfig, syst: Systematics, rows: VariationRows,
                       layout: Layout, columns: list[str],
                       chain: Callable[..., TransformChain],
                       progress: Progress | None) -> SystInputs:
    """The shape variations' accumulators (their files read through the simulation's chain
    and filled in the nominal binning) and the processes' normalisation uncertainties."""
    shapes = {}
    for v in syst.shapes:
        sides = []
        for side, paths in (("up", v.up), ("down", v.down)):
            if paths is None:
                sides.append(None)
                continue
            sample = open_sample(f"syst-file {v.name} {side}", paths, config.weight)
            made = set(chain(None, "").derived_names)
            missing = [c for c in columns if c not in sample.columns and c not in made]
            if missing:
                raise InputError(f"{sample.sources[0].label}: --syst-file {v.name}: no column "
                                 f"'{missing[0]}' (a shape variation needs the simulation's "
                                 "columns)")
            keys = event_key_columns(sample)
            reader = Reader(sample, list(dict.fromkeys(columns + keys)), config.chunk_rows,
                            chain(config.sim_selection, "--sim-selection", sample=sample))
            filled = fill_sample(reader, layout, config.category, progress, config.seed)
            inclusive = filled.get(INCLUSIVE)
            n_left = inclusive.n_events if inclusive is not None else 0
            if not n_left:
                # a template of nothing: the profiled fit would take it as covering any
                # mismodelling (a false pass), so the run stops here
                raise InputError(f"{sample.sources[0].label}: --syst-file {v.name} {side}: "
                                 "no event passes the selection and the blinding")
            if not inclusive.sumw[0] > 0:
                raise InputError(f"{sample.sources[0].label}: --syst-file {v.name} {side}: "
                                 f"the {n_left} events left by the selection and the blinding "
                                 f"have a sum of weights of {inclusive.sumw[0]:g} (must be > 0)")
            sides.append(filled)
        shapes[v.name] = (sides[0], sides[1])
    norms = syst.process_norms(rows.processes) if syst.process_column else {}
    return SystInputs(rows, shapes, norms)


def _multivariate_reservoirs(config: RunConfig, plan: Plan, model: Any, syst: Any
                             ) -> tuple[EventReservoir, EventReservoir] | None:
    """The event subsamples of the multivariate tests and of evidently's report (None when
    neither is asked): the network's inputs, else the tested features but the network
    outputs; the simulation's reservoir carries the weight variations."""
    if not (config.multivariate or config.evidently_report):
        return None
    outputs = {n for m in model.grid() for n in m.names} if model is not None else set()
    inputs = tuple(model.inputs) if model is not None else tuple(
        n for n in plan.feature_names if n not in outputs)
    extra = tuple(dict.fromkeys(c for v in (syst.weights if syst else ())
                                for c in (v.up, v.down) if c))
    n = config.multivariate_events
    return (EventReservoir(inputs, n * SIM_RESERVOIR_FACTOR, config.seed, extra),
            EventReservoir(inputs, n, config.seed + 1))


def _load_correction(config: RunConfig) -> Any:
    """The correction file of a closure run (``--apply``), or None."""
    if not config.apply:
        return None
    from validator.stages.correct import APPLY_HALVES, load_corrections

    if config.apply_half not in APPLY_HALVES:
        raise InputError(f"--apply-half {config.apply_half}: one of {', '.join(APPLY_HALVES)}")
    return load_corrections(config.apply)


def _with_correction_systematics(syst: Systematics | None, correction: Any) -> Systematics:
    """The run's systematics plus one weight variation per applied correction (its ±1σ)."""
    from validator.stages.systematics import WeightVariation

    base = syst if syst is not None else Systematics()
    taken = set(base.names)
    added = []
    for name in correction.syst_names:
        if name in taken:
            raise InputError(f"--apply {correction.path}: a systematic is already called "
                             f"'{name}'")
        up, down = correction.columns(name)
        added.append(WeightVariation(name, up, down))
    return replace(base, weights=(*base.weights, *added))


def _closure_steps(config: RunConfig, correction: Any, sim: Sample
                   ) -> Callable[[Sample, bool], tuple[Any, Any]]:
    """A closure run's steps of a sample's chain: (its half filter, the simulation's
    reweighting); (None, None) without ``--apply``."""
    if correction is None:
        return lambda sample, is_sim: (None, None)
    from validator.stages.correct import HalfFilter, corrector_for

    salt = int(correction.metadata.get("split", {}).get("salt", 0))
    made = {n for d in parse_definitions(config.defines) for n in d.names}
    missing = [c for c in correction.inputs if not sim.has(c) and c not in made]
    if missing:
        raise InputError(f"{sim.sources[0].label}: --apply {correction.path}: no column "
                         f"'{missing[0]}' (an input of the correction)")

    def steps(sample: Sample, is_sim: bool) -> tuple[Any, Any]:
        split = HalfFilter.of(sample, config.apply_half, salt) \
            if config.apply_half != "all" else None
        return split, corrector_for(correction, sample) if is_sim else None

    return steps


def _column_roles(config: RunConfig, syst: Systematics | None) -> list[str]:
    """Columns that play a role other than a feature (weights, the category, the processes):
    a ``--define``d one is made, and not tested as a feature."""
    roles = [config.category] if config.category else []
    return roles + (syst.columns() if syst is not None else [])


def _check_network_names(config: RunConfig, definitions: Sequence[Any], points: Sequence[Any],
                         sim: Sample, data: Sample) -> None:
    """The names that meet the network's outputs before it runs, each with a message that
    says what is wrong rather than that a sample lacks a column:

    - a ``--define`` named like an output (the network's value would replace it);
    - a ``--define`` that reads an output (defined columns are made before the network runs);
    - a ``--define``, ``--blind`` or selection naming an output the network does not have
      (``output`` of a multi-class network, whose outputs are ``output_<node>``)."""
    if not points:
        return
    outputs = list(dict.fromkeys(n for p in points for n in p.names))
    made = {n for d in definitions for n in d.names}
    uses = [(f"--define {d.names[0]}", d.inputs, (sim, data)) for d in definitions]
    uses += [(option, Selection.parse(text, option).columns, samples)
             for option, text, samples in (
                 ("--blind", config.blind, (sim, data)),
                 ("--sim-selection", config.sim_selection, (sim,)),
                 ("--data-selection", config.data_selection, (data,))) if text]
    for d in definitions:
        clash = [n for n in d.names if n in outputs]
        if clash:
            raise InputError(f"--define {clash[0]}: the audited network's output has this "
                             "name (rename the defined column)")
    for option, columns, samples in uses:
        for c in columns:
            if c in made:
                continue
            if c in outputs and option.startswith("--define") \
                    and not all(sample.has(c) for sample in samples):
                raise InputError(f"{option} reads '{c}', the network's output: --define "
                                 "columns are made before the network runs (select on its "
                                 "output with --blind, --sim-selection or --data-selection)")
            if c.startswith("output") and c not in outputs \
                    and not any(sample.has(c) for sample in samples):
                raise InputError(f"{option}: '{c}' is not an output of the network (its "
                                 f"outputs: {', '.join(outputs)})")


def _check_outputs_finite(points: Sequence[Any], inputs: Sequence[str],
                          sim_profiles: Mapping[str, Any], data_profiles: Mapping[str, Any]
                          ) -> None:
    """A network output with no finite value in a sample because one of its inputs has none
    there: the message names the input (the output is NaN wherever an input is)."""
    outputs = [n for p in points for n in p.names]
    for label, profiles in (("data", data_profiles), ("simulation", sim_profiles)):
        if not any(n in profiles and profiles[n].n_valid == 0 for n in outputs):
            continue
        empty = [c for c in inputs if c in profiles and profiles[c].n_valid == 0]
        if empty:
            raise InputError(f"{label}: the network's input '{empty[0]}' has no finite value "
                             "(all NaN/inf/sentinel), so neither has its output")


def _derived_for(data: Sample, derived: Sequence[Any], roles: Sequence[str]
                 ) -> tuple[Any, ...]:
    """The derived columns made in data: a ``--define`` that reads a column only the
    simulation has (``weight``) can only be one of the simulation's ``roles`` (a systematic's
    weight, the process column) and is made there alone."""
    made: set[str] = set()
    out = []
    for d in derived:
        missing = [c for c in d.inputs if not data.has(c) and c not in made]
        if not missing:
            out.append(d)
            made.update(d.names)
            continue
        for name in d.names:
            if name not in roles:
                raise InputError(f"{data.label_lacking(missing[0])}: --define {name} reads "
                                 f"'{missing[0]}', which data lacks: such a column can only be "
                                 "a weight of a systematic (--syst) or the process column")
    return tuple(out)


def _collectors(*collectors: Any) -> tuple[Any, ...]:
    """What a sample's fill gathers besides its histograms (the network audit's sums, the
    multivariate subsample), the absent ones left out."""
    return tuple(c for c in collectors if c is not None)


def _test_dicts(records: Sequence[TestRecord], p_holm: np.ndarray) -> list[dict[str, Any]]:
    """The fields of the tests that criticality reads, before the rows are stored."""
    return [{"test_id": t, "category": r.category, "kind": r.kind, "method": r.method,
             "feature_x": r.feature_x, "feature_y": r.feature_y,
             "pvalue": r.pvalue if r.result is not None else None, "reliable": r.reliable,
             "p_holm": float(p_holm[t]) if np.isfinite(p_holm[t]) else None,
             "effect_size": r.result.effect_size if r.result is not None else None,
             "effect_name": r.result.effect_name if r.result is not None else None}
            for t, r in enumerate(records)]


def _deciding(tests: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """The tests that decide the verdict (:func:`validator.results.summary.verdict_roles`): under
    systematics a stat-only test whose histogram's saturated_syst passes makes no input
    mismodelled, in the criticality table as in the findings and the gate."""
    roles = verdict_roles(tests, alpha)
    return [t for t, role in zip(tests, roles, strict=True) if role == DECISIVE]


def run_validation(config: RunConfig, progress: Progress | None = None) -> RunOutcome:
    """Run every test of ``config`` and store the run (unless ``config.db`` is None)."""
    from validator.results import store
    from validator.results.rows import run_rows

    started = datetime.now(timezone.utc).replace(tzinfo=None)
    if config.db:
        store.check_database(config.db)  # before any work: a finished run must have a home
    sim = open_sample("sim", config.sim, config.weight)
    data = open_sample("data", config.data, None)
    _check_weighting(sim, config)
    _check_distinct_inputs(sim, data, config)
    definitions = parse_definitions(config.defines)
    model = _load_model(config, sim, data, [n for d in definitions for n in d.names])
    syst = config.systematics
    correction = _load_correction(config)
    if correction is not None:
        syst = _with_correction_systematics(syst, correction)
    if syst is not None and syst.empty and not syst.process_column:
        syst = None
    points = model.grid() if model else ()
    _check_network_names(config, definitions, points, sim, data)
    derived = (*definitions, *points)
    derived_names = [n for d in derived for n in d.names]
    if syst is not None:  # a closure run's correction makes its variations' columns
        made_weights = [c for n in correction.syst_names for c in correction.columns(n)] \
            if correction is not None else []
        syst.check_columns(sim, [*derived_names, *made_weights])
    blind = Selection.parse(config.blind, "--blind") if config.blind else None

    roles = _column_roles(config, syst)
    data_derived = _derived_for(data, derived, roles)
    # the nominal samples' chains differentiate the network where they evaluate it: the scan
    # sums every event's first-order Taylor coefficients (the variations' chains do not)
    sim_made, data_made = (tuple(OutputsWithFirstOrder(d) if any(d is p for p in points)
                                 else d for d in made) for made in (derived, data_derived))

    closure = _closure_steps(config, correction, sim)

    def chain(selection: str | None, option: str, made: tuple[Any, ...] = derived,
              sample: Sample = sim) -> TransformChain:
        split, reweight = closure(sample, sample is not data)
        return TransformChain(selection=Selection.parse(selection, option) if selection else None,
                              derived=made, blind=blind, split=split, reweight=reweight)

    features = config.features
    if features and points:  # the network's outputs are tested whatever inputs are chosen
        features = [*features, *(n for m in points for n in m.names
                                 if n not in features and n not in config.exclude)]
    choice = select_features(sim, data, weight=config.weight, category=config.category,
                             features=features, exclude=config.exclude,
                             derived=derived_names, roles=roles)
    columns = choice.candidates + ([config.category] if config.category else []) \
        + (list(model.inputs) if model else [])
    sim_keys, data_keys = event_key_columns(sim), event_key_columns(data)
    sim_columns = columns + (syst.columns() if syst is not None else [])
    sim_reader = Reader(sim, list(dict.fromkeys(sim_columns + sim_keys)), config.chunk_rows,
                        chain(config.sim_selection, "--sim-selection", sim_made))
    data_reader = Reader(data, list(dict.fromkeys(columns + data_keys)), config.chunk_rows,
                         chain(config.data_selection, "--data-selection", data_made, data))
    # ROOT branch titles of the tested columns: their default axis labels, stored with the run
    titles = {**column_titles(data, choice.candidates), **column_titles(sim, choice.candidates)}
    if titles:
        config = replace(config, display=with_branch_titles(config.display, titles))
    jobs = config.jobs if config.jobs is not None else default_jobs()
    with WorkerPool(jobs) as pool:
        if worth_workers(max(sim.n_rows, 0) + max(data.n_rows, 0)):
            pool.start()  # the workers start while this process reads the files' metadata
        processes = ProcessCollector(syst.process_column) \
            if syst is not None and syst.process_column else None
        first_order = [FirstOrderTaylor(points) for _ in range(2)] if model else []
        sim_scan, data_scan = scan_samples([
            ScanTask(sim_reader, choice.candidates, config.seed, sim_keys,
                     observe=processes.add if processes else None,
                     collectors=tuple(first_order[:1])),
            ScanTask(data_reader, choice.candidates, config.seed + 1, data_keys,
                     collectors=tuple(first_order[1:])),
        ], jobs=jobs, progress=progress, pool=pool)
        if not sim_scan.sumw > 0:
            more = f" (and {len(sim.sources) - 1} more files)" if len(sim.sources) > 1 else ""
            raise InputError(f"{sim.sources[0].label}{more}: the simulation's sum of weights "
                             f"is {sim_scan.sumw:g} (must be > 0)")
        if model is not None:
            _check_outputs_finite(points, model.inputs, sim_scan.profiles, data_scan.profiles)
        notes = [*choice.notes, *(n for n in (sim_scan.note, data_scan.note) if n)]
        plan = make_plan(sim_scan.profiles, data_scan.profiles, choice.kinds, weight=config.weight,
                         category=config.category, requested=config.features,
                         skipped=choice.skipped, config=config.plan, notes=notes)
        layout = Layout(plan)

        audits = [ModelAudit(points, scan.n_events, config.seed + k, config.second_order_events,
                             config.shap_events, first_order=first_order[k].sums)
                  if model else None for k, scan in enumerate((sim_scan, data_scan))]
        rows = VariationRows.make(syst, processes.processes() if processes else ())
        reservoirs = _multivariate_reservoirs(config, plan, model, syst)
        warming = warm_in_background(jobs, fits=syst is not None)
        sim_acc, data_acc = fill_samples([
            FillTask(sim_reader, layout, config.category, config.seed,
                     collectors=_collectors(audits[0], reservoirs[0] if reservoirs else None),
                     variations=rows),
            FillTask(data_reader, layout, config.category, config.seed + 1,
                     collectors=_collectors(audits[1], reservoirs[1] if reservoirs else None)),
        ], jobs=jobs, engine=config.engine, scheduler=config.scheduler, progress=progress,
            pool=pool)
    if warming is not None:
        warming.join()
    if syst is not None and INCLUSIVE in sim_acc:
        empty = rows.empty_variation(sim_acc[INCLUSIVE].sumw)
        if empty:
            raise InputError(f"{sim.sources[0].label}: {empty}")
    syst_inputs = _systematic_inputs(config, syst, rows, layout, columns, chain, progress) \
        if syst is not None else None
    tested_syst = syst_inputs if syst_inputs is not None and (
        syst_inputs.rows.weights or syst_inputs.shapes or syst_inputs.norms) else None
    # the run-level test's replicas and the network's importances (SHAP) need no worker:
    # they are computed here while the workers test
    replicas_later = Later(lambda: sign_flip_replicas(layout, sim_acc, data_acc, config.seed,
                                                      config.compare.min_expected,
                                                      syst=tested_syst))
    audit_later = Later(lambda: audit_results(points, audits[0].result(), audits[1].result(),
                                              config.seed, config.shap_events)) \
        if model is not None else None

    def meanwhile() -> None:
        replicas_later()
        if audit_later is not None:
            audit_later()

    records = run_tests(layout, sim_acc, data_acc, config.compare, config.seed, progress,
                        config.alpha, syst=tested_syst, jobs=jobs, meanwhile=meanwhile,
                        parallel_map=fork_map)
    effects = shape_changes(layout, sim_acc, tested_syst) if tested_syst is not None else []
    audit = None
    if audit_later is not None:  # a test that involves a network output is an output test
        outputs = {n for m in points for n in m.names}
        records = [replace(r, kind="output") if {r.feature_x, r.feature_y} & outputs else r
                   for r in records]
        if progress:
            progress("audit the network", 0, 1)
        audit = audit_later.result()
        records.extend(audit.records)
    multivariate = None
    if reservoirs:
        multivariate = multivariate_results(
            config.multivariate, *reservoirs, config.seed,
            systematics=weight_systematics(reservoirs[0], syst.weights) if syst else None,
            time_budget_s=config.multivariate_time_s, evidently_report=config.evidently_report,
            n_toys=config.multivariate_toys, progress=progress)
        records.extend(multivariate.records)
    replicas = replicas_later.result()
    global_result = global_test(replicas, config.alpha, observed_pvalues(records)) \
        if replicas is not None else None
    pvalues = np.array([r.pvalue for r in records], dtype=float)
    reliable = np.array([r.reliable for r in records], dtype=bool)
    ran = np.array([r.result is not None for r in records], dtype=bool)
    p_holm, p_bh = adjusted_by_family(pvalues, [r.kind for r in records])
    summary = summarise(pvalues, reliable, config.alpha, adjusted=(p_holm, p_bh))
    # an unreliable test is never reported as a confident failure; one that did not run is
    # neither passed nor failed
    passed = np.where(ran, ~(reliable & (pvalues < config.alpha)), None)
    if multivariate is not None and multivariate.evidently:  # beside ours, out of the family
        extra = multivariate.evidently
        records = [*records, *extra]
        p_holm, p_bh = (np.concatenate([a, np.full(len(extra), np.nan)]) for a in (p_holm, p_bh))
        passed = np.concatenate([passed, np.array(
            [not r.result.details["drift_detected"] for r in extra], dtype=object)])
    criticality = criticality_rows(audit, _deciding(_test_dicts(records, p_holm), config.alpha),
                                   config.alpha) if audit is not None else []
    finished = datetime.now(timezone.utc).replace(tzinfo=None)
    run_notes = [*plan.notes, *untested_categories(sim_acc, data_acc).values()]
    if syst is not None and syst.norm_default and not syst.process_column:
        run_notes.append(f"--norm-unc {syst.norm_default:g} without --process-column changes "
                         "no shape (the tests fit the normalisation freely): give it per "
                         "process")
    identical = _identical_note(sim_acc, data_acc)
    if identical:
        run_notes.append(identical)
    if audit is not None:
        run_notes.extend(audit.notes)
    outcome = RunOutcome(
        run_id=f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}", config=config, plan=plan,
        layout=layout, sim=sim_acc, data=data_acc, records=records, summary=summary,
        p_holm=p_holm, p_bh=p_bh, passed=passed, started_at=started, finished_at=finished,
        n_sim=sim_scan.n_events, n_data=data_scan.n_events,
        sim_paths=[s.label for s in sim.sources], data_paths=[s.label for s in data.sources],
        versions=package_versions(), notes=run_notes, global_result=global_result,
        model=model.describe() if model is not None else None, audit=audit,
        criticality=criticality, syst=syst_inputs, syst_effects=effects,
        multivariate=multivariate,
        correction=correction.describe(config.apply_half) if correction is not None else None,
    )
    if config.db:
        outcome.db, outcome.side_file = store.save_run(run_rows(outcome), outcome.run_id,
                                                       config.db, wait_s=config.db_wait_s)
    return outcome
