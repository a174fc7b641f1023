"""The run-level global test: valid under the null whatever the correlations between tests,
small on the sample data's planted effects, independent of chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_frames
from scipy import stats

from validator.pipeline import RunConfig, run_validation
from validator.stages.compare import CompareOptions
from validator.stages.fill import N_GROUPS, Layout, accumulate
from validator.stages.globaltest import (
    global_test,
    histogram_block,
    linearised_pvalues,
    sign_flip_replicas,
)
from validator.stages.plan import ColumnProfile, PlanConfig, make_plan, uniform_keys

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
#: Cheap toys: the global test does not use them, and the null replicas are many.
CHEAP = CompareOptions(dependence_toys=20, small_sample_toys=50)


def test_linearised_statistic_is_pearsons_chi2_with_free_normalisation():
    """With no simulation uncertainty, X² of the merged residuals with the normalisation
    projected out equals Pearson's chi² of data against the normalised simulation shape."""
    data = np.array([30.0, 45.0, 60.0, 40.0, 25.0])
    sim = np.array([300.0, 500.0, 550.0, 450.0, 200.0])
    groups = np.zeros((N_GROUPS, 5))
    groups[0] = data
    block = histogram_block("binned", data, sim, np.zeros(5), groups, np.zeros((N_GROUPS, 5)), 5.0)
    p = linearised_pvalues(block, block.residuals.sum(axis=0)[None, :])[0]
    expected = sim / sim.sum() * data.sum()
    chi2 = stats.chisquare(data, expected)
    assert p == pytest.approx(chi2.pvalue, rel=1e-10)


def _assert_valid(pvalues: list[float]) -> None:
    """A p-value of a count is discrete: valid means P(p <= u) <= u (within the binomial
    band of the replicas) at every level u."""
    p = np.asarray(pvalues)
    for u in (0.01, 0.05, 0.1, 0.2, 0.5):
        assert np.sum(p <= u) <= stats.binom.ppf(0.999, len(p), u), (u, np.sort(p))


def _accumulators(n: int, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    x_sim = rng.normal(size=(2 * n, 3))
    x_sim[:, 1] += 0.6 * x_sim[:, 0]
    x_data = rng.normal(size=(n, 3))
    x_data[:, 1] += 0.6 * x_data[:, 0]
    x_data[:, 2] *= 1 + shift
    w = np.where(rng.random(2 * n) < 0.05, -0.5, 0.5 + rng.exponential(0.5, 2 * n))
    prof = {f"f{k}": ColumnProfile.of(x_data[:, k], uniform_keys(np.arange(n), 0, 1))
            for k in range(3)}
    plan = make_plan(prof, prof, dict.fromkeys(prof, "float"), weight="w", category=None,
                     requested=None, skipped={}, config=PlanConfig())
    layout = Layout(plan)
    groups_sim = rng.integers(0, N_GROUPS, 2 * n)
    groups_data = rng.integers(0, N_GROUPS, n)
    sim = accumulate(x_sim, w[None, :], layout, groups_sim)
    data = accumulate(x_data, np.ones((1, n)), layout, groups_data)
    return layout, {"all": sim}, {"all": data}


def test_the_global_pvalues_are_uniform_under_the_null():
    p_min, p_nfail = [], []
    for seed in range(60):
        layout, sims, datas = _accumulators(3_000, 0.0, seed)
        g = global_test(sign_flip_replicas(layout, sims, datas, seed=seed, n_replicas=499),
                        alpha=0.05)
        p_min.append(g.p_min)
        p_nfail.append(g.p_nfail)
    assert stats.kstest(p_min, "uniform").pvalue > 0.001
    _assert_valid(p_nfail)
    # 3 features: 3 binned 1D + 3 fine + 3 pairs = 9 tests in the family
    assert g.n_tests == 9


def test_a_planted_shift_is_found_by_the_global_test():
    layout, sims, datas = _accumulators(20_000, 0.05, 3)
    g = global_test(sign_flip_replicas(layout, sims, datas, seed=1), alpha=0.05)
    assert g.p_min <= 1 / (1 + g.n_replicas) + 1e-12
    assert g.min_pvalue < 1e-6


@pytest.mark.slow
def test_whole_runs_under_the_null_give_uniform_global_pvalues(tmp_path):
    p_min, p_nfail = [], []
    for seed in range(30):
        sim, data = make_frames(n_sim=8_000, n_data=4_000, seed=500 + seed)
        sim.write_parquet(tmp_path / "s.parquet")
        data.write_parquet(tmp_path / "d.parquet")
        out = run_validation(RunConfig(sim=[str(tmp_path / "s.parquet")],
                                       data=[str(tmp_path / "d.parquet")], weight="weight",
                                       db=None, seed=seed, compare=CHEAP))
        p_min.append(out.global_result.p_min)
        p_nfail.append(out.global_result.p_nfail)
    assert stats.kstest(p_min, "uniform").pvalue > 0.001
    _assert_valid(p_nfail)


@pytest.mark.slow
def test_the_sample_data_fail_the_global_test_and_chunking_changes_nothing():
    results = []
    for rows in (40_000, 250_000):
        out = run_validation(RunConfig(sim=[str(SAMPLE_DIR / "sim.parquet")],
                                       data=[str(SAMPLE_DIR / "data.parquet")],
                                       weight="weight", db=None, chunk_rows=rows, compare=CHEAP))
        results.append(out.global_result)
    a, b = results
    assert a.p_min < 1e-3
    assert (a.p_min, a.n_failed, a.min_pvalue) == (b.p_min, b.n_failed, b.min_pvalue)
    # a replica's count of failures may differ by the last bit of a p-value at alpha
    assert a.p_nfail == pytest.approx(b.p_nfail, abs=2 / (1 + a.n_replicas))
