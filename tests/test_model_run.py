"""`validator run --model`: the network's outputs are tested like inputs, may be blinded, and the
model is recorded; bad models exit 2 with one line."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import make_frames

from validator.cli import main
from validator.results.store import query


class Score(torch.nn.Module):
    """A binary classifier of inputs (a, b): sigmoid(a + 0.5 b), of fixed input width 2."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([[1.0, 0.5]]))
            self.layer.bias.zero_()

    def forward(self, x):
        return torch.sigmoid(self.layer(x))[:, 0]


class Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def inputs(tmp_path):
    sim, data = make_frames(n_sim=8_000, n_data=4_000)
    s, d = tmp_path / "s.parquet", tmp_path / "d.parquet"
    sim.write_parquet(s)
    data.write_parquet(d)
    model = tmp_path / "score.pt"
    torch.jit.save(torch.jit.script(Score()), str(model),
                   _extra_files={"validator.json": json.dumps({"inputs": ["a", "b"]})})
    return sim, data, str(s), str(d), str(model)


def test_outputs_are_tested_and_blinded(capsys, inputs, tmp_path):
    _, data, s, d, model = inputs
    db = tmp_path / "v.duckdb"
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--db", str(db),
                        "--model", model, "--blind", "output > 0.8")
    assert code == 0, err
    score = 1 / (1 + np.exp(-(data["a"].to_numpy() + 0.5 * data["b"].to_numpy())))
    run = query(db, "SELECT n_data, model_id FROM runs").iloc[0]
    assert run["n_data"] == int((score <= 0.8).sum())  # the blinded data never counted
    tests = query(db, "SELECT kind, method, feature_x, feature_y FROM tests")
    involved = tests[(tests["feature_x"] == "output") | (tests["feature_y"] == "output")]
    assert set(involved["kind"]) == {"output"} and len(involved) > 0
    assert "output" not in set(tests[tests["kind"] != "output"]["feature_x"])
    models = query(db, "SELECT * FROM models").iloc[0]
    assert models["model_id"] == run["model_id"] and list(models["inputs"]) == ["a", "b"]
    assert models["format"] == "torchscript" and models["kind"] == "binary"
    h = query(db, "SELECT edges_x FROM histograms WHERE feature_x = 'output' "
                  "AND binning = 'test' AND feature_y IS NULL")
    assert max(h["edges_x"][0]) <= 0.8


def test_bad_models_exit_2_with_one_line(capsys, inputs, tmp_path):
    _, _, s, d, model = inputs
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Marker(marker)))
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db",
                        "--model", str(evil))
    assert code == 2 and err.count("\n") == 1 and "never unpickles" in err
    assert not marker.exists()
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db",
                        "--model", model, "--model-inputs", "a,b,c")
    assert code == 2 and err.count("\n") == 1 and "does not run on 3 inputs (a, b, c)" in err
    # torch's own line, not the TorchScript interpreter's header
    assert "TorchScript interpreter" not in err and "Error: " in err, err
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db",
                        "--model", model, "--model-inputs", "a,zz")
    assert code == 2 and "needs column 'zz'" in err


@pytest.mark.slow
def test_an_audited_run_fills_on_workers_with_the_results_of_one_job(inputs, tmp_path,
                                                                      monkeypatch):
    # The audit's sums and the multivariate subsample travel with each partition's
    # accumulators along the same tree: two worker processes give exactly one job's results.
    import validator.engine.pool
    from validator.pipeline import RunConfig, run_validation

    monkeypatch.setattr(validator.engine.pool, "MIN_PARALLEL_ROWS", 0)
    sim, data, _, _, model = inputs
    s, d = str(tmp_path / "s_groups.parquet"), str(tmp_path / "d_groups.parquet")
    sim.write_parquet(s, row_group_size=2_000)  # several partitions per sample
    data.write_parquet(d, row_group_size=2_000)
    outcomes = {}
    for jobs in (1, 2):
        outcomes[jobs] = run_validation(RunConfig(
            sim=[s], data=[d], weight="weight", model=model, db=None, jobs=jobs, chunk_rows=1_500,
            multivariate=("c2st",), multivariate_toys=20))
    one, two = outcomes[1], outcomes[2]
    assert not any("one process" in note for note in two.notes)
    taylor = [(r.method, r.feature_x, r.feature_y, r.result.statistic, r.result.pvalue)
              for r in one.records if r.kind == "taylor" and r.result is not None]
    assert len(taylor) >= 4  # first and second order of both inputs
    assert taylor == [(r.method, r.feature_x, r.feature_y, r.result.statistic, r.result.pvalue)
                      for r in two.records if r.kind == "taylor" and r.result is not None]
    assert [(r.method, r.result.pvalue) for r in one.records if r.kind == "multivariate"] == \
        [(r.method, r.result.pvalue) for r in two.records if r.kind == "multivariate"]
