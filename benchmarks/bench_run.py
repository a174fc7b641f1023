"""Speed and memory of a whole `validator run` on the toy analysis at larger sizes.

Prints, per size: events per second of each stage, total wall time and peak resident memory.
Run with `make bench` or `python benchmarks/bench_run.py [--n-sim N] [--n-data N]`.
Figures, not pass/fail: machines are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("generate", REPO / "sample_data" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sim", type=int, default=1_000_000)
    parser.add_argument("--n-data", type=int, default=500_000)
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    args = parser.parse_args()

    from validator.pipeline import RunConfig, run_validation

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sim, data = _generator().make_samples(n_sim=args.n_sim, n_data=args.n_data, seed=1)
        sim.write_parquet(Path(tmp) / "sim.parquet")
        data.write_parquet(Path(tmp) / "data.parquet")
        print(f"generated {args.n_sim:,} sim + {args.n_data:,} data events in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        del sim, data

        stamps: dict[str, list[float]] = {}

        def progress(stage: str, done: int, total: int) -> None:
            now = time.perf_counter()
            stamps.setdefault(stage, [now, now])[1] = now

        t0 = time.perf_counter()
        outcome = run_validation(RunConfig(
            sim=[str(Path(tmp) / "sim.parquet")], data=[str(Path(tmp) / "data.parquet")],
            weight="weight", db=str(Path(tmp) / "bench.duckdb"), chunk_rows=args.chunk_rows,
        ), progress)
        total = time.perf_counter() - t0

    previous = t0
    for stage, (_, end) in stamps.items():
        n = args.n_sim if "sim" in stage else args.n_data if "data" in stage else 0
        took = end - previous
        rate = f"{n / took:,.0f} events/s" if n and took > 0 else ""
        print(f"  {stage:<10} {took:7.2f} s  {rate}")
        previous = end
    print(f"  store      {t0 + total - previous:7.2f} s")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"total {total:.1f} s for {outcome.n_tests:,} tests "
          f"({len(outcome.plan.features)} features, {len(outcome.plan.pairs)} pairs); "
          f"peak RSS {peak_mib:,.0f} MiB (includes generating the samples)")


if __name__ == "__main__":
    sys.exit(main())
