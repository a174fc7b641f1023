"""Run the statistical tests on filled accumulators: every feature in 1D, every pair in 2D.

Every *planned* test gets a :class:`TestRecord`: either a result, or the reason it could not
run (``not_run_reason``; such a test has no p-value and never counts as passed). What is
planned follows from the plan alone (see :func:`planned_methods`), so a category with few
events has as many rows as any other.

Each test draws its randomness (toys) from its own stream, derived from the run's seed and the
test's identity (category, method, features; :func:`test_rng`): a result does not depend on
which other tests are in the run, nor on the order they run in.

This stage slices histograms out of the accumulators and calls the pure functions of
:mod:`validator.stats`; it does no I/O.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from validator.stages.fill import Accumulator, Layout
from validator.stats import (
    GofResult,
    chi2_uw,
    corr_pearson,
    corr_spearman,
    dependence,
    edf_hist_tests,
    merge_histogram,
    merge_sparse_bins,
    saturated,
    wasserstein_hist,
)
from validator.stats.binned import small_simulation_reason
from validator.stats.histogram import Hist

if TYPE_CHECKING:
    from validator.stages.systematics import VariationRows

#: Tests of each feature (kind ``1d``), each pair's histogram (``2d``) and correlation (``corr``).
METHODS_1D = ("chi2_uw", "saturated", "ks", "ad")
METHODS_2D = ("chi2_uw", "saturated", "dependence")
METHODS_CORR = ("corr_spearman", "corr_pearson")
#: Fewest test groups (features and pairs, all categories) worth a pool of processes: below
#: it, forking costs more than the tests.
MIN_PARALLEL_GROUPS = 32
#: Batches of test groups per process: enough for the processes to finish together though a
#: pair with toys costs a hundred times a feature with asymptotic p-values.
TEST_BATCHES_PER_JOB = 16
#: The 1D test of the fraction of NaN/inf/sentinel values, planned for a feature that has any.
INVALID_FRACTION = "invalid_fraction"
#: The coarser binning on which a small simulation's asymptotic p-value is taken (bins merged
#: until each variance estimate rests on enough entries) must keep this fraction of the
#: plan's groups; below it the resolution lost is too much and toys run on the plan's bins.
VARIANCE_MERGE_MIN_KEPT = 0.75
#: The saturated test with the systematics as nuisance parameters (planned with systematics,
#: beside ``saturated``: a reviewer sees what the systematics absorb).
SATURATED_SYST = "saturated_syst"


@dataclass(frozen=True)
class CompareOptions:
    """Options of the test stage.

    Toy p-values start with the given number of toys and add more, up to ``max_toys``, while
    the decision at Holm's first threshold alpha/m is not settled by them; a statistic beyond
    every toy gets more, until alpha/m can be resolved
    (:func:`validator.stats.toys.run_toys`).
    """

    min_expected: float = 5.0
    dependence_toys: int = 300
    small_sample_toys: int = 500
    edf_toys: int = 500
    max_toys: int = 20_000
    syst_toys: int = 300


@dataclass(frozen=True)
class ToyTargets:
    """Where a run's toy p-values must be precise.

    ``thresholds``: the decisions toys are added for until settled (Holm's first threshold
    alpha/m). ``coarse_above``: the run's alpha; a p-value above it only has to be known to be
    above it, so its toys stop at the h-th toy reaching the observation (Besag & Clifford's
    sequential p-value, :func:`validator.stats.toys.sequential_stop`): a few dozen toys for
    most tests of a run that agrees, and the same decisions at alpha as the full number.
    """

    thresholds: tuple[float, ...] = ()
    coarse_above: float | None = None

    def toy_options(self, max_toys: int | None) -> dict[str, Any]:
        """The keyword arguments of a test with adaptive toys."""
        return {"max_toys": max_toys, "thresholds": self.thresholds,
                "coarse_above": self.coarse_above}


@dataclass(frozen=True)
class SystInputs:
    """What the systematic tests need beside the nominal accumulators.

    ``rows``: the simulation accumulators' weight rows (weight variations, processes);
    ``shapes``: shape systematic -> (up, down or None) accumulators per category, filled in
    the same layout from the alternative simulation files; ``norms``: process -> relative
    log-normal uncertainty.
    """

    rows: VariationRows
    shapes: dict[str, tuple[dict[str, Accumulator], dict[str, Accumulator] | None]] = \
        field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)

    def templates(self, category: str, sim: Hist, view: Callable[[Accumulator], Hist]
                  ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Each systematic's (up, down or None) Σw per bin of ``sim``'s binning (flat)."""
        out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for v in self.rows.weights:
            up = self.rows.index(f"{v.name}_up")
            down = self.rows.index(f"{v.name}_down")
            out[v.name] = (sim.sumw[up].ravel(),
                           sim.sumw[down].ravel() if down is not None else None)
        zeros = np.zeros(sim.values.size)
        for name, (ups, downs) in self.shapes.items():
            up = view(ups[category]).values.ravel() if category in ups else zeros
            down = None if downs is None else (
                view(downs[category]).values.ravel() if category in downs else zeros)
            out[name] = (up, down)
        return out


@dataclass(frozen=True)
class TestRecord:
    """One planned test of a run: where it looked, and its result or why it could not run."""

    __test__ = False  # not a pytest class

    category: str
    kind: str  # 1d | 2d | corr | output | taylor
    method: str
    feature_x: str
    feature_y: str | None
    result: GofResult | None
    not_run_reason: str | None = None
    node: str | None = None  # the network output a model-audit test belongs to

    @property
    def pvalue(self) -> float:
        return self.result.pvalue if self.result is not None else float("nan")

    @property
    def reliable(self) -> bool:
        return self.result is not None and self.result.reliable


def test_rng(seed: int, category: str, method: str, feature_x: str,
             feature_y: str | None = None) -> np.random.Generator:
    """The random stream of one test: a function of the run's seed and the test's identity.

    The identity is hashed with SHA-256 (stable across processes and platforms, unlike
    Python's ``hash``) into the entropy of a numpy ``SeedSequence``.
    """
    identity = "\x1f".join([category, method, feature_x, feature_y or ""]).encode()
    words = np.frombuffer(hashlib.sha256(identity).digest()[:16], dtype=np.uint32)
    return np.random.default_rng(np.random.SeedSequence([seed % (1 << 63), *words.tolist()]))


Outcome = GofResult | str  # a result, or the reason the test could not run


def binned_tests(data: Hist, sim: Hist, options: CompareOptions,
                 rng: Callable[[str], np.random.Generator],
                 targets: ToyTargets) -> dict[str, Outcome]:
    """``chi2_uw`` and ``saturated`` on a histogram, sparse bins merged first.

    Bins are merged until each group has enough expected data *and* enough equivalent
    simulated entries (:func:`~validator.stats.merge_sparse_bins`). The asymptotic p-value is
    used where it holds. Where it does not only because a simulation smaller than the data
    has a few bins whose variance rests on too few entries (Σw⁴ says how many; the tails of a
    large sample), those bins are merged further and the asymptotic p-value taken on that
    binning, provided it keeps :data:`VARIANCE_MERGE_MIN_KEPT` of the groups. Otherwise the
    p-value comes from toys that follow each bin's weight law (events, Σw, Σw², Σw³), refined
    until the decisions at ``thresholds`` are settled.
    """
    d, s, s2 = data.values.ravel(), sim.values.ravel(), sim.variances.ravel()
    groups = _merge_groups(d, s, s2, options)
    if isinstance(groups, str):
        return {"chi2_uw": groups, "saturated": groups}

    def merged(a: np.ndarray | None, g: np.ndarray) -> np.ndarray | None:
        return merge_histogram(a.ravel(), g) if a is not None else None

    def histogram(g: np.ndarray) -> dict[str, np.ndarray | None]:
        return {"data_counts": merged(d, g), "sim_sumw": merged(s, g),
                "sim_sumw2": merged(s2, g), "sim_sumw4": merged(sim.sumw4, g)}

    plan_bins = histogram(groups)
    coarse = _variance_groups(d, s, s2, sim.sumw4, plan_bins, options)
    shape = {"sim_count": merged(sim.count, groups), "sim_sumw3": merged(sim.sumw3, groups)}
    results: dict[str, Outcome] = {}
    for name, test in (("chi2_uw", chi2_uw), ("saturated", saturated)):
        result = test(**plan_bins)
        if not result.reliable and coarse is not None:
            alternative = test(**histogram(coarse))
            if alternative.reliable:
                result = replace(alternative, details={
                    **alternative.details,
                    "n_groups_before_variance_merge": int(groups.max()) + 1})
        if not result.reliable:  # asymptotics do not hold: calibrate with toys instead
            result = test(**plan_bins, n_toys=options.small_sample_toys, rng=rng(name),
                          **targets.toy_options(options.max_toys), **shape)
        results[name] = result
    return results


def _variance_groups(d: np.ndarray, s: np.ndarray, s2: np.ndarray, s4: np.ndarray | None,
                     plan_bins: dict[str, np.ndarray | None], options: CompareOptions,
                     ) -> np.ndarray | None:
    """Coarser groups on which every bin's variance estimate rests on enough entries, where
    the plan's merged bins (``plan_bins``) fail the small-simulation rule
    (:func:`~validator.stats.binned.small_simulation_reason`) and the coarser binning keeps
    most of the resolution (see :func:`binned_tests`); else ``None``."""
    if s4 is None or small_simulation_reason(float(d.sum()), plan_bins["sim_sumw"],
                                             plan_bins["sim_sumw2"], plan_bins["sim_sumw4"],
                                             plan_bins["data_counts"]) is None:
        return None
    coarse = merge_sparse_bins(np.clip(s, 0.0, None) * (d.sum() / s.sum()),
                               options.min_expected, sim_sumw=s, sim_sumw2=s2,
                               sim_sumw4=s4.ravel())
    n_plan = len(plan_bins["sim_sumw"])  # type: ignore[arg-type]
    n_coarse = int(coarse.max()) + 1
    if n_coarse < 2 or n_coarse < VARIANCE_MERGE_MIN_KEPT * n_plan:
        return None
    return coarse


def shape_changes(layout: Layout, sims: dict[str, Accumulator], syst: SystInputs
                  ) -> list[dict[str, object]]:
    """How much each systematic changes each feature's *shape* (the tests compare shapes):
    max over the test bins of |(t_i/Σt) / (n_i/Σn) − 1| for the up and down templates t
    against the nominal n (bins with n_i > 0), per category. Beside a network output's change,
    the largest input's says whether the network amplifies a systematic."""
    rows: list[dict[str, object]] = []
    for category, sim in sims.items():
        for k, f in enumerate(layout.plan.features):
            hist = sim.hist_1d(layout, k)
            nominal = hist.values
            ok = nominal > 0
            if not ok.any() or nominal.sum() <= 0:
                continue
            ref = nominal[ok] / nominal.sum()
            for name, (up, down) in syst.templates(category, hist,
                                                   lambda a, k=k: a.hist_1d(layout, k)).items():
                change = {}
                for side, t in (("up", up), ("down", down)):
                    if t is None or t.sum() <= 0:
                        change[side] = None
                        continue
                    change[side] = float(np.max(np.abs(t[ok] / t.sum() / ref - 1.0)))
                rows.append({"category": category, "systematic": name, "feature": f.name,
                             "shape_change_up": change["up"],
                             "shape_change_down": change["down"]})
    return rows


def _merge_groups(d: np.ndarray, s: np.ndarray, s2: np.ndarray, options: CompareOptions
                  ) -> np.ndarray | str:
    """The merged bins of a histogram (enough expected data and simulated entries per
    group), or why no test can run on it."""
    total_data, total_sim = d.sum(), s.sum()
    if total_data <= 0:
        return "no data event with valid values"
    if total_sim <= 0:
        return f"the simulation's sum of weights here is {total_sim:.4g} (not > 0)"
    expected = np.clip(s, 0.0, None) * (total_data / total_sim)
    groups = merge_sparse_bins(expected, options.min_expected, sim_sumw=s, sim_sumw2=s2)
    if groups.max() < 1:
        return (f"fewer than {2 * options.min_expected:g} expected events or too few "
                "simulated entries: one bin left after merging sparse bins")
    return groups


def syst_test(data: Hist, sim: Hist, syst: SystInputs, category: str,
              view: Callable[[Accumulator], Hist], options: CompareOptions,
              rng: np.random.Generator, targets: ToyTargets) -> Outcome:
    """``saturated_syst`` on one histogram: the bins merged as for ``saturated``, each
    systematic's templates and each process merged alike
    (:func:`validator.stats.systematics.saturated_syst`)."""
    from validator.stats.systematics import saturated_syst

    d, s, s2 = data.values.ravel(), sim.values.ravel(), sim.variances.ravel()
    groups = _merge_groups(d, s, s2, options)
    if isinstance(groups, str):
        return groups

    def merged(a: np.ndarray) -> np.ndarray:
        return merge_histogram(a, groups)

    variations = {name: (merged(up), None if down is None else merged(down))
                  for name, (up, down) in syst.templates(category, sim, view).items()}
    for name, sides in variations.items():
        for side, template in zip(("up", "down"), sides, strict=True):
            # a template of nothing (a variation empty in this category) would let the fit
            # take any mismodelling as covered; the run refuses one empty everywhere
            if template is not None and not template.sum() > 0:
                return (f"the systematic {name}'s {side} template is empty here (its weights "
                        f"sum to {template.sum():g})")
    sumw, sumw2, names = merged(s), merged(s2), None
    if syst.norms:
        rows = [syst.rows.index(f"process:{p}") for p in syst.rows.processes]
        sumw = np.stack([merged(sim.sumw[r].ravel()) for r in rows])
        sumw2 = np.stack([merged(sim.sumw2[r].ravel()) for r in rows])
        names = list(syst.rows.processes)
    try:
        return saturated_syst(merged(d), sumw, sumw2, variations=variations,
                              norm_uncertainties=syst.norms or None, process_names=names,
                              n_toys=options.syst_toys, rng=rng,
                              **targets.toy_options(options.max_toys))
    except ValueError as exc:
        return f"the systematic fit cannot run: {exc}"


def _edf_tests(layout: Layout, k: int, sim: Accumulator, data: Accumulator,
               options: CompareOptions, rng: np.random.Generator,
               targets: ToyTargets) -> dict[str, Outcome]:
    """``ks`` and ``ad`` on the fine histograms, with the normalised Wasserstein distance.

    The p-values come from toys of the fine histograms that carry each bin's Σw²
    (:func:`~validator.stats.edf_hist_tests`): calibrated when the weights depend on the
    feature, and for ties, spikes and booleans.
    """
    feature = layout.plan.features[k]
    fine = sim.hist_fine(layout, k)
    fd, fs = data.hist_fine(layout, k).values, fine.values
    if fd.sum() <= 0:
        return dict.fromkeys(("ks", "ad"), "no data event with valid values")
    if fs.sum() <= 0:
        return dict.fromkeys(("ks", "ad"), f"the simulation's sum of weights here is "
                                           f"{fs.sum():.4g} (not > 0)")
    edges = layout.fine_edges[k]
    # a discrete feature's fine bins hold one value each: W1 is measured at the values
    centres = np.asarray(feature.values) if feature.values else 0.5 * (edges[1:] + edges[:-1])
    _, sim_std = sim.mean_std(layout, k)
    w1 = wasserstein_hist(fd, fs, centres)
    w1_norm = float(w1 / sim_std) if sim_std > 0 else float("nan")
    both = edf_hist_tests(fd, fs, sim_sumw2_bins=fine.variances, n_toys=options.edf_toys,
                          rng=rng, **targets.toy_options(options.max_toys))
    return {name: replace(result, details={**result.details, "wasserstein_norm": w1_norm})
            for name, result in both.items()}


def invalid_fraction(layout: Layout, k: int, sim: Accumulator, data: Accumulator,
                     options: CompareOptions, rng: np.random.Generator,
                     targets: ToyTargets = ToyTargets()) -> Outcome:
    """Is the fraction of NaN/inf/sentinel values (-999, ...) the same in simulation and data?

    Gagunashvili's chi² (:func:`~validator.stats.chi2_uw`) on the two-bin histogram (valid,
    not valid): the comparison of two proportions, one of them weighted, with toys where the
    counts are small. A default value that the simulation fills more or less often than the
    detector is a mismodelling like any other. The effect size is the difference of the
    fractions, data minus simulation.
    """
    d = np.array([data.valid_sumw[k], data.invalid_sumw[k]])
    s = np.array([sim.valid_sumw[k], sim.invalid_sumw[k]])
    s2 = np.array([sim.valid_sumw2[k], sim.invalid_sumw2[k]])
    if d.sum() <= 0:
        return "no data event"
    if s.sum() <= 0:
        return f"the simulation's sum of weights here is {s.sum():.4g} (not > 0)"
    if d[1] == 0 and s[1] == 0 and s2[1] == 0:
        return "no NaN/inf/sentinel value in this category in either sample"
    result = chi2_uw(d, s, s2)
    if not result.reliable:
        result = chi2_uw(d, s, s2, n_toys=options.small_sample_toys, rng=rng,
                         **targets.toy_options(options.max_toys))
    frac_data, frac_sim = d[1] / d.sum(), s[1] / s.sum()
    return replace(result, method=INVALID_FRACTION, effect_size=float(frac_data - frac_sim),
                   effect_name="delta_invalid_fraction",
                   details={**result.details, "fraction_data": float(frac_data),
                            "fraction_sim": float(frac_sim)})


def _pair_tests(layout: Layout, p: int, sim: Accumulator, data: Accumulator,
                options: CompareOptions, rng: Callable[[str], np.random.Generator],
                targets: ToyTargets) -> dict[str, Outcome]:
    """2D histogram, dependence and correlation tests of pair ``p``."""
    i, j = layout.plan.pairs[p]
    hd, hs = data.hist_2d(layout, p), sim.hist_2d(layout, p)
    results = binned_tests(hd, hs, options, rng, targets)
    table, sim_table, sim_table_w2 = hd.values, hs.values, hs.variances
    rows_used = int((table.sum(axis=1) > 0).sum())
    cols_used = int((table.sum(axis=0) > 0).sum())
    n_eff_sim = sim.pair_n_eff(layout, i, j)
    n_eff_data = data.pair_n_eff(layout, i, j)
    why = None
    if sim_table.sum() <= 0:
        why = "the simulation's sum of weights here is not > 0"
    elif rows_used < 2 or cols_used < 2:
        why = (f"data populate {rows_used} row(s) and {cols_used} column(s) of the pair "
               "histogram; two of each are needed")
    if why:
        results["dependence"] = results["corr_spearman"] = why
    else:
        try:
            results["dependence"] = dependence(
                table, sim_table, sim_table_w2, n_toys=options.dependence_toys,
                min_expected=options.min_expected, rng=rng("dependence"),
                **targets.toy_options(options.max_toys), sim_count=hs.count,
                sim_sumw3=hs.sumw3)
        except ValueError as exc:  # fewer than two populated rows/columns once sparse cells go
            results["dependence"] = str(exc)
        results["corr_spearman"] = corr_spearman(
            table, n_eff_data, sim_table, n_eff_sim,
            sim_table_w2=sim_table_w2, data_table_w2=table)
    if n_eff_sim > 0 and n_eff_data > 0:
        results["corr_pearson"] = corr_pearson(
            data.moment_matrix(layout, i, j), n_eff_data,
            sim.moment_matrix(layout, i, j), n_eff_sim,
            sim_S2=sim.moment_matrix(layout, i, j, squared=True),
            data_S2=data.moment_matrix(layout, i, j, squared=True))
    else:
        results["corr_pearson"] = "no event where both features are valid in one sample"
    return results


def planned_methods(layout: Layout, with_invalid: np.ndarray, with_syst: bool = False,
                    ) -> list[tuple[str, str, str, str | None]]:
    """Every test the plan asks for in one category: (kind, method, feature_x, feature_y).

    ``with_invalid[k]`` says whether feature ``k`` has NaN/inf/sentinel values in either
    sample (then its invalid-fraction test is planned too); ``with_syst``: the run has
    systematics (``saturated_syst`` for every feature and pair).
    """
    plan = layout.plan
    extra = (SATURATED_SYST,) if with_syst else ()
    tests: list[tuple[str, str, str, str | None]] = []
    for k, f in enumerate(plan.features):
        tests.extend(("1d", m, f.name, None) for m in (*METHODS_1D, *extra))
        if with_invalid[k]:
            tests.append(("1d", INVALID_FRACTION, f.name, None))
    for i, j in plan.pairs:
        x, y = plan.features[i].name, plan.features[j].name
        tests.extend(("2d", m, x, y) for m in (*METHODS_2D, *extra))
        tests.extend(("corr", m, x, y) for m in METHODS_CORR)
    return tests


def untested_categories(sims: dict[str, Accumulator], datas: dict[str, Accumulator],
                        ) -> dict[str, str]:
    """Categories that cannot be tested, with the reason (a mismodelling in itself)."""
    reasons = {}
    for category in sorted(set(sims) | set(datas)):
        if category not in datas:
            reasons[category] = (f"category {category}: {sims[category].n_events:,} simulated "
                                 "events but no data event; not tested")
        elif category not in sims:
            reasons[category] = (f"category {category}: {datas[category].n_events:,} data "
                                 "events but no simulated event; not tested")
        elif sims[category].sumw[0] <= 0:
            reasons[category] = (f"category {category}: the simulation's sum of weights is "
                                 f"{sims[category].sumw[0]:.4g} for {datas[category].n_events:,}"
                                 " data events; not tested")
    return reasons


def _group_outcomes(layout: Layout, sim: Accumulator, data: Accumulator, category: str,
                    options: CompareOptions, seed: int, with_invalid: np.ndarray,
                    targets: ToyTargets, syst: SystInputs | None, g: int,
                    ) -> tuple[str, str, str | None, dict[str, Outcome]]:
    """(kind, feature_x, feature_y, method -> outcome) of test group ``g`` of a category:
    feature ``g``, or pair ``g - n_features``. Groups are independent (each test has its own
    random stream), so they may run in any order or process."""
    plan = layout.plan
    if g < layout.n_features:
        k, f = g, plan.features[g]

        def rng(method: str, name: str = f.name) -> np.random.Generator:
            return test_rng(seed, category, method, name)

        hd, hs = data.hist_1d(layout, k), sim.hist_1d(layout, k)
        outcomes = {**binned_tests(hd, hs, options, rng, targets),
                    **_edf_tests(layout, k, sim, data, options, rng("ks+ad"), targets)}
        if with_invalid[k]:
            outcomes[INVALID_FRACTION] = invalid_fraction(layout, k, sim, data, options,
                                                          rng(INVALID_FRACTION), targets)
        if syst is not None:
            outcomes[SATURATED_SYST] = syst_test(
                hd, hs, syst, category, lambda a, k=k: a.hist_1d(layout, k), options,
                rng(SATURATED_SYST), targets)
        return "1d", f.name, None, outcomes
    p = g - layout.n_features
    i, j = plan.pairs[p]
    x, y = plan.features[i].name, plan.features[j].name

    def rng2(method: str, x: str = x, y: str = y) -> np.random.Generator:
        return test_rng(seed, category, method, x, y)

    outcomes = _pair_tests(layout, p, sim, data, options, rng2, targets)
    if syst is not None:
        outcomes[SATURATED_SYST] = syst_test(
            data.hist_2d(layout, p), sim.hist_2d(layout, p), syst, category,
            lambda a, p=p: a.hist_2d(layout, p), options, rng2(SATURATED_SYST), targets)
    return "2d", x, y, outcomes


def warm_in_background(jobs: int, fits: bool = True) -> threading.Thread | None:
    """Load the compiled kernels the tests' forked workers use, in a thread of this process,
    while it waits for the fill (half a second otherwise spent before the tests start); with
    ``fits`` also the profile fits of the systematic tests.
    Join the thread before :func:`run_tests`: a process must not fork while it compiles."""
    if jobs <= 1:
        return None
    from validator.stats.dependence_kernel import warm

    thread = threading.Thread(target=warm, args=(fits,), name="validator-warm", daemon=True)
    thread.start()
    return thread


#: ``(fn, n, jobs, batch, meanwhile) -> fn(0), ..., fn(n - 1)`` in order: how the tests of a
#: run are spread over processes (:func:`validator.engine.pool.fork_map`).
ParallelMap = Callable[[Callable[[int], Any], int, int, int, Callable[[], Any] | None],
                       Iterable[Any]]


def serial_map(fn: Callable[[int], Any], n: int, jobs: int = 1, batch: int = 1,
               meanwhile: Callable[[], Any] | None = None) -> Iterator[Any]:
    """:data:`ParallelMap` in this process: ``meanwhile()`` first, then ``fn(i)`` in order."""
    if meanwhile is not None:
        meanwhile()
    return (fn(i) for i in range(n))


def run_tests(layout: Layout, sims: dict[str, Accumulator], datas: dict[str, Accumulator],
              options: CompareOptions, seed: int,
              progress: Callable[[str, int, int], None] | None = None,
              alpha: float = 0.05, syst: SystInputs | None = None, jobs: int = 1,
              meanwhile: Callable[[], Any] | None = None,
              parallel_map: ParallelMap | None = None) -> list[TestRecord]:
    """Every planned test of every category, in the order of :func:`planned_methods`.

    A category present in one sample only (or with Σw ≤ 0) gets every planned test with the
    reason it could not run. Toy p-values are refined until they settle the decision at
    Holm's first threshold ``alpha / m`` (m planned tests); the unadjusted decision at
    ``alpha`` rests on the initial toys, which stop early for a p-value above ``alpha``
    (:class:`ToyTargets`). With ``jobs > 1``
    the features and pairs are tested in that many processes by ``parallel_map`` (the
    engine's :func:`validator.engine.pool.fork_map`, which the pipeline passes; without it
    in this process, :func:`serial_map`); the results are the same. ``meanwhile()`` runs in
    this process while the workers test (before them without workers).
    """
    fork_map = parallel_map or serial_map

    categories = list(dict.fromkeys([*sims, *datas]))
    with_invalid = np.zeros(layout.n_features, dtype=bool)
    for acc in (*sims.values(), *datas.values()):
        with_invalid |= (acc.n_nonfinite + acc.n_sentinel) > 0
    planned = planned_methods(layout, with_invalid, syst is not None)
    skip = untested_categories(sims, datas)
    # Toys are refined where the run's decision is open: Holm's first threshold alpha/m. The
    # unadjusted decision at alpha rests on the initial toys (Monte Carlo error about 0.013
    # at p = 0.05 with 300): settling it to 99.9% for a p-value near 0.05 costs up to
    # max_toys, most of a large run's time, for a flag that no multiple-testing decision uses.
    # Above alpha a p-value stops at its h-th toy reaching the observation (ToyTargets): the
    # decisions at alpha and below are those of the initial toys, at a fraction of their cost.
    targets = ToyTargets(thresholds=(alpha / max(len(planned) * len(categories), 1),),
                         coarse_above=alpha)
    groups_per_category = layout.n_features + len(layout.plan.pairs)
    done = 0
    items = [(c, g) for c in categories if c not in skip for g in range(groups_per_category)]

    def test_group(i: int) -> tuple[str, str, str | None, dict[str, Outcome]]:
        category, g = items[i]
        return _group_outcomes(layout, sims[category], datas[category], category, options,
                               seed, with_invalid, targets, syst, g)

    jobs = jobs if len(items) >= MIN_PARALLEL_GROUPS else 1
    if jobs > 1:
        from validator.stats.dependence_kernel import warm

        warm(fits=syst is not None)  # loaded once here, not once per forked process
    # small batches: a pair with toys costs a hundred times a feature's asymptotic tests
    batch = max(1, len(items) // (jobs * TEST_BATCHES_PER_JOB))
    outcomes: dict[str, dict[tuple[str, str, str | None], Outcome]] = {}
    total = len(items)
    for (category, _), (_kind, x, y, group) in zip(
            items, fork_map(test_group, len(items), jobs, batch, meanwhile), strict=True):
        outcomes.setdefault(category, {}).update({(m, x, y): o for m, o in group.items()})
        done += 1
        if progress:
            progress("tests", done, total)
    records: list[TestRecord] = []
    for category in categories:
        if category in skip:
            records.extend(TestRecord(category, kind, method, x, y, None, skip[category])
                           for kind, method, x, y in planned)
            continue
        for kind, method, x, y in planned:
            outcome = outcomes[category][(method, x, y)]
            if isinstance(outcome, str):
                records.append(TestRecord(category, kind, method, x, y, None, outcome))
            else:
                records.append(TestRecord(category, kind, method, x, y, outcome))
    return records
