"""Calibration of the whole chain under realistic simulation weightings: a table.

Null replicas of each scenario of ``tests/null_weightings.py`` (importance sampling, HT slices,
NLO ±1 weights, a small simulation, spiky features, a plain control) go through
``run_validation``. Per scenario, kind and method: the number of reliable p-values, the
false-positive rates at 5 % and 1 % (``!`` when outside the band of
``tests/test_calibration_weightings.py``: 99.9 % binomial, widened by the design effect that a
bootstrap over replicas measures), the smallest p-value. Per scenario, a ``run summary`` row:
the rates over all tests, and the fraction of runs whose ``summary.p_uniformity`` and
``summary.p_binomial`` are below 0.05 (5 % each if the chain is calibrated and the tests were
independent; they are not, so somewhat more is expected even when calibrated).

Run: ``python benchmarks/calibration_weightings.py --replicas 20 --n-data 2000``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from null_weightings import SCENARIOS, fpr_band, run_replicas  # noqa: E402


def _rate(strata: list[list[np.ndarray]], alpha: float) -> str:
    band = fpr_band(strata, alpha)
    return f"{band.rate:6.3f}{' ' if band.ok else '!'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=20, help="replicas per size (20)")
    parser.add_argument("--n-data", type=int, nargs="+", default=[2_000],
                        help="data events per replica; several sizes are pooled (2000)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS,
                        metavar="NAME", help=f"of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes (2)")
    args = parser.parse_args()

    tasks = [(s, n, r) for s in args.scenarios for n in args.n_data for r in range(args.replicas)]
    t0 = time.perf_counter()
    results = run_replicas(tasks, args.workers)
    wall = time.perf_counter() - t0
    print(f"{len(results)} runs ({args.replicas} replicas x n_data {args.n_data} x "
          f"{len(args.scenarios)} scenarios) in {wall:.0f} s with {args.workers} worker(s); "
          f"{np.mean([r.seconds for r in results]):.2f} s per run")
    header = (f"{'scenario':<11}{'kind':<5}{'method':<17}{'n':>6} {'FPR@5%':>7} {'FPR@1%':>7} "
              f"{'min p':>9} {'unif<.05':>9} {'binom<.05':>9}")
    print(header)
    print("-" * len(header))
    for scenario in args.scenarios:
        mine = [r for r in results if r.scenario == scenario]
        keys = list(dict.fromkeys((row[0], row[1]) for r in mine for row in r.rows))
        every: list[list[np.ndarray]] = [[] for _ in args.n_data]
        for kind, method in keys:
            strata = [[r.pvalues(kind, method) for r in mine if r.n_data == n]
                      for n in args.n_data]
            for pooled, groups in zip(every, strata, strict=True):
                pooled.extend(groups)
            p = np.concatenate([g for s in strata for g in s]) if mine else np.empty(0)
            if not p.size:
                print(f"{scenario:<11}{kind:<5}{method:<17}{0:>6}   (no reliable result)")
                continue
            print(f"{scenario:<11}{kind:<5}{method:<17}{p.size:>6} {_rate(strata, 0.05)} "
                  f"{_rate(strata, 0.01)} {p.min():9.2e}")
        p = np.concatenate([g for s in every for g in s])
        unif = np.mean([r.p_uniformity < 0.05 for r in mine])
        binom = np.mean([r.p_binomial < 0.05 for r in mine])
        print(f"{scenario:<11}{'run':<5}{'summary':<17}{p.size:>6} {np.mean(p < 0.05):6.3f}  "
              f"{np.mean(p < 0.01):6.3f}  {p.min():9.2e} {unif:9.2f} {binom:9.2f}")
        print()
    print("! = outside the 99.9 % band (binomial widened by the bootstrap design effect)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
