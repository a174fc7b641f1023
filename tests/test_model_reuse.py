"""The audited network is evaluated once per event: the scan keeps its outputs per partition
and the fill reuses them (validator.inputs.transform, validator.engine.pool), with the same
results as evaluating it again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_frames
from test_model import save_ts

from validator.inputs import transform
from validator.inputs.sources import open_sample, sample_partitions
from validator.inputs.transform import KeptFile, Reader, TransformChain
from validator.model import load_model
from validator.pipeline import RunConfig, run_validation
from validator.stages.audit import OutputsWithFirstOrder

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


class Tanh(torch.nn.Module):
    """A float32 network: its outputs are kept as float32, exactly."""

    def forward(self, x):
        return torch.sigmoid(x[:, 0] + 0.5 * torch.tanh(x[:, 1] * x[:, 2]))


@pytest.fixture
def files(tmp_path):
    sim, data = make_frames(n_sim=12_000, n_data=8_000, shift=0.1)
    s, d = tmp_path / "sim.parquet", tmp_path / "data.parquet"
    sim.write_parquet(s, row_group_size=4_000)
    data.write_parquet(d, row_group_size=4_000)
    model = save_ts(Tanh(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    return s, d, model


def _config(s, d, model, **kw):
    return RunConfig(sim=[str(s)], data=[str(d)], weight="weight", features=["a", "b", "c"],
                     model=str(model), db=None, shap_events=40, chunk_rows=3_000,
                     blind="output > 0.8", **{"jobs": 1, **kw})


def _rows(outcome):
    return [(r.kind, r.method, r.feature_x, r.feature_y, r.pvalue,
             r.result.statistic if r.result is not None else None) for r in outcome.records]


def test_the_network_runs_once_per_event_with_the_same_results(files, monkeypatch):
    s, d, model = files
    evaluated = []
    call = OutputsWithFirstOrder.__call__  # the network's outputs in the samples' chains

    def counting(self, chunk, label):
        evaluated.append(len(next(iter(chunk.values()))))
        return call(self, chunk, label)

    monkeypatch.setattr(OutputsWithFirstOrder, "__call__", counting)
    once = run_validation(_config(s, d, model))
    assert sum(evaluated) == 12_000 + 8_000  # every event once: the scan's outputs reused
    evaluated.clear()
    monkeypatch.setattr(transform, "reusable", lambda derived: False)
    twice = run_validation(_config(s, d, model))
    assert sum(evaluated) == 2 * (12_000 + 8_000)
    assert _rows(once) == _rows(twice)  # the same floats: every p-value bit for bit
    assert once.audit.importances == twice.audit.importances


def test_a_reader_replays_the_recorded_outputs_and_evaluates_a_chunk_that_differs(files):
    s, _, model_path = files
    model = load_model(str(model_path))
    sample = open_sample("sim", [str(s)], "weight")
    reader = Reader(sample, ["a", "b", "c", "output"], 3_000, TransformChain(derived=(model,)))
    partition = sample_partitions(sample, 3_000)[1]
    scan = reader.part(partition)
    scan.record = True
    first = [c["output"] for c in scan]
    kept = scan.recorded
    assert len(kept) == len(first) and all(k["output"].dtype == np.float32 for k in kept)
    reader.keep(partition, kept)
    again = [c["output"] for c in reader.part(partition)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # the kept values are what a later pass reads (marked ones come back, not recomputed)
    marked = [{"output": np.full_like(k["output"], 7.0)} for k in kept]
    replayed = [c["output"] for c in reader.part(partition, replay=marked)]
    assert all(np.all(r == 7.0) for r in replayed)
    # a kept chunk whose length does not match is evaluated again, not misaligned
    wrong = [{"output": k["output"][:-1]} for k in kept]
    fixed = [c["output"] for c in reader.part(partition, replay=wrong)]
    assert all(np.array_equal(a, b) for a, b in zip(first, fixed, strict=True))
    # the values a worker is sent with the task stay behind
    assert reader.without_kept().kept is None and reader.kept is not None


def test_kept_values_written_by_a_worker_come_back_as_they_were(files, tmp_path):
    s, _, model_path = files
    sample = open_sample("sim", [str(s)], "weight")
    reader = Reader(sample, ["a", "b", "c", "output"], 3_000,
                    TransformChain(derived=(load_model(str(model_path)),)))
    partition = sample_partitions(sample, 3_000)[0]
    scan = reader.part(partition)
    scan.record = True
    first = [c["output"] for c in scan]
    # an empty chunk and a name with the separator in it survive the file too
    recorded = [*scan.recorded, {}, {"a:b": np.arange(3.0)}]
    stored = KeptFile.write(recorded, str(tmp_path / "part.npz"))
    back = stored.load()
    assert len(back) == len(recorded) and back[-2] == {}
    assert np.array_equal(back[-1]["a:b"], np.arange(3.0))
    assert all(b["output"].dtype == r["output"].dtype and np.array_equal(b["output"], r["output"])
               for b, r in zip(back[:-2], recorded[:-2], strict=True))
    # the reader of the fill takes the file like the values themselves
    reader.keep(partition, KeptFile.write(scan.recorded, str(tmp_path / "again.npz")))
    replayed = [c["output"] for c in reader.part(partition)]
    assert all(np.array_equal(a, b) for a, b in zip(first, replayed, strict=True))


@pytest.mark.slow
def test_the_workers_keep_the_outputs_in_files_removed_with_the_pool(files, tmp_path,
                                                                     monkeypatch):
    import shutil
    import tempfile
    from pathlib import Path

    import validator.engine.pool as pool

    s, d, model = files
    monkeypatch.setattr(pool, "MIN_PARALLEL_ROWS", 0)
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(suffix=None, prefix=None, dir=None) -> str:
        if not (prefix or "").startswith("validator-kept-"):
            return real_mkdtemp(suffix, prefix, dir)
        made.append(tmp_path / f"{prefix}{len(made)}")
        made[-1].mkdir()
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    removed = []
    rmtree = shutil.rmtree

    def listing_rmtree(path, *args, **kwargs):
        if Path(path) in made:
            removed.append(sorted(p.suffix for p in Path(path).iterdir()))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", listing_rmtree)
    one = run_validation(_config(s, d, model, jobs=1))
    two = run_validation(_config(s, d, model, jobs=2))
    # the workers' outputs went through files (not the run's process), one per partition
    # with outputs, removed with the pool
    assert len(made) == 1 and not made[0].exists()
    partitions = sum(len(sample_partitions(open_sample(name, [str(f)], None), 3_000))
                     for name, f in (("sim", s), ("data", d)))
    assert partitions >= 3 and [".npz"] * partitions in removed
    assert _rows(one) == _rows(two)
    assert one.audit.importances == two.audit.importances
    # Dask workers, which may not see this machine's files, are sent the values themselves
    pytest.importorskip("distributed")
    on_dask = run_validation(_config(s, d, model, jobs=2, engine="dask"))
    assert _rows(on_dask) == _rows(one)
