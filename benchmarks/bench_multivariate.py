"""Time of each multivariate test (``c2st``, ``nplm``) on the sample data, default settings.

The sample data with the three-track columns (``sample_data/generate.py``'s
``make_multivariate_case``, the shipped sizes: 150 000 simulated and 75 000 data events, the
two shipped planted effects plus the three-track sign correlation that no 1D or 2D test can
see), every feature as input (23), the subsample ``validator run --multivariate`` takes
(:data:`validator.config.defaults.MULTIVARIATE_EVENTS` data events, five times as many simulated),
the default permutations, toys and time budget. Prints, per test, the wall time, the
statistic, the p-value with its toys, and the three inputs the learned function depends on
most (Taylor attribution); ``--null`` draws the data from the simulation model instead.

Run with ``python benchmarks/bench_multivariate.py [--null] [--events N] [--toys N]``. Figures,
not pass/fail: the 1-minute load average is printed with them (the reference machine has two
shared cores; torch runs on one thread inside the tests, see
``validator.stats.multivariate.TORCH_THREADS``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sample import sample_generator

from validator.config.defaults import MULTIVARIATE_EVENTS
from validator.inputs.sources import ENTRY, FILE
from validator.stages.multivariate import SIM_RESERVOIR_FACTOR, EventReservoir
from validator.stats import multivariate as mv

SEED = 20261123




def reservoirs(null: bool, events: int) -> tuple[EventReservoir, EventReservoir]:
    """The run's subsamples of the sample data with the track columns."""
    gen = sample_generator()
    sim, data = gen.make_multivariate_case(planted=not null)
    inputs = (*gen.FEATURES, *gen.TRACK_FEATURES)
    out = []
    for k, (frame, capacity) in enumerate(((sim, events * SIM_RESERVOIR_FACTOR),
                                           (data, events))):
        res = EventReservoir(inputs, capacity, SEED + k)
        chunk = {c: frame[c].to_numpy() for c in inputs}
        chunk[ENTRY], chunk[FILE] = np.arange(frame.height), np.zeros(frame.height, np.int64)
        w = frame["weight"].to_numpy() if "weight" in frame.columns else np.ones(frame.height)
        res.add(chunk, w)
        out.append(res)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null", action="store_true", help="data drawn from the simulation")
    parser.add_argument("--events", type=int, default=MULTIVARIATE_EVENTS)
    parser.add_argument("--toys", type=int, default=None,
                        help="permutations/toys (default: each test's default)")
    args = parser.parse_args()
    start = time.perf_counter()
    sim, data = reservoirs(args.null, args.events)
    print(f"sample data{' (null)' if args.null else ''}: {len(sim.w)} simulated and "
          f"{len(data.w)} data events in the subsample, {len(sim.columns)} inputs "
          f"(generated in {time.perf_counter() - start:.1f} s); "
          f"load average {os.getloadavg()[0]:.1f}")
    for name in ("c2st", "nplm"):
        rng = np.random.default_rng(SEED)
        count = {} if args.toys is None else (
            {"n_permutations": args.toys} if name == "c2st" else {"n_toys": args.toys})
        start = time.perf_counter()
        test = mv.c2st if name == "c2st" else mv.nplm
        result = test(sim.x, sim.w, data.x, rng, inputs=sim.columns, **count)
        elapsed = time.perf_counter() - start
        top = list(result.details["attribution"])[:3]
        bound = "<" if result.pvalue_is_bound else "="
        extra = f", AUC {result.details['auc']:.4f}" if name == "c2st" else ""
        print(f"{name}: {elapsed:6.1f} s  statistic {result.statistic:9.1f}  p {bound} "
              f"{result.pvalue:.4f} ({result.n_toys} toys){extra}; drives it: "
              f"{', '.join(top)}")


if __name__ == "__main__":
    main()
