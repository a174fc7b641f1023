"""The audited run's own floor: the pieces of issue 32's audited run that no schedule of it can
skip, each timed alone on one core, summed, against the issue's budgets.

The issue's budget is a ratio times the read-and-bin floor (:func:`bench_scale.floor`, 10
quantile bins, one process, its wall time: pyarrow's reader may decode on both cores): 4x at
1M, 3x at 3M and 10M, for a run on this machine's two cores, so ``ratio x floor x 2``
core-seconds at perfect parallelism. The pieces below are what
the audited configuration (``bench_scale.audited_options``) asks for, each timed with the
run's own code on the benchmark's files and scaled linearly in N where it grows with N:

- **read**: one pyarrow read of every file to numpy (the floor's first half), in CPU time
  like every other piece (the floor's own read time is wall time: it counts waiting for the
  disk, no core's work);
- **sums**: :func:`validator.stages.fill.accumulate` on 250k-event chunks, the simulation with
  its nominal weight only (no systematic's rows: left out of the bound), the data unweighted:
  the binning, the 1D, 2D and moment sums every binned and correlation test reads;
- **syst rows**: the same chunks of the simulation with the two systematics' four weight rows
  (their templates in every bin), minus the nominal-only time (their Σw² in the 2D cells,
  a third of it, is read by no test: a bound without it is 0.5 core-s per million simulated
  events lower);
- **network**: the first-order derivatives on every event (the issue's item 2),
  :func:`validator.model.taylor.outputs_and_first_order` on a chunk, per event times 2N;
- **second order**: the Hessians of :data:`validator.stages.audit.SECOND_ORDER_EVENTS` events of
  each sample (:func:`validator.model.taylor.taylor_sums`, second order alone);
- **SHAP**: :func:`validator.model.shap_values.shap_importance` on the run's 200 events of each
  sample (the default method for the network's input count);
- **torch**: the CPU time of ``import torch`` in a fresh process (the network is a torch
  module: at least one process of the run loads it);
- **profile fits**: ``--bound-tests K`` tests whose statistic lies beyond every toy with a
  limit-law estimate above :data:`validator.stats.toys.TAIL_SETTLES_FACTOR` times below Holm's
  first threshold alpha/m each need ceil(m/alpha) - 1 toys before the Monte Carlo p-value
  1/(1 + n) is below the threshold (Besag and Clifford; ``validator.stats.toys.run_toys``), each
  toy a profile fit of ``saturated_syst``, timed on a 100-cell histogram with two weight
  systematics (the (feature, output) pairs' shape). The 10M audited run has K = 20 (session
  13's count), the 3M run K = 2.

Left out, so the sum stays a lower bound: the scan's column profiles, the fill's first pass of
reading beyond one, every other toy (the output's KS and AD, the dependence tests, the run-level
replicas), the first order's sums, storing, the workers' start.

Run: ``python benchmarks/bench_audit_floor.py --size 10M --bound-tests 20 [--tests 3440]``.
Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_scale  # noqa: E402
import scale_data  # noqa: E402

#: Events per timed chunk (the run's reader chunks are of this order).
CHUNK_EVENTS = 250_000
#: Events of the timed network pass (at most a chunk's).
NETWORK_EVENTS = 1 << 18
#: The issue's ratios (audited configuration) by size.
TARGET_RATIO = {1_000_000: 4.0, 3_000_000: 3.0, 10_000_000: 3.0}
#: Cores of the run the budget assumes (this machine's).
CORES = 2
#: Toys timed for the profile fits' cost per toy.
FIT_TOYS = 4096
#: Cells of the timed fits' histogram: the (feature, output) pairs' 10 x 10.
FIT_CELLS = 100


def best(fn, repeat: int = 3) -> float:
    """The smallest CPU time of this process (every thread) over ``repeat`` calls of ``fn()``
    (seconds): core-seconds, as the budget counts them."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def read_seconds(paths: list[str], columns: list[str]) -> float:
    import pyarrow.parquet as pq

    def read() -> None:
        for path in paths:
            table = pq.read_table(path, columns=columns)
            for c in columns:
                table[c].to_numpy()

    return best(read, 1)


def first_chunk(path: str, columns: list[str], n: int) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=columns).slice(0, n)
    return {c: table[c].to_numpy() for c in columns}


def sums_seconds(sim: dict, data: dict, features: list[str], rows: list[str]
                 ) -> tuple[float, float, float]:
    """Seconds of ``accumulate`` on one chunk: simulation nominal, simulation with ``rows``,
    data."""
    from validator.stages.fill import Layout, accumulate, event_groups
    from validator.stages.plan import ColumnProfile, PlanConfig, make_plan, uniform_keys

    n = len(sim["weight"])
    xs = np.stack([sim[c] for c in features], axis=1).astype(np.float64)
    xd = np.stack([data[c] for c in features], axis=1).astype(np.float64)
    profiles = {c: ColumnProfile.of(xd[:, i], uniform_keys(np.arange(n), 0, i))
                for i, c in enumerate(features)}
    plan = make_plan(profiles, profiles, dict.fromkeys(features, "float"), weight="weight",
                     category=None, requested=None, skipped={}, config=PlanConfig())
    layout = Layout(plan).prepared()
    groups = event_groups(np.arange(n), np.zeros(n, dtype=np.int64), 0)
    nominal = np.asarray(sim["weight"], dtype=np.float64)[None, :]
    varied = np.stack([nominal[0], *(np.asarray(sim[r], dtype=np.float64) for r in rows)])
    ones = np.ones((1, n))
    accumulate(xs[:1000], nominal[:, :1000], layout, groups[:1000])  # kernels loaded
    return (best(lambda: accumulate(xs, nominal, layout, groups)),
            best(lambda: accumulate(xs, varied, layout, groups)),
            best(lambda: accumulate(xd, ones, layout, groups)))


def network_seconds(model, chunk: dict) -> float:
    from validator.model.taylor import outputs_and_first_order

    outputs_and_first_order(model, {c: v[:1000] for c, v in chunk.items()})
    return best(lambda: outputs_and_first_order(model, chunk))


def second_order_seconds(model, chunk: dict, n: int) -> float:
    from validator.model.taylor import taylor_sums

    part = {c: v[:n] for c, v in chunk.items()}
    return best(lambda: taylor_sums(model, part, order=2, first_order=False), 1)


def shap_seconds(model, chunk: dict, events: int) -> float:
    from validator.model.shap_values import shap_importance

    return best(lambda: shap_importance(model, chunk, max_events=events), 1)


def torch_import_seconds() -> float:
    """CPU seconds of ``import torch`` beyond a bare interpreter with numpy."""
    def cpu(code: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", code], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    return min(cpu("import numpy, torch") for _ in range(2)) - \
        min(cpu("import numpy") for _ in range(2))


def fit_seconds_per_toy(events: int) -> float:
    """Seconds per toy of ``saturated_syst`` on a 100-cell histogram of ``events`` simulated
    events with two weight systematics (up and down templates), data 2% off in slope."""
    from validator.stats.systematics import saturated_syst

    rng = np.random.default_rng(7)
    x = np.linspace(-1.0, 1.0, FIT_CELLS)
    shape = np.exp(-x ** 2)
    sim = events * shape / shape.sum()
    variations = {"scale": (sim * (1 + 0.02 * x), sim * (1 - 0.02 * x)),
                  "pdf": (sim * (1 + 0.01 * x ** 2), sim * (1 - 0.01 * x ** 2))}
    data = rng.poisson(sim * (1 + 0.02 * x + 0.01 * x ** 3)).astype(float)
    sumw2 = sim * 1.3

    def run(toys: int) -> None:
        saturated_syst(data, sim, sumw2, variations=variations, n_toys=toys,
                       rng=np.random.default_rng(1))

    run(64)
    return (best(lambda: run(FIT_TOYS)) - best(lambda: run(0))) / FIT_TOYS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1M")
    parser.add_argument("--bound-tests", type=int, default=0,
                        help="tests needing the toys' bound below Holm's first threshold")
    parser.add_argument("--tests", type=int, default=3440, help="planned tests m (Holm)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--cache", type=Path, default=scale_data.DEFAULT_CACHE)
    args = parser.parse_args()
    n = bench_scale._parse_size(args.size)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)  # as in the run's workers: one thread each
    threadpool_limits(1)
    features = scale_data.feature_names(30)
    sim_paths, data_paths = scale_data.samples(n, 30, args.cache)
    rows = [r for pair in scale_data.SYSTEMATICS.values() for r in pair]

    from validator.model.load import load_model
    from validator.stages.audit import SECOND_ORDER_EVENTS

    model = load_model(bench_scale.audit_network(sim_paths, features, args.cache))
    floor, _ = bench_scale.floor(sim_paths + data_paths, features, 10)
    read = read_seconds(sim_paths + data_paths, features)
    sim = first_chunk(sim_paths[0], [*features, "weight", *rows], CHUNK_EVENTS)
    data = first_chunk(data_paths[0], features, CHUNK_EVENTS)
    s_nominal, s_varied, s_data = sums_seconds(sim, data, features, rows)
    chunks = n / len(sim["weight"])
    net_chunk = {c: v[:NETWORK_EVENTS] for c, v in sim.items()}
    per_event = network_seconds(model, net_chunk) / len(net_chunk["weight"])
    toy = fit_seconds_per_toy(n // 2)
    toys_needed = math.ceil(args.tests / args.alpha) - 1
    pieces = {
        "read (every file, once)": read,
        "sums: simulation, nominal weight": s_nominal * chunks,
        "sums: data": s_data * chunks,
        "sums: the systematics' weight rows": (s_varied - s_nominal) * chunks,
        "network: first order, every event": per_event * 2 * n,
        "second order": 2 * second_order_seconds(model, sim, SECOND_ORDER_EVENTS),
        "SHAP": 2 * shap_seconds(model, sim, 200),
        "import torch": torch_import_seconds(),
        f"profile fits: {args.bound_tests} tests x {toys_needed:,} toys":
            args.bound_tests * toys_needed * toy,
    }
    ratio = TARGET_RATIO.get(n, 3.0)
    budget = ratio * floor * CORES
    total = sum(pieces.values())
    print(f"N = {n:,} + {n:,} events x 30 features; floor {floor:.2f} s (wall); "
          f"network {per_event * 1e6:.2f} us an event (forward + backward); "
          f"profile fit {toy * 1e6:.1f} us a toy")
    print("| piece | core-s |")
    print("| --- | --- |")
    for name, seconds in pieces.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **sum (a lower bound)** | **{total:.1f}** |")
    print(f"| budget: {ratio:g} x floor x {CORES} cores | {budget:.1f} |")
    print(f"lower bound / floor at {CORES} cores, perfectly parallel: {total / CORES / floor:.2f}x "
          f"(target {ratio:g}x)")


if __name__ == "__main__":
    main()
