"""When are the asymptotic p-values of ``chi2_uw`` and ``saturated`` trusted for a small simulation?

With fewer simulated effective entries than data events, the simulation carries most of each
bin's variance, and that variance is *estimated* (Σw²): its noise, correlated with the bin's
content, makes the chi² p-values anti-conservative. How noisy the estimate is depends on the
effective entries of the squared weights, n2 = (Σw²)²/Σw⁴ (``variance_entries``), not on the
Kish size of the bin: a few large weights make it small.

Null replicas are drawn as histogram contents (exactly, per weight class: Poisson counts of
events of each weight), for four weight laws (NLO-like with 5% negative, gamma-like with 8%
negative, heavy: 1% of events at weight 20, and unweighted), 15 and 60 bins of a falling
spectrum, simulation/data Kish ratios rho = 0.2 to 3, and the smallest bin's n2 from 10 to 400.
Printed: the false-positive rate over alpha at 0.05, 0.01, 1e-3 and 1e-4 of the asymptotic
p-values (1 is calibrated; the precision at 1e-3 is about +-10-15%, at 1e-4 +-20-50%).

This study chose ``validator.stats.binned.MIN_VARIANCE_ENTRIES``.

Run: ``python benchmarks/calibration_asymptotic.py [--replicas 400000] [--method saturated]``.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from validator.stats.chi2 import _uw_core
from validator.stats.likelihood import _PRED_FLOOR_REL, _fill_empty_sim_error, _statistic

#: (weight, fraction of events) of each weight law.
WEIGHT_LAWS = {
    "nlo": [(0.3, 0.665), (-0.3, 0.035), (1.7, 0.30)],
    "gamma8neg": [(0.3, 0.30), (1.0, 0.40), (2.5, 0.22), (-1.0, 0.08)],
    "heavy": [(1.0, 0.97), (-1.0, 0.02), (20.0, 0.01)],
    "plain": [(1.0, 1.0)],
}
ALPHAS = (0.05, 0.01, 1e-3, 1e-4)
#: Replicas drawn per batch (memory).
BATCH = 50_000


def _shape(n_bins: int) -> np.ndarray:
    edges = np.r_[np.linspace(0.0, 6.0, n_bins), np.inf]
    p = np.diff(stats.expon.cdf(edges, scale=2.0))
    return p / p.sum()


def _moment(law: str, k: int) -> float:
    return sum(w**k * f for w, f in WEIGHT_LAWS[law])


def false_positive_ratios(law: str, n_bins: int, rho: float, n2_min: float, replicas: int,
                          method: str, rng: np.random.Generator) -> np.ndarray:
    """FPR / alpha at :data:`ALPHAS` of the asymptotic p-values over null replicas."""
    p = _shape(n_bins)
    m2, m4 = _moment(law, 2), _moment(law, 4)
    sim_events = n2_min * (m4 / m2**2) / p.min()  # the sparsest bin's n2 is n2_min
    n_data = sim_events * _moment(law, 1) ** 2 / m2 / rho
    hits = np.zeros(len(ALPHAS))
    done = 0
    while done < replicas:
        size = min(BATCH, replicas - done)
        w = np.zeros((size, n_bins))
        s2 = np.zeros((size, n_bins))
        for weight, fraction in WEIGHT_LAWS[law]:
            k = rng.poisson(sim_events * fraction * p, size=(size, n_bins))
            w += weight * k
            s2 += weight * weight * k
        n = rng.poisson(n_data * p, size=(size, n_bins)).astype(float)
        if method == "saturated":
            s2_filled, _ = _fill_empty_sim_error(w, s2)
            q = _statistic(n, w, s2_filled, _PRED_FLOOR_REL * float(np.abs(w).mean()))[0]
        else:
            q = _uw_core(n, w, s2)["chi2"]
        pvalues = stats.chi2.sf(q, n_bins - 1)
        hits += [np.sum(pvalues < a) for a in ALPHAS]
        done += size
    return hits / replicas / np.array(ALPHAS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=400_000, help="per point (400,000)")
    parser.add_argument("--method", choices=("chi2_uw", "saturated"), default="chi2_uw")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.method}: FPR / alpha of the asymptotic p-value, {args.replicas:,} null "
          f"replicas per row")
    print("| weights | bins | rho | smallest n2 | " +
          " | ".join(f"alpha {a:g}" for a in ALPHAS) + " |")
    print("|---|---|---|---|" + "---|" * len(ALPHAS))
    for n_bins in (15, 60):
        for law in WEIGHT_LAWS:
            for rho in (0.2, 0.5, 1.0, 3.0):
                for n2_min in (10, 25, 50, 100, 200, 400):
                    ratios = false_positive_ratios(law, n_bins, rho, n2_min, args.replicas,
                                                   args.method, rng)
                    print(f"| {law} | {n_bins} | {rho:g} | {n2_min} | " +
                          " | ".join(f"{r:.2f}" for r in ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
