"""Can a toy distribution's gamma approximation settle a statistic beyond every toy? (No.)

A statistic beyond every toy has the toy p-value 1/(1 + n), a bound. Proving it below Holm's
first threshold alpha/m (2e-5 for a run of 2,500 tests) takes about m/alpha toys, tens of
thousands for each genuinely mismodelled pair: most of a large run's test time. The idea tried
here: settle such a decision with the gamma law that has the first toys' mean and variance
(Satterthwaite's scaled chi², F. E. Satterthwaite, Biometrics Bull. 2 (1946) 110; the "gamma
approximation" of permutation distributions, A. M. Winkler et al., NeuroImage 141 (2016) 502)
when it puts the p-value far (say 100 times) below the threshold.

For null replicas of each toy-based chi²-type test (``dependence``, ``chi2_uw``,
``saturated``) with signed NLO-like, gamma-like and heavy-tailed weights, a long run of toys
gives the empirical tail and the gamma law fitted to disjoint batches of ``--fit`` toys (the
initial batch of a run) its approximation. Printed, at the empirical quantiles of tail
probability 1e-2, 1e-3 and 1e-4: the ratio empirical / gamma (above 1: the approximation is
anti-conservative), its median and 95th percentile over the batches.

Result (2026-12-01, 100,000 toys, fits to 300): with large, evenly weighted simulations the
ratio stays within 1-5 down to 1e-4, but a small simulation with NLO-like weights has rare
toys with huge statistics (ratio 1e8 at 1e-4: ``dependence``, 10k simulated events in 64
cells) and heavy weights give ratios of 10-120 at 1e-4 for every method. Toys cannot see
a tail below 1/n, and no margin makes the extrapolation safe in general, so the toys stay
the evidence (``validator.stats.toys.run_toys`` spends them only where a decision is open).

Run: ``python benchmarks/calibration_toy_tail.py [--toys 100000] [--fit 300]``.
"""

from __future__ import annotations

import argparse
import importlib
from unittest import mock

import numpy as np
from scipy import stats

# the modules themselves (the package exports functions of the same names)
chi2_module = importlib.import_module("validator.stats.chi2")
dependence_module = importlib.import_module("validator.stats.dependence")
likelihood_module = importlib.import_module("validator.stats.likelihood")

#: (weight, fraction of events) of each weight law (as in calibration_asymptotic.py).
WEIGHT_LAWS = {
    "nlo": [(0.3, 0.665), (-0.3, 0.035), (1.7, 0.30)],
    "gamma8neg": [(0.3, 0.30), (1.0, 0.40), (2.5, 0.22), (-1.0, 0.08)],
    "heavy": [(1.0, 0.97), (-1.0, 0.02), (20.0, 0.01)],
}
TAIL_PROBABILITIES = (1e-2, 1e-3, 1e-4)


def gamma_tail_pvalue(observed: float, toys: np.ndarray) -> float:
    """Upper tail of ``observed`` under the gamma law with the toys' mean and variance."""
    mean, var = float(toys.mean()), float(toys.var(ddof=1))
    return float(stats.gamma.sf(observed, mean * mean / var, scale=var / mean))


def _table(n_x: int, n_y: int, rho: float) -> np.ndarray:
    """Cell probabilities of a correlated Gaussian pair binned in its central quantiles."""
    ex = stats.norm.ppf(np.linspace(0.02, 0.98, n_x + 1))
    ey = stats.norm.ppf(np.linspace(0.02, 0.98, n_y + 1))
    gen = np.random.default_rng(0)
    z = gen.standard_normal((2_000_000, 2))
    x, y = z[:, 0], rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1]
    h, _, _ = np.histogram2d(x, y, bins=(ex, ey))
    return h / h.sum()


def _sim_sums(p: np.ndarray, n_sim: float, law: str, gen: np.random.Generator):
    """Exact replica of a weighted histogram: Poisson counts of events of each weight."""
    sums = [np.zeros_like(p) for _ in range(5)]
    for w, f in WEIGHT_LAWS[law]:
        k = gen.poisson(n_sim * f * p).astype(float)
        for power in range(5):
            sums[power] += k * w**power
    return sums  # count, Σw, Σw², Σw³, Σw⁴


def captured_toys(method: str, law: str, n_data: float, n_sim: float, n_toys: int,
                  seed: int) -> np.ndarray:
    """The toy statistics of one null replica's test, run with exactly ``n_toys`` toys."""
    gen = np.random.default_rng(seed)
    p = _table(8, 8, 0.5) if method == "dependence" else _table(15, 1, 0.0)
    data = gen.poisson(n_data * p).astype(float)
    cnt, sw, sw2, sw3, sw4 = _sim_sums(p, n_sim, law, gen)
    if method != "dependence":
        data, cnt, sw, sw2, sw3, sw4 = (a.ravel() for a in (data, cnt, sw, sw2, sw3, sw4))
    module, fn = {
        "dependence": (dependence_module, dependence_module.dependence),
        "chi2_uw": (chi2_module, chi2_module.chi2_uw),
        "saturated": (likelihood_module, likelihood_module.saturated),
    }[method]
    seen: list[np.ndarray] = []
    real = module.run_toys

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.toys)
        return out

    with mock.patch.object(module, "run_toys", spy):
        fn(data, sw, sw2, n_toys=n_toys, rng=seed + 1, sim_count=cnt, sim_sumw3=sw3)
    return seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toys", type=int, default=100_000)
    parser.add_argument("--fit", type=int, default=300)
    args = parser.parse_args()
    print(f"{args.toys:,} toys per replica; gamma law fitted to disjoint batches of {args.fit}")
    print("ratio = empirical tail / gamma tail at the empirical quantile (median, 95th pct)")
    header = "method      law        n_data  n_sim " + "".join(
        f"  p={p:g}: median  p95" for p in TAIL_PROBABILITIES)
    print(header)
    for method in ("dependence", "chi2_uw", "saturated"):
        for law in WEIGHT_LAWS:
            for n_data, n_sim in ((20_000, 10_000), (200_000, 50_000)):
                toys = captured_toys(method, law, n_data, n_sim, args.toys, seed=7)
                row = f"{method:<11} {law:<10} {n_data:>6} {n_sim:>6}"
                fits = toys[: (toys.size // args.fit) * args.fit].reshape(-1, args.fit)
                for tail in TAIL_PROBABILITIES:
                    q = np.quantile(toys, 1 - tail)
                    empirical = float(np.mean(toys >= q))
                    ratio = np.array([empirical / gamma_tail_pvalue(q, f) for f in fits])
                    row += f"  {np.median(ratio):>13.2f} {np.quantile(ratio, 0.95):>4.1f}"
                print(row, flush=True)


if __name__ == "__main__":
    main()
