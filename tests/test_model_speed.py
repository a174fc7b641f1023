"""The fast network audit (issue 32) against its references: batched float32 Taylor
coefficients (Wunsch et al., arXiv:1803.08782) against float64 autograd event by event, and
the vectorised Shapley estimators (Lundberg & Lee 2017) against ``shap.explainers.Exact``.
Numbers only: the timings are in ``benchmarks/bench_model.py``."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
shap = pytest.importorskip("shap")

from test_model import MLP, save_ts  # noqa: E402

from validator.model import (  # noqa: E402
    load_model,
    shap_importance,
    shap_values,
    taylor_coefficients,
    taylor_sums,
)
from validator.model.shap_values import (  # noqa: E402
    SAMPLING_ROUNDS,
    SHAP_TOLERANCE,
    auto_method,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")

NAMES = ["a", "b", "c", "d", "e", "f"]
SCALER = {"a": {"offset": 1.0, "scale": 2.0}, "c": {"offset": -0.5, "scale": 0.25},
          "mass": {"offset": 300.0, "scale": 100.0}}


class Parametric(torch.nn.Module):
    """A tanh network of six inputs and a mass parameter (the last input)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.l1 = torch.nn.Linear(7, 12)
        self.l2 = torch.nn.Linear(12, 1)

    def forward(self, x):
        return torch.sigmoid(self.l2(torch.tanh(self.l1(x))))


def _reference(module, x: np.ndarray, scaler: dict, names: list[str], node: int = 0,
               mass: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gradients and Hessians of node ``node`` with respect to the raw inputs, event by event,
    in float64 (``torch.autograd.functional``), the scaler and the mass written out."""
    net = copy.deepcopy(module).double()
    offset = torch.tensor([scaler.get(n, {}).get("offset", 0.0) for n in names],
                          dtype=torch.float64)
    scale = torch.tensor([scaler.get(n, {}).get("scale", 1.0) for n in names],
                         dtype=torch.float64)

    def f(row):
        z = row if mass is None else torch.cat([row, torch.tensor([mass], dtype=row.dtype)])
        return net(((z - offset) / scale)[None])[0, node]

    grads, hessians = [], []
    for row in torch.as_tensor(x, dtype=torch.float64):
        grads.append(torch.autograd.functional.jacobian(f, row).numpy())
        hessians.append(torch.autograd.functional.hessian(f, row).numpy())
    return np.array(grads), np.array(hessians)


def _monomial(hess: np.ndarray) -> np.ndarray:
    t = hess.copy()
    d = np.arange(hess.shape[1])
    t[:, d, d] *= 0.5
    return t


def test_batched_float32_coefficients_equal_float64_autograd(tmp_path):
    """Every event's t_i and t_ij of a float32 multi-class network with a scaler, batched
    (batches of 7 events, so the last is partial), equal float64 autograd event by event to
    float32 precision; the means to 1e-6."""
    net = MLP(n_in=4, hidden=16, n_out=3)
    scaler = {k: v for k, v in SCALER.items() if k in NAMES[:4]}
    model = load_model(save_ts(net, tmp_path / "m.pt", {"inputs": NAMES[:4]}), scaler=scaler)
    x = np.random.default_rng(1).normal(1.0, 2.0, size=(40, 4))
    tc = taylor_coefficients(model, x, order=2, batch=7)
    top = model.evaluate(x).argmax(axis=1)
    assert np.array_equal(tc.node, top)
    g, h = zip(*(_reference(net, x[i:i + 1], scaler, NAMES[:4], int(top[i]))
                 for i in range(len(x))), strict=True)
    g, t2 = np.concatenate(g), _monomial(np.concatenate(h))
    np.testing.assert_allclose(tc.first, g, rtol=1e-5, atol=1e-6 * np.abs(g).max())
    np.testing.assert_allclose(tc.second, t2, rtol=1e-5, atol=1e-6 * np.abs(t2).max())
    np.testing.assert_allclose(np.abs(tc.first).mean(axis=0), np.abs(g).mean(axis=0),
                               rtol=1e-6)
    big = np.abs(t2).mean(axis=0) > 1e-3 * np.abs(t2).mean(axis=0).max()
    np.testing.assert_allclose(np.abs(tc.second).mean(axis=0)[big],
                               np.abs(t2).mean(axis=0)[big], rtol=1e-6)


def test_parametric_network_derivatives_skip_the_parameter(tmp_path):
    """A fixed parameter is a model input but not a data input: the derivatives are the
    data inputs' only, through the scaler, equal to float64 autograd."""
    module = Parametric()
    names = [*NAMES, "mass"]
    model = load_model(save_ts(module, tmp_path / "p.pt", {"inputs": names}), scaler=SCALER,
                       params={"mass": [250.0]}).at(250.0)
    x = np.random.default_rng(2).normal(size=(25, 6))
    tc = taylor_coefficients(model, x, order=2)
    g, h = _reference(module, x, SCALER, names, mass=250.0)
    np.testing.assert_allclose(tc.first, g, rtol=1e-5, atol=1e-6 * np.abs(g).max())
    np.testing.assert_allclose(tc.second, _monomial(h), rtol=1e-5,
                               atol=1e-6 * np.abs(h).max())


def test_torchscript_hessians_stay_exact_over_repeated_calls(tmp_path):
    """A TorchScript module's graph executor specialises its graph after the first calls;
    ``torch.func`` Hessians of such a module come back as zeros once that happened under a
    ``torch.func`` transform. The audit's plain autograd stays exact: calls of every batch
    size, before and after the module went through ``torch.func``, equal the reference."""
    net = MLP(n_in=5, hidden=8, n_out=1, head="sigmoid")
    model = load_model(save_ts(net, tmp_path / "m.pt", {"inputs": NAMES[:5]}))
    x = np.random.default_rng(3).normal(size=(24, 5))
    _, h = _reference(net, x, {}, NAMES[:5])
    expected = _monomial(h)
    module = model._backend.torch_module
    grad_fn = torch.func.grad(lambda z: module(z).sum())
    for k, batch in enumerate((24, 5, 24, 16, 3, 24)):
        if k == 3:  # the module goes through torch.func transforms
            for _ in range(3):
                torch.func.vjp(grad_fn, torch.as_tensor(x, dtype=torch.float32))
        tc = taylor_coefficients(model, x, order=2, batch=batch)
        np.testing.assert_allclose(tc.second, expected, rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max())


def test_float32_sums_agree_with_the_float64_network(tmp_path):
    """The means of |t| (weighted, negative weights included) from the float32 network and
    from the same network in float64 agree to 1e-6 relative, both orders."""
    net = MLP(n_in=6, hidden=32, n_out=1, head="sigmoid")
    m32 = load_model(save_ts(net, tmp_path / "f32.pt", {"inputs": NAMES}))
    m64 = load_model(save_ts(copy.deepcopy(net).double(), tmp_path / "f64.pt",
                             {"inputs": NAMES}))
    assert m32._backend.dtype == np.float32 and m64._backend.dtype == np.float64
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20_000, 6))
    w = rng.gamma(2.0, size=len(x)) * np.where(rng.random(len(x)) < 0.1, -1, 1)
    mask = rng.random(len(x)) < 0.2
    a, b = (taylor_sums(m, x, w, order=2, second_order_mask=mask).means() for m in (m32, m64))
    np.testing.assert_allclose(a.first, b.first, rtol=1e-6)
    np.testing.assert_allclose(a.second, b.second, rtol=1e-6)
    assert a.n_second.tolist() == b.n_second.tolist() == [int(mask.sum())]


# ---------------------------------------------------------------------------------------------
# SHAP


def _shap_exact(model, xs: np.ndarray, bg: np.ndarray) -> np.ndarray:
    explainer = shap.explainers.Exact(model.evaluate,
                                      shap.maskers.Independent(bg, max_samples=len(bg)))
    return np.asarray(explainer(xs, silent=True).values).reshape(len(xs), xs.shape[1], -1)


def test_exact_enumeration_equals_shap_exact(tmp_path):
    """``method="exact"`` (all 2^N coalitions, evaluated in model space) gives shap.Exact's
    values for a multi-class network with a scaler and a fixed parameter, to the float32
    rounding of the network's outputs (a batch's rounding depends on its size)."""
    net = MLP(n_in=5, hidden=8, n_out=3)
    scaler = {k: v for k, v in SCALER.items() if k in NAMES[:5]}
    model = load_model(save_ts(net, tmp_path / "m.pt", {"inputs": NAMES[:5]}), scaler=scaler)
    rng = np.random.default_rng(5)
    xs, bg = rng.normal(1.0, 2.0, size=(6, 5)), rng.normal(1.0, 2.0, size=(15, 5))
    res = shap_importance(model, xs, background=bg, method="exact", max_events=6,
                          n_background=15)
    assert res.explainer == "validator.exact" and res.nsamples == 2**5
    reference = _shap_exact(model, xs, bg)
    np.testing.assert_allclose(res.per_event, reference, rtol=0, atol=1e-7)
    assert res.additivity_error < 1e-6
    # the coalitions split over calls of the network (2 per call): the same values
    chunked, _ = shap_values.exact_shap(model, xs, bg, max_rows=2 * len(bg))
    np.testing.assert_allclose(chunked, reference, rtol=0, atol=1e-7)

    pnn = load_model(save_ts(Parametric(), tmp_path / "p.pt", {"inputs": [*NAMES, "mass"]}),
                     scaler=SCALER, params={"mass": [250.0]}).at(250.0)
    xs6, bg6 = rng.normal(size=(3, 6)), rng.normal(size=(10, 6))
    res = shap_importance(pnn, xs6, background=bg6, method="exact", max_events=3,
                          n_background=10)
    np.testing.assert_allclose(res.per_event, _shap_exact(pnn, xs6, bg6), rtol=0, atol=1e-7)


def test_auto_sampling_is_additive_and_within_tolerance_of_shap_exact(tmp_path):
    """Above the exact range ``auto`` samples permutations: every event's values add up to
    f(x) − E[f] exactly, the same seed gives the same values, and every input's mean |SHAP|
    lies within ``SHAP_TOLERANCE`` of its stated uncertainty of shap.Exact's."""
    assert [auto_method(n) for n in (1, 4, 5, 6, 30, 60)] == \
        ["kernel", "kernel", "exact", "sampling", "sampling", "sampling"]
    net = MLP(n_in=6, hidden=16, n_out=1, head="sigmoid")
    model = load_model(save_ts(net, tmp_path / "m.pt", {"inputs": NAMES}))
    rng = np.random.default_rng(6)
    x, bg = rng.normal(size=(400, 6)), rng.normal(size=(20, 6))
    res = shap_importance(model, x, background=bg, max_events=60, n_background=20, seed=3)
    assert res.explainer == "validator.sampling" and res.nsamples == SAMPLING_ROUNDS
    np.testing.assert_allclose(res.per_event.sum(axis=1) + res.base_values, res.outputs,
                               rtol=0, atol=1e-12)
    again = shap_importance(model, x, background=bg, max_events=60, n_background=20, seed=3)
    np.testing.assert_array_equal(again.per_event, res.per_event)
    # the same 60 events (the subsample is drawn before the explainer runs)
    exact = shap_importance(model, x, background=bg, method="exact", max_events=60,
                            n_background=20, seed=3)
    np.testing.assert_allclose(exact.per_event, _shap_exact(model, exact_events(x, 60, 3), bg),
                               rtol=0, atol=1e-7)
    ref = np.abs(exact.per_event[:, :, 0])
    sigma = ref.std(axis=0) / np.sqrt(len(ref))
    assert np.all(np.abs(res.values[0] - ref.mean(axis=0)) <= SHAP_TOLERANCE * sigma)
    assert not np.array_equal(res.per_event, exact.per_event)  # sampled, not enumerated


def exact_events(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The events ``shap_importance(max_events=n, seed=seed)`` explains."""
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), n, replace=False))]
