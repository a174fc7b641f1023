"""Accumulators: merging equals filling the concatenated input; sums match direct numpy."""

from __future__ import annotations

import itertools
from dataclasses import fields

import numpy as np
import pytest

from validator.stages.fill import Accumulator, Layout, accumulate
from validator.stages.plan import ColumnProfile, PlanConfig, make_plan, uniform_keys


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    n = 30_000
    x = np.column_stack([
        rng.normal(size=n),
        rng.exponential(size=n),
        rng.poisson(3, size=n).astype(float),
    ])
    x[rng.random(n) < 0.01, 1] = np.nan  # NaNs are counted, not binned
    x[rng.random(n) < 0.01, 0] = -999.0  # sentinels likewise
    w = rng.normal(1.0, 0.5, size=n)  # some negative weights
    names = ["a", "b", "k"]
    prof = {nm: ColumnProfile.of(x[:, i], uniform_keys(np.arange(n), 0, i))
            for i, nm in enumerate(names)}
    plan = make_plan(prof, prof, {"a": "float", "b": "float", "k": "int"}, weight="w",
                     category=None, requested=None, skipped={}, config=PlanConfig())
    return x, w, Layout(plan)


def _assert_equal(a: Accumulator, b: Accumulator) -> None:
    assert a.layout_key == b.layout_key
    for f in fields(a):
        if f.name == "layout_key":
            continue
        np.testing.assert_allclose(getattr(a, f.name), getattr(b, f.name), rtol=1e-12,
                                   atol=1e-9, err_msg=f.name)


@pytest.mark.parametrize("cuts", [[1], [7, 19_000], [100, 2_000, 15_000, 29_999]])
def test_sum_of_chunks_equals_whole(setup, cuts):
    x, w, layout = setup
    whole = accumulate(x, w[None, :], layout)
    bounds = [0, *cuts, len(x)]
    parts = [accumulate(x[lo:hi], w[None, lo:hi], layout) for lo, hi in itertools.pairwise(bounds)]
    _assert_equal(whole, sum(parts))
    # order does not matter either
    _assert_equal(whole, sum(reversed(parts)))


def test_sums_match_numpy(setup):
    x, w, layout = setup
    acc = accumulate(x, w[None, :], layout)
    assert acc.n_events == len(x)
    assert acc.sumw[0] == pytest.approx(w.sum())
    assert acc.n_nonfinite.tolist() == [0, int(np.isnan(x[:, 1]).sum()), 0]
    assert acc.n_sentinel.tolist() == [int((x[:, 0] == -999).sum()), 0, 0]
    # 1D histogram of feature b against numpy, overflow folded into the edge bins
    edges = layout.edges[1]
    ok = np.isfinite(x[:, 1])
    clipped = np.clip(x[ok, 1], edges[0], np.nextafter(edges[-1], -np.inf))
    expect, _ = np.histogram(clipped, bins=edges, weights=w[ok])
    lo, hi = layout.offsets_1d[1], layout.offsets_1d[2]
    np.testing.assert_allclose(acc.h1_sumw[0, lo:hi], expect, rtol=1e-10)
    # every valid event lands in exactly one bin: nothing dropped
    assert acc.h1_sumw[0, lo:hi].sum() == pytest.approx(w[ok].sum())
    # events, Σw³ and Σw⁴ per bin, for the toys of heavy-tailed weights and the precision of
    # each bin's variance
    h = acc.hist_1d(layout, 1)
    np.testing.assert_array_equal(h.count, np.histogram(clipped, bins=edges)[0])
    np.testing.assert_allclose(h.sumw3, np.histogram(clipped, bins=edges, weights=w[ok]**3)[0],
                               rtol=1e-10)
    np.testing.assert_allclose(h.sumw4, np.histogram(clipped, bins=edges, weights=w[ok]**4)[0],
                               rtol=1e-10)
    # pair (a, b): the 2D histogram holds events valid in both
    both = ok & (x[:, 0] != -999)
    p = layout.plan.pairs.index((0, 1))
    lo2, hi2 = layout.offsets_2d[p], layout.offsets_2d[p + 1]
    assert acc.h2_sumw[0, lo2:hi2].sum() == pytest.approx(w[both].sum())
    h2 = acc.hist_2d(layout, p)
    ea, eb = layout.pair_edges[0], layout.pair_edges[1]
    ca = np.clip(x[both, 0], ea[0], np.nextafter(ea[-1], -np.inf))
    cb = np.clip(x[both, 1], eb[0], np.nextafter(eb[-1], -np.inf))
    np.testing.assert_allclose(h2.values, np.histogram2d(ca, cb, [ea, eb], weights=w[both])[0],
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(h2.count, np.histogram2d(ca, cb, [ea, eb])[0])
    np.testing.assert_allclose(h2.sumw3, np.histogram2d(ca, cb, [ea, eb],
                                                        weights=w[both]**3)[0],
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(h2.sumw4, np.histogram2d(ca, cb, [ea, eb],
                                                        weights=w[both]**4)[0],
                               rtol=1e-9, atol=1e-9)
    # standardised moment sums against a direct computation
    fa, fb = layout.plan.features[0], layout.plan.features[1]
    za = (x[both, 0] - fa.loc) / fa.scale
    zb = (x[both, 1] - fb.loc) / fb.scale
    s = acc.moment_matrix(layout, 0, 1)
    for a, b in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1), (1, 3), (4, 0), (2, 2)]:
        assert s[a, b] == pytest.approx(np.sum(w[both] * za**a * zb**b), rel=1e-9)
    s2 = acc.moment_matrix(layout, 0, 1, squared=True)
    assert s2[1, 2] == pytest.approx(np.sum(w[both] ** 2 * za * zb**2), rel=1e-9)
    assert acc.pair_n_eff(layout, 0, 1) == pytest.approx(w[both].sum() ** 2
                                                          / (w[both] ** 2).sum())


def test_variations_fill_like_nominal(setup):
    x, w, layout = setup
    weights = np.stack([w, 1.1 * w, 0.9 * w])
    acc = accumulate(x, weights, layout)
    np.testing.assert_allclose(acc.h1_sumw[1], 1.1 * acc.h1_sumw[0])
    np.testing.assert_allclose(acc.h2_sumw2[2], 0.81 * acc.h2_sumw2[0])


def test_weighted_mean_and_std_match_numpy(setup):
    x, w, layout = setup
    acc = accumulate(x, w[None, :], layout)
    ok = np.isfinite(x[:, 1])
    mean = np.average(x[ok, 1], weights=w[ok])
    std = np.sqrt(np.average((x[ok, 1] - mean) ** 2, weights=w[ok]))
    assert acc.mean_std(layout, 1) == pytest.approx((mean, std), rel=1e-9)


def test_moment_blocks_do_not_change_the_result(setup, monkeypatch):
    import validator.stages.fill as fill

    x, w, layout = setup
    whole = accumulate(x, w[None, :], layout)
    monkeypatch.setattr(fill, "MOMENT_BLOCK_VALUES", 7)  # a few events per block
    _assert_equal(whole, accumulate(x, w[None, :], layout))


def test_unit_weights_fill_like_any_weights(setup):
    """Data (unit weights) take a shortcut: every sum is the count; it must equal the general
    path, which a second weight row forces."""
    x, _, layout = setup
    ones = np.ones(len(x))
    groups = np.arange(len(x)) % 32
    unit = accumulate(x, ones[None, :], layout, groups)
    general = accumulate(x, np.stack([ones, ones]), layout, groups)
    for f in fields(unit):
        a, b = getattr(unit, f.name), getattr(general, f.name)
        if f.name == "layout_key":
            continue
        if np.ndim(b) == 2 and f.name not in ("group_h1", "group_fine", "group_h2"):
            b = b[:1]
        if np.ndim(b) == 1 and f.name in ("sumw", "sumw2"):
            b = b[:1]
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9, err_msg=f.name)


def test_std_keeps_its_precision_far_from_zero():
    rng = np.random.default_rng(13)
    x = (1e9 + rng.normal(0.0, 1.0, 20_000))[:, None]
    w = np.ones(20_000)
    prof = {"t": ColumnProfile.of(x[:, 0], uniform_keys(np.arange(20_000), 0, 0))}
    plan = make_plan(prof, prof, {}, weight=None, category=None, requested=None, skipped={},
                     config=PlanConfig())
    layout = Layout(plan)
    mean, std = accumulate(x, w[None, :], layout).mean_std(layout, 0)
    assert std == pytest.approx(np.std(x[:, 0] - 1e9), rel=1e-6)
    assert mean == pytest.approx(np.mean(x[:, 0]), rel=1e-12)


def test_adding_checks_layout_and_variations(setup):
    x, w, layout = setup
    nominal = accumulate(x[:1000], w[None, :1000], layout)
    three = accumulate(x[:1000], np.stack([w[:1000]] * 3), layout)
    with pytest.raises(ValueError, match="1 and 3 weight variations"):
        nominal + three
    other_plan = make_plan(
        {"a": ColumnProfile.of(x[:, 0], uniform_keys(np.arange(len(x)), 0, 1))},
        {"a": ColumnProfile.of(x[:, 0], uniform_keys(np.arange(len(x)), 0, 1))},
        {"a": "float"}, weight=None, category=None, requested=None, skipped={},
        config=PlanConfig(n_bins=5))
    other = accumulate(x[:1000, :1], w[None, :1000], Layout(other_plan))
    with pytest.raises(ValueError, match="different layouts"):
        nominal + other


def test_plot_histogram_keeps_under_and_overflow(setup):
    x, w, layout = setup
    acc = accumulate(x, w[None, :], layout)
    h = acc.hist_plot(layout, 1)  # feature b: exponential, NaNs not binned
    b = x[:, 1]
    b = b[np.isfinite(b)]
    wb = w[np.isfinite(x[:, 1])]
    edges = layout.plot_edges[1]
    inside, _ = np.histogram(b, edges, weights=wb)
    np.testing.assert_allclose(h.values[1:-1], inside)
    np.testing.assert_allclose(h.values[0], wb[b < edges[0]].sum())
    np.testing.assert_allclose(h.values[-1], wb[b > edges[-1]].sum())
    np.testing.assert_allclose(h.variances[1:-1], np.histogram(b, edges, weights=wb**2)[0])
    # the central 99% of the values lie inside the plotting range
    assert 0.98 < ((b >= edges[0]) & (b <= edges[-1])).mean() < 1.0
    assert len(edges) == 51
    # an integer feature's plot bins are centred on its values
    k_edges = layout.plot_edges[2]
    assert np.allclose(k_edges - np.floor(k_edges), 0.5)


def test_compiled_positions_equal_numpy_searchsorted() -> None:
    from validator.stages import fill_kernels as kernels

    rng = np.random.default_rng(11)
    for x in (rng.standard_normal(20_000), rng.lognormal(0.0, 2.5, 20_000),
              rng.poisson(2.0, 20_000).astype(float)):
        edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, 301)))
        # every edge, its neighbouring floats, and the values that are not numbers
        probe = np.concatenate([x, edges, np.nextafter(edges, np.inf),
                                np.nextafter(edges, -np.inf),
                                [np.nan, np.inf, -np.inf, -1e300, 1e300, 0.0, -0.0]])
        np.testing.assert_array_equal(kernels.positions(edges, probe),
                                      np.searchsorted(edges, probe, side="right"))
    single = np.array([1.0])
    np.testing.assert_array_equal(kernels.positions(single, np.array([0.0, 1.0, 2.0])),
                                  [0, 1, 1])


@pytest.mark.parametrize("weighting", ["signed", "unit", "variations", "odd variations"])
def test_compiled_kernels_equal_the_numpy_bincounts(setup, weighting, monkeypatch):
    """Every sum to rounding; the 1D sums add the same floats in the same order as
    numpy.bincount: equal bit for bit, with or without each feature's lookup grid."""
    from validator.stages import fill_kernels as kernels

    if not kernels.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    x, w, layout = setup
    weights = {"signed": w[None], "unit": np.ones((1, w.size)),
               "variations": np.vstack([w, 1.2 * w, np.abs(w)]),
               # three: the compiled pair fill takes two together and the third alone
               "odd variations": np.vstack([w, 1.2 * w, np.abs(w), w * w])}[weighting]
    groups = np.random.default_rng(6).integers(0, 32, w.size)
    compiled = accumulate(x, weights, layout, groups)
    monkeypatch.setattr(kernels, "HAVE_NUMBA", False)
    reference = accumulate(x, weights, layout, groups)
    monkeypatch.setattr(kernels, "HAVE_NUMBA", True)
    _assert_equal(compiled, reference)
    for name in ("h1_count", "h1_sumw", "h1_sumw2", "h1_sumw3", "h1_sumw4", "group_h1",
                 "fine_sumw", "fine_sumw2", "group_fine", "plot_sumw", "plot_sumw2"):
        np.testing.assert_array_equal(getattr(compiled, name), getattr(reference, name),
                                      err_msg=name)
    # without lookup grids (a feature whose edges span nothing): a plain binary search
    tables = layout.feature_tables
    bare = kernels.FeatureTables.of(layout.grids, tuple(tables.bin_start), tables.loc,
                                    with_lookup=False)
    from validator.stages.plan import SENTINEL_VALUES

    valid = np.isfinite(x.T) & ~np.isin(x.T, SENTINEL_VALUES)
    with_grid = kernels.fill_features(x.T, valid, tables, groups, 32, weights,
                                      weighting == "unit")
    without = kernels.fill_features(x.T, valid, bare, groups, 32, weights,
                                    weighting == "unit")
    for a, b in zip(with_grid, without, strict=True):
        np.testing.assert_array_equal(a, b)
