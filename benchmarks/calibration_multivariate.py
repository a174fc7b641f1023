"""Null calibration of the multivariate tests (issue 31 item 2): ``c2st`` and ``nplm`` p-values
over independent null replicas must be uniform.

Each replica: a weighted simulation (two weight values, 4 % negative, NLO-style) and data
drawn from the same law (3 standard-normal inputs; the law of ``tests/test_multivariate.py``'s
null case), then ``c2st`` (held-out rank test) and ``nplm`` (``--toys`` toys, default 19: the
smallest count at which a statistic beyond every toy takes the χ² fitted to the toys). Prints
per test the Kolmogorov-Smirnov p-value of the replicas' p-values against U(0, 1) (the toy
p-values of ``nplm`` take values k/(toys + 1): compared with a uniform on (0, 1] shifted by
half a step), the false-positive rates at 5 % and 1 % with their Clopper-Pearson 95 %
intervals, and how many p-values came from beyond every toy.

Run: ``python benchmarks/calibration_multivariate.py [--replicas 100] [--toys 19]
[--methods c2st,nplm]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy import stats

from validator.stats import multivariate as mv
from validator.stats.toys import clopper_pearson


def null_case(seed: int, n_sim: int, n_data: int, dim: int = 3
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((n_sim, dim))
    w = np.where(rng.random(n_sim) < 0.5, 0.5, 1.5) * np.where(rng.random(n_sim) < 0.04, -1, 1)
    return xs, w, rng.standard_normal((n_data, dim))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--toys", type=int, default=19)
    parser.add_argument("--n-sim", type=int, default=3_000)
    parser.add_argument("--n-data", type=int, default=1_500)
    parser.add_argument("--methods", default="c2st,nplm", help="c2st, nplm or both")
    args = parser.parse_args()
    out: dict[str, list[float]] = {m: [] for m in args.methods.split(",")}
    tails = 0
    start = time.perf_counter()
    for r in range(args.replicas):
        xs, w, xd = null_case(9_000 + r, args.n_sim, args.n_data)
        if "c2st" in out:
            out["c2st"].append(mv.c2st(xs, w, xd, np.random.default_rng(r)).pvalue)
        if "nplm" in out:
            res = mv.nplm(xs, w, xd, np.random.default_rng(r), n_toys=args.toys)
            out["nplm"].append(res.pvalue)
            tails += res.details.get("pvalue_from") == "chi2_fit_tail"
    wall = time.perf_counter() - start
    print(f"{args.replicas} null replicas, n_sim {args.n_sim}, n_data {args.n_data}, nplm "
          f"{args.toys} toys, {wall:.0f} s, load {os.getloadavg()[0]:.1f}")
    for name, values in out.items():
        p = np.asarray(values)
        shift = 0.5 / (args.toys + 1) if name == "nplm" else 0.0
        ks = stats.kstest(p - shift, "uniform").pvalue
        rates = []
        for a in (0.05, 0.01):
            k = int(np.sum(p <= a))
            lo, hi = clopper_pearson(k, p.size, 0.95)
            rates.append(f"FPR@{a:g} {k / p.size:.3f} [{lo:.3f}, {hi:.3f}]")
        extra = f"; beyond every toy (chi2 fit): {tails}" if name == "nplm" else ""
        print(f"{name}: KS vs uniform p = {ks:.3f}; " + "; ".join(rates) + extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
