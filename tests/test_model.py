"""The audited network (issue 15): loading without unpickling, outputs as derived columns,
Taylor coefficients (Wunsch et al., arXiv:1803.08782) and SHAP."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from validator.errors import InputError  # noqa: E402
from validator.inputs.transform import TransformChain  # noqa: E402
from validator.model import (  # noqa: E402
    AbsMeanSums,
    TaylorSums,
    load_model,
    shap_importance,
    taylor_coefficients,
    taylor_sums,
)

# torch >= 2.10 deprecates TorchScript, which the audit still reads (it is widely deployed)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")

# ---------------------------------------------------------------------------------------------
# networks built in the tests


class Poly3(torch.nn.Module):
    """f = x0·x1 + x2²."""

    def forward(self, x):
        return x[:, 0] * x[:, 1] + x[:, 2] ** 2


class TaylorPoly(torch.nn.Module):
    """The tayloranalysis test function f = x·y + x·y² + y³."""

    def forward(self, p):
        x = p[:, 0]
        y = p[:, 1]
        return x * y + x * y**2 + y**3


class MLP(torch.nn.Module):
    def __init__(self, n_in: int = 4, hidden: int = 16, n_out: int = 3, head: str = "softmax"):
        super().__init__()
        torch.manual_seed(1)
        self.l1 = torch.nn.Linear(n_in, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.l3 = torch.nn.Linear(hidden, n_out)
        self.head = head

    def forward(self, x):
        h = torch.tanh(self.l2(torch.tanh(self.l1(x))))
        out = self.l3(h)
        if self.head == "softmax":
            return torch.softmax(out, dim=1)
        if self.head == "sigmoid":
            return torch.sigmoid(out)
        return out


class PNN(torch.nn.Module):
    """A parametric network: f = sigmoid(x0·mass/100 + x1), inputs (x0, x1, mass)."""

    def forward(self, x):
        return torch.sigmoid(x[:, 0] * x[:, 2] / 100.0 + x[:, 1])


def save_ts(module, path: Path, meta: dict | None = None) -> Path:
    extra = {"validator.json": json.dumps(meta)} if meta is not None else {}
    torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra)
    return path


def save_pt2(module, path: Path, width: int, meta: dict | None = None,
             dynamic: bool = True) -> Path:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    ep = torch.export.export(module, (torch.randn(8, width),), dynamic_shapes=shapes)
    extra = {"validator.json": json.dumps(meta)} if meta is not None else None
    torch.export.save(ep, str(path), extra_files=extra)
    return path


def save_onnx(path: Path, nodes, inputs, outputs, inits=(), meta: dict | None = None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def onnx_poly3(path: Path, names=("x0", "x1", "x2")) -> Path:
    """f = x0·x1 + x2² as ONNX, one (n, 3) input, names in metadata ``input_names``."""
    nodes = [helper.make_node("Split", ["x", "split"], ["a", "b", "c"], axis=1),
             helper.make_node("Mul", ["a", "b"], ["ab"]),
             helper.make_node("Mul", ["c", "c"], ["cc"]),
             helper.make_node("Add", ["ab", "cc"], ["y"])]
    split = numpy_helper.from_array(np.array([1, 1, 1], np.int64), "split")
    return save_onnx(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                 ["n", 3])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
                     [split], {"input_names": json.dumps(list(names))})


def onnx_taylor(path: Path) -> Path:
    """f = x·y + x·y² + y³ as ONNX with two named inputs of shape (n,)."""
    nodes = [helper.make_node("Mul", ["x", "y"], ["xy"]),
             helper.make_node("Mul", ["y", "y"], ["y2"]),
             helper.make_node("Mul", ["x", "y2"], ["xy2"]),
             helper.make_node("Mul", ["y2", "y"], ["y3"]),
             helper.make_node("Add", ["xy", "xy2"], ["s"]),
             helper.make_node("Add", ["s", "y3"], ["f"])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in ("x", "y")]
    return save_onnx(path, nodes, vi, [helper.make_tensor_value_info("f", TensorProto.FLOAT,
                                                                     ["n"])])


def onnx_mlp(path: Path, net: MLP, meta: dict) -> Path:
    """The MLP's weights as an ONNX graph (MatMul/Add/Tanh/Softmax)."""
    inits, nodes, prev = [], [], "x"
    for k, layer in enumerate((net.l1, net.l2, net.l3)):
        w = layer.weight.detach().numpy().T.astype(np.float32)
        b = layer.bias.detach().numpy().astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"])]
        prev = f"a{k}"
        if k < 2:
            nodes.append(helper.make_node("Tanh", [prev], [f"t{k}"]))
            prev = f"t{k}"
    nodes.append(helper.make_node("Softmax", [prev], ["y"], axis=1))
    n_in, n_out = net.l1.in_features, net.l3.out_features
    return save_onnx(path, nodes,
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n_out])],
                     inits, {"validator.json": json.dumps(meta)})


def weighted_abs_mean(t: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The documented estimator, written out: Σw|t|/Σw and sqrt(Σw²(|t|−m)²)/Σw."""
    a = np.abs(t)
    m = (w[:, None] * a).sum(0) / w.sum()
    var = (w[:, None] ** 2 * (a - m) ** 2).sum(0) / w.sum() ** 2
    return m, np.sqrt(var)


# ---------------------------------------------------------------------------------------------
# Taylor coefficients


def test_tayloranalysis_reference_point(tmp_path):
    """f = x·y + x·y² + y³ at (3, 2): t_x = 6, t_y = 27, t_xx = 0, t_xy = 5, t_yy = 9."""
    models = [load_model(save_ts(TaylorPoly(), tmp_path / "f.pt", {"inputs": ["x", "y"]})),
              load_model(save_pt2(TaylorPoly(), tmp_path / "f.pt2", 2,
                                  {"inputs": ["x", "y"]})),
              load_model(onnx_taylor(tmp_path / "f.onnx"))]
    assert [m.format for m in models] == ["torchscript", "torch.export", "onnx"]
    assert [m.derivative_method for m in models] == ["autograd", "autograd", "onnx2torch"]
    assert models[2].inputs == ("x", "y")  # the ONNX input names
    point = np.array([[3.0, 2.0]])
    for model in models:
        tc = taylor_coefficients(model, point, order=2)
        np.testing.assert_allclose(tc.first[0], [6.0, 27.0], rtol=1e-6)
        np.testing.assert_allclose(tc.second[0], [[0.0, 5.0], [5.0, 9.0]], atol=1e-5)
        assert tc.value[0] == pytest.approx(3 * 2 + 3 * 4 + 8)
    fd = load_model(tmp_path / "f.onnx", derivatives="finite_differences")
    tc = taylor_coefficients(fd, point, order=2)
    assert tc.method == "finite_differences"
    np.testing.assert_allclose(tc.first[0], [6.0, 27.0], rtol=1e-3)
    np.testing.assert_allclose(tc.second[0], [[0.0, 5.0], [5.0, 9.0]], atol=0.05)


def test_analytic_mean_abs_coefficients_torchscript_export_onnx(tmp_path):
    """f = x0·x1 + x2²: t0 = x1, t1 = x0, t2 = 2·x2, t01 = 1, t22 = 1, others 0 — the
    weighted <|t|> and its uncertainty (signed weights) match the formula in numpy."""
    rng = np.random.default_rng(3)
    x = rng.normal([0.5, -1.0, 2.0], [1.0, 2.0, 0.5], size=(3000, 3))
    w = np.where(rng.random(3000) < 0.1, -0.5, 1.2)
    t1 = np.column_stack([x[:, 1], x[:, 0], 2 * x[:, 2]])
    iu = np.triu_indices(3)
    hess = np.zeros((3000, 3, 3))
    hess[:, 0, 1] = hess[:, 1, 0] = 1.0
    hess[:, 2, 2] = 1.0  # ½·2
    m1, u1 = weighted_abs_mean(t1, w)
    m2, u2 = weighted_abs_mean(hess[:, iu[0], iu[1]], w)
    sigma = x.std(axis=0)
    names = ["x0", "x1", "x2"]
    for path in (save_ts(Poly3(), tmp_path / "p.pt", {"inputs": names}),
                 save_pt2(Poly3(), tmp_path / "p.pt2", 3, {"inputs": names}),
                 onnx_poly3(tmp_path / "p.onnx")):
        model = load_model(path)
        assert model.inputs == tuple(names) and model.kind == "regression"
        chunks = [slice(0, 1000), slice(1000, 2500), slice(2500, 3000)]
        sums = sum(taylor_sums(model, x[c], w[c], sigma=sigma, batch=700) for c in chunks)
        whole = taylor_sums(model, x, w, sigma=sigma)
        np.testing.assert_allclose(sums.first.a, whole.first.a, rtol=1e-10)
        means = sums.means()
        assert means.groups == ("output",)
        np.testing.assert_allclose(means.first[0], m1, rtol=1e-5)
        np.testing.assert_allclose(means.first_unc[0], u1, rtol=1e-4)
        np.testing.assert_allclose(means.second[0][iu], m2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(means.second_unc[0][iu], u2, rtol=1e-4, atol=1e-7)
        scaled = means.scaled()
        np.testing.assert_allclose(scaled.first[0], m1 * sigma, rtol=1e-5)
        np.testing.assert_allclose(scaled.second[0, 0, 1], sigma[0] * sigma[1], rtol=1e-5)
        rows = means.rows()
        assert len(rows) == 3 + 6
        assert {r["order"] for r in rows} == {1, 2}
        assert int(means.n_first[0]) == 3000


def test_multiclass_groups_and_exact_hessians(tmp_path):
    net = MLP(n_in=4, n_out=3)
    model = load_model(save_ts(net, tmp_path / "m.pt",
                               {"inputs": ["a", "b", "c", "d"], "outputs": ["dy", "tt", "ot"]}))
    assert model.kind == "multiclass"
    assert model.names == ("output_dy", "output_tt", "output_ot")
    x = np.random.default_rng(0).normal(size=(400, 4))
    tc = taylor_coefficients(model, x)
    with torch.no_grad():
        top = net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    np.testing.assert_array_equal(tc.node, top)
    for e in range(5):  # reference: per-event autograd Hessian of the highest node
        xe = torch.tensor(x[e], dtype=torch.float32)

        def f(v, e=e):
            return net(v[None])[0, top[e]]

        h = torch.autograd.functional.hessian(f, xe).numpy()
        g = torch.autograd.functional.jacobian(f, xe).numpy()
        np.testing.assert_allclose(tc.first[e], g, rtol=1e-4, atol=1e-6)
        ref = h.copy()
        ref[np.diag_indices(4)] *= 0.5
        np.testing.assert_allclose(tc.second[e], ref, rtol=1e-4, atol=1e-6)
    sums = taylor_sums(model, x, order=2)
    assert sums.groups == ("output_dy", "output_tt", "output_ot", "all")
    np.testing.assert_array_equal(sums.first.n, [*np.bincount(top, minlength=3), 400])
    m, _ = sums.first.means()
    for c in range(3):
        if (top == c).any():
            np.testing.assert_allclose(m[c], np.abs(tc.first[top == c]).mean(0), rtol=1e-5)
    np.testing.assert_allclose(m[3], np.abs(tc.first).mean(0), rtol=1e-5)


def test_sums_merge_checks_subsample_and_nan(tmp_path):
    model = load_model(save_ts(Poly3(), tmp_path / "p.pt", {"inputs": ["x0", "x1", "x2"]}))
    x = np.random.default_rng(1).normal(size=(200, 3))
    x[5, 1] = np.nan
    mask = np.zeros(200, bool)
    mask[::4] = True
    s = taylor_sums(model, x, second_order_mask=mask)
    assert s.n_skipped == 1
    assert int(s.first.n[0]) == 199 and int(s.second.n[0]) == 50
    with pytest.raises(ValueError, match="order"):
        _ = s + taylor_sums(model, x, order=1)
    other = load_model(save_ts(TaylorPoly(), tmp_path / "t.pt", {"inputs": ["x0", "x1"]}))
    with pytest.raises(ValueError, match="inputs"):
        _ = s + taylor_sums(other, x[:, :2])
    with pytest.raises(ValueError, match="shape"):
        _ = AbsMeanSums.zeros(1, 3) + AbsMeanSums.zeros(1, 4)
    assert isinstance(sum([s, s]), TaylorSums)


def test_abs_mean_variance_formula():
    rng = np.random.default_rng(5)
    t = rng.normal(size=(500, 2))
    w = rng.normal(1.0, 0.8, size=500)  # many negative weights
    acc = AbsMeanSums.zeros(1, 2)
    acc.add(0, w[:200], t[:200])
    acc.add(0, w[200:], t[200:])
    m, u = acc.means()
    em, eu = weighted_abs_mean(t, w)
    np.testing.assert_allclose(m[0], em)
    np.testing.assert_allclose(u[0], eu)
    plain = AbsMeanSums.zeros(1, 2)
    plain.add(0, np.ones(500), t)
    _, u = plain.means()
    np.testing.assert_allclose(u[0], np.abs(t).std(0) / np.sqrt(500))  # s/√n for w = 1


# ---------------------------------------------------------------------------------------------
# loading, inputs, outputs


def test_outputs_are_derived_columns(tmp_path):
    net = MLP(n_in=3, n_out=3)
    model = load_model(save_ts(net, tmp_path / "m.pt", {"inputs": ["a", "b", "c"]}),
                       batch_size=7)
    chain = TransformChain(derived=(model,))
    assert chain.derived_names == ["output_0", "output_1", "output_2"]
    assert chain.columns_read() == ["a", "b", "c"]
    rng = np.random.default_rng(2)
    chunk = {"a": rng.normal(size=20), "b": rng.normal(size=20), "c": rng.normal(size=20),
             "_entry": np.arange(20)}
    chunk["b"][3] = np.nan
    out = chain.apply(chunk, "sim.parquet")
    with torch.no_grad():
        ref = net(torch.tensor(np.column_stack([chunk["a"], chunk["b"], chunk["c"]]),
                               dtype=torch.float32)).numpy()
    for k, name in enumerate(model.names):
        assert out[name].dtype == np.float64
        assert np.isnan(out[name][3])
        good = np.arange(20) != 3
        np.testing.assert_allclose(out[name][good], ref[good, k], rtol=1e-6)
    with pytest.raises(InputError, match="needs column 'c'"):
        model({"a": chunk["a"], "b": chunk["b"]}, "data.parquet")


def test_kinds(tmp_path):
    meta = {"inputs": ["a", "b", "c", "d"]}
    binary = load_model(save_ts(MLP(n_out=1, head="sigmoid"), tmp_path / "b.pt", meta))
    reg = load_model(save_ts(MLP(n_out=1, head="none"), tmp_path / "r.pt", meta))
    multi = load_model(save_ts(MLP(n_out=3), tmp_path / "m.pt", meta))
    assert (binary.kind, reg.kind, multi.kind) == ("binary", "regression", "multiclass")
    assert binary.names == ("output",)
    assert load_model(tmp_path / "r.pt", kind="binary").kind == "binary"
    with pytest.raises(InputError, match="kind 'foo'"):
        load_model(tmp_path / "r.pt", kind="foo")
    with pytest.raises(InputError, match="not a multi-class"):
        load_model(tmp_path / "r.pt", kind="multiclass")
    two = load_model(save_ts(MLP(n_out=2, head="none"), tmp_path / "r2.pt", meta))
    assert two.kind == "regression" and two.names == ("output_0", "output_1")
    x = np.random.default_rng(8).normal(size=(50, 4))
    means = taylor_sums(two, x, order=1).means()
    assert means.groups == ("output_0", "output_1")  # each node over all events
    for node in (0, 1):
        tc = taylor_coefficients(two, x, order=1, node=node)
        np.testing.assert_allclose(means.first[node], np.abs(tc.first).mean(0), rtol=1e-6)


def test_input_names_and_counts(tmp_path):
    onnx_path = onnx_poly3(tmp_path / "p.onnx")
    assert load_model(onnx_path).inputs == ("x0", "x1", "x2")
    assert load_model(onnx_path, inputs="u,v,w").inputs == ("u", "v", "w")
    (tmp_path / "onnx_named.pt").write_bytes(onnx_path.read_bytes())  # ONNX, whatever its name
    assert load_model(tmp_path / "onnx_named.pt").format == "onnx"
    with pytest.raises(InputError, match=r"p\.onnx takes 3 inputs but 2 names"):
        load_model(onnx_path, inputs=["a", "b"])
    ts = save_ts(Poly3(), tmp_path / "p.pt")
    with pytest.raises(InputError, match="input names are unknown"):
        load_model(ts)
    with pytest.raises(InputError, match=r"p\.pt does not run on 2 inputs"):
        load_model(ts, inputs=["a", "b"])
    with pytest.raises(InputError, match="appears twice"):
        load_model(ts, inputs=["a", "a", "b"])
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x01\x02 not a model at all")
    with pytest.raises(InputError, match="not a TorchScript, torch.export or ONNX"):
        load_model(tmp_path / "junk.onnx")


def test_scaler(tmp_path):
    scaler = {"x0": {"offset": 10.0, "scale": 2.0}, "x2": {"offset": -1.0, "scale": 4.0}}
    model = load_model(save_ts(Poly3(), tmp_path / "p.pt", {"inputs": ["x0", "x1", "x2"]}),
                       scaler=scaler)
    x = np.array([[12.0, 3.0, 7.0], [8.0, -1.0, -5.0]])
    z = np.column_stack([(x[:, 0] - 10) / 2, x[:, 1], (x[:, 2] + 1) / 4])
    np.testing.assert_allclose(model.evaluate(x)[:, 0], z[:, 0] * z[:, 1] + z[:, 2] ** 2,
                               rtol=1e-6)
    tc = taylor_coefficients(model, x, order=1)
    np.testing.assert_allclose(tc.first, np.column_stack([z[:, 1] / 2, z[:, 0],
                                                          2 * z[:, 2] / 4]), rtol=1e-6)
    scaler_file = tmp_path / "scaler.json"
    scaler_file.write_text(json.dumps(scaler))
    assert load_model(tmp_path / "p.pt", scaler=scaler_file).scaler["x2"] == (-1.0, 4.0)
    with pytest.raises(InputError, match="scaler input 'nope'"):
        load_model(tmp_path / "p.pt", scaler={"nope": {"offset": 0, "scale": 1}})
    with pytest.raises(InputError, match="non-zero scale"):
        load_model(tmp_path / "p.pt", scaler={"x0": {"offset": 0, "scale": 0}})


def test_parametric_network(tmp_path):
    path = save_ts(PNN(), tmp_path / "pnn.pt", {"inputs": ["x0", "x1", "mass"]})
    model = load_model(path, params={"mass": [300, 500]})
    assert model.inputs == ("x0", "x1") and model.model_inputs == ("x0", "x1", "mass")
    x = np.array([[0.5, -0.2], [-1.0, 0.3]])
    with pytest.raises(InputError, match="parametric"):
        model.evaluate(x)
    at300, at500 = model.at(300), model.at(mass=500)
    out300, out500 = at300.evaluate(x)[:, 0], at500.evaluate(x)[:, 0]

    def sig(u):
        return 1 / (1 + np.exp(-u))

    np.testing.assert_allclose(out300, sig(x[:, 0] * 3 + x[:, 1]), rtol=1e-6)
    assert not np.allclose(out300, out500)
    tc = taylor_coefficients(at500, x, order=1)
    s = sig(x[:, 0] * 5 + x[:, 1])
    np.testing.assert_allclose(tc.first[:, 0], s * (1 - s) * 5, rtol=1e-5)
    grid = model.grid()
    assert [m.names for m in grid] == [("output_mass300",), ("output_mass500",)]
    assert [m.param_values for m in grid] == [{"mass": 300.0}, {"mass": 500.0}]
    with pytest.raises(InputError, match="'width' is not a parameter"):
        model.at(width=3)
    with pytest.raises(InputError, match="parameter 'm' is not an input"):
        load_model(path, params={"m": [1]})
    again = pickle.loads(pickle.dumps(at500))  # our own object: reloads the file by path
    np.testing.assert_allclose(again.evaluate(x)[:, 0], out500)
    # a worker receives the network with every task: loaded once per process, and again
    # (with its digest checked) only when the file was touched
    assert pickle.loads(pickle.dumps(at500)) is again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    reloaded = pickle.loads(pickle.dumps(at500))
    assert reloaded is not again
    np.testing.assert_allclose(reloaded.evaluate(x)[:, 0], out500)
    other = save_ts(Poly3(), tmp_path / "other.pt", {"inputs": ["x0", "x1", "mass"]})
    path.write_bytes(other.read_bytes())  # another network under the same name
    with pytest.raises(InputError, match="changed on disk"):
        pickle.loads(pickle.dumps(at500))


def test_pt2_static_batch_and_metadata(tmp_path):
    path = save_pt2(Poly3(), tmp_path / "s.pt2", 3, {"inputs": ["x0", "x1", "x2"]},
                    dynamic=False)
    model = load_model(path)
    x = np.random.default_rng(4).normal(size=(19, 3))  # not a multiple of the batch of 8
    np.testing.assert_allclose(model.evaluate(x)[:, 0], x[:, 0] * x[:, 1] + x[:, 2] ** 2,
                               rtol=1e-5)
    tc = taylor_coefficients(model, x)
    np.testing.assert_allclose(tc.first[:, 2], 2 * x[:, 2], rtol=1e-5)
    assert len(model.sha256) == 64 and model.describe()["format"] == "torch.export"


# ---------------------------------------------------------------------------------------------
# never unpickle


class Payload:
    """Unpickling this creates the marker file: the proof that a payload ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_refused_and_never_run(tmp_path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(live))).close()
    assert live.exists()  # the payload is live: unpickling it would run it

    marker = tmp_path / "pwned"
    files = [tmp_path / "model.pkl", tmp_path / "model.pt"]
    for f in files:
        f.write_bytes(pickle.dumps(Payload(marker)))
    (tmp_path / "old.pth").write_bytes(pickle.dumps(Payload(marker), protocol=0))
    files.append(tmp_path / "old.pth")
    torch.save(Payload(marker), str(tmp_path / "saved.pt"))  # torch.save zip format
    files.append(tmp_path / "saved.pt")
    (tmp_path / "renamed.onnx").write_bytes(pickle.dumps(Payload(marker)))
    files.append(tmp_path / "renamed.onnx")
    for f in files:
        with pytest.raises(InputError) as err:
            load_model(f)
        message = str(err.value)
        assert "\n" not in message and f.name in message
        assert "never unpickles" in message
        assert "torch.jit.save" in message and "torch.export" in message \
            and "torch.onnx.export" in message
    assert not marker.exists()


def test_crafted_torchscript_archive_does_not_run_pickle(tmp_path):
    """TorchScript's C++ unpickler knows no Python callables ('Unknown type name io.open')."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/code/__torch__.py", "")
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("evil/data.pkl", pickle.dumps(Payload(marker), protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(InputError, match="cannot load the TorchScript archive"):
        load_model(path)
    assert not marker.exists()


def _rewrite_zip(path: Path, change) -> None:
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    items = change(items)
    with zipfile.ZipFile(path, "w") as z:
        for n, data in items.items():
            z.writestr(n, data)


def test_pt2_payloads_are_not_run(tmp_path):
    """torch.export.load would unpickle the sample inputs (weights_only=False fallback) and
    exec the stored guards; the audit reads the archive without either."""
    marker = tmp_path / "pwned"
    path = save_pt2(Poly3(), tmp_path / "p.pt2", 3, {"inputs": ["x0", "x1", "x2"]})

    def poison(items):
        for n in items:
            if "/data/sample_inputs/" in n:
                items[n] = pickle.dumps(Payload(marker))
            if n.endswith("models/model.json"):
                doc = json.loads(items[n])
                doc["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]
                items[n] = json.dumps(doc).encode()
        return items

    _rewrite_zip(path, poison)
    model = load_model(path)
    np.testing.assert_allclose(model.evaluate(np.array([[1.0, 2.0, 3.0]])), [[11.0]])
    assert not marker.exists()

    def pickled_weight(items):
        for n in items:
            if n.endswith("model_weights_config.json") or \
                    n.endswith("model_constants_config.json"):
                doc = json.loads(items[n])
                doc["config"]["w"] = {"path_name": "weight_0", "is_param": True,
                                      "use_pickle": True, "tensor_meta": None}
                items[n] = json.dumps(doc).encode()
        return items

    _rewrite_zip(path, pickled_weight)
    with pytest.raises(InputError, match="never unpickles"):
        load_model(path)

    path2 = save_pt2(Poly3(), tmp_path / "q.pt2", 3, {"inputs": ["x0", "x1", "x2"]})

    def bad_expr(items):
        for n in items:
            if n.endswith("models/model.json"):
                text = items[n].decode()
                assert '"expr_str": "' in text
                items[n] = text.replace('"expr_str": "', '"expr_str": "__import__(1)+', 1) \
                    .encode()
        return items

    _rewrite_zip(path2, bad_expr)
    with pytest.raises(InputError, match="symbolic expression"):
        load_model(path2)


# ---------------------------------------------------------------------------------------------
# SHAP


@pytest.mark.slow
def test_shap_additivity_torch_and_onnx(tmp_path):
    net = MLP(n_in=4, hidden=8, n_out=3)
    meta = {"inputs": ["a", "b", "c", "d"]}
    ts = load_model(save_ts(net, tmp_path / "m.pt", meta))
    ox = load_model(onnx_mlp(tmp_path / "m.onnx", net, meta))
    assert ox.derivative_method == "onnx2torch"
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 4))
    w = rng.uniform(0.5, 1.5, size=300)
    np.testing.assert_allclose(ts.evaluate(x), ox.evaluate(x), rtol=1e-5, atol=1e-6)

    res = shap_importance(ox, x, w, background=x[:40], max_events=30, n_background=20)
    assert res.explainer == "KernelExplainer"
    total = res.per_event.sum(axis=1) + res.base_values
    np.testing.assert_allclose(total, res.outputs, atol=1e-5)  # exactly additive
    assert res.additivity_error < 1e-5
    assert res.values.shape == (4, 4) and res.groups[-1] == "all"
    assert int(res.n_events[-1]) == 30 and len(res.rows()) == 16

    grad = shap_importance(ts, x, w, background=x[:40], max_events=30, n_background=20,
                           nsamples=500, method="gradient")
    assert grad.explainer == "GradientExplainer"
    np.testing.assert_allclose(grad.base_values, res.base_values, rtol=1e-5)
    spread = np.abs(grad.outputs - grad.base_values).mean()
    # expected gradients are additive in expectation: a Monte-Carlo residual remains
    assert grad.additivity_error < 0.25 * spread
    # both explainers agree on the ranking of the inputs
    assert np.argmax(grad.values[-1]) == np.argmax(res.values[-1])


def test_a_bug_while_reading_a_model_is_not_called_bad_input(monkeypatch, tmp_path):
    """Only what torch raises on an unreadable file makes the model bad input (exit 2); an
    error of another kind is a bug and keeps its type (exit 3 with the traceback)."""
    import torch

    from validator.errors import InputError
    from validator.model.formats import load_torchscript

    path = tmp_path / "net.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot load the TorchScript archive"):
        load_torchscript(path)

    def buggy(*args, **kwargs):
        raise TypeError("a bug in the reader")

    monkeypatch.setattr(torch.jit, "load", buggy)
    with pytest.raises(TypeError, match="a bug in the reader"):
        load_torchscript(path)
