"""Calibration of the binned KS / AD and of the correlation comparisons under the null, and power.

Null replicas: a weighted simulation made of two processes with different shapes and weights
(process A: 3000 events of weight 0.4; process B: 2000 events of weight ±1.6, about 5% of all
simulated events negative, more of them in B's tail) against 2000 unit-weight data events drawn
from the distribution the weighted simulation describes. The pipeline's inputs are built as it
builds them: fine 1D histograms with edges at data quantiles (1000 bins, and 20 for the coarse
regime), moment sums Σw x^a y^b and Σw² x^a y^b, and 2D tables of Σw and Σw² (100 × 100
quantile bins).

Measured with this seed and 400 replicas (kstest p against uniform, FPR at α = 0.05 and 0.01,
mean p; the binomial 99% band of the FPR at 0.05 is [0.025, 0.080]):

    ks_hist, 1000 bins      0.87   0.035  0.0125  0.500
    ad_hist, 1000 bins      0.13   0.045  0.005   0.483
    ks_hist, 20 bins        0.97   0.0425 0.005   0.500
    ad_hist, 20 bins        0.35   0.045  0.005   0.490
    corr_pearson (Σw²)      0.26   0.0525 0.010   0.515
    corr_spearman (Σw²)     0.35   0.045  0.0025  0.512
    corr_pearson, Kish only 0.62   0.075  0.0275  0.486   (not asserted: see below)
    corr_spearman, Kish     0.38   0.045  0.005   0.511

Without the binning corrections of ``validator.stats.edf`` the KS p-values are conservative
(mean 0.53 at 1000 bins, 0.64 at 20) and AD at 20 bins anti-conservative. Pearson with Kish's
n_eff alone is anti-conservative here (FPR 0.085 at 0.05 over 2000 replicas) because the
weights depend on the shape of the process: the pipeline should accumulate Σw² x^a y^b.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from validator.stats.correlation import corr_pearson, corr_spearman, moment_sums
from validator.stats.edf import ad_hist, ks_hist

pytestmark = pytest.mark.slow

N_A, N_B, N_DATA = 3000, 2000, 2000
W_A, W_B = 0.4, 1.6
RHO_A = 0.5
GAMMA_SHAPE, GAMMA_SCALE = 2.0, 0.8
N_REPLICAS = 400
ALPHA = 0.05


def _p_negative(x):
    """Probability that a process-B event carries weight −1.6 (higher in the tail)."""
    return 0.4 / (1.0 + np.exp(-(x - 2.5)))


# Mean negative-weight probability of process B, and the data's mixture fraction of process A.
_EPN = integrate.quad(
    lambda t: _p_negative(t) * stats.gamma.pdf(t, GAMMA_SHAPE, scale=GAMMA_SCALE), 0, np.inf
)[0]
_PI_A = W_A * N_A / (W_A * N_A + W_B * N_B * (1.0 - 2.0 * _EPN))


def _process_a(rng, n, rho=RHO_A):
    x = rng.normal(size=n)
    return x, rho * x + np.sqrt(1.0 - rho**2) * rng.normal(size=n)


def _process_b(rng, n):
    x = rng.gamma(GAMMA_SHAPE, GAMMA_SCALE, size=n)
    return x, 0.4 * x + 0.8 * rng.normal(size=n)


def simulation(rng):
    xa, ya = _process_a(rng, N_A)
    xb, yb = _process_b(rng, N_B)
    negative = rng.random(N_B) < _p_negative(xb)
    w = np.concatenate([np.full(N_A, W_A), np.where(negative, -W_B, W_B)])
    return np.concatenate([xa, xb]), np.concatenate([ya, yb]), w


def data(rng, rho_a=RHO_A, shift=0.0):
    """Unit-weight events from the weighted simulation's distribution (B by rejection)."""
    n_a = rng.binomial(N_DATA, _PI_A)
    n_b = N_DATA - n_a
    xa, ya = _process_a(rng, n_a, rho_a)
    xs, ys, got = [], [], 0
    while got < n_b:
        xb, yb = _process_b(rng, 2 * (n_b - got) + 10)
        keep = rng.random(xb.size) < 1.0 - 2.0 * _p_negative(xb)
        xs.append(xb[keep])
        ys.append(yb[keep])
        got += int(keep.sum())
    x = np.concatenate([xa, np.concatenate(xs)[:n_b]]) + shift
    y = np.concatenate([ya, np.concatenate(ys)[:n_b]])
    return x, y


def _inner_edges(values, n_bins):
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))


def _hist(values, weights, inner):
    idx = np.searchsorted(inner, values, side="right")  # under/overflow in the edge bins
    return np.bincount(idx, weights=weights, minlength=inner.size + 1)


def _table(x, y, w, ex, ey):
    ix = np.searchsorted(ex, x, side="right")
    iy = np.searchsorted(ey, y, side="right")
    ny = ey.size + 1
    flat = np.bincount(ix * ny + iy, weights=w, minlength=(ex.size + 1) * ny)
    return flat.reshape(ex.size + 1, ny)


def run_tests(rng, *, rho_a=RHO_A, shift=0.0, coarse=True):
    """One replica: p-values of every test, inputs built as the pipeline builds them."""
    xs, ys, w = simulation(rng)
    xd, yd = data(rng, rho_a=rho_a, shift=shift)
    sw2 = float(np.sum(w**2))
    neff_s = float(np.sum(w)) ** 2 / sw2
    out = {}
    for n_bins in (1000, 20) if coarse else (1000,):
        inner = _inner_edges(xd, n_bins)
        h_sim, h_data = _hist(xs, w, inner), _hist(xd, None, inner)
        out[f"ks_hist_{n_bins}"] = ks_hist(h_data, h_sim, sw2).pvalue
        out[f"ad_hist_{n_bins}"] = ad_hist(h_data, h_sim, sw2).pvalue
    s_sim, s2_sim, s_data = moment_sums(xs, ys, w), moment_sums(xs, ys, w**2), moment_sums(xd, yd)
    out["corr_pearson"] = corr_pearson(
        s_data, N_DATA, s_sim, neff_s, sim_S2=s2_sim, data_S2=s_data
    ).pvalue
    out["corr_pearson_kish"] = corr_pearson(s_data, N_DATA, s_sim, neff_s).pvalue
    ex, ey = _inner_edges(xd, 100), _inner_edges(yd, 100)
    t_sim, t2_sim = _table(xs, ys, w, ex, ey), _table(xs, ys, w**2, ex, ey)
    t_data = _table(xd, yd, None, ex, ey)
    out["corr_spearman"] = corr_spearman(
        t_data, N_DATA, t_sim, neff_s, sim_table_w2=t2_sim, data_table_w2=t_data
    ).pvalue
    out["corr_spearman_kish"] = corr_spearman(t_data, N_DATA, t_sim, neff_s).pvalue
    return out


@pytest.fixture(scope="module")
def null_pvalues():
    rng = np.random.default_rng(20240611)
    rows = [run_tests(rng) for _ in range(N_REPLICAS)]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def test_generator_matches_the_brief():
    rng = np.random.default_rng(1)
    _, _, w = simulation(rng)
    assert np.mean(w < 0) == pytest.approx(0.05, abs=0.015)
    # The weighted simulation and the data describe the same distribution.
    xs, _, w = simulation(rng)
    xd, _ = data(rng)
    for q in (-1.0, 0.5, 2.0, 4.0):
        assert np.sum(w * (xs <= q)) / np.sum(w) == pytest.approx(np.mean(xd <= q), abs=0.04)


@pytest.mark.parametrize(
    "name",
    ["ks_hist_1000", "ad_hist_1000", "ks_hist_20", "ad_hist_20", "corr_pearson", "corr_spearman"],
)
def test_null_pvalues_are_uniform(null_pvalues, name):
    p = null_pvalues[name]
    assert np.all((p >= 0) & (p <= 1))
    assert stats.kstest(p, "uniform").pvalue > 0.01
    lo, hi = stats.binom.interval(0.99, p.size, ALPHA)
    n_fail = int(np.sum(p < ALPHA))
    assert lo <= n_fail <= hi


def test_power_planted_shift():
    rng = np.random.default_rng(7)
    reps = 40
    rows = [run_tests(rng, shift=0.12, coarse=False) for _ in range(reps)]
    for name in ("ks_hist_1000", "ad_hist_1000"):
        power = np.mean([r[name] < ALPHA for r in rows])
        assert power > 0.8, (name, power)


def test_power_planted_correlation_change():
    rng = np.random.default_rng(8)
    reps = 40
    # Process A's correlation 0.5 -> 0.8 in data only (a third of the data; margins unchanged).
    rows = [run_tests(rng, rho_a=0.8, coarse=False) for _ in range(reps)]
    for name in ("corr_pearson", "corr_spearman"):
        power = np.mean([r[name] < ALPHA for r in rows])
        assert power > 0.8, (name, power)
    # The 1D tests of x do not see a pure correlation change.
    assert np.mean([r["ks_hist_1000"] < ALPHA for r in rows]) < 0.2
