"""Speed of the model audit: the sample network, the Taylor sums of a 30-input network, and
the SHAP methods against exact Shapley values on networks of 5 to 60 inputs.

Three sections (``--sections``, all by default), torch on ``--threads`` threads (a
comma-separated list times the ``sample`` and ``taylor`` sections on each; the ``shap``
section runs on the first):

``sample``: events per second of (a) evaluating ``sample_data/classifier.pt`` (TorchScript,
autograd) and ``.onnx`` (onnxruntime, onnx2torch to differentiate), (b) first-order Taylor
coefficients, (c) second order (all pairs; ``taylor_sums(order=2)`` gives the first order too),
over the whole sample (sim + data), the simulation with its weights, the data unweighted, as
``validator run`` takes them; then first + second order over the whole sample, and the second
order on a ``--subsample`` of events (what a run does: ``second_order_mask``).

``taylor``: the issue's network shape, a 30-64-64-1 tanh MLP with a sigmoid (TorchScript,
float32), on ``--taylor-events`` standard-normal events (gamma weights, 8% negative): events per
second of the first order on every event and of the second order on a tenth of them, with this
code (``validator.model.taylor``) and with the session-6 derivative path kept below as the
baseline (``torch.func`` vector-Jacobian products of the gradient under ``vmap`` over a float64
affine map, batches of 2^18/N events, a separate forward pass for the node), which must give
the same sums; the projection to a run's 1M + 1M events (second order on 50,000 per sample);
torch alone on the same network (the floor: forward and backward passes, nothing else); and
the float32 coefficients against the same network in float64.

``shap``: for each input count of ``--shap-inputs`` (default 5, 15, 30, 60), an N-64-64-1 tanh
MLP with a sigmoid trained for a few seconds on a task with interactions (TorchScript), 200
events and 50 background rows (the audit's ``SHAP_EVENTS``, ``SHAP_BACKGROUND``), each method's
time and its agreement with exact Shapley values of the same events: ``shap.explainers.Exact``
on all 200 events up to ``EXACT_REFERENCE_INPUTS`` inputs (with ``method="exact"`` beside
it); beyond, where shap.Exact takes seconds an event (2.6 s at 15 inputs) and 2^N coalitions
soon cannot be enumerated at all, permutation sampling with ``--reference-rounds`` rounds
(two independent halves: half their difference, printed, is the reference's own noise),
itself checked against shap.Exact on ``--exact-events`` events up to 15 inputs. Agreement:
the largest relative difference of mean |SHAP| over the inputs, the largest difference in
units of the stated uncertainty of the audit's 200-event mean
(|Δ|/σ, σ = std|φ_ref|/√200; the rule's tolerance is ``SHAP_TOLERANCE``), the Spearman rank
correlation of the inputs' mean |SHAP|, and the additivity error max|Σφ + E[f] − f|. The
sampling candidates (2, 4, 8, 16 rounds) run with ``--seeds`` seeds: the worst agreement is
printed, the median beside it. The slow per-event explainers (shap's Kernel and Gradient)
run on ``--slow-events`` events at 30 inputs and more; their time is scaled to 200 events
(they cost the same per event). The rule ``auto`` applies (``validator.model.shap_values``)
is marked.

Run with ``python benchmarks/bench_model.py [--sections taylor,shap] [--threads 1]``. Figures,
not pass/fail: machines are noisy, and the 1-minute load average is printed with them. On a
machine whose cores are busy with other work, torch's threads wait for each other: there one
thread can be faster than two (measured on the shared 2-core machine, load average 4: second
order 2.5 times faster on one thread). Each measurement follows a warm-up call.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sample import SAMPLE_DIR, sample_generator

SHAP_EVENTS = 200  # the audit's defaults (validator.stages.audit)
SHAP_BACKGROUND = 50
HIDDEN = 64
#: Up to this many inputs shap.Exact is the reference on all 200 events (2^7 x 50 x 200 =
#: 1.3M evaluations, seconds); beyond, permutation sampling with many rounds.
EXACT_REFERENCE_INPUTS = 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="sample,taylor,shap")
    parser.add_argument("--threads", default="2",
                        help="torch threads, or a comma-separated list to time each (default 2)")
    parser.add_argument("--subsample", type=int, default=50_000,
                        help="events of the second-order subsample (default 50000)")
    parser.add_argument("--formats", default="pt,onnx", help="model files to time")
    parser.add_argument("--taylor-events", type=int, default=400_000)
    parser.add_argument("--shap-inputs", default="5,15,30,60")
    parser.add_argument("--exact-events", type=int, default=10,
                        help="events on which the reference is checked against shap.Exact at "
                             "8 to 15 inputs")
    parser.add_argument("--slow-events", type=int, default=50,
                        help="events of shap's per-event explainers at 30 inputs and more")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds of each sampling candidate (default 3)")
    parser.add_argument("--reference-rounds", type=int, default=64,
                        help="permutation rounds of the reference beyond 15 inputs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    sections = args.sections.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    if "sample" in sections:
        for t, fmt in itertools.product(threads, args.formats.split(",")):
            torch.set_num_threads(t)
            bench_sample(fmt, args.subsample)
    with tempfile.TemporaryDirectory() as tmp:
        if "taylor" in sections:
            for t in threads:
                torch.set_num_threads(t)
                bench_taylor(Path(tmp), args.taylor_events)
        if "shap" in sections:
            torch.set_num_threads(threads[0])
            for n in (int(v) for v in args.shap_inputs.split(",")):
                bench_shap(Path(tmp), n, args)


# ---------------------------------------------------------------------------------------------
# the sample network


def bench_sample(fmt: str, subsample: int) -> None:
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
    sub_s = rng.random(len(xs)) < subsample / n
    sub_d = rng.random(len(xd)) < subsample / n
    n_sub = int(sub_s.sum() + sub_d.sum())
    samples = ((xs, ws, sub_s), (xd, None, sub_d))  # data unweighted, as in a run
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
    print(f"\n[sample] {model.path.name} ({model.format}, derivatives: "
          f"{model.derivative_method}), {n} events ({len(xs)} sim + {len(xd)} data), "
          f"{len(inputs)} inputs, torch on {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  (a) evaluation              {t_eval:7.2f} s  {n / t_eval:12,.0f} events/s")
    print(f"  (b) first order             {t_first:7.2f} s  {n / t_first:12,.0f} events/s")
    print(f"  (c) second order, all pairs {t_second:7.2f} s  {n / t_second:12,.0f} "
          "events/s (first order included)")
    print(f"  first + second order over the whole sample: {t_first + t_second:.1f} s")
    print(f"  second order on a {n_sub}-event subsample, first order on the rest "
          f"(as a run does): {seconds['subsample']:.1f} s")


# ---------------------------------------------------------------------------------------------
# the benchmark networks


def make_mlp(n_inputs: int, seed: int = 0, steps: int = 300) -> Any:
    """An N-64-64-1 tanh MLP with a sigmoid, trained (Adam, ``steps`` minibatches of 512) to
    separate standard-normal events by a label with a main effect, a product, a square and
    a sum over every input: a network with interactions, as a trained classifier has."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(n_inputs, HIDDEN), torch.nn.Tanh(),
                              torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Tanh(),
                              torch.nn.Linear(HIDDEN, 1), torch.nn.Sigmoid())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((20_000, n_inputs))
    c = [min(i, n_inputs - 1) for i in range(4)]
    score = x[:, c[0]] + 0.8 * x[:, c[1]] * x[:, c[2]] - 0.5 * x[:, c[3]] ** 2 \
        + 0.3 * x[:, :6].sum(axis=1) + 0.1 * x.sum(axis=1)
    label = (score + rng.logistic(size=len(x)) > 0).astype(np.float32)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(label)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (512,), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy(net(xt[idx])[:, 0], yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def save_torchscript(net: Any, path: Path, n_inputs: int) -> Path:
    import torch

    meta = {"inputs": [f"x{i:02d}" for i in range(n_inputs)]}
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={"validator.json": json.dumps(meta)})
    return path


# ---------------------------------------------------------------------------------------------
# Taylor sums: this code against the session-6 path


def session6_taylor_sums(model: Any, x: np.ndarray, w: np.ndarray, order: int) -> Any:
    """The session-6 derivative path for a one-node network, with its accumulation: the
    baseline of the ``taylor`` section (the sums must equal this code's)."""
    import torch

    from validator.model.taylor import TaylorSums

    fn = model.torch_forward()
    n, dim = x.shape
    batch = 32_768 if order == 1 else max(256, 2**18 // dim)
    block = max(1024, 2**23 // (dim * dim + 1))
    sums = TaylorSums.empty(model, order)
    iu = np.triu_indices(dim)
    basis = torch.eye(dim, dtype=torch.float64)
    for start in range(0, n, block):
        xb = x[start:start + block]
        grad = np.zeros((len(xb), dim))
        hess = np.zeros((len(xb), dim, dim)) if order == 2 else None
        with torch.no_grad():
            for s in range(0, len(xb), batch):
                xt = torch.as_tensor(xb[s:s + batch], dtype=torch.float64)
                out = fn(xt)
                idx = torch.full((len(xt),), 0)
                mask = torch.nn.functional.one_hot(idx, out.shape[1]).to(out.dtype)

                def selected(z: Any, mask: Any = mask) -> Any:
                    return (fn(z) * mask).sum()

                grad_fn = torch.func.grad(selected)
                if order == 1:
                    grad[s:s + batch] = grad_fn(xt).double().numpy()
                    continue
                g, vjp = torch.func.vjp(grad_fn, xt)
                tangents = basis[:, None, :].expand(dim, *xt.shape)
                rows = torch.func.vmap(lambda v, vjp=vjp: vjp(v)[0])(tangents)
                grad[s:s + batch] = g.double().numpy()
                hess[s:s + batch] = rows.permute(1, 0, 2).double().numpy()
        wb = w[start:start + block]
        sums.first.add(0, wb, grad)
        if hess is not None:
            t = hess.copy()
            t[:, np.arange(dim), np.arange(dim)] *= 0.5
            sums.second.add(0, wb, t[:, iu[0], iu[1]])
    return sums


def _rate(step: Any, n: int, repeat: int = 2) -> tuple[float, Any]:
    """Events per second of ``step()`` on ``n`` events (best of ``repeat``) and its result."""
    best, out = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = step()
        best = min(best, time.perf_counter() - start)
    return n / best, out


def bench_taylor(tmp: Path, n_events: int) -> None:
    import torch

    from validator.model import load_model, taylor_sums

    dim = 30
    net = make_mlp(dim, seed=30)
    m32 = load_model(save_torchscript(net, tmp / "taylor30.pt", dim))
    m64 = load_model(save_torchscript(copy.deepcopy(net).double(), tmp / "taylor30_64.pt", dim))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n_events, dim))
    w = rng.gamma(2.0, size=n_events) * np.where(rng.random(n_events) < 0.08, -1, 1)
    n2 = n_events // 10
    x2, w2 = x[:n2], w[:n2]
    print(f"\n[taylor] 30-{HIDDEN}-{HIDDEN}-1 MLP (TorchScript, float32), {n_events} events "
          f"(second order on {n2}), torch on {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    rates = {}
    results = {}
    for name, fn in (("session 6", session6_taylor_sums),
                     ("this code", lambda m, xx, ww, o: taylor_sums(m, xx, ww, order=o))):
        start = time.perf_counter()
        fn(m32, x[:4096], w[:4096], 2)  # warm-up, timed: a worker pays it once
        fn(m32, x[:4096], w[:4096], 1)
        first_call = time.perf_counter() - start
        r1, s1 = _rate(lambda fn=fn: fn(m32, x, w, 1), n_events)
        r2, s2 = _rate(lambda fn=fn: fn(m32, x2, w2, 2), n2)
        rates[name], results[name] = (r1, r2), (s1, s2)
        run = 2e6 / r1 + 1e5 / r2
        print(f"  {name:10s} first order {r1:10,.0f} events/s   second order {r2:9,.0f} events/s"
              f"   first calls (warm-up) {first_call:5.2f} s   a run's 1M + 1M events, second "
              f"order on 2 x 50,000: {run:5.1f} s")
    (b1, b2), (a1, a2) = rates["session 6"], rates["this code"]
    print(f"  speed-up: first order x{a1 / b1:.1f}, second order x{a2 / b2:.1f}")
    f1, f2 = torch_floor(net, dim)
    print(f"  torch alone on the nn.Module (no sums, no conversions): forward + backward "
          f"{f1:10,.0f} events/s, gradient + {dim} backward passes {f2:9,.0f} events/s: this "
          f"code runs at {a1 / f1:.0%} and {a2 / f2:.0%} of it")
    old, new = (r[1].means() for r in (results["session 6"], results["this code"]))
    same = max(_rel(new.first, old.first), _rel(new.second, old.second))
    print(f"  same sums as session 6: largest relative difference of a mean |t| {same:.1e}")
    p32 = taylor_sums(m32, x, w, order=2, second_order_mask=np.arange(n_events) < n2).means()
    p64 = taylor_sums(m64, x, w, order=2, second_order_mask=np.arange(n_events) < n2).means()
    r64_1, _ = _rate(lambda: taylor_sums(m64, x, w, order=1), n_events, 1)
    r64_2, _ = _rate(lambda: taylor_sums(m64, x2, w2, order=2), n2, 1)
    print(f"  float32 network against the same network in float64: largest relative difference "
          f"of a mean |t|: first order {_rel(p32.first, p64.first):.1e}, second order "
          f"{_rel(p32.second, p64.second):.1e} (statistical uncertainty: at least "
          f"{np.min(p64.first_unc / p64.first):.1e}, {np.min(p64.second_unc / p64.second):.1e})")
    print(f"  the float64 network: first order {r64_1:10,.0f} events/s, second order "
          f"{r64_2:9,.0f} events/s")


def torch_floor(net: Any, dim: int) -> tuple[float, float]:
    """Events per second of torch alone on a batch of 16,384 (4,096) float32 events: one
    forward and one backward pass (first order), the gradient's graph and ``dim`` backward
    passes through it (second order)."""
    import torch

    net = copy.deepcopy(net)
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(16_384, dim)

    def first() -> None:
        z = x.clone().requires_grad_(True)
        torch.autograd.grad(net(z).sum(), z)

    def second() -> None:
        z = x[:4096].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(z).sum(), z, create_graph=True)
        for j in range(dim):
            torch.autograd.grad(g[:, j].sum(), z, retain_graph=True)

    first(), second()
    return _rate(first, 16_384, 5)[0], _rate(second, 4096, 5)[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.abs(b) > 0
    return float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok]))) if ok.any() else 0.0


# ---------------------------------------------------------------------------------------------
# SHAP methods against exact Shapley values


def expected_gradients(model: Any, xs: np.ndarray, bg: np.ndarray, nodes: int = 16
                       ) -> np.ndarray:
    """Expected gradients (Erion et al., arXiv:1906.10670; what ``shap.GradientExplainer``
    samples) without Monte-Carlo noise: the path integral of integrated gradients by
    Gauss-Legendre quadrature (``nodes`` points), averaged over every background row. One
    batched backward pass: the fastest gradient-based attribution a network allows."""
    import torch

    fn = model.torch_forward()
    n, dim = xs.shape
    alpha, weight = np.polynomial.legendre.leggauss(nodes)
    alpha, weight = torch.as_tensor((alpha + 1) / 2), torch.as_tensor(weight / 2)
    b = torch.as_tensor(bg)
    phi = np.zeros((n, dim, model.n_outputs))
    per = max(1, 2**17 // (len(bg) * nodes))
    for s in range(0, n, per):
        diff = torch.as_tensor(xs[s:s + per])[:, None, :] - b[None]  # (e, B, N)
        pts = b[None, None] + alpha[None, :, None, None] * diff[:, None]  # (e, K, B, N)
        z = pts.reshape(-1, dim).clone().requires_grad_(True)
        with torch.enable_grad():
            out = fn(z)
            for c in range(model.n_outputs):
                (g,) = torch.autograd.grad(out[:, c].sum(), z, retain_graph=True)
                g = g.double().reshape(*pts.shape)
                path = torch.einsum("ekbn,k->ebn", g, weight)
                phi[s:s + len(diff), :, c] = (path * diff).mean(dim=1).numpy()
    return phi


def _shap_run(model: Any, xs: np.ndarray, bg: np.ndarray, method: str,
              nsamples: int | None = None, seed: int = 0) -> np.ndarray:
    from validator.model import shap_importance

    res = shap_importance(model, xs, background=bg, method=method, max_events=len(xs),
                          n_background=len(bg), nsamples=nsamples, seed=seed)
    assert len(res.per_event) == len(xs) and res.n_background == len(bg)
    return res.per_event


def _shap_exact(model: Any, xs: np.ndarray, bg: np.ndarray) -> np.ndarray:
    import shap

    explainer = shap.explainers.Exact(model.evaluate,
                                      shap.maskers.Independent(bg, max_samples=len(bg)))
    return np.asarray(explainer(xs, silent=True).values).reshape(len(xs), xs.shape[1], -1)


def bench_shap(tmp: Path, dim: int, args: argparse.Namespace) -> None:
    import torch
    from scipy.stats import spearmanr

    from validator.model import load_model
    from validator.model.shap_values import SAMPLING_ROUNDS, SHAP_TOLERANCE, auto_method

    start = time.perf_counter()
    model = load_model(save_torchscript(make_mlp(dim, seed=dim), tmp / f"shap{dim}.pt", dim))
    rng = np.random.default_rng(dim)
    xs = rng.standard_normal((SHAP_EVENTS, dim))
    bg = rng.standard_normal((SHAP_BACKGROUND, dim))
    f, base = model.evaluate(xs)[:, 0], model.evaluate(bg)[:, 0].mean()
    _shap_run(model, xs[:5], bg, "sampling", 2)  # warm-up
    print(f"\n[shap] {dim}-{HIDDEN}-{HIDDEN}-1 MLP (TorchScript), {SHAP_EVENTS} events, "
          f"{SHAP_BACKGROUND} background rows, torch on {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} (network trained in "
          f"{time.perf_counter() - start:.1f} s)")
    rows: list[tuple[str, float, np.ndarray, np.ndarray]] = []  # label, s, events, φ

    def timed(label: str, events: np.ndarray, call: Any) -> np.ndarray:
        t0 = time.perf_counter()
        phi = call(xs[events])
        rows.append((label, time.perf_counter() - t0, events, phi[:, :, 0]))
        return phi[:, :, 0]

    every = np.arange(SHAP_EVENTS)
    halves: list[np.ndarray] = []
    if dim <= EXACT_REFERENCE_INPUTS:
        ref = timed("shap.Exact (reference)", every, lambda e: _shap_exact(model, e, bg))
        exact = timed("exact: validator enumeration", every,
                      lambda e: _shap_run(model, e, bg, "exact"))
        print(f"  validator's enumeration against shap.Exact on the same {SHAP_EVENTS} events: "
              f"largest |Δφ| {np.max(np.abs(exact - ref)):.1e}")
    else:
        r = args.reference_rounds // 2
        halves = [timed(f"sampling, {r} rounds (reference half {k + 1})", every,
                        lambda e, k=k: _shap_run(model, e, bg, "sampling", r, 1000 + k))
                  for k in range(2)]
        ref = (halves[0] + halves[1]) / 2
        if dim <= 15:  # the reference against exact Shapley values where those can be had
            few = every[:args.exact_events]
            t0 = time.perf_counter()
            exact = _shap_exact(model, xs[few], bg)[:, :, 0]
            seconds = time.perf_counter() - t0
            m_exact, m_ref = np.abs(exact).mean(axis=0), np.abs(ref[few]).mean(axis=0)
            sigma_few = np.abs(exact).std(axis=0) / np.sqrt(len(few))
            print(f"  reference ({args.reference_rounds} rounds) against shap.Exact on "
                  f"{len(few)} of the events ({seconds * SHAP_EVENTS / len(few):.0f} s per "
                  f"200 events): max rel {np.max(np.abs(m_ref - m_exact) / m_exact):.1e}, "
                  f"max |Δ|/σ {np.max(np.abs(m_ref - m_exact) / sigma_few):.2f} (σ of a "
                  f"{len(few)}-event mean), largest |Δφ| {np.max(np.abs(ref[few] - exact)):.1e}")
    sigma = np.abs(ref).std(axis=0) / np.sqrt(SHAP_EVENTS)  # the audit's stated uncertainty
    slow = every if dim < 30 else every[:args.slow_events]
    timed("kernel: shap.KernelExplainer, 1000 coalitions", slow,
          lambda e: _shap_run(model, e, bg, "kernel"))
    timed("gradient: shap.GradientExplainer, 200 samples", slow,
          lambda e: _shap_run(model, e, bg, "gradient"))
    timed("expected gradients, exact expectation", every,
          lambda e: expected_gradients(model, e, bg))
    for rounds in (2, 4, 8, 16):
        for seed in range(args.seeds):
            timed(f"sampling, {rounds} rounds", every,
                  lambda e, rounds=rounds, seed=seed: _shap_run(model, e, bg, "sampling",
                                                                rounds, seed))
    pos = {int(e): k for k, e in enumerate(every)}
    chosen = auto_method(dim)
    label = {"sampling": f"sampling, {SAMPLING_ROUNDS} rounds",
             "exact": "exact: validator enumeration",
             "kernel": "kernel: shap.KernelExplainer, 1000 coalitions"}[chosen]
    table: dict[str, list[tuple[float, int, float, float, float, float]]] = {}
    for name, seconds, events, phi in rows:
        r = ref[[pos[int(e)] for e in events]]
        m_ref, m = np.abs(r).mean(axis=0), np.abs(phi).mean(axis=0)
        table.setdefault(name, []).append((
            seconds * SHAP_EVENTS / len(events), len(events),
            np.max(np.abs(m - m_ref) / m_ref), np.max(np.abs(m - m_ref) / sigma),
            spearmanr(m_ref, m).statistic if dim > 2 else np.nan,
            np.max(np.abs(phi.sum(axis=1) + base - f[events]))))
    print(f"  {'method':48s} {'s / 200 ev':>10s} {'events':>6s} {'max rel':>8s} "
          f"{'max |Δ|/σ':>9s} {'Spearman':>8s} {'additivity':>10s}   (several seeds: "
          "median time, worst [median] agreement)")
    for name, entries in table.items():
        sec, n, rel, z, rho, add = (np.array(v) for v in zip(*entries, strict=True))
        mark = " <- auto" if name == label else ""
        if len(entries) == 1:
            print(f"  {name:48s} {sec[0]:10.2f} {n[0]:6d} {rel[0]:8.1e} {z[0]:9.2f} "
                  f"{rho[0]:8.4f} {add[0]:10.1e}{mark}")
        else:
            print(f"  {name:48s} {np.median(sec):10.2f} {n[0]:6d} {rel.max():8.1e} "
                  f"{z.max():9.2f} {rho.min():8.4f} {add.max():10.1e}   [{np.median(rel):.1e}, "
                  f"{np.median(z):.2f}] {len(entries)} seeds{mark}")
    if halves:
        d = np.abs(np.abs(halves[0]).mean(axis=0) - np.abs(halves[1]).mean(axis=0)) / 2
        print(f"  reference noise (half the difference of its halves): max rel "
              f"{np.max(d / np.abs(ref).mean(axis=0)):.1e}, max |Δ|/σ {np.max(d / sigma):.2f}")
    print(f"  auto: {chosen} (tolerance: |Δ|/σ <= {SHAP_TOLERANCE})")


if __name__ == "__main__":
    main()
