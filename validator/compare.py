"""Run the statistical tests on filled accumulators: every feature in 1D, every pair in 2D.

This stage only slices histograms out of the accumulators and calls the pure functions of
:mod:`validator.stats`; it does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from validator.fill import Accumulator, Layout
from validator.stats import (
    GofResult,
    ad_hist,
    chi2_uw,
    corr_pearson,
    corr_spearman,
    dependence,
    ks_hist,
    merge_histogram,
    merge_sparse_bins,
    saturated,
    wasserstein_hist,
)


@dataclass(frozen=True)
class CompareOptions:
    """Options of the test stage."""

    min_expected: float = 5.0
    dependence_toys: int = 300
    small_sample_toys: int = 500
    seed: int = 12345


@dataclass(frozen=True)
class TestRecord:
    """One test of a run: where it looked, and its result."""

    __test__ = False  # not a pytest class

    category: str
    kind: str  # 1d | 2d | corr
    feature_x: str
    feature_y: str | None
    result: GofResult


def _binned_tests(data: np.ndarray, sim_w: np.ndarray, sim_w2: np.ndarray,
                  options: CompareOptions, rng: np.random.Generator) -> list[GofResult]:
    """``chi2_uw`` and ``saturated`` on a histogram, sparse bins merged first."""
    total_data = data.sum()
    total_sim = sim_w.sum()
    if total_data <= 0 or total_sim <= 0:
        return []
    expected = np.clip(sim_w, 0.0, None) * (total_data / total_sim)
    groups = merge_sparse_bins(expected, options.min_expected)
    if groups.max() < 1:  # a single group: nothing to compare the shape with
        return []
    d = merge_histogram(data, groups)
    s = merge_histogram(sim_w, groups)
    s2 = merge_histogram(sim_w2, groups)
    results = []
    for test in (chi2_uw, saturated):
        result = test(d, s, s2)
        if not result.reliable:  # asymptotics do not hold: calibrate with toys instead
            result = test(d, s, s2, n_toys=options.small_sample_toys, rng=rng)
        results.append(result)
    return results


def tests_1d(layout: Layout, sim: Accumulator, data: Accumulator, category: str,
             options: CompareOptions, rng: np.random.Generator) -> Iterator[TestRecord]:
    """All 1D tests of every feature."""
    for k, feature in enumerate(layout.plan.features):
        lo, hi = layout.offsets_1d[k], layout.offsets_1d[k + 1]
        d, s, s2 = data.h1_sumw[0, lo:hi], sim.h1_sumw[0, lo:hi], sim.h1_sumw2[0, lo:hi]
        for result in _binned_tests(d, s, s2, options, rng):
            yield TestRecord(category, "1d", feature.name, None, result)

        lo, hi = layout.offsets_fine[k], layout.offsets_fine[k + 1]
        fd, fs = data.fine_sumw[0, lo:hi], sim.fine_sumw[0, lo:hi]
        if fd.sum() <= 0 or fs.sum() <= 0:
            continue
        sim_w2_total = float(sim.valid_sumw2[k])
        edges = layout.fine_edges[k]
        # a discrete feature's fine bins hold one value each: W1 is measured at the values
        centres = np.asarray(feature.values) if feature.values else 0.5 * (edges[1:] + edges[:-1])
        _, sim_std = sim.mean_std(layout, k)
        w1 = wasserstein_hist(fd, fs, centres)
        w1_norm = float(w1 / sim_std) if sim_std > 0 else float("nan")
        for test in (ks_hist, ad_hist):
            result = test(fd, fs, sim_w2_total)
            details = {**result.details, "wasserstein_norm": w1_norm}
            if feature.kind == "discrete":
                details["note"] = "discrete feature: EDF p-value is conservative (ties)"
            yield TestRecord(category, "1d", feature.name, None,
                             replace(result, details=details))


def tests_2d(layout: Layout, sim: Accumulator, data: Accumulator, category: str,
             options: CompareOptions, rng: np.random.Generator) -> Iterator[TestRecord]:
    """All 2D, dependence and correlation tests of every planned pair."""
    features = layout.plan.features
    for p, (i, j) in enumerate(layout.plan.pairs):
        x, y = features[i].name, features[j].name
        lo, hi = layout.offsets_2d[p], layout.offsets_2d[p + 1]
        shape = layout.pair_shape[p]
        d, s, s2 = data.h2_sumw[0, lo:hi], sim.h2_sumw[0, lo:hi], sim.h2_sumw2[0, lo:hi]
        for result in _binned_tests(d, s, s2, options, rng):
            yield TestRecord(category, "2d", x, y, result)
        table, sim_table, sim_table_w2 = d.reshape(shape), s.reshape(shape), s2.reshape(shape)
        n_eff_sim = sim.pair_n_eff(layout, i, j)
        n_eff_data = data.pair_n_eff(layout, i, j)
        rows_used = int((table.sum(axis=1) > 0).sum())
        cols_used = int((table.sum(axis=0) > 0).sum())
        if rows_used >= 2 and cols_used >= 2 and s.sum() > 0:
            try:
                yield TestRecord(category, "2d", x, y, dependence(
                    table, sim_table, sim_table_w2, n_toys=options.dependence_toys,
                    min_expected=options.min_expected, rng=rng))
            except ValueError:  # fewer than two populated rows/columns once sparse cells go
                pass
            yield TestRecord(category, "corr", x, y, corr_spearman(
                sim_table, n_eff_sim, table, n_eff_data,
                sim_table_w2=sim_table_w2, data_table_w2=table))
        if n_eff_sim > 0 and n_eff_data > 0:
            yield TestRecord(category, "corr", x, y, corr_pearson(
                sim.moment_matrix(layout, i, j), n_eff_sim,
                data.moment_matrix(layout, i, j), n_eff_data,
                sim_S2=sim.moment_matrix(layout, i, j, squared=True),
                data_S2=data.moment_matrix(layout, i, j, squared=True)))


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


def run_tests(layout: Layout, sims: dict[str, Accumulator], datas: dict[str, Accumulator],
              options: CompareOptions) -> list[TestRecord]:
    """Every test of every category that both samples populate (see untested_categories)."""
    rng = np.random.default_rng(options.seed)
    records: list[TestRecord] = []
    skip = untested_categories(sims, datas)
    for category in sims:
        if category in skip:
            continue
        sim, data = sims[category], datas[category]
        records.extend(tests_1d(layout, sim, data, category, options, rng))
        records.extend(tests_2d(layout, sim, data, category, options, rng))
    return records
