"""Tests of the sample network shipped with the toy samples (``sample_data/classifier.pt`` and
``sample_data/classifier.onnx``, made by ``sample_data/generate.py``).

The two files load through validator's own loader, agree with each other, are the documented
three-class classifier, classify far better than a trivial classifier, rank ``met`` (the
planted 5 % scale mismodelling) first by Taylor coefficient, and retraining with the generator
reproduces them.
"""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import load_sample_generator

from validator.model import ALL, load_model, taylor_sums

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "sample_data"
PT, ONNX = SAMPLE_DIR / "classifier.pt", SAMPLE_DIR / "classifier.onnx"
#: Every STRIDE-th simulated event is the test subsample (3 000 events).
STRIDE = 50
#: Accuracy above the majority-class fraction that the network must beat. Measured on the
#: whole simulation: 0.854 unweighted (majority 0.500) and 0.897 |weight|-weighted (majority
#: 0.574); 0.838 or more on each of 200 random 2 000-event subsamples.
MARGIN_UNWEIGHTED = 0.25
MARGIN_WEIGHTED = 0.2




gen = load_sample_generator()


@pytest.fixture(scope="module")
def models():
    return {"torchscript": load_model(PT), "onnx": load_model(ONNX)}


@pytest.fixture(scope="module")
def sim() -> pl.DataFrame:
    return pl.read_parquet(SAMPLE_DIR / "sim.parquet").gather_every(STRIDE)


@pytest.fixture(scope="module")
def data_x() -> np.ndarray:
    data = pl.read_parquet(SAMPLE_DIR / "data.parquet").gather_every(STRIDE)
    return data.select(gen.MODEL_INPUTS).to_numpy().astype(np.float64)


def _x(frame: pl.DataFrame) -> np.ndarray:
    return frame.select(gen.MODEL_INPUTS).to_numpy().astype(np.float64)


def test_files_are_small_and_declared():
    for path in (PT, ONNX):
        assert path.is_file()
        assert path.stat().st_size < 300_000
    assert set(gen.MODEL_FILES) == {PT.name, ONNX.name}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_loads_as_documented_multiclass(models, fmt):
    model = models[fmt]
    assert model.format == fmt
    assert model.kind == "multiclass"
    assert model.inputs == gen.MODEL_INPUTS
    assert {"met", "lep1_iso", "lep2_iso"} <= set(model.inputs)
    assert 10 <= len(model.inputs) <= 14
    assert model.names == ("output_drell_yan", "output_ttbar", "output_other")
    assert model.derivative_method == ("autograd" if fmt == "torchscript" else "onnx2torch")
    assert not model.scaler  # the standardisation is inside the network
    assert not model.params
    assert model.notes == ()


def test_classes_cover_every_process(sim):
    covered = [p for procs in gen.MODEL_CLASSES.values() for p in procs]
    assert sorted(covered) == sorted(p.name for p in gen.PROCESSES)
    labels = gen.model_labels(sim)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_formats_agree(models, sim, data_x):
    for x in (_x(sim), data_x):
        a = models["torchscript"].evaluate(x)
        b = models["onnx"].evaluate(x)
        assert a.shape == (len(x), 3)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)  # softmax
        assert (a >= 0).all()


def test_dynamic_batch(models, sim):
    x = _x(sim)
    whole = models["onnx"].evaluate(x[:1000])
    for n in (1, 7):
        np.testing.assert_allclose(models["onnx"].evaluate(x[:n]), whole[:n], atol=1e-6)
        np.testing.assert_allclose(models["torchscript"].evaluate(x[:n]), whole[:n],
                                   atol=1e-5)


def test_better_than_trivial(models, sim):
    labels = gen.model_labels(sim)
    absw = np.abs(sim["weight"].to_numpy())
    right = models["onnx"].evaluate(_x(sim)).argmax(axis=1) == labels
    majority = np.bincount(labels).max() / len(labels)
    majority_w = np.bincount(labels, weights=absw).max() / absw.sum()
    assert right.mean() > majority + MARGIN_UNWEIGHTED
    assert absw @ right / absw.sum() > majority_w + MARGIN_WEIGHTED
    for k in range(3):  # every class is found more often than by chance
        assert right[labels == k].mean() > 0.5


def test_training_weights_balance_classes(sim):
    w = gen.model_training_weights(sim)
    labels = gen.model_labels(sim)
    assert (w > 0).all()
    np.testing.assert_allclose(w.mean(), 1.0)
    per_class = np.bincount(labels, weights=w)
    np.testing.assert_allclose(per_class, per_class.mean(), rtol=1e-12)


def test_taylor_ranks_met_first(models, sim):
    x, w = _x(sim), sim["weight"].to_numpy()
    sigma = x.std(axis=0)
    ranked = {}
    for fmt, model in models.items():
        sums = taylor_sums(model, x, w, sigma=sigma, order=2,
                           second_order_mask=np.arange(len(x)) < 500)
        assert sums.derivative_method == model.derivative_method
        means = sums.means().scaled()
        g = means.groups.index(ALL)
        assert means.groups == (*model.names, ALL)
        assert np.isfinite(means.first[g]).all()
        assert np.isfinite(means.second[g]).all()
        assert means.n_second[g] == 500
        order = [gen.MODEL_INPUTS[i] for i in np.argsort(-means.first[g])]
        assert order[0] == "met"
        assert set(order[-2:]) == {"lep1_iso", "lep2_iso"}  # weak discriminators
        ranked[fmt] = means
    np.testing.assert_allclose(ranked["torchscript"].first, ranked["onnx"].first, rtol=1e-3)
    np.testing.assert_allclose(ranked["torchscript"].second, ranked["onnx"].second, rtol=1e-2,
                               atol=1e-6)


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_network(models, sim, tmp_path):
    """``generate.py --model-only`` (samples regenerated in memory, a few seconds of
    training) writes files whose outputs equal the shipped ones."""
    assert gen.main(["--model-only", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(gen.MODEL_FILES)
    x = _x(sim)[:300]
    for name, fmt in zip(gen.MODEL_FILES, ("torchscript", "onnx"), strict=True):
        again = load_model(tmp_path / name)
        np.testing.assert_allclose(again.evaluate(x), models[fmt].evaluate(x), rtol=0,
                                   atol=1e-6)
