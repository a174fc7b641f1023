"""Where the fill and the tests run: in this process, in local processes, or on a Dask cluster.

The fill pass cuts every sample into partitions
(:func:`~validator.inputs.sources.sample_partitions`:
parquet row groups, whole ROOT and CSV files), fills each partition into its own
:class:`~validator.stages.fill.Accumulator` and adds them with ``+``. The partitions and the order
in which their accumulators are added (a fixed binary tree over the partitions in file order,
:class:`OrderedTree`) depend on the files and the chunk size only, never on the engine or on
how many processes fill them: one job, ``--jobs N`` and a Dask cluster give the same floats,
bit for bit, and so the same p-values (each test draws its toys from its own stream). Event
groups and reservoir keys are hashes of (file, row), so they do not depend on the cut either.

- ``local``, ``jobs=1``: the partitions one after the other, in this process.
- ``local``, ``jobs=N``: ``N`` worker processes (:class:`WorkerPool`, one BLAS thread each:
  the processes are the parallelism), the same for the scan and the fill of a run; the
  accumulators come back to this process, which merges them in partition order as they
  arrive (memory: O(log partitions) accumulators).
- ``dask``: each partition is filled on a worker and the tree is reduced on the workers; only
  the two merged accumulators come back. Without a scheduler address a
  ``distributed.LocalCluster`` with ``LOCAL_CLUSTER_WORKERS`` worker processes is started.

The network's outputs are evaluated once: the scan's readers record them per chunk, each
partition's come back with its scan and are kept on the sample's reader
(:meth:`~validator.inputs.transform.Reader.keep`), and each fill item is sent its partition's
values with it (never the whole sample's), which its reader takes instead of running the
network again (:mod:`validator.inputs.transform`).

What else a fill pass gathers (the network audit's sums, the multivariate subsample) comes
from *collectors* (:class:`Collector`): each partition's chunks give states that add with
``+``, carried with the partition's accumulators along the same tree, so they too are the
same for every engine and number of jobs; the merged state is handed to the collector in
this process at the end (``absorb``).

The tests stage (:func:`validator.stages.compare.run_tests`) runs its features and pairs in a pool
of
forked processes with ``jobs > 1`` (:func:`fork_map`), whatever the fill engine; this process
meanwhile computes what needs no worker (the run-level test), with one BLAS thread.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from validator.inputs.sources import Partition, sample_partitions
from validator.inputs.transform import INCLUSIVE, KeptFile, Reader
from validator.stages.fill import Accumulator, Layout, fill_sample
from validator.stages.plan import SampleScan, ScanPart, add_states, finish_scan, scan_part

#: The engines a run can fill on.
ENGINES = ("local", "dask")
#: Worker processes of the Dask cluster started when no scheduler is given: the two cores of
#: a laptop or a CI runner; an analysis facility's cluster is given with --scheduler instead.
LOCAL_CLUSTER_WORKERS = 2
#: ``--scheduler`` value that uses the Dask client already made in this Python session (e.g.
#: ``cluster.get_client()`` of a Dask Gateway cluster in a notebook).
CURRENT_CLIENT = "current"

T = TypeVar("T")
Progress = Callable[[str, int, int], None]
PerCategory = dict[str, Accumulator]


def default_jobs() -> int:
    """Every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def can_fork() -> bool:
    """Whether worker processes can be forked (they inherit the run's state, nothing pickled)."""
    return "fork" in multiprocessing.get_all_start_methods()


class OrderedTree(Generic[T]):
    """Sums items pushed in order along a fixed binary tree, holding O(log n) partial sums.

    The tree is the binary counter's: two partial sums of equal size are added as soon as
    both exist. Its shape depends only on the number of items, so floating-point sums are
    reproduced exactly by any engine that pushes the same items in the same order, with ``add``
    computing ``a + b`` here or building a task that computes it on a Dask worker.
    """

    def __init__(self, add: Callable[[T, T], T]):
        self._add = add
        self._stack: list[tuple[int, T]] = []

    def push(self, item: T) -> None:
        level = 0
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            item = self._add(left, item)
            level += 1
        self._stack.append((level, item))

    def result(self) -> T | None:
        """The sum of everything pushed (None if nothing was)."""
        if not self._stack:
            return None
        _, total = self._stack.pop()
        while self._stack:
            _, left = self._stack.pop()
            total = self._add(left, total)
        return total


def merge_categories(a: PerCategory, b: PerCategory) -> PerCategory:
    """Per-category accumulators of two partitions added (a category in one only is kept)."""
    out = dict(a)
    for category, acc in b.items():
        out[category] = out[category] + acc if category in out else acc
    return out


class Collector(Protocol):
    """Something a fill pass gathers besides the histograms, from every chunk it reads.

    ``collect`` must depend on the chunk (and the collector's settings) only: it runs in
    worker processes, on copies. Its states add with ``+``; ``absorb`` receives the sample's
    merged state in the run's process.
    """

    def collect(self, chunk: dict[str, Any], weights: Any) -> Any: ...

    def absorb(self, state: Any) -> None: ...


@dataclass
class Filled:
    """One partition's (or several partitions') fill: the per-category accumulators and the
    state of each of the task's collectors (None where no chunk was read)."""

    per_category: PerCategory
    collected: tuple[Any, ...] = ()

    def __add__(self, other: Filled) -> Filled:
        return Filled(merge_categories(self.per_category, other.per_category),
                      tuple(add_states(a, b)
                            for a, b in zip(self.collected, other.collected, strict=True)))


def merge_filled(a: Filled, b: Filled) -> Filled:
    return a + b


@dataclass
class FillTask:
    """One sample's fill: what :func:`~validator.stages.fill.fill_sample` is given, and the
    collectors that see its chunks."""

    reader: Reader
    layout: Layout
    category: str | None
    seed: int
    collectors: tuple[Collector, ...] = ()
    variations: Any = None  # validator.stages.systematics.VariationRows

    @property
    def name(self) -> str:
        return self.reader.sample.name

    def light(self) -> FillTask:
        """This task without its reader's kept values (sent to a worker with each item: the
        item's partition's values travel beside it)."""
        reader = self.reader.without_kept()
        return self if reader is self.reader else replace(self, reader=reader)

    def fill(self, partition: Partition,
             replay: list[dict[str, Any]] | KeptFile | None = None) -> Filled:
        """The accumulators and the collectors' states of one partition (``replay``: its
        derived values from the scan or their file, default those the task's reader keeps)."""
        states: list[Any] = [None] * len(self.collectors)

        def observe(chunk: dict[str, Any], weights: Any) -> None:
            for i, collector in enumerate(self.collectors):
                states[i] = add_states(states[i], collector.collect(chunk, weights))

        per_category = fill_sample(self.reader.part(partition, replay), self.layout,
                                   self.category,
                                   None, self.seed,
                                   observe=observe if self.collectors else None,
                                   variations=self.variations)
        return Filled(per_category, tuple(states))

    def finish(self, merged: Filled | None) -> PerCategory:
        """Hands the collectors their merged states; returns the inclusive accumulator first,
        then the categories sorted, as ``fill_sample``."""
        if merged is None:
            return {}
        for collector, state in zip(self.collectors, merged.collected, strict=True):
            if state is not None:
                collector.absorb(state)
        if not merged.per_category:
            return {}
        if self.category is None:
            return merged.per_category
        per = merged.per_category
        return {INCLUSIVE: per[INCLUSIVE],
                **dict(sorted((k, v) for k, v in per.items() if k != INCLUSIVE))}


def _rows(partition: Partition, task: FillTask | ScanTask) -> int:
    return partition.n_rows if partition.n_rows >= 0 else task.reader.sample.n_rows


# ------------------------------------------------------------------------ forked processes

_FORKED: tuple[Callable[[int], Any], ...] = ()  # the function a forked pool's workers call


def _worker_init() -> None:
    """One BLAS thread per worker: the processes are the parallelism (threads would fight)."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn and scipy
        pass


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS (and torch, where a network is audited) limited to one thread in this process
    (their threads would spin for cores that the workers hold)."""
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn and scipy
        threadpool_limits = None
    try:
        if torch is not None:
            torch.set_num_threads(1)
        if threadpool_limits is None:  # pragma: no cover
            yield
        else:
            with threadpool_limits(1):
                yield
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)


def _call_forked_batch(start: int, stop: int) -> list[Any]:
    return [_FORKED[0](i) for i in range(start, stop)]


def fork_map(fn: Callable[[int], T], n: int, jobs: int, chunksize: int = 1,
             meanwhile: Callable[[], Any] | None = None) -> Iterator[T]:
    """``fn(i)`` for ``i`` in ``range(n)`` in ``jobs`` forked processes, yielded in order.

    The workers inherit ``fn`` and everything it refers to by forking: nothing but ``i`` and
    the results is pickled. An exception in a worker is raised here. ``meanwhile()``, when
    given, runs in this process once the workers are forked (before the first result is
    yielded), so that this process does not sit idle; without workers it runs first.
    """
    global _FORKED
    if jobs <= 1 or n <= 1 or not can_fork():
        if meanwhile is not None:
            meanwhile()
        yield from (fn(i) for i in range(n))
        return
    previous, _FORKED = _FORKED, (fn,)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(jobs, n), mp_context=context,
                                 initializer=_worker_init) as pool:
            # a fork context starts every worker at the first submission: no thread this
            # process starts afterwards (BLAS's, in meanwhile) is inherited by a worker
            futures = [pool.submit(_call_forked_batch, batch.start, batch.stop)
                       for batch in guided_batches(n, jobs, chunksize)]
            try:
                if meanwhile is not None:
                    with _one_blas_thread():  # the workers hold every core
                        meanwhile()
                for future in futures:
                    yield from future.result()
            finally:  # an error, or the caller stopped: the batches not started are dropped
                for future in futures:
                    future.cancel()
    finally:
        _FORKED = previous


#: Guided self-scheduling (C. D. Polychronopoulos and D. J. Kuck, IEEE Trans. Comput. 36
#: (1987) 1425): a batch holds at most 1/(GUIDED_SHARE x jobs) of the items left.
GUIDED_SHARE = 4


def guided_batches(n: int, jobs: int, largest: int) -> list[range]:
    """Consecutive batches of ``range(n)``, at most ``largest`` items each, shrinking to one
    item as the items run out: items whose costs differ a hundredfold (a test refining its
    toys) balance over the workers, and no worker is left alone with a long last batch."""
    batches, start = [], 0
    while start < n:
        size = max(1, min(largest, -(-(n - start) // (GUIDED_SHARE * max(jobs, 1)))))
        batches.append(range(start, start + size))
        start += size
    return batches


class Later(Generic[T]):
    """A computation done once, when first called or asked for its result: something a
    stage can do while it waits for its workers (``fork_map(meanwhile=...)``)."""

    def __init__(self, compute: Callable[[], T]):
        self._compute = compute
        self._done = False
        self._value: T | None = None

    def __call__(self) -> None:
        if not self._done:
            self._value = self._compute()
            self._done = True

    def result(self) -> T:
        self()
        return self._value  # type: ignore[return-value]


#: Fewest rows (all the pass's samples together) worth worker processes for the scan and the
#: fill: a worker starts in about a second (imports, the compiled kernel), a 250k-row
#: partition takes about two; below this the pass runs in this process.
MIN_PARALLEL_ROWS = 1_000_000


def worth_workers(rows: int) -> bool:
    """Whether a pass over ``rows`` rows (all its samples together) uses worker processes."""
    return rows >= MIN_PARALLEL_ROWS


def _worth_workers(tasks: Sequence[FillTask | ScanTask]) -> bool:
    return worth_workers(sum(max(t.reader.sample.n_rows, 0) for t in tasks))


def _clean_context() -> multiprocessing.context.BaseContext:
    from validator.engine.worker_server import clean_context

    return clean_context()


def _worker_ready() -> None:
    """A new worker's first task: its settings, and the first call of pyarrow's compute
    functions (a tenth of a second that would otherwise delay the worker's first read). On an
    array that ``pa.nulls`` makes: ``pa.array`` looks for pandas objects among its arguments,
    which imports pandas (0.2-0.6 s of each worker, which the readers never need)."""
    _worker_init()
    import pyarrow as pa
    import pyarrow.compute as pc

    pc.cast(pa.nulls(1, pa.float32()), pa.float64())


class WorkerPool:
    """The worker processes of the passes that read files, kept from the scan to the fill.

    The workers are forked from a clean server process (``forkserver``), not from this one:
    the readers (pyarrow, polars for selections and definitions) run thread pools that do not
    survive a fork, and a forked child that calls polars after its parent did can wait
    forever on a lock that no thread of the child will ever release. Functions are
    module-level and their arguments pickled (as for a Dask worker).

    One pool serves every pass of a run, so a worker's first-task costs (its first reads,
    the heap its arrays grow into) are paid once, not once per pass; :meth:`start` forks the
    workers ahead of the first pass, while this process still opens the inputs. Use it as a
    context manager (``close`` on exit); a pass given no pool makes its own.
    """

    def __init__(self, jobs: int):
        self.jobs = max(1, int(jobs))
        self._pool: ProcessPoolExecutor | None = None
        self._kept: str | None = None

    def kept_directory(self) -> str:
        """A directory for the derived values the workers' scan records for the fill
        (:class:`validator.inputs.transform.KeptFile`), removed with the pool."""
        if self._kept is None:
            self._kept = tempfile.mkdtemp(prefix="validator-kept-")
        return self._kept

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.jobs,
                                             mp_context=_clean_context(),
                                             initializer=_worker_init)
        return self._pool

    def start(self) -> None:
        """Fork the workers now, without waiting for them."""
        if self.jobs <= 1:
            return
        pool = self._executor()
        with _main_module_hidden():
            for _ in range(self.jobs):
                pool.submit(_worker_ready)

    def map(self, fn: Callable[..., T], args: Sequence[tuple[Any, ...]]) -> Iterator[T]:
        """``fn(*args[i])`` for every ``i`` in the workers, yielded in order (in this process
        with one job or one item)."""
        if self.jobs <= 1 or len(args) <= 1:
            yield from (fn(*a) for a in args)
            return
        pool = self._executor()
        with _main_module_hidden():  # the workers start here, in map's submissions
            results = pool.map(fn, *zip(*args, strict=True))
        yield from results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._kept is not None:
            shutil.rmtree(self._kept, ignore_errors=True)
            self._kept = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def clean_map(fn: Callable[..., T], args: Sequence[tuple[Any, ...]], jobs: int,
              pool: WorkerPool | None = None) -> Iterator[T]:
    """``fn(*args[i])`` for every ``i`` in the workers of ``pool`` (or of a pool of ``jobs``
    made for this call), yielded in order. For the passes that read files
    (:class:`WorkerPool`)."""
    if pool is not None:
        yield from pool.map(fn, args)
        return
    with WorkerPool(min(jobs, max(len(args), 1))) as own:
        yield from own.map(fn, args)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While worker processes start: a worker re-imports the main module by its name or path
    (multiprocessing's preparation data), which runs a script without an ``if __name__ ==
    "__main__"`` guard again, or a Streamlit app left as ``__main__``. The workers run
    functions of this package only, so they are told of no main module."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


# ------------------------------------------------------------------------ the fill


def _fill_local(tasks: Sequence[FillTask], parts: list[list[Partition]], jobs: int,
                progress: Progress | None, pool: WorkerPool | None) -> list[PerCategory]:
    items = [(t, p) for t, task_parts in enumerate(parts) for p in task_parts]
    trees: list[OrderedTree[Filled]] = [OrderedTree(merge_filled) for _ in tasks]
    done = [0] * len(tasks)
    sequential = jobs <= 1 or not _worth_workers(tasks)

    if sequential:
        results: Iterable[Any] = (tasks[t].fill(p) for t, p in items)
    else:
        light = [task.light() for task in tasks]
        results = clean_map(_fill_remote, [(light[t], p, tasks[t].reader.kept_for(p))
                                           for t, p in items], jobs, pool)
    pushed = [0] * len(tasks)
    finished: list[PerCategory | None] = [None] * len(tasks)
    for (t, partition), result in zip(items, results, strict=True):
        trees[t].push(result)
        pushed[t] += 1
        if pushed[t] == len(parts[t]):  # its partial sums added now: one held, not log n
            finished[t] = tasks[t].finish(trees[t].result())
        done[t] += _rows(partition, tasks[t])
        if progress:
            progress(f"fill {tasks[t].name}", done[t], tasks[t].reader.sample.n_rows)
    return [f if f is not None else task.finish(None)
            for task, f in zip(tasks, finished, strict=True)]


@dataclass
class ScanTask:
    """One sample's planning pass: what :func:`~validator.stages.plan.scan_part` is given."""

    reader: Reader
    columns: list[str]
    seed: int
    key_cols: list[str]
    observe: Callable[[dict[str, Any]], None] | None = None
    collectors: tuple[Collector, ...] = ()  # see every chunk, wherever it is scanned


def scan_samples(tasks: Sequence[ScanTask], *, jobs: int | None = None,
                 progress: Progress | None = None, pool: WorkerPool | None = None,
                 ) -> list[SampleScan]:
    """The planning pass of every task's sample, over its partitions in ``jobs`` processes
    (those of ``pool`` when given).

    Each partition is scanned on its own and the parts are added in partition order, so the
    result does not depend on ``jobs`` (with an ``observe`` hook, whose state lives in this
    process, the partitions are scanned here, one after the other).
    """
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    parts = [sample_partitions(t.reader.sample, t.reader.chunk_rows) for t in tasks]
    items = [(t, p) for t, task_parts in enumerate(parts) for p in task_parts]
    sequential = jobs <= 1 or any(task.observe is not None for task in tasks) \
        or not _worth_workers(tasks)

    # in this process a one-partition sample is scanned through its own reader, which keeps
    # a sample of one chunk in memory for the fill (read once, not twice)
    # the workers write what they record to files of the pool (not to this process's memory)
    kept = pool.kept_directory() if pool is not None and not sequential else None
    results = (_scan_remote(tasks[t], p, len(parts[t]) == 1) for t, p in items) if sequential \
        else clean_map(_scan_remote, [(tasks[t], p, False, kept) for t, p in items], jobs, pool)
    totals: list[ScanPart | None] = [None] * len(tasks)
    done = [0] * len(tasks)
    for (t, partition), (part, derived) in zip(items, results, strict=True):
        tasks[t].reader.keep(partition, derived)
        totals[t] = part if totals[t] is None else totals[t] + part
        done[t] += _rows(partition, tasks[t])
        if progress:
            progress(f"scan {tasks[t].reader.sample.name}", done[t],
                     tasks[t].reader.sample.n_rows)
    for task, total in zip(tasks, totals, strict=True):
        for collector, state in zip(task.collectors, total.collected if total else (),
                                    strict=True):
            if state is not None:
                collector.absorb(state)
    # every sample has a file, so a partition: each total is set
    return [finish_scan(task.reader, total, task.key_cols)  # type: ignore[arg-type]
            for task, total in zip(tasks, totals, strict=True)]


def _scan_remote(task: ScanTask, partition: Partition, whole: bool = False,
                 kept: str | None = None
                 ) -> tuple[ScanPart, list[dict[str, Any]] | KeptFile | None]:
    """One partition's planning pass (``whole``: the partition is the whole sample), and the
    derived values its reader recorded for the fill (None: nothing worth keeping), written
    to a file in the directory ``kept`` when given."""
    reader = task.reader if whole else task.reader.part(partition)
    reader.record = reader.records
    try:
        part = scan_part(reader, task.columns, task.seed, task.key_cols, task.observe,
                         collectors=task.collectors)
        recorded = reader.recorded
        if kept is not None and recorded is not None and any(recorded):
            name = f"{os.getpid()}-{uuid.uuid4().hex}.npz"
            return part, KeptFile.write(recorded, os.path.join(kept, name))
        return part, recorded
    finally:
        reader.record, reader.recorded = False, None


def dask_client(scheduler: str | None) -> tuple[Any, Any]:
    """A ``distributed.Client`` for ``scheduler`` and the cluster started for it (or None).

    ``None``: a ``LocalCluster`` of ``LOCAL_CLUSTER_WORKERS`` processes; ``"current"``: the
    client already made in this session; anything else: a scheduler address
    (``tcp://host:8786``, ``tls://...`` with the TLS settings of the Dask configuration).
    """
    from validator.errors import InputError

    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError("--engine dask needs dask and distributed (pip install "
                         "'hep-validator[dask]')") from exc
    if scheduler == CURRENT_CLIENT:
        return Client.current(), None
    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from exc
    cluster = LocalCluster(n_workers=LOCAL_CLUSTER_WORKERS, threads_per_worker=1,
                           processes=True, dashboard_address=None)
    return Client(cluster), cluster


def _fill_remote(task: FillTask, partition: Partition,
                 replay: list[dict[str, Any]] | KeptFile | None = None) -> Filled:
    _worker_init()
    return task.fill(partition, replay)


def _values(kept: list[dict[str, Any]] | KeptFile | None) -> list[dict[str, Any]] | None:
    """Kept values themselves, for a Dask worker that may not see this machine's files."""
    return kept.load() if isinstance(kept, KeptFile) else kept


def _fill_dask(tasks: Sequence[FillTask], parts: list[list[Partition]],
               scheduler: str | None, progress: Progress | None) -> list[PerCategory]:
    from distributed import as_completed

    client, cluster = dask_client(scheduler)
    try:
        leaves, merged = [], []
        for task, task_parts in zip(tasks, parts, strict=True):
            remote = client.scatter(task.light(), broadcast=True)
            futures = [client.submit(_fill_remote, remote, p, _values(task.reader.kept_for(p)),
                                     pure=False) for p in task_parts]
            tree: OrderedTree[Any] = OrderedTree(
                lambda a, b: client.submit(merge_filled, a, b, pure=False))
            for future in futures:
                tree.push(future)
            leaves.append(futures)
            merged.append(tree.result())
        if progress:
            sizes = {f.key: (t, _rows(p, tasks[t])) for t, (fs, ps)
                     in enumerate(zip(leaves, parts, strict=True)) for f, p in zip(fs, ps,
                                                                                  strict=True)}
            done = [0] * len(tasks)
            for future in as_completed([f for fs in leaves for f in fs]):
                t, rows = sizes[future.key]
                done[t] += rows
                progress(f"fill {tasks[t].name}", done[t], tasks[t].reader.sample.n_rows)
        results = [m.result() if m is not None else None for m in merged]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [task.finish(r) for task, r in zip(tasks, results, strict=True)]


def fill_samples(tasks: Sequence[FillTask], *, jobs: int | None = None, engine: str = "local",
                 scheduler: str | None = None, progress: Progress | None = None,
                 pool: WorkerPool | None = None) -> list[PerCategory]:
    """Fill every task's sample (and hand its collectors their states); returns the
    per-category accumulators of each. ``pool``: the local engine's workers, when the run
    keeps them from pass to pass.

    The result does not depend on ``jobs`` nor on ``engine`` (see the module docstring).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}' (one of {', '.join(ENGINES)})")
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    parts = [sample_partitions(t.reader.sample, t.reader.chunk_rows) for t in tasks]
    for task in tasks:
        task.layout.prepared()
    try:
        if engine == "dask":
            return _fill_dask(tasks, parts, scheduler, progress)
        return _fill_local(tasks, parts, jobs, progress, pool)
    finally:
        for task in tasks:  # the scan's derived values are used once
            task.reader.kept = None
