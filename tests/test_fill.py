"""Accumulators: merging equals filling the concatenated input; sums match direct numpy."""

from __future__ import annotations

import itertools
from dataclasses import fields

import numpy as np
import pytest

from validator.fill import Accumulator, Layout, accumulate
from validator.plan import ColumnProfile, PlanConfig, make_plan, uniform_keys


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
    prof = {nm: ColumnProfile.of(x[:, i], uniform_keys(0, n, i))
            for i, nm in enumerate(names)}
    plan = make_plan(prof, prof, {"a": "float", "b": "float", "k": "int"}, weight="w",
                     category=None, requested=None, skipped={}, config=PlanConfig())
    return x, w, Layout(plan)


def _assert_equal(a: Accumulator, b: Accumulator) -> None:
    for f in fields(a):
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
    # pair (a, b): the 2D histogram holds events valid in both
    both = ok & (x[:, 0] != -999)
    p = layout.plan.pairs.index((0, 1))
    lo2, hi2 = layout.offsets_2d[p], layout.offsets_2d[p + 1]
    assert acc.h2_sumw[0, lo2:hi2].sum() == pytest.approx(w[both].sum())
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


def test_pair_blocks_do_not_change_the_result(setup, monkeypatch):
    import validator.fill as fill

    x, w, layout = setup
    whole = accumulate(x, w[None, :], layout)
    monkeypatch.setattr(fill, "PAIR_BLOCK_ENTRIES", 1)  # one pair at a time
    _assert_equal(whole, accumulate(x, w[None, :], layout))


def test_std_keeps_its_precision_far_from_zero():
    rng = np.random.default_rng(13)
    x = (1e9 + rng.normal(0.0, 1.0, 20_000))[:, None]
    w = np.ones(20_000)
    prof = {"t": ColumnProfile.of(x[:, 0], uniform_keys(0, 20_000, 0))}
    plan = make_plan(prof, prof, {}, weight=None, category=None, requested=None, skipped={},
                     config=PlanConfig())
    layout = Layout(plan)
    mean, std = accumulate(x, w[None, :], layout).mean_std(layout, 0)
    assert std == pytest.approx(np.std(x[:, 0] - 1e9), rel=1e-6)
    assert mean == pytest.approx(np.mean(x[:, 0]), rel=1e-12)
