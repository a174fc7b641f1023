"""Speed of the binned KS/AD tests' data toys: numpy's ``Generator.multinomial`` against the
tables of :class:`validator.stats.multinomial_toys.MultinomialToys` (the same law exactly).

For each ``--n`` (data events), a law of ``--bins`` bins (Dirichlet(50) probabilities: the
near-equal contents of the fine quantile bins, ±14%) is drawn in batches of
``_TOY_CHUNK / bins`` toys (100 at 1,000 bins: the batches of
:func:`validator.stats.edf._toy_results`), alternately by numpy and by the tables,
``--repeat`` times each for at least ``--seconds`` a method; the table is the median (and
the smallest) µs per toy of each, and the tables' one-off build (once per test's model).
``--shortfall`` also times the tables for each given ``c`` of ``λ = n − c√n``
(:data:`validator.stats.multinomial_toys.POISSON_SHORTFALL`).

    python benchmarks/bench_multinomial_toys.py --n 1e5,1e6,1e7
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from validator.stats.edf import _TOY_CHUNK
from validator.stats.multinomial_toys import MultinomialToys, tables_pay, warm


def _per_toy(draw, batch: int, seconds: float) -> float:
    """µs per toy of ``draw(batch)`` repeated for at least ``seconds``."""
    start, toys = time.perf_counter(), 0
    while True:
        draw(batch)
        toys += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / toys * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1e5,1e6,1e7", help="data events, comma-separated")
    parser.add_argument("--bins", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--shortfall", default="", help="values of c to time, comma-separated")
    args = parser.parse_args()
    warm()
    gen = np.random.default_rng(2026)
    p = gen.dirichlet(np.full(args.bins, 50.0))
    batch = max(1, _TOY_CHUNK // args.bins)
    print(f"{args.bins} bins, batches of {batch} toys, {args.repeat} x {args.seconds} s each")
    print("| n | numpy µs/toy: median (min) | tables µs/toy: median (min) | speed-up | "
          "tables' build (ms) | tables used |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in (int(float(v)) for v in args.n.split(",")):
        tables = MultinomialToys(n, p)
        start = time.perf_counter()
        tables.draw(gen, 1)
        build = (time.perf_counter() - start) * 1e3
        old, new = [], []
        for _ in range(args.repeat):
            old.append(_per_toy(lambda k: gen.multinomial(n, p, size=k).astype(float),  # noqa: B023
                                batch, args.seconds))
            new.append(_per_toy(lambda k: tables.draw(gen, k), batch, args.seconds))  # noqa: B023
        mo, mn = float(np.median(old)), float(np.median(new))
        print(f"| {n:.0e} | {mo:.1f} ({min(old):.1f}) | {mn:.1f} ({min(new):.1f}) | "
              f"{mo / mn:.1f} | {build:.1f} | {tables_pay(n, p)} |")
        for c in (float(v) for v in args.shortfall.split(",") if v):
            other = MultinomialToys(n, p, c=c)
            other.draw(gen, 1)
            times = [_per_toy(lambda k: other.draw(gen, k), batch, args.seconds)  # noqa: B023
                     for _ in range(args.repeat)]
            print(f"|   c = {c:g} | | {np.median(times):.1f} ({min(times):.1f}) | | | |")


if __name__ == "__main__":
    main()
