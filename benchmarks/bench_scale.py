"""Scale: a whole `validator run` (30 features: 30 1D + 435 2D tests) against the floor.

For each N: N weighted simulated (signed weights) + N data events x 30 float32 features in
several parquet files (made once, cached outside the repository: benchmarks/scale_data.py).

- **run**: `validator run` (through `run_validation`, in a child process, no database, default
  toys, no model), timed per stage; peak RSS of the largest process and of all of them
  together, CPU utilisation (user + sys over wall, of the child and its workers).
- **floor**: in the same script, on the same files: one pyarrow read of every file plus one
  vectorised pass binning every column (numpy's `searchsorted` into 1000 quantile edges, the
  fine binning the run fills); the read alone is printed beside it.
- **evidently**: DataDriftPreset on the same columns (1D only, unweighted), on a subsample,
  scaled linearly to N.
- **naive**: scipy `ks_2samp` per feature + `numpy.histogram2d` per pair (both samples), on a
  subsample, scaled linearly to N.
- **growth**: the run with 10, 20, 30, 50 features at 1M events.

Configurations (``--configs``, comma-separated; ``plain`` by default):

- **plain**: the run above.
- **audited**: the run a pre-unblinding gate executes: the network audited (a 30-64-64-1 tanh
  MLP with a sigmoid, TorchScript, trained for a few seconds in this script on standard-normal
  events and saved with its input names and a scaler taken from the simulation's first file;
  nothing is downloaded), the two weight systematics of the simulation
  (``scale_data.SYSTEMATICS`` as ``--syst NAME=UP:DOWN``) and the network's output blinded
  (``--blind "output > 0.9"``).
- **multivariate**: the audited run with ``--multivariate c2st,nplm`` at its default
  subsample (timed at the first size only: its cost does not grow with N).

Within a trial the floor and every configuration run one after the other, so the ratios of
one trial share the machine's state. ``--floor-bins 10``: the floor bins into 10 quantile bins
per column (the issue-32 definition) instead of the 1000 fine bins.

Run: `python benchmarks/bench_scale.py [--sizes 1M,3M,10M] [--growth] [--repeat K]
[--memory-trials K] [--json F]
[--configs plain,audited,multivariate] [--floor-bins 10]`.
Figures, not pass/fail: the machine may be shared (the load average is printed); with
``--repeat K`` the floor and the run alternate K times and the median ratio is printed with
its range. Reading every process's PSS every 0.1 s costs the run a few percent of its CPU:
``--memory-trials 1`` measures memory in the first trial only and times the others with a
light CPU poller (their peak memory is printed as nan).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale_data  # noqa: E402

#: Events per sample the comparison tools run on before their times are scaled to N (they
#: hold every event in memory; evidently's report does not finish on millions in minutes).
EVIDENTLY_EVENTS = 100_000
NAIVE_EVENTS = 250_000
#: Fine bins of the floor's binning pass: the EDF tests' resolution (PlanConfig.n_fine_bins).
FLOOR_BINS = 1000
#: How often the memory and the CPU time of the run's processes are sampled.
RSS_POLL_S = 0.1
#: How often only the CPU time is sampled, in a trial that does not measure memory: reading
#: every process's PSS (its smaps) costs the run 1-2 ms of CPU per process and poll, a few
#: percent of a 2-core run at RSS_POLL_S; the CPU times are cheap and cumulative.
CPU_POLL_S = 0.5


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


# ------------------------------------------------------------------------------- the floor


def floor(paths: list[str], columns: list[str], bins: int = FLOOR_BINS) -> tuple[float, float]:
    """Seconds for one pyarrow read of every file plus one searchsorted pass per column, and
    for the read alone (as numpy arrays)."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    for path in paths:
        table = pq.read_table(path, columns=columns)
        for c in columns:
            table[c].to_numpy()
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    edges: dict[str, np.ndarray] = {}
    for path in paths:
        table = pq.read_table(path, columns=columns)
        for c in columns:
            x = table[c].to_numpy()
            if c not in edges:  # quantile edges from the first file (the plan's role)
                edges[c] = np.quantile(x[:100_000], np.linspace(0, 1, bins + 1))
            np.searchsorted(edges[c], x)
    return time.perf_counter() - t0, read


# ------------------------------------------------------------------------------- the run


def _spread(ratios: list[float]) -> str:
    """' (median of K: a-b)' for repeated trials, '' for one."""
    if len(ratios) < 2:
        return ""
    return f" (median of {len(ratios)}: {min(ratios):.1f}-{max(ratios):.1f})"


def _child(spec: str) -> None:
    """In the child process: the run itself, stage times printed as JSON on the last line."""
    from validator.engine.worker_server import start_early

    args = json.loads(spec)
    start_early(network=bool(args.get("model")))  # as `validator run` does, before its imports
    from validator.pipeline import RunConfig, run_validation

    stamps: dict[str, list[float]] = {}
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter() - t0
        stamps.setdefault(stage.split()[0], [now, now])[1] = now

    extra: dict = {}
    if args.get("model"):
        from validator.stages.systematics import Systematics

        extra = {"model": args["model"], "blind": args["blind"],
                 "systematics": Systematics.parse(args["syst"]),
                 "multivariate": tuple(args.get("multivariate") or ())}
    outcome = run_validation(RunConfig(sim=args["sim"], data=args["data"], weight="weight",
                                       features=args["features"], db=None,
                                       jobs=args["jobs"], engine=args["engine"], **extra),
                             progress)
    total = time.perf_counter() - t0
    # a stage runs from the previous stage's last progress call to its own last one (the
    # first includes opening the files; "finish" is the global test, summary and store)
    stages, previous = {}, 0.0
    for name, (_, last) in stamps.items():
        stages[name] = [previous, last]
        previous = last
    stages["finish"] = [previous, total]
    print(json.dumps({"total": total, "stages": stages, "n_tests": outcome.n_tests,
                      "n_pairs": len(outcome.plan.pairs)}))
    from validator.cli import exit_now

    exit_now(0)  # as `validator run` ends


def run(sim: list[str], data: list[str], features: list[str], jobs: int | None,
        engine: str = "local", audit: dict | None = None, memory: bool = True) -> dict:
    """Time the run in a child process; peak memory and CPU of it and its workers.
    ``audit``: the audited configuration's options (``model``, ``syst``, ``blind``,
    ``multivariate``; :func:`audited_options`). ``memory=False``: the CPU time only (every
    :data:`CPU_POLL_S`), no PSS polling to slow the run down (``peak_total_mib`` is NaN)."""
    import psutil

    spec = json.dumps({"sim": sim, "data": data, "features": features, "jobs": jobs,
                       "engine": engine, **(audit or {})})
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", spec],
                             stdout=subprocess.PIPE, text=True)
    peak_total = 0
    cpu_seen: dict[int, float] = {}  # CPU seconds of each process of the run, last seen
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak_total
        proc = psutil.Process(child.pid)
        while not stop.is_set():
            try:
                procs = [proc, *proc.children(recursive=True)]
                # PSS: pages a forked worker shares with its parent are counted once
                if memory:
                    peak_total = max(peak_total, sum(p.memory_full_info().pss for p in procs))
            except psutil.Error:
                procs = []
            for p in procs:  # the workers too: those of the forkserver are not waited for
                try:
                    times = p.cpu_times()
                    cpu_seen[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
            stop.wait(RSS_POLL_S if memory else CPU_POLL_S)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    out = child.stdout.read() if child.stdout else ""
    if status != 0:
        raise RuntimeError(f"the run failed (status {status})")
    result = json.loads(out.strip().splitlines()[-1])
    # the run's own CPU from the kernel (with the workers it waited for), the others' as
    # last polled (a worker's last RSS_POLL_S can be missed: a lower bound)
    own = usage.ru_utime + usage.ru_stime
    polled = sum(cpu_seen.values())
    result.update(wall=wall, cpu=max(own, polled) / wall,
                  peak_rss_mib=usage.ru_maxrss / 1024,
                  peak_total_mib=peak_total / 2**20 if memory else float("nan"))
    return result


# ------------------------------------------------------------------------ the audited run

#: The audited configuration's blinded region: the network's most signal-like events.
BLIND = "output > 0.9"
#: The configurations a trial can run (module docstring).
CONFIGS = ("plain", "audited", "multivariate")
#: The learned tests of the ``multivariate`` configuration, at their default subsample.
MULTIVARIATE = ("c2st", "nplm")


def audit_network(sim: list[str], columns: list[str], cache: Path) -> Path:
    """The audited network over ``columns`` (made once per input count, kept in ``cache``):
    an N-64-64-1 tanh MLP with a sigmoid (``bench_model.make_mlp``: trained for a few seconds
    on standard-normal events with interactions), TorchScript, saved with its input names
    and a scaler (mean and standard deviation of each input in the simulation's first file)
    in ``validator.json``."""
    path = cache / f"net_{len(columns)}-64-64-1.pt"
    if path.exists():
        return path
    import pyarrow.parquet as pq
    import torch
    from bench_model import make_mlp

    table = pq.read_table(sim[0], columns=columns)
    scaler = {}
    for c in columns:
        x = table[c].to_numpy().astype(np.float64)
        scaler[c] = {"offset": float(x.mean()), "scale": float(x.std() or 1.0)}
    meta = {"inputs": list(columns), "scaler": scaler, "kind": "binary"}
    tmp = path.with_suffix(".tmp")
    torch.jit.save(torch.jit.script(make_mlp(len(columns))), str(tmp),
                   _extra_files={"validator.json": json.dumps(meta)})
    tmp.replace(path)
    return path


def audited_options(config: str, sim: list[str], columns: list[str], cache: Path
                    ) -> dict | None:
    """The run's extra options for ``config`` (None for the plain run)."""
    if config == "plain":
        return None
    syst = [f"{name}={up}:{down}" for name, (up, down) in scale_data.SYSTEMATICS.items()]
    return {"model": str(audit_network(sim, columns, cache)), "syst": syst, "blind": BLIND,
            "multivariate": list(MULTIVARIATE) if config == "multivariate" else []}


# ------------------------------------------------------------------------------- the others


def _subsample(paths: list[str], columns: list[str], n: int) -> np.ndarray:
    import pyarrow.parquet as pq

    parts, have = [], 0
    for path in paths:
        table = pq.read_table(path, columns=columns)
        parts.append(np.column_stack([table[c].to_numpy() for c in columns])[: n - have])
        have += len(parts[-1])
        if have >= n:
            break
    return np.concatenate(parts)


def evidently_time(sim: list[str], data: list[str], columns: list[str], n: int) -> float:
    """Seconds of evidently's DataDriftPreset on ``n`` events per sample (unweighted, 1D)."""
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref = pd.DataFrame(_subsample(sim, columns, n), columns=columns)
    cur = pd.DataFrame(_subsample(data, columns, n), columns=columns)
    t0 = time.perf_counter()
    Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    return time.perf_counter() - t0


def naive_time(sim: list[str], data: list[str], columns: list[str], n: int) -> float:
    """Seconds of scipy ks_2samp per feature + numpy.histogram2d per pair (both samples)."""
    from scipy.stats import ks_2samp

    xs, xd = _subsample(sim, columns, n), _subsample(data, columns, n)
    t0 = time.perf_counter()
    for k in range(len(columns)):
        ks_2samp(xs[:, k], xd[:, k])
    for i in range(len(columns)):
        for j in range(i + 1, len(columns)):
            for x in (xs, xd):
                np.histogram2d(x[:, i], x[:, j], bins=10)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1M,3M", help="events per sample (default 1M,3M)")
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=None, help="default: every core")
    parser.add_argument("--engine", default="local", choices=("local", "dask"))
    parser.add_argument("--growth", action="store_true",
                        help="also 10, 20, 30, 50 features at 1M")
    parser.add_argument("--no-compare", action="store_true", help="skip evidently and naive")
    parser.add_argument("--cache", type=Path, default=scale_data.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="append the rows as JSON lines here")
    parser.add_argument("--configs", default="plain",
                        help="comma-separated: plain, audited, multivariate (module docstring)")
    parser.add_argument("--floor-bins", type=int, default=FLOOR_BINS,
                        help=f"quantile bins of the floor's binning pass (default {FLOOR_BINS}; "
                             "10: the issue-32 floor)")
    parser.add_argument("--memory-trials", type=int, default=None,
                        help="poll the processes' PSS in the first K trials only (default: "
                             "every trial); the others are timed without it")
    parser.add_argument("--repeat", type=int, default=1,
                        help="floor and run alternated this many times per point; the median "
                             "ratio is printed with its range (a shared machine's speed "
                             "drifts within minutes)")
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return

    print(f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or ''} "
          f"python {platform.python_version()}, {date.today()}, load {_load()}", flush=True)
    rows = []
    points = [(_parse_size(s), args.features, args.features) for s in args.sizes.split(",")]
    if args.growth:
        points += [(1_000_000, 50, k) for k in (10, 20, 30, 50)]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown[0]} (one of {', '.join(CONFIGS)})")
    for index, (n, n_files_features, n_features) in enumerate(points):
        sim, data = scale_data.samples(n, n_files_features, args.cache)
        columns = scale_data.feature_names(n_features)
        # the learned tests' cost does not grow with N: timed at the first size only
        here = [c for c in configs if c != "multivariate" or index == 0]
        options = {c: audited_options(c, sim, columns, args.cache) for c in here}
        load_before = _load()
        # per trial: the floor, then every configuration (their ratios share the machine)
        trials: list[tuple[float, float, dict[str, dict]]] = []
        for trial in range(max(args.repeat, 1)):
            fl, read = floor(sim + data, columns, args.floor_bins)
            memory = args.memory_trials is None or trial < args.memory_trials
            trials.append((fl, read, {c: run(sim, data, columns, args.jobs, args.engine,
                                             options[c], memory) for c in here}))
        for config in here:
            rows.append(_report(n, n_features, config, trials, load_before, args.floor_bins))
            if config == "plain" and not args.no_compare and n_features == args.features \
                    and n_files_features == args.features:
                m = min(n, EVIDENTLY_EVENTS)
                rows[-1]["evidently_s"] = evidently_time(sim, data, columns, m) * n / m
                m = min(n, NAIVE_EVENTS)
                rows[-1]["naive_s"] = naive_time(sim, data, columns, m) * n / m
                print(f"  evidently {rows[-1]['evidently_s']:.1f} s "
                      f"({1e3 * rows[-1]['evidently_s'] / n_features:.0f} ms/test, 1D only), "
                      f"naive {rows[-1]['naive_s']:.1f} s", flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")


def _report(n: int, n_features: int, config: str,
            trials: list[tuple[float, float, dict[str, dict]]], load_before: str,
            floor_bins: int) -> dict:
    """One configuration's row (every trial, the median ratio's trial standing for the
    point), printed."""
    ratios = [t[2][config]["wall"] / t[0] for t in trials]
    # the trials timed without memory polling, where there are any, give the ratio; the trial
    # of their median ratio stands for the point (its stages, CPU)
    timed = [k for k, t in enumerate(trials) if math.isnan(t[2][config]["peak_total_mib"])] \
        or list(range(len(trials)))
    timed_ratios = [ratios[k] for k in timed]
    fl, read, results = trials[timed[int(np.argsort(timed_ratios)[(len(timed) - 1) // 2])]]
    res = results[config]
    row = {"n": n, "features": n_features, "config": config, "floor_bins": floor_bins,
           "pairs": res["n_pairs"], "tests": res["n_tests"],
           "run_s": res["wall"], "floor_s": fl, "read_s": read, "ratio": res["wall"] / fl,
           "ratios": ratios, "runs_s": [t[2][config]["wall"] for t in trials],
           "floors_s": [t[0] for t in trials],
           "stages": res["stages"], "cpu": res["cpu"], "peak_rss_mib": res["peak_rss_mib"],
           "peak_total_mib": max((m for m in (t[2][config]["peak_total_mib"] for t in trials)
                                  if not math.isnan(m)), default=float("nan")),
           "peaks_total_mib": [t[2][config]["peak_total_mib"] for t in trials],
           "load": f"{load_before} -> {_load()}"}
    stages = ", ".join(f"{k} {v[1] - v[0]:.1f}" for k, v in res["stages"].items())
    unpolled = " of the trials without memory polling" if len(timed) < len(trials) else ""
    every = "; ".join(f"{t[2][config]['wall']:.1f}/{t[0]:.1f}" for t in trials)
    print(f"N={n:,} F={n_features} {config}: run {res['wall']:.1f} s ({res['n_tests']:,} "
          f"tests, {1e3 * res['wall'] / res['n_tests']:.1f} ms/test), floor {fl:.1f} s "
          f"({floor_bins} bins; read {read:.1f} s), ratio {row['ratio']:.1f}"
          f"{_spread(timed_ratios)}{unpolled}; "
          f"trials run/floor {every}; stages: {stages}; CPU {res['cpu']:.2f} cores; peak RSS "
          f"{res['peak_rss_mib']:.0f} MiB (largest process), {row['peak_total_mib']:.0f} MiB "
          f"(all, PSS, largest of the trials); load {row['load']}", flush=True)
    return row


if __name__ == "__main__":
    main()
