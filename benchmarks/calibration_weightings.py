"""Calibration of the whole chain under harsh simulation weightings: a table (issues 14, 31).

Null replicas of the scenarios of ``tests/null_weightings.py`` go through ``run_validation``
(no database, one process per replica): by default issue 31's four (``spiky``: 40 % exact zeros
+ Poisson counts, spikes, a cap, a sentinel; ``importance_tail``: importance weights rising
x1000 into a tail the simulation undersamples; ``nlo``: ±1 weights, negative fraction 10-45 %
along ht; ``small_sim``: Kish size 0.3 x data) and issue 14's ``importance``. Every test of such
a run is a null test.

Per scenario and (kind, method): the number of reliable p-values, the false-positive rates at
5 % and 1 % with their exact binomial (Clopper-Pearson) 95 % interval, widened by the design
effect (tests of one run are correlated; the variance of the pooled rate is measured by a
bootstrap over whole replicas, ``null_weightings.fpr_band``, and the interval is that of
k/deff successes in n/deff trials). A cell is flagged ``*`` when the nominal rate lies outside
its 95 % interval and ``!`` outside the 99.9 % one. Per scenario, the run-level rows: the
fraction of runs with ``p_global_min`` < 0.05 and with ``p_global_nfail`` < 0.05 (the run
summary's ``runs.p_global_min`` / ``runs.p_global_nfail``), runs being independent, with plain
Clopper-Pearson intervals; ``p_uniformity`` and ``p_binomial`` (indicators that assume
independent tests) beside them.

Every replica's result (every test's p-value, law, reliability, a few details, and the run-level
p-values) is appended as one JSON line to ``--out`` as soon as it is done, so the run can be
stopped and resumed (replicas already in the file are skipped), time-boxed (``--time-limit``:
no replica is started after it), and the table rebuilt without running anything
(``--table-only``). Measured on the shared 2-core machine (niced, 2 workers), seconds per
replica at 14k / 100k data events alone: importance_tail 1.2 / 4.7, nlo 0.5 / 2.5, spiky
0.4 / 1.5, small_sim and importance 0.3-0.4 / 1.5; the default run (5 scenarios x 200 runs)
took 2,056 s with 2 niced workers at load 7-11 (session 8), about 12 minutes on two free cores.

Run (issue 31's table, 100 replicas at each of 14k and 100k data events per scenario; the
importance_tail Kish size is then 12k-13k and 90k-95k):

    nice -n 10 .venv/bin/python benchmarks/calibration_weightings.py \\
        --out out/calibration_weightings.jsonl > out/calibration_weightings.log 2>&1 &

After a change to the chain (e.g. the run-level test), rerun into a fresh file (or ``--fresh``):

    nice -n 10 .venv/bin/python benchmarks/calibration_weightings.py --fresh \\
        --out out/calibration_weightings_new.jsonl --markdown

Rebuild the table from a file: ``... --table-only --out FILE [--markdown]``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from null_weightings import SCENARIOS, ReplicaResult, fpr_band, run_replica  # noqa: E402

DEFAULT_SCENARIOS = ("spiky", "importance_tail", "nlo", "small_sim", "importance")
DEFAULT_N_DATA = (14_000, 100_000)
ALPHAS = (0.05, 0.01)
LEVEL, LEVEL_STRICT = 0.95, 0.999


def clopper_pearson(k: float, n: float, level: float) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial rate from k of n (Biometrika 26 (1934) 404):
    the (1 - level)/2 and (1 + level)/2 quantiles of Beta(k, n - k + 1) and Beta(k + 1, n - k).
    k and n may be fractional (successes and trials divided by a design effect)."""
    if n <= 0:
        return math.nan, math.nan
    a = 0.5 * (1.0 - level)
    lo = float(stats.beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(stats.beta.ppf(1.0 - a, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def cell(k: float, n: float, alpha: float, deff: float = 1.0) -> dict:
    """Rate k/n, its CP intervals with the design effect, and its flag against alpha."""
    ke, ne = k / deff, n / deff
    lo, hi = clopper_pearson(ke, ne, LEVEL)
    lo3, hi3 = clopper_pearson(ke, ne, LEVEL_STRICT)
    flag = "!" if not lo3 <= alpha <= hi3 else "*" if not lo <= alpha <= hi else ""
    return {"k": k, "n": n, "rate": k / n if n else math.nan, "lo": lo, "hi": hi,
            "lo999": lo3, "hi999": hi3, "deff": deff, "flag": flag}


def fmt(c: dict) -> str:
    return f"{c['rate']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]{c['flag']}"


# ------------------------------------------------------------------ running


def load(path: Path) -> list[ReplicaResult]:
    results = []
    if path.exists():
        with path.open() as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        results.append(ReplicaResult.from_json(json.loads(line)))
                    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                        pass  # a line cut by an interrupted run
    return results


def git_head() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "validator"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(tasks: list[tuple[str, int, int]], out: Path, workers: int, time_limit: float) -> None:
    """Run the tasks, appending each result to ``out`` when done; start none after
    ``time_limit`` seconds."""
    t0 = time.perf_counter()
    stamp = git_head()
    out.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    with out.open("a") as fh:
        def write(res: ReplicaResult) -> None:
            nonlocal done
            fh.write(json.dumps({**res.to_json(), "code": stamp}) + "\n")
            fh.flush()
            done += 1
            if done % 20 == 0 or done == len(tasks):
                el = time.perf_counter() - t0
                print(f"[{el:6.0f} s] {done}/{len(tasks)} replicas done "
                      f"(last {res.scenario} {res.n_data} #{res.replica}: {res.seconds:.1f} s)",
                      flush=True)

        queue = list(tasks)
        if workers <= 1:
            while queue and time.perf_counter() - t0 < time_limit:
                write(run_replica(queue.pop(0)))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                pending = set()
                while queue or pending:
                    while queue and len(pending) < 2 * workers \
                            and time.perf_counter() - t0 < time_limit:
                        pending.add(pool.submit(run_replica, queue.pop(0)))
                    if not pending:
                        break
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        write(f.result())
                    if time.perf_counter() - t0 >= time_limit:
                        queue.clear()
    left = len(tasks) - done
    print(f"{done} replicas in {time.perf_counter() - t0:.0f} s"
          + (f"; {left} not started (time limit {time_limit:g} s): rerun to resume" if left
             else ""), flush=True)


# ------------------------------------------------------------------ the table


def table(results: list[ReplicaResult], scenarios: list[str], markdown: bool) -> str:
    lines: list[str] = []
    sizes = sorted({r.n_data for r in results})
    if markdown:
        lines += ["| scenario | kind | method | p-values (runs) | law: asymptotic / toys | deff | "
                  "FPR@5% [95% CP] | FPR@1% [95% CP] | min p | FPR@5% by size |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    else:
        head = (f"{'scenario':<16}{'kind':<5}{'method':<17}{'n':>6}{'runs':>5} "
                f"{'asym/toys':>10} {'deff':>5} {'FPR@5% [95% CP]':>24} "
                f"{'FPR@1% [95% CP]':>24} {'min p':>9}  per size @5%")
        lines += [head, "-" * len(head)]
    for scenario in scenarios:
        mine = [r for r in results if r.scenario == scenario]
        if not mine:
            continue
        keys = list(dict.fromkeys((row[0], row[1]) for r in mine for row in r.rows))
        for kind, method in keys:
            strata = [[r.pvalues(kind, method) for r in mine if r.n_data == n] for n in sizes]
            p = np.concatenate([g for s in strata for g in s]) if mine else np.empty(0)
            laws = Counter(row[6] for r in mine for row in r.rows
                           if (row[0], row[1]) == (kind, method) and row[5]
                           and np.isfinite(row[4]))
            law = f"{laws.get('asymptotic', 0)}/{laws.get('toys', 0)}"
            if not p.size:
                lines.append(f"| {scenario} | {kind} | {method} | 0 | | | no reliable result | | |"
                             if markdown else
                             f"{scenario:<16}{kind:<5}{method:<17}{0:>6}   (no reliable result)")
                continue
            cells = []
            deffs = []
            for alpha in ALPHAS:
                band = fpr_band(strata, alpha)
                deffs.append(band.deff)
                cells.append(cell(band.n_fail, band.n, alpha, band.deff))
            deff = f"{deffs[0]:.1f}/{deffs[1]:.1f}"
            per_size = " ".join(f"{n // 1000}k {np.mean(np.concatenate(s) < 0.05):.3f}"
                                for n, s in zip(sizes, strata, strict=True)
                                if s and np.concatenate(s).size)
            if markdown:
                lines.append(f"| {scenario} | {kind} | {method} | {p.size} ({len(mine)}) | {law} "
                             f"| {deff} | {fmt(cells[0])} | {fmt(cells[1])} | {p.min():.1e} "
                             f"| {per_size} |")
            else:
                lines.append(f"{scenario:<16}{kind:<5}{method:<17}{p.size:>6}{len(mine):>5} "
                             f"{law:>10} {deff:>5} {fmt(cells[0]):>24} {fmt(cells[1]):>24} "
                             f"{p.min():9.1e}  {per_size}")
        n_runs = len(mine)
        for name, values in (("p_global_min", [r.p_global_min for r in mine]),
                             ("p_global_nfail", [r.p_global_nfail for r in mine]),
                             ("p_uniformity", [r.p_uniformity for r in mine]),
                             ("p_binomial", [r.p_binomial for r in mine])):
            v = np.asarray(values, dtype=float)
            v = v[np.isfinite(v)]
            if not v.size:
                continue
            c5 = cell(int(np.sum(v < 0.05)), v.size, 0.05)
            c1 = cell(int(np.sum(v < 0.01)), v.size, 0.01)
            if name.startswith("p_global"):
                by = " ".join(f"{n // 1000}k {np.mean([x < 0.05 for x, r in zip(values, mine, strict=True) if r.n_data == n]):.3f}"  # noqa: E501
                              for n in sizes)
            else:
                by = "(indicator: assumes independent tests)"
                c5["flag"] = c1["flag"] = ""
            if markdown:
                lines.append(f"| {scenario} | run | {name} | {v.size} runs | | | "
                             f"{fmt(c5)} | {fmt(c1)} | {v.min():.1e} | {by} |")
            else:
                lines.append(f"{scenario:<16}{'run':<5}{name:<17}{v.size:>6}{n_runs:>5} "
                             f"{'':>10} {'':>5} {fmt(c5):>24} {fmt(c1):>24} {v.min():9.1e}  {by}")
        if not markdown:
            secs = np.mean([r.seconds for r in mine])
            neff = {n: np.mean([r.n_eff_sim for r in mine if r.n_data == n]) for n in sizes}
            lines.append(f"{'':<16}{n_runs} runs, {secs:.2f} s each on average; Kish size of "
                         "the simulation " + ", ".join(f"{v:,.0f} at {n:,} data events"
                                                     for n, v in neff.items()))
            lines.append("")
    if not markdown:
        lines.append("FPR [95 % Clopper-Pearson interval, design-effect widened]; * nominal "
                     "rate outside the 95 % interval, ! outside the 99.9 % one")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=100,
                        help="replicas per scenario and size (100)")
    parser.add_argument("--first-replica", type=int, default=0,
                        help="index of the first replica (0); replicas are seeded by index")
    parser.add_argument("--n-data", type=int, nargs="+", default=list(DEFAULT_N_DATA),
                        help="data events per replica; the sizes are pooled (14000 100000)")
    parser.add_argument("--scenarios", nargs="+", default=list(DEFAULT_SCENARIOS),
                        choices=SCENARIOS, metavar="NAME",
                        help=f"of {', '.join(SCENARIOS)} ({' '.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes (2)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "calibration_weightings.jsonl",
                        help="per-replica results, one JSON line each; replicas already there "
                             "are skipped (out/calibration_weightings.jsonl)")
    parser.add_argument("--fresh", action="store_true", help="empty --out first")
    parser.add_argument("--time-limit", type=float, default=3000.0,
                        help="seconds after which no replica is started (3000)")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: the table of the replicas in --out")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()

    if args.fresh and args.out.exists() and not args.table_only:
        args.out.unlink()
    if not args.table_only:
        have = {(r.scenario, r.n_data, r.replica) for r in load(args.out)}
        tasks = [(s, n, r) for r in range(args.first_replica, args.first_replica + args.replicas)
                 for s in args.scenarios for n in args.n_data if (s, n, r) not in have]
        # replica-major order: a run stopped by the time limit holds whole replica indices
        print(f"{len(tasks)} replicas to run ({len(have)} already in {args.out}), "
              f"{args.workers} worker(s), time limit {args.time_limit:g} s", flush=True)
        run(tasks, args.out, args.workers, args.time_limit)
    results = [r for r in load(args.out) if r.scenario in args.scenarios
               and r.n_data in args.n_data]
    print(f"\n{len(results)} replicas from {args.out} (n_data {args.n_data})\n")
    print(table(results, args.scenarios, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
