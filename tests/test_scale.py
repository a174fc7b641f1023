"""The chunked, multi-job and Dask fills store what one in-memory pass over the events gives.

The samples are split over several parquet files of several row groups each (the partitions a
job or a Dask worker fills alone), with signed weights, NaN and sentinel values and a category
column. One job, two jobs and a two-worker Dask cluster add the partitions' accumulators along
the same tree, so their stored numbers are identical; a single ``accumulate`` over all events
at once agrees with them to rounding, and so do the tests run on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from validator.engine.pool import OrderedTree, merge_categories
from validator.inputs.sources import PARTITION_CHUNKS, open_sample, sample_partitions
from validator.inputs.transform import INCLUSIVE
from validator.pipeline import RunConfig, run_validation
from validator.results.store import query
from validator.stages.compare import CompareOptions, run_tests
from validator.stages.fill import Accumulator, Layout, accumulate, event_groups

N_SIM, N_DATA = 18_000, 9_000
SIM_FILES, DATA_FILES = 3, 2
ROW_GROUP = 2_000  # rows per parquet row group: several partitions per file
CHUNK = 2_500  # rows per chunk: chunks straddle row groups
SEED = 99
FEATURES = ["a", "b", "c", "d", "e", "nj", "m"]


def _frame(rng: np.random.Generator, n: int, weighted: bool) -> pl.DataFrame:
    a = rng.normal(0.0, 1.0, n)
    cols = {
        "a": a,
        "b": 0.6 * a + rng.normal(0.0, 0.8, n),
        "c": rng.exponential(2.0, n),
        "d": rng.gamma(2.0, 1.0, n) - 0.3 * a,
        "e": rng.uniform(-1.0, 1.0, n),
        "nj": rng.poisson(2.0, n).astype(np.float64),
        "m": rng.normal(91.0, 3.0, n),
    }
    cols["c"][rng.random(n) < 0.02] = np.nan
    cols["m"][rng.random(n) < 0.03] = -999.0
    frame = {**cols, "ch": np.where(rng.random(n) < 0.4, "ee", "mm")}
    if weighted:
        w = np.where(rng.random(n) < 0.5, 0.5, 1.5)
        w[rng.random(n) < 0.05] *= -1.0
        frame["weight"] = w * N_DATA / w.sum()
    return pl.DataFrame(frame)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(SEED)
    paths: dict[str, list[str]] = {"sim": [], "data": []}
    for name, n, n_files in (("sim", N_SIM, SIM_FILES), ("data", N_DATA, DATA_FILES)):
        frame = _frame(rng, n, weighted=name == "sim")
        for k, part in enumerate(np.array_split(np.arange(n), n_files)):
            path = tmp / f"{name}_{k}.parquet"
            pq.write_table(frame[int(part[0]):int(part[-1]) + 1].to_arrow(), path,
                           row_group_size=ROW_GROUP)
            paths[name].append(str(path))
    return paths["sim"], paths["data"]


def _config(sim: list[str], data: list[str], db: Path | None, **kwargs) -> RunConfig:
    return RunConfig(sim=sim, data=data, weight="weight", category="ch", db=db,
                     features=FEATURES, seed=SEED, compare=CompareOptions(dependence_toys=50),
                     **kwargs)


def _stored(db: Path) -> tuple:
    tests = query(db, "SELECT category, method, feature_x, feature_y, statistic, pvalue "
                      "FROM tests ORDER BY test_id")
    hists = query(db, "SELECT category, binning, feature_x, feature_y, sim_sumw, sim_sumw2, "
                      "data_counts FROM histograms ORDER BY category, binning, feature_x, "
                      "feature_y")
    return tests, hists


def _in_memory(paths: list[str], name: str, layout: Layout, seed: int,
               ) -> dict[str, Accumulator]:
    """All events of a sample in one array, accumulated in one call per category."""
    frames = [pl.read_parquet(p).with_columns(pl.lit(float(k)).alias("_file"),
                                              pl.int_range(pl.len()).cast(pl.Float64)
                                              .alias("_entry"))
              for k, p in enumerate(paths)]
    frame = pl.concat(frames)
    x = frame.select(layout.plan.feature_names).to_numpy().astype(np.float64)
    w = frame["weight"].to_numpy()[None] if "weight" in frame.columns else np.ones((1, len(x)))
    groups = event_groups(frame["_entry"].to_numpy(), frame["_file"].to_numpy(), seed)
    cats = frame["ch"].to_numpy()
    out = {c: accumulate(x[cats == c], w[:, cats == c], layout, groups[cats == c])
           for c in sorted(set(cats))}
    return {INCLUSIVE: accumulate(x, w, layout, groups), **out}


def test_partitions_follow_row_groups(split):
    sim, _ = split
    sample = open_sample("sim", sim, "weight")
    parts = sample_partitions(sample, CHUNK)
    assert [p.file for p in parts] == sorted(p.file for p in parts)
    assert sum(p.n_rows for p in parts) == N_SIM
    # every partition but a file's last holds at least PARTITION_CHUNKS chunks, cut at row groups
    least = PARTITION_CHUNKS * CHUNK
    assert all(p.n_rows >= least or p is parts[-1] or parts[parts.index(p) + 1].file != p.file
               for p in parts)
    assert all(p.start % ROW_GROUP == 0 for p in parts)


def test_ordered_tree_adds_like_a_fixed_tree():
    for n in range(1, 12):
        tree: OrderedTree[str] = OrderedTree(lambda a, b: f"({a}+{b})")
        for i in range(n):
            tree.push(str(i))
        shape = tree.result()
        assert shape is not None and all(str(i) in shape for i in range(n))
        # the same items in the same order: the same tree
        again: OrderedTree[str] = OrderedTree(lambda a, b: f"({a}+{b})")
        for i in range(n):
            again.push(str(i))
        assert again.result() == shape
    assert OrderedTree(merge_categories).result() is None


@pytest.mark.slow
def test_jobs_and_dask_store_what_one_in_memory_pass_gives(split, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import validator.engine.pool

    # these samples are small: make the scan and the fill use worker processes all the same
    monkeypatch.setattr(validator.engine.pool, "MIN_PARALLEL_ROWS", 0)
    sim, data = split
    runs = {
        "one job": dict(jobs=1, chunk_rows=CHUNK),
        "two jobs": dict(jobs=2, chunk_rows=CHUNK),
        "dask": dict(jobs=2, chunk_rows=CHUNK, engine="dask"),
        "small chunks": dict(jobs=2, chunk_rows=777),
    }
    stored, outcomes = {}, {}
    for label, options in runs.items():
        db = tmp_path / f"{label.replace(' ', '_')}.duckdb"
        outcomes[label] = run_validation(_config(sim, data, db, **options))
        stored[label] = _stored(db)
    base_tests, base_hists = stored["one job"]
    assert len(base_tests) > 100
    assert len(set(base_tests["category"])) == 3
    # the same partitions added along the same tree: identical floats, identical p-values
    for label in ("two jobs", "dask"):
        tests, hists = stored[label]
        assert tests.equals(base_tests), label
        for col in ("sim_sumw", "sim_sumw2", "data_counts"):
            for a, b in zip(hists[col], base_hists[col], strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{label} {col}")
    # other chunks: the same numbers to rounding
    tests, hists = stored["small chunks"]
    np.testing.assert_allclose(tests["statistic"], base_tests["statistic"], rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(tests["pvalue"], base_tests["pvalue"], rtol=1e-7, atol=1e-12)

    # one in-memory pass over every event, tested the same way
    outcome = outcomes["one job"]
    layout = outcome.layout
    sims = _in_memory(sim, "sim", layout, SEED)
    datas = _in_memory(data, "data", layout, SEED + 1)
    for cat in sims:
        for field in ("h1_count", "h2_count", "n_nonfinite", "n_sentinel"):
            np.testing.assert_array_equal(getattr(sims[cat], field),
                                          getattr(outcome.sim[cat], field), err_msg=field)
        np.testing.assert_array_equal(datas[cat].h2_sumw, outcome.data[cat].h2_sumw)
        for field in ("h1_sumw", "h2_sumw", "h2_sumw2", "fine_sumw", "moments", "group_h2"):
            np.testing.assert_allclose(getattr(sims[cat], field),
                                       getattr(outcome.sim[cat], field), rtol=1e-10,
                                       atol=1e-9, err_msg=field)
    records = run_tests(layout, sims, datas, outcome.config.compare, SEED,
                        alpha=outcome.config.alpha)
    ran = [(r, s) for r, s in zip(records, outcome.records, strict=True)
           if r.result is not None]
    assert len(ran) > 100
    for mine, theirs in ran:
        assert (mine.category, mine.method, mine.feature_x) == \
            (theirs.category, theirs.method, theirs.feature_x)
        assert mine.result.statistic == pytest.approx(theirs.result.statistic, rel=1e-8,
                                                      abs=1e-12)
        assert mine.pvalue == pytest.approx(theirs.pvalue, rel=1e-6, abs=1e-12)


@pytest.mark.slow
def test_workers_start_clean_and_skip_a_script_without_a_main_guard(tmp_path):
    # A script with no `if __name__ == "__main__"` guard, that used polars before the run
    # (whose thread pool does not survive a fork): the workers must neither re-run it nor hang.
    import subprocess
    import sys

    script = tmp_path / "plain_script.py"
    script.write_text(f"""
import polars as pl, numpy as np
import validator.engine.pool
from validator.pipeline import RunConfig, run_validation
validator.engine.pool.MIN_PARALLEL_ROWS = 0
rng = np.random.default_rng(1)
for name in ("sim", "data"):
    pl.DataFrame({{"a": rng.normal(size=20_000), "b": rng.normal(size=20_000)}}).with_columns(
        (pl.col("a") * pl.col("b")).alias("c")).write_parquet(r"{tmp_path}/" + name + ".parquet")
print("script body ran", flush=True)
out = run_validation(RunConfig(sim=[r"{tmp_path}/sim.parquet"], data=[r"{tmp_path}/data.parquet"],
                               sim_selection="a > -3", db=None, jobs=2, chunk_rows=5_000))
print("tests", out.n_tests, flush=True)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("script body ran") == 1
    assert "tests " in done.stdout


def test_one_worker_pool_serves_every_pass_in_order_and_raises_a_workers_error():
    import math

    from validator.engine.pool import WorkerPool, clean_map

    with WorkerPool(2) as pool:
        pool.start()
        args = [(k,) for k in range(12)]
        assert list(pool.map(math.factorial, args)) == [math.factorial(k) for k in range(12)]
        # a second pass on the same workers
        assert list(clean_map(math.sqrt, [(4.0,), (9.0,)], 2, pool)) == [2.0, 3.0]
        with pytest.raises(ValueError):
            list(pool.map(math.factorial, [(3,), (-1,), (4,)]))
    pool.close()  # closing twice is harmless
    # one job: in this process, in order
    assert list(WorkerPool(1).map(math.factorial, [(5,), (3,)])) == [120, 6]


def test_fork_map_runs_meanwhile_once_in_this_process_while_the_workers_run():
    import os

    from validator.engine.pool import Later, fork_map

    calls: list[int] = []
    later = Later(lambda: calls.append(os.getpid()) or len(calls))
    results = list(fork_map(lambda i: (i * i, os.getpid()), 20, 2, 3, meanwhile=later))
    assert [r for r, _ in results] == [i * i for i in range(20)]
    assert os.getpid() not in {pid for _, pid in results}  # tested in the workers
    assert calls == [os.getpid()] and later.result() == 1 and calls == [os.getpid()]
    # an error in a worker is raised here
    def fails_at_five(i: int) -> int:
        if i == 5:
            raise ArithmeticError("item five")
        return i

    with pytest.raises(ArithmeticError, match="item five"):
        list(fork_map(fails_at_five, 40, 2, 4))
    # without workers it runs before the items
    order: list[str] = []
    list(fork_map(lambda i: order.append("item"), 3, 1, meanwhile=lambda: order.append("m")))
    assert order == ["m", "item", "item", "item"]


def test_exit_now_flushes_runs_the_exit_handlers_and_keeps_the_code(tmp_path):
    import subprocess
    import sys

    marker = tmp_path / "handler_ran"
    code = f"""
import atexit, sys
from validator.cli import exit_now
atexit.register(lambda: open(r"{marker}", "w").write("yes"))
print("unflushed output", end="")
sys.stderr.write("and an error line")
exit_now(3)
print("never")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3
    assert done.stdout == "unflushed output"
    assert done.stderr == "and an error line"
    assert marker.read_text() == "yes"


def test_guided_batches_cover_every_item_once_and_shrink_to_one():
    from validator.engine.pool import guided_batches

    for n, jobs, largest in ((465, 2, 14), (7, 2, 3), (1, 4, 10), (1000, 8, 50), (0, 2, 5)):
        batches = guided_batches(n, jobs, largest)
        assert [i for b in batches for i in b] == list(range(n))
        sizes = [len(b) for b in batches]
        assert all(1 <= s <= largest for s in sizes)
        assert sizes == sorted(sizes, reverse=True)
        if n >= 4 * jobs:
            assert sizes[-1] == 1
