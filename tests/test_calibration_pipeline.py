"""Calibration of the whole chain (binning, accumulators, tests) under the null.

Weighted simulation (two processes with different weights, 4 % negative weights) and data
drawn from the same law, many times: the p-values of every method must be uniform and the
false-positive rate at alpha = 0.05 within its binomial band.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from conftest import make_frames
from scipy import stats

from validator.pipeline import RunConfig, run_validation

#: Minutes of calibration, real files or browsers: `make test` runs them, `make test-fast` not.
pytestmark = pytest.mark.slow

N_REPLICAS = 24


@pytest.fixture(scope="module")
def null_pvalues(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("null")
    pvalues: dict[tuple[str, str], list[float]] = defaultdict(list)
    for seed in range(N_REPLICAS):
        sim, data = make_frames(n_sim=30_000, n_data=15_000, seed=1000 + seed)
        sim.write_parquet(tmp / "s.parquet")
        data.write_parquet(tmp / "d.parquet")
        outcome = run_validation(RunConfig(sim=[str(tmp / "s.parquet")],
                                           data=[str(tmp / "d.parquet")], weight="weight",
                                           db=None, seed=seed))
        for rec in outcome.records:
            if rec.reliable:
                pvalues[rec.kind, rec.method].append(rec.pvalue)
    return {k: np.array(v) for k, v in pvalues.items()}


def test_every_method_is_calibrated(null_pvalues):
    assert len(null_pvalues) == 9  # 4 methods in 1D, 3 in 2D, 2 correlations
    for (kind, method), p in null_pvalues.items():
        assert len(p) >= 4 * N_REPLICAS
        if method in ("ks", "ad"):
            # parametric-bootstrap p-values (the shape estimated from both samples) are
            # calibrated in the tail and somewhat conservative in the bulk: test the tail
            assert 0.33 < np.mean(p) < 0.6, (kind, method, np.mean(p))
        else:
            assert stats.kstest(p, "uniform").pvalue > 0.001, (kind, method)
        lo, hi = stats.binom.interval(0.999, len(p), 0.05)
        assert lo <= np.sum(p < 0.05) <= hi, (kind, method, np.mean(p < 0.05))
