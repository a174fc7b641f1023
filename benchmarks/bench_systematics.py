"""Time of the systematic saturated test (issue 16) with toy p-values on a run-sized set.

The set mimics the sample data's tests: 20 features in 1D (10-30 bins) and their 190 pairs
in 2D (about 25 cells after merging), 2 processes, 3 shape systematics (two weight
variations per process, one one-sided variation of the total), one normalisation
uncertainty, BB-lite MC statistics, 300 toys per test. Half of the histograms have data
drawn from the model with the nuisances pulled from their constraints (null), half with a
mismodelling the systematics do not cover. Run once with fixed toys, once adaptive as a run
would ask (thresholds alpha = 0.05 and Holm's first alpha/m, up to 20,000 toys).

Run with ``python benchmarks/bench_systematics.py [--features N] [--toys N] [--numpy]``. Prints
the wall time, time per test and fits per second; ``--numpy`` also runs the fits batched in
numpy (the path without numba, ``validator.stats.systematics._newton_numpy``) and says whether
every p-value is the compiled path's. ``--sample-data`` also times the real thing: every
1D and 2D test of the sample data (20 features, 190 pairs) with the met-scale systematic
(``sample_data/analysis.yaml``'s, without the network), against the same run without
systematics: the difference is the cost of ``saturated_syst`` with its toys. Figures, not
pass/fail: machines are noisy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from validator.stats import systematics
from validator.stats.systematics import build_model, expected_counts, saturated_syst

#: Test size of a run, and the number of planned tests (for Holm's first threshold).
ALPHA = 0.05
#: Cap of adaptive toys per test (validator.stages.compare.CompareOptions.max_toys).
MAX_TOYS = 20_000


def _histogram(rng: np.random.Generator, n_bins: int, mismodelled: bool) -> dict:
    """One test's inputs: two processes, three shape systematics, one normalisation."""
    x = np.linspace(-1.0, 1.0, n_bins)
    sig = rng.uniform(200.0, 2000.0) * np.exp(-rng.uniform(0.5, 3.0) * x**2)
    bkg = rng.uniform(200.0, 2000.0) * np.exp(-rng.uniform(0.2, 1.5) * (x + 1.0))
    weight = rng.uniform(0.5, 4.0)  # simulated events of this weight; data 1 per event
    w = np.stack([sig, bkg]) * weight
    s2 = w * weight
    slope = rng.uniform(0.03, 0.12)
    variations = {
        "jes": (np.stack([w[0] * (1 + slope * x), w[1]]), np.stack([w[0] * (1 - slope * x),
                                                                     w[1]])),
        "pileup": (np.stack([w[0], w[1] * (1 + 0.05 * x**2)]),
                   np.stack([w[0], w[1] * (1 - 0.04 * x**2)])),
        "model": (w.sum(axis=0) * (1 + 0.03 * np.sin(3 * x)), None),
    }
    norms = {"bkg": 0.1}
    model = build_model(w, s2, variations, norms, process_names=["sig", "bkg"])
    theta = rng.standard_normal(model.n_constrained)
    gamma = np.clip(1.0 + model.sigma_rel * rng.standard_normal(model.n_bins), 0.0, None)
    nu = gamma * expected_counts(model, np.concatenate([[np.log(1 / weight)], theta])[None])[0]
    if mismodelled:
        nu = nu * (1.0 + 0.08 * x**3)
    return {"sim_sumw": w, "sim_sumw2": s2, "data_counts": rng.poisson(nu).astype(float),
            "variations": variations, "norm_uncertainties": norms,
            "process_names": ["sig", "bkg"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--toys", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample-data", action="store_true",
                        help="also time every test of the sample data with a systematic")
    parser.add_argument("--numpy", action="store_true",
                        help="also time the fits batched in numpy (the path without numba)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    n_1d = args.features
    n_2d = n_1d * (n_1d - 1) // 2
    bins = [int(b) for b in rng.integers(10, 31, n_1d)] + [25] * n_2d
    cases = [_histogram(rng, b, mismodelled=(k % 2 == 1)) for k, b in enumerate(bins)]
    n_tests = len(cases)
    print(f"{n_tests} tests ({n_1d} 1D with 10-30 bins, {n_2d} 2D with 25 bins), "
          f"2 processes, 3 shape + 1 normalisation systematics, BB-lite, {args.toys} toys")
    thresholds = (ALPHA, ALPHA / n_tests)
    saturated_syst(**cases[0], n_toys=1, rng=np.random.default_rng(0))  # load the kernels
    paths = [("compiled", systematics.HAVE_NUMBA)] + ([("numpy", False)] if args.numpy else [])
    for label, kwargs in (("fixed toys", {}),
                          ("adaptive", {"max_toys": MAX_TOYS, "thresholds": thresholds})):
        pvalues = {}
        for path, compiled in paths:
            systematics.HAVE_NUMBA = compiled
            t0 = time.perf_counter()
            total_toys = 0
            failed = 0
            small = 0
            pvalues[path] = []
            for k, case in enumerate(cases):
                res = saturated_syst(**case, n_toys=args.toys,
                                     rng=np.random.default_rng([args.seed, k]), **kwargs)
                total_toys += res.n_toys or 0
                failed += int(res.details.get("n_toys_failed", 0))
                small += int(res.pvalue < ALPHA)
                pvalues[path].append(res.pvalue)
            wall = time.perf_counter() - t0
            print(f"{label:>10}, {path:>8}: {wall:7.2f} s wall, {1e3 * wall / n_tests:6.1f} ms "
                  f"per test, {total_toys} toy fits ({total_toys / wall:,.0f} per s), "
                  f"{failed} failed fits, {small}/{n_tests} tests with p < {ALPHA}")
        if len(pvalues) == 2:
            a, b = (np.array(v) for v in pvalues.values())
            same = int(np.sum(a == b))
            close = int(np.sum(np.isclose(a, b, rtol=1e-9, atol=0.0)))
            print(f"{'':>10}  the same p-value in {same} of {n_tests} tests, within 1e-9 "
                  f"relative in {close} (a limit-law tail differs by rounding)")
        systematics.HAVE_NUMBA = paths[0][1]
    if args.sample_data:
        sample_data(args.toys)


def sample_data(toys: int) -> None:
    """Every 1D and 2D test of the sample data, with and without the met-scale systematic."""
    import tempfile
    from pathlib import Path

    import polars as pl
    from sample import SAMPLE_DIR, sample_generator

    from validator.pipeline import RunConfig, run_validation
    from validator.stages.compare import CompareOptions
    from validator.stages.systematics import Systematics

    with tempfile.TemporaryDirectory() as tmp:
        up, down = sample_generator().met_scale_variations(
            pl.read_parquet(SAMPLE_DIR / "sim.parquet"))
        paths = [Path(tmp) / "up.parquet", Path(tmp) / "down.parquet"]
        up.write_parquet(paths[0])
        down.write_parquet(paths[1])
        base = dict(sim=[str(SAMPLE_DIR / "sim.parquet")], data=[str(SAMPLE_DIR / "data.parquet")],
                    weight="weight", db=None, compare=CompareOptions(syst_toys=toys))
        syst = Systematics.parse((), [f"met_scale={paths[0]}:{paths[1]}"], ["0.05"], "process")
        times = {}
        for label, extra in (("no systematics", {}), ("met_scale + norms", {"systematics": syst})):
            t0 = time.perf_counter()
            out = run_validation(RunConfig(**base, **extra))
            times[label] = time.perf_counter() - t0
            n = sum(r.method == "saturated_syst" for r in out.records)
            toys_run = sum(r.result.n_toys or 0 for r in out.records
                           if r.method == "saturated_syst" and r.result is not None)
            print(f"sample data, {label:>17}: {times[label]:6.1f} s wall, {len(out.records)} "
                  f"tests ({n} saturated_syst, {toys_run} toy fits)")
        extra_s = times["met_scale + norms"] - times["no systematics"]
        print(f"saturated_syst on every feature and pair, with its toys and the shape files' "
              f"fill: {extra_s:.1f} s more")


if __name__ == "__main__":
    main()
