"""Speed of the model audit on the sample network and the whole sample (sim + data).

Prints events per second of (a) evaluating the network, (b) first-order Taylor coefficients,
(c) second-order coefficients (all pairs; ``taylor_sums(order=2)`` gives the first order too),
for ``sample_data/classifier.pt`` (TorchScript, autograd) and ``sample_data/classifier.onnx``
(onnxruntime to evaluate, onnx2torch to differentiate), with torch on ``--threads`` threads
(a comma-separated list times each; the default is the 2 cores of the reference machine).
The sums are taken as ``validator run`` takes them: the simulation with its weights, the data
unweighted. Then the total of first + second order over the whole sample, and the second
order on a ``--subsample`` of events (what a run does: ``second_order_mask``).

Run with ``python benchmarks/bench_model.py [--threads 2,1] [--subsample 50000]``. Figures, not
pass/fail: machines are noisy, and the 1-minute load average is printed with them. On a machine
whose cores are busy with other work, torch's threads wait for each other: there one thread can
be faster than two (measured on the shared 2-core machine, load average 4: second order 2.5 times
faster on one thread). Each measurement follows a warm-up call on 1 000 events.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np
import polars as pl
from sample import SAMPLE_DIR, sample_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="2",
                        help="torch threads, or a comma-separated list to time each (default 2)")
    parser.add_argument("--subsample", type=int, default=50_000,
                        help="events of the second-order subsample (default 50000)")
    parser.add_argument("--formats", default="pt,onnx", help="model files to time")
    args = parser.parse_args()

    import torch

    from validator.model import load_model, taylor_sums

    inputs = sample_generator().MODEL_INPUTS
    sim = pl.read_parquet(SAMPLE_DIR / "sim.parquet")
    data = pl.read_parquet(SAMPLE_DIR / "data.parquet")
    xs = sim.select(inputs).to_numpy().astype(np.float64)
    ws = sim["weight"].to_numpy()
    xd = data.select(inputs).to_numpy().astype(np.float64)
    n = len(xs) + len(xd)
    sigma = xs.std(axis=0)
    rng = np.random.default_rng(1)
    sub_s = rng.random(len(xs)) < args.subsample / n
    sub_d = rng.random(len(xd)) < args.subsample / n
    n_sub = int(sub_s.sum() + sub_d.sum())
    print(f"{n} events ({len(xs)} sim + {len(xd)} data), {len(inputs)} inputs, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")

    samples = ((xs, ws, sub_s), (xd, None, sub_d))  # data unweighted, as in a run
    for threads, fmt in itertools.product(args.threads.split(","), args.formats.split(",")):
        torch.set_num_threads(int(threads))
        model = load_model(SAMPLE_DIR / f"classifier.{fmt}")
        steps = {
            "evaluate": lambda x, w, mask, m=model: m.evaluate(x),
            "first": lambda x, w, mask, m=model: taylor_sums(m, x, w, sigma=sigma, order=1),
            "second": lambda x, w, mask, m=model: taylor_sums(m, x, w, sigma=sigma, order=2),
            "subsample": lambda x, w, mask, m=model: taylor_sums(
                m, x, w, sigma=sigma, order=2, second_order_mask=mask),
        }
        seconds = {}
        for name, step in steps.items():
            step(xs[:1000], ws[:1000], sub_s[:1000])  # warm-up
            start = time.perf_counter()
            for x, w, mask in samples:
                step(x, w, mask)
            seconds[name] = time.perf_counter() - start
        t_eval, t_first, t_second = seconds["evaluate"], seconds["first"], seconds["second"]
        print(f"\n{model.path.name} ({model.format}, derivatives: {model.derivative_method}), "
              f"torch on {torch.get_num_threads()} threads, load average "
              f"{os.getloadavg()[0]:.1f}")
        print(f"  (a) evaluation              {t_eval:7.2f} s  {n / t_eval:12,.0f} events/s")
        print(f"  (b) first order             {t_first:7.2f} s  {n / t_first:12,.0f} events/s")
        print(f"  (c) second order, all pairs {t_second:7.2f} s  {n / t_second:12,.0f} "
              "events/s (first order included)")
        print(f"  first + second order over the whole sample: {t_first + t_second:.1f} s")
        print(f"  second order on a {n_sub}-event subsample, first order on the rest "
              f"(as a run does): {seconds['subsample']:.1f} s")

if __name__ == "__main__":
    main()
