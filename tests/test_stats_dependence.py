"""The dependence test's toys: the compiled evaluation equals the numpy reference.

:func:`validator.stats.dependence_kernel.dependence_toys` replaces the numpy formulation
batched over the toys (:func:`validator.stats.dependence._toy_statistics_numpy`), which is
kept as the reference and runs where numba is missing. Both are run here on the same toys,
and ``dependence`` end to end with each (``validator.stats.compiled.HAVE_NUMBA`` switched off):
the p-values must be identical and the toy statistics equal up to summation order.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from validator.stats import compiled as kernels
from validator.stats.binned import sim_toys
from validator.stats.dependence import dependence
from validator.stats.dependence_kernel import dependence_toys

# ``validator.stats.dependence`` the name is the function (re-exported by the package)
dep = importlib.import_module("validator.stats.dependence")

needs_numba = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba not available")


def _tables(seed: int, n_sim: int, n_data: int, n_bins: int,
            negative: float) -> tuple[np.ndarray, ...]:
    """Data counts and simulated (Σw, Σw², count, Σw³) of a correlated pair (ρ = 0.5) in
    ``n_bins`` x ``n_bins`` cells; simulated weights log-normal, a fraction ``negative`` of
    them negative, normalised to the data count."""
    rng = np.random.default_rng(seed)

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        a = rng.normal(size=n)
        return a, 0.5 * a + np.sqrt(0.75) * rng.normal(size=n)

    inner = np.quantile(rng.normal(size=20_000), np.linspace(0, 1, n_bins + 1)[1:-1])
    edges = np.r_[-99.0, inner, 99.0]

    def hist(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        cell = (np.searchsorted(edges, x) - 1) * n_bins + np.searchsorted(edges, y) - 1
        return np.bincount(cell, weights=w, minlength=n_bins**2).reshape(n_bins, n_bins)

    x, y = points(n_sim)
    w = np.exp(0.5 * rng.normal(size=n_sim)) * np.where(rng.random(n_sim) < negative, -1, 1)
    w *= n_data / w.sum()
    dx, dy = points(n_data)
    return hist(dx, dy), hist(x, y, w), hist(x, y, w * w), hist(x, y), hist(x, y, w**3)


def _both_paths(monkeypatch: pytest.MonkeyPatch, *args: np.ndarray, **kwargs: object):
    compiled = dependence(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(kernels, "HAVE_NUMBA", False)
        reference = dependence(*args, **kwargs)
    return compiled, reference


def _assert_same_result(compiled, reference) -> None:
    assert compiled.pvalue == reference.pvalue
    assert compiled.statistic == reference.statistic
    assert compiled.n_toys == reference.n_toys
    assert compiled.pvalue_is_bound == reference.pvalue_is_bound
    assert compiled.ndf == reference.ndf and compiled.effect_size == reference.effect_size
    np.testing.assert_array_equal(compiled.residuals, reference.residuals)
    assert compiled.details.keys() == reference.details.keys()
    for key, value in reference.details.items():
        if key == "x2_toys_mean":
            np.testing.assert_allclose(compiled.details[key], value, rtol=1e-9)
        else:
            assert compiled.details[key] == value, key


@needs_numba
@pytest.mark.parametrize("compound", [False, True])
@pytest.mark.parametrize("min_sim_entries", [10.0, None])
def test_weighted_table_same_as_numpy(monkeypatch, compound, min_sim_entries) -> None:
    """10x10 weighted table, 8% of the events with negative weights: scaled-Poisson and
    compound toys."""
    data, w, w2, cnt, w3 = _tables(0, 20_000, 5000, 10, 0.08)
    extra = {"sim_count": cnt, "sim_sumw3": w3} if compound else {}
    compiled, reference = _both_paths(monkeypatch, data, w, w2, n_toys=400, rng=11,
                                      min_sim_entries=min_sim_entries, **extra)
    _assert_same_result(compiled, reference)


@needs_numba
@pytest.mark.parametrize("compound", [False, True])
@pytest.mark.parametrize("min_sim_entries", [10.0, None])
@pytest.mark.parametrize(
    ("seed", "n_sim", "n_data", "n_bins", "max_iter"),
    [
        (1, 60, 1000, 6, 1000),  # toys with empty rows: raked only with the pseudo-content
        (1, 60, 1000, 6, 30),  # and some not even then (too few sweeps)
        (0, 30, 500, 5, 1000),  # the observation itself needs the pseudo-content
    ],
)
def test_sparse_table_same_as_numpy(monkeypatch, compound, min_sim_entries, seed, n_sim,
                                    n_data, n_bins, max_iter) -> None:
    data, w, w2, cnt, w3 = _tables(seed, n_sim, n_data, n_bins, 0.0)
    extra = {"sim_count": cnt, "sim_sumw3": w3} if compound else {}
    compiled, reference = _both_paths(monkeypatch, data, w, w2, n_toys=300, rng=3,
                                      max_iter=max_iter, min_sim_entries=min_sim_entries,
                                      **extra)
    if n_sim == 30:
        assert reference.details["ipf_pseudo_content"] > 0
    if max_iter == 30:
        assert reference.details["n_toys_not_raked"] > 0
    _assert_same_result(compiled, reference)


@needs_numba
def test_adaptive_toys_same_as_numpy(monkeypatch) -> None:
    """Several batches (``run_toys`` adding toys): the random stream is unchanged."""
    data, w, w2, _, _ = _tables(4, 20_000, 5000, 10, 0.08)
    compiled, reference = _both_paths(monkeypatch, data, w, w2, n_toys=50, rng=5,
                                      max_toys=400, thresholds=(0.5, 0.3, 0.05))
    _assert_same_result(compiled, reference)


@needs_numba
def test_sequential_toys_same_as_numpy_and_stop_above_alpha(monkeypatch) -> None:
    """With ``coarse_above`` (as a run calls it): a table in agreement stops at its 15th toy
    reaching the observation (p = 15/L, L < 300), in both evaluations alike; a planted
    difference keeps every toy."""
    data, w, w2, cnt, w3 = _tables(4, 20_000, 5000, 10, 0.08)
    options = {"n_toys": 300, "rng": 5, "max_toys": 4000, "thresholds": (1e-4,),
               "coarse_above": 0.05, "sim_count": cnt, "sim_sumw3": w3}
    compiled, reference = _both_paths(monkeypatch, data, w, w2, **options)
    _assert_same_result(compiled, reference)
    full = dependence(data, w, w2, **{**options, "coarse_above": None})
    assert full.pvalue > 0.1  # data and simulation share the correlation
    assert compiled.details["toys_stop"] == "sequential"
    assert compiled.n_toys < 300 and compiled.pvalue == 15 / compiled.n_toys
    # the simulation without the correlation: the data's dependence is a mismodelling
    flat = np.outer(w.sum(axis=1), w.sum(axis=0)) / w.sum()
    planted = dependence(data, flat, w2, **{**options, "sim_count": None, "sim_sumw3": None})
    assert planted.details["toys_stop"] != "sequential" and planted.n_toys >= 300
    assert planted.pvalue < 1e-3


@needs_numba
@pytest.mark.parametrize("min_sim_entries", [10.0, None])
@pytest.mark.parametrize("pseudo", [0.0, 0.3])
@pytest.mark.parametrize("max_iter", [1000, 20])
def test_toy_batch_same_as_numpy(min_sim_entries, pseudo, max_iter) -> None:
    """Toys of a sparse table, straight into both evaluations: every toy's flag identical,
    statistics equal to rounding; the batch has toys with an empty row or column (raked only
    with the pseudo-content) and, with 20 sweeps, toys that are not raked at all."""
    data, w, w2, _, _ = _tables(2, 60, 1000, 6, 0.1)
    nx, ny = data.shape
    order = dep._snake_order(nx, ny)
    sim_null, data_null = dep.null_fit(data, w, w2)
    labels = dep._cell_groups(data_null, w, w2, order, 5.0, min_sim_entries)
    gen = np.random.default_rng(1)
    size = 1000
    n_toy = gen.poisson(np.broadcast_to(data_null, (size, nx, ny))).astype(float)
    w_toy, s2_toy = sim_toys(sim_null, w, w2, size, gen)
    if pseudo == 0.0:
        t_toy = np.clip(w_toy, 0.0, None)
        empty_line = (t_toy.sum(axis=2) == 0).any(axis=1) | (t_toy.sum(axis=1) == 0).any(axis=1)
        assert empty_line.sum() > 10
    kw = {"min_expected": 5.0, "min_sim_entries": min_sim_entries, "pseudo": pseudo,
          "max_iter": max_iter, "tol": 1e-10}
    x2_ref, ok_ref = dep._toy_statistics_numpy(n_toy, w_toy, s2_toy, data_null, order,
                                               labels, **kw)
    x2, ok = dependence_toys(n_toy, w_toy, s2_toy, data_null.ravel()[order], order, labels,
                             pseudo_content=dep.PSEUDO_CONTENT, **kw)
    np.testing.assert_array_equal(ok, ok_ref)
    if max_iter == 20:
        assert 0 < ok.sum() < size
    else:
        assert ok.all()
    np.testing.assert_allclose(x2[ok], x2_ref[ok], rtol=1e-11, atol=1e-12)
