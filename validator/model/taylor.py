"""Taylor-coefficient feature importances of the audited network, accumulated as sums.

Method: A. Wunsch, S. Friese, R. Wagner, G. Quast, "Identifying the relevant dependencies of
the neural network response on characteristics of the input space", Comput. Softw. Big Sci.
2 (2018) 5, arXiv:1803.08782. Convention of the KIT ``tayloranalysis`` package: the
coefficient of each monomial of the Taylor expansion of the output f at the event,

    t_i  = ∂f/∂x_i,    t_ii = ½ ∂²f/∂x_i²,    t_ij = ∂²f/∂x_i∂x_j  (i < j),

reported as the mean of the absolute value over events, ⟨|t|⟩. Derivatives are exact
(autograd) for TorchScript and torch.export networks, and for ONNX networks converted with
``onnx2torch``; otherwise central finite differences (``derivative_method``).

Derivatives in batches (:func:`_autograd`): rows are independent events, so the gradient of
Σ_b f(z_b) with respect to the batch gives every event's gradient in one forward and one
backward pass, and the gradient of Σ_b ∂f/∂z_j(z_b) gives row j of every event's Hessian: N
more backward passes through the gradient's graph. The network runs in its own precision
(float32 for a float32 network: its coefficients agree with the same network's in float64 to
1e-8 relative, measured for first and second order) on the model-space inputs its
evaluation sees; the chain rule through the scaler is applied in float64 afterwards, and the
sums are float64. Measured on a 30-64-64-1 network (``benchmarks/bench_model.py``, one
thread): 0.97-1.0M events/s first order and 47,000-50,000 second order (77% and 91% of torch
alone on the same network), against 0.51-0.56M and 11,900-12,600 with the ``torch.func``
vector-Jacobian products under ``vmap`` of session 6, which also ran the input map in
float64 inside the graph and a second forward pass for the output node.

Output nodes (as ``tayloranalysis`` with ``eval_max_output_node_only``): a multi-class network
is differentiated, event by event, at its highest output node c: the sums of node c gather
the events whose highest output is c (the analysis category), and the group ``all`` gathers
every event (each at its own highest node). A one-node network has one group; a multi-output
regression has one group per node, each over all events.

Averages and uncertainties (:class:`AbsMeanSums`): for events e with weights w_e,

    m = Σ w|t| / Σ w,      Var(m) ≈ Σ w² (|t| − m)² / (Σ w)²,

the weighted mean and its linearised (ratio-estimator, "Kish") variance; for unweighted data
(w = 1) this is s²/n with the population variance s². **Negative weights** enter with their
sign in both sums (|t| is averaged with the signed weights, as every simulated distribution
is) and through w² in the variance. The sums Σw, Σw², Σw|t|, Σw²|t|, Σw²t² per group and
coefficient are additive, so chunks and workers merge with ``+``. Coefficients scaled to
standardised inputs (t_i·σ_i, t_ij·σ_i·σ_j, with σ from the simulation) are the same sums
times constants, so σ may be given when accumulating or at :meth:`TaylorSums.means`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from validator.model.formats import read_errors
from validator.stats.weighted_means import AbsMeanSums

if TYPE_CHECKING:
    from validator.model.load import AuditedModel

#: Group name of all events (multi-class networks: each at its highest node).
ALL = "all"
#: Events per autograd batch, first order (one forward and one backward pass per batch):
#: measured on the 30-input network, one thread, 0.74-0.80M events/s at 4,096 and 16,384,
#: 0.69-0.71M at 65,536, 0.47-0.49M at 262,144 (a batch's activations outgrow the cache);
#: again in session 10 in fresh processes: 0.76 core-s per million events at 8,192, 0.80 at
#: 4,096, 0.86 at 16,384.
FIRST_ORDER_BATCH = 8_192
#: Events per autograd batch, second order (N backward passes through the gradient's graph):
#: measured as above, 33,000-36,000 events/s at 1,024, 37,000 at 2,048, 40,000 at 4,096,
#: 33,000-35,000 at 8,192 (the torch.export form of the network the same).
SECOND_ORDER_BATCH = 4_096


# ---------------------------------------------------------------------------------------------
# mergeable weighted means of |value|


# ---------------------------------------------------------------------------------------------
# per-event coefficients


@dataclass(frozen=True)
class TaylorCoefficients:
    """Per-event Taylor coefficients of one output node per event.

    ``node`` ``(n,)``: the node differentiated (-1 for events with a NaN/inf input, whose
    coefficients are NaN); ``value`` ``(n,)``: its output; ``first`` ``(n, N)``: t_i;
    ``second`` ``(n, N, N)``: t_ii = ½∂²f/∂x_i² on the diagonal and t_ij = ∂²f/∂x_i∂x_j off it
    (symmetric), or None for ``order=1``.
    """

    inputs: tuple[str, ...]
    node: np.ndarray
    value: np.ndarray
    first: np.ndarray
    second: np.ndarray | None
    method: str


def _node_rule(model: AuditedModel, node: int | str | None) -> int | str:
    if node is None:
        if model.kind == "multiclass":
            return "max"
        if model.n_outputs == 1:
            return 0
        raise ValueError(f"{model.path.name} has {model.n_outputs} regression outputs: choose "
                         "one with node=")
    if isinstance(node, str) and node != "max":
        names = list(model.names)
        if node not in names:
            raise ValueError(f"node {node!r} is not an output of the model ({names})")
        return names.index(node)
    return node


def taylor_coefficients(model: AuditedModel, x: Mapping[str, np.ndarray] | np.ndarray,
                        order: int = 2, node: int | str | None = None,
                        batch: int | None = None, sigma: np.ndarray | None = None
                        ) -> TaylorCoefficients:
    """Taylor coefficients (``order`` 1 or 2) of every event of ``x`` (a chunk or an array
    ``(n, len(model.inputs))``), Wunsch et al., arXiv:1803.08782.

    ``node``: an output index or name, ``"max"`` (each event's highest node), or None (the
    highest node of a multi-class network, the only node otherwise). ``batch``: events per
    autograd batch (default :data:`FIRST_ORDER_BATCH` for first order,
    :data:`SECOND_ORDER_BATCH` for second order). ``sigma`` (per input) sets the
    finite-difference steps when those are used.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, not {order}")
    xm = model.matrix(x)
    rule = _node_rule(model, node)
    n, dim = xm.shape
    good = np.isfinite(xm).all(axis=1)
    nodes = np.full(n, -1)
    value = np.full(n, np.nan)
    first = np.full((n, dim), np.nan)
    second = np.full((n, dim, dim), np.nan) if order == 2 else None
    idx = np.flatnonzero(good)
    nd, val, g, t2, method = _derivatives(model, xm[idx], rule, order, batch, sigma)
    nodes[idx], value[idx], first[idx] = nd, val, g
    if second is not None:
        second[idx] = t2
    return TaylorCoefficients(model.inputs, nodes, value, first, second, method)


def _monomial(hess: np.ndarray) -> np.ndarray:
    """Hessians ``(n, N, N)`` -> monomial coefficients (diagonal halved)."""
    t = hess.copy()
    diag = np.arange(hess.shape[1])
    t[:, diag, diag] *= 0.5
    return t


def _derivatives(model: AuditedModel, x: np.ndarray, rule: int | str, order: int,
                 batch: int | None, sigma: np.ndarray | None, triu: bool = False,
                 z: np.ndarray | None = None):
    """``(node, value, gradient, second or None, method)`` for finite rows ``x``: ``second``
    holds the monomial coefficients (t_ii = ½∂²f/∂x_i², t_ij = ∂²f/∂x_i∂x_j), ``(n, N, N)``
    or, with ``triu``, ``(n, N(N+1)/2)`` in ``numpy.triu_indices(N)`` order. ``z``: the
    rows' network inputs (:meth:`AuditedModel.network_inputs`) when the caller has them."""
    model._require_fixed()
    if batch is None:
        batch = FIRST_ORDER_BATCH if order == 1 else SECOND_ORDER_BATCH
    net = model._backend.torch_forward() if model.derivative_method != "finite_differences" \
        else None
    if net is not None:
        try:
            return (*_autograd(model, net, x, rule, order, batch, triu, z),
                    model.derivative_method)
        except read_errors() as exc:
            if model.format != "onnx":  # ONNX: the conversion ran on the probe but not here
                from validator.errors import InputError

                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise InputError(f"model {model.path.name}: cannot differentiate it "
                                 f"({reason})") from exc
    nodes, value, grad, hess = _finite_differences(model, x, rule, order, sigma)
    second = None
    if hess is not None:
        second = _monomial(hess)
        if triu:
            iu = np.triu_indices(x.shape[1])
            second = second[:, iu[0], iu[1]]
    return nodes, value, grad, second, "finite_differences"


def input_columns(model: AuditedModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model-space inputs of the raw ones: ``z = (x @ S + c - offset) / scale`` with S a
    selection (:meth:`AuditedModel.model_space`). Returns the model-space column of each
    data input, ∂z/∂x there (1/scale), and the model-space row of an event whose data inputs
    are all 0 (the parameters' columns, scaled)."""
    sel, const, offset, scale = model._affine()
    cols = np.argmax(sel, axis=1) if sel.size else np.zeros(0, np.int64)
    return cols, 1.0 / scale[cols], (const - offset) / scale


def _autograd(model: AuditedModel, net: Any, x: np.ndarray, rule: int | str, order: int,
              batch: int, triu: bool = False, z: np.ndarray | None = None):
    """Exact derivatives by reverse-mode autograd, batch by batch.

    Events are independent rows, so the gradient of Σ_b f(z_b) with respect to the batch is
    every event's gradient (one forward and one backward pass), and the gradient of Σ_b
    ∂f/∂z_j(z_b) is row j of every event's Hessian (N more backward passes through the
    gradient's graph, ``create_graph``). The network runs in its own precision on the
    model-space inputs z that its evaluation sees; the chain rule to the raw inputs
    (∂z_i/∂x_i = 1/scale_i) is applied in float64. Plain ``torch.autograd`` rather than
    ``torch.func``: ``torch.func`` Hessians of a TorchScript module come back as zeros once
    its graph executor has specialised the graph under a ``torch.func`` transform (found in
    session 7; ``tests/test_model_speed.py`` keeps the check)."""
    import torch

    n, dim = x.shape
    nodes = np.zeros(n, np.int64)
    value = np.zeros(n)
    grad = np.zeros((n, dim))
    iu = np.triu_indices(dim)
    second = None
    if order == 2:
        second = np.zeros((n, len(iu[0]))) if triu else np.zeros((n, dim, dim))
    if n == 0:
        return nodes, value, grad, second
    cols, inv, _ = input_columns(model)
    # t_ij = ∂²f/∂x_i∂x_j = H_z[i, j] / (scale_i scale_j), the diagonal halved
    factor = inv[:, None] * inv[None, :] * np.where(np.eye(dim, dtype=bool), 0.5, 1.0)
    if z is None:
        z = model.network_inputs(x)[0]
    tcols = torch.as_tensor(cols)
    every = np.array_equal(cols, np.arange(z.shape[1]))
    for s in range(0, n, batch):
        sl = slice(s, min(s + batch, n))
        zt = torch.from_numpy(z[sl]).requires_grad_(True)
        with torch.enable_grad():
            out = net(zt)
            top = out.detach().argmax(dim=1) if rule == "max" else \
                torch.full((len(zt),), int(rule), dtype=torch.int64)
            picked = out.gather(1, top[:, None])[:, 0]
            (g,) = torch.autograd.grad(picked.sum(), zt, create_graph=order == 2)
            h = _hessian(zt, g, tcols, triu) if order == 2 else None
        nodes[sl] = top.numpy()
        value[sl] = picked.detach().double().numpy()
        np.multiply((g.detach() if every else g.detach()[:, tcols]).numpy(), inv,
                    out=grad[sl])
        if h is None:
            continue
        if triu:
            np.multiply(h.numpy(), factor[iu], out=second[sl])
        else:
            np.multiply(h.numpy(), factor, out=second[sl])
    return nodes, value, grad, second


def _hessian(zt: Any, g: Any, cols: Any, triu: bool) -> Any:
    """Rows and columns ``cols`` of every event's Hessian, ``(B, N, N)``, or with ``triu`` its
    upper triangle ``(B, N(N+1)/2)`` in ``numpy.triu_indices(N)`` order (row by row): row j is
    the gradient of Σ_b g_bj, one backward pass through the gradient's graph per input j."""
    import torch

    n = len(cols)
    every = n == zt.shape[1] and bool((cols == torch.arange(n)).all())
    rows = []
    for k, j in enumerate(cols.tolist()):
        r = None
        if g.requires_grad:
            (r,) = torch.autograd.grad(g[:, j].sum(), zt, retain_graph=True, allow_unused=True)
        if r is None:
            r = torch.zeros((len(zt), n), dtype=zt.dtype)
        elif not every:
            r = r[:, cols]
        rows.append(r.detach()[:, k:] if triu else r.detach())
    return torch.cat(rows, dim=1) if triu else torch.stack(rows, dim=1)


def _finite_differences(model: AuditedModel, x: np.ndarray, rule: int | str, order: int,
                        sigma: np.ndarray | None, max_rows: int = 262_144):
    """Central differences with steps ε^(1/3)·s_i (first order) and ε^(1/4)·s_i (second),
    ε the model's float precision and s_i = σ_i if given, else the scaler's scale, else 1."""
    n, dim = x.shape
    eps = float(np.finfo(model._backend.dtype).eps)
    scale = np.array([model.scaler.get(c, (0.0, 1.0))[1] for c in model.inputs], float)
    scale = np.abs(scale)
    if sigma is not None:
        sig = np.asarray(sigma, float)
        scale = np.where(np.isfinite(sig) & (sig > 0), sig, scale)
    h1, h2 = eps ** (1 / 3) * scale, eps ** (1 / 4) * scale
    pairs = [(i, j) for i in range(dim) for j in range(i + 1, dim)]
    shifts = [np.zeros(dim)]
    shifts += [s * h1[i] * _unit(dim, i) for i in range(dim) for s in (1, -1)]
    if order == 2:
        shifts += [s * h2[i] * _unit(dim, i) for i in range(dim) for s in (1, -1)]
        shifts += [a * h2[i] * _unit(dim, i) + b * h2[j] * _unit(dim, j)
                   for i, j in pairs for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    shift = np.array(shifts)  # (P, N)
    per = max(1, max_rows // len(shift))
    nodes = np.zeros(n, np.int64)
    value = np.zeros(n)
    grad = np.zeros((n, dim))
    hess = np.zeros((n, dim, dim)) if order == 2 else None
    for s in range(0, n, per):
        xb = x[s:s + per]
        b = len(xb)
        pts = (xb[:, None, :] + shift[None]).reshape(-1, dim)
        out = model.evaluate(pts).reshape(b, len(shift), -1)
        idx = out[:, 0].argmax(axis=1) if rule == "max" else np.full(b, int(rule))
        f = out[np.arange(b), :, idx]  # (b, P)
        sl = slice(s, s + b)
        nodes[sl], value[sl] = idx, f[:, 0]
        k = 1
        for i in range(dim):
            grad[sl, i] = (f[:, k] - f[:, k + 1]) / (2 * h1[i])
            k += 2
        if hess is None:
            continue
        for i in range(dim):
            hess[sl, i, i] = (f[:, k] - 2 * f[:, 0] + f[:, k + 1]) / h2[i] ** 2
            k += 2
        for i, j in pairs:
            v = (f[:, k] - f[:, k + 1] - f[:, k + 2] + f[:, k + 3]) / (4 * h2[i] * h2[j])
            hess[sl, i, j] = hess[sl, j, i] = v
            k += 4
    return nodes, value, grad, hess


def _unit(dim: int, i: int) -> np.ndarray:
    e = np.zeros(dim)
    e[i] = 1.0
    return e


# ---------------------------------------------------------------------------------------------
# accumulated sums


@dataclass(frozen=True)
class TaylorMeans:
    """⟨|t|⟩ and uncertainties per group (``groups``) and input (``inputs``).

    ``first``, ``first_unc``: ``(G, N)``; ``second``, ``second_unc``: ``(G, N, N)``, symmetric,
    t_ii on the diagonal and t_ij off it (None for order 1); ``n_first``/``n_second`` and
    ``sum_w_first``/``sum_w_second``: events and Σw per group (the second order may run on a
    subsample). ``sigma``: the per-input scales of the standardised coefficients (or None).
    """

    inputs: tuple[str, ...]
    groups: tuple[str, ...]
    first: np.ndarray
    first_unc: np.ndarray
    second: np.ndarray | None
    second_unc: np.ndarray | None
    n_first: np.ndarray
    n_second: np.ndarray | None
    sum_w_first: np.ndarray
    sum_w_second: np.ndarray | None
    sigma: np.ndarray | None
    derivative_method: str

    def scaled(self) -> TaylorMeans:
        """The coefficients for standardised inputs: t_i·σ_i and t_ij·σ_i·σ_j."""
        if self.sigma is None:
            raise ValueError("no sigma: give sigma to taylor_sums() or TaylorSums.means()")
        s1 = self.sigma[None, :]
        s2 = np.outer(self.sigma, self.sigma)[None]
        return TaylorMeans(self.inputs, self.groups, self.first * s1, self.first_unc * s1,
                           None if self.second is None else self.second * s2,
                           None if self.second_unc is None else self.second_unc * s2,
                           self.n_first, self.n_second, self.sum_w_first, self.sum_w_second,
                           None, self.derivative_method)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (group, coefficient): ``node``, ``order``, ``feature_x``,
        ``feature_y`` (None for first order), ``value``, ``uncertainty``, ``scaled_value``,
        ``scaled_uncertainty`` (NaN without sigma), ``n_events``, ``sum_weights``."""
        sc = self.scaled() if self.sigma is not None else None
        out = []
        for g, group in enumerate(self.groups):
            for i, fx in enumerate(self.inputs):
                out.append({"node": group, "order": 1, "feature_x": fx, "feature_y": None,
                            "value": float(self.first[g, i]),
                            "uncertainty": float(self.first_unc[g, i]),
                            "scaled_value": float(sc.first[g, i]) if sc else np.nan,
                            "scaled_uncertainty": float(sc.first_unc[g, i]) if sc else np.nan,
                            "n_events": int(self.n_first[g]),
                            "sum_weights": float(self.sum_w_first[g])})
            if self.second is None:
                continue
            for i, j in zip(*np.triu_indices(len(self.inputs)), strict=True):
                out.append({"node": group, "order": 2, "feature_x": self.inputs[i],
                            "feature_y": self.inputs[j],
                            "value": float(self.second[g, i, j]),
                            "uncertainty": float(self.second_unc[g, i, j]),
                            "scaled_value": float(sc.second[g, i, j]) if sc else np.nan,
                            "scaled_uncertainty": float(sc.second_unc[g, i, j]) if sc
                            else np.nan,
                            "n_events": int(self.n_second[g]),
                            "sum_weights": float(self.sum_w_second[g])})
        return out


@dataclass
class TaylorSums:
    """Mergeable sums for ⟨|t|⟩ (see the module docstring); combine chunks with ``+``.

    ``first``: sums of |t_i| ``(G, N)``; ``second``: sums of |t_ij|, i ≤ j, in
    ``numpy.triu_indices(N)`` order ``(G, N(N+1)/2)`` (None for order 1); ``n_skipped``:
    events left out for a NaN/inf input or weight; ``n_nonfinite`` (``n_nonfinite_second``):
    events with finite inputs left out of the first (second) order where the network's
    coefficients are not finite there (a ``log`` or a ``sqrt`` at the edge of its domain: one
    such event would make every mean NaN).
    """

    inputs: tuple[str, ...]
    groups: tuple[str, ...]
    order: int
    derivative_method: str
    first: AbsMeanSums
    second: AbsMeanSums | None
    sigma: np.ndarray | None = None
    n_skipped: int = 0
    n_nonfinite: int = 0
    n_nonfinite_second: int = 0

    @classmethod
    def empty(cls, model: AuditedModel, order: int = 2, sigma: np.ndarray | None = None
              ) -> TaylorSums:
        """Zero sums for ``model`` (the start of an accumulation)."""
        names = groups(model)
        dim = len(model.inputs)
        return cls(model.inputs, names, order, model.derivative_method,
                   AbsMeanSums.zeros(len(names), dim),
                   AbsMeanSums.zeros(len(names), dim * (dim + 1) // 2) if order == 2
                   else None, _sigma(sigma, dim))

    def __add__(self, other: TaylorSums) -> TaylorSums:
        if not isinstance(other, TaylorSums):
            return NotImplemented
        for what in ("inputs", "groups", "order"):
            if getattr(self, what) != getattr(other, what):
                raise ValueError(f"cannot merge Taylor sums with different {what}: "
                                 f"{getattr(self, what)} vs {getattr(other, what)}")
        if self.sigma is not None and other.sigma is not None \
                and not np.array_equal(self.sigma, other.sigma):
            raise ValueError("cannot merge Taylor sums with different sigma")
        method = self.derivative_method if self.derivative_method == other.derivative_method \
            else f"{self.derivative_method}+{other.derivative_method}"
        return TaylorSums(self.inputs, self.groups, self.order, method,
                          self.first + other.first,
                          None if self.second is None else self.second + other.second,
                          self.sigma if self.sigma is not None else other.sigma,
                          self.n_skipped + other.n_skipped,
                          self.n_nonfinite + other.n_nonfinite,
                          self.n_nonfinite_second + other.n_nonfinite_second)

    def __radd__(self, other: Any) -> TaylorSums:
        if isinstance(other, int) and other == 0:  # sum([...])
            return self
        return NotImplemented

    def means(self, sigma: np.ndarray | None = None) -> TaylorMeans:
        """⟨|t|⟩ with uncertainties; ``sigma`` (per input) overrides the stored one."""
        dim = len(self.inputs)
        sig = _sigma(sigma, dim) if sigma is not None else self.sigma
        m1, u1 = self.first.means()
        m2 = u2 = None
        if self.second is not None:
            iu = np.triu_indices(dim)
            v, u = self.second.means()
            m2 = np.zeros((len(self.groups), dim, dim))
            u2 = np.zeros_like(m2)
            m2[:, iu[0], iu[1]] = v
            m2[:, iu[1], iu[0]] = v
            u2[:, iu[0], iu[1]] = u
            u2[:, iu[1], iu[0]] = u
        return TaylorMeans(self.inputs, self.groups, m1, u1, m2, u2, self.first.n.copy(),
                           None if self.second is None else self.second.n.copy(),
                           self.first.sw.copy(),
                           None if self.second is None else self.second.sw.copy(), sig,
                           self.derivative_method)


def groups(model: AuditedModel) -> tuple[str, ...]:
    """The groups of the sums: the output names, and :data:`ALL` after them for a multi-class
    network."""
    if model.kind == "multiclass":
        return (*model.names, ALL)
    return tuple(model.names)


def _sigma(sigma: np.ndarray | None, dim: int) -> np.ndarray | None:
    if sigma is None:
        return None
    s = np.asarray(sigma, dtype=float)
    if s.shape != (dim,):
        raise ValueError(f"sigma must have one value per input ({dim}), got shape {s.shape}")
    return s


def taylor_sums(model: AuditedModel, x: Mapping[str, np.ndarray] | np.ndarray,
                w: np.ndarray | None = None, sigma: np.ndarray | None = None, order: int = 2,
                batch: int | None = None, second_order_mask: np.ndarray | None = None,
                first_order: bool = True) -> TaylorSums:
    """Sums for ⟨|t|⟩ of the events of ``x`` (a chunk or an array ``(n, len(model.inputs))``)
    with weights ``w`` (None: unweighted, as for data).

    ``sigma``: per-input standard deviations for the standardised coefficients (may be given
    later to :meth:`TaylorSums.means`). ``second_order_mask`` (bool ``(n,)``): the events whose
    second-order coefficients are taken (a subsample, to save time; the counts are kept per
    order); all events by default. ``batch``: see :func:`taylor_coefficients`. Events with a
    NaN/inf input or weight are skipped and counted in ``n_skipped``. ``first_order=False``
    (with ``order=2``): the second-order sums alone, the first order (and ``n_skipped``) left
    to a pass that takes it on every event (:func:`first_order_sums`).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, not {order}")
    if not first_order and order != 2:
        raise ValueError("first_order=False leaves only the second order: order must be 2")
    xm = model.matrix(x)
    n, dim = xm.shape
    wv = np.ones(n) if w is None else np.asarray(w, dtype=float).reshape(-1)
    if len(wv) != n:
        raise ValueError(f"{len(wv)} weights for {n} events")
    sums = TaylorSums.empty(model, order, sigma)
    good = np.isfinite(xm).all(axis=1) & np.isfinite(wv)
    sub = good.copy()
    if order == 2 and second_order_mask is not None:
        mask = np.asarray(second_order_mask, dtype=bool).reshape(-1)
        if len(mask) != n:
            raise ValueError(f"second_order_mask has {len(mask)} entries for {n} events")
        sub &= mask
    if first_order:
        sums.n_skipped = int(n - good.sum())
    else:  # only the subsample's rows reach the network
        keep = np.flatnonzero(sub)
        xm, wv, sub = xm[keep], wv[keep], np.ones(len(keep), dtype=bool)
    if not first_order:
        only_first = np.zeros(len(xm), dtype=bool)
    else:
        only_first = good & ~sub if order == 2 else good
    iu = np.triu_indices(dim)
    method = model.derivative_method
    # the network's inputs once, in its precision (the autograd passes below take their rows)
    z = model.network_inputs(xm)[0] if method != "finite_differences" else None
    # events per block: bounds the memory of the first-order (N) or second-order (N(N+1)/2)
    # coefficients held at once to about 64 MiB
    blocks = {1: max(1024, 2**23 // (dim + 1)), 2: max(1024, 2**23 // (len(iu[0]) + 1))}
    # events whose first (row 0) or second-order (row 1) coefficients at some node are not finite
    nonfinite = np.zeros((2, len(xm)), dtype=bool)
    for rule in derivative_rules(model):
        for all_rows, o in ((np.flatnonzero(sub), 2), (np.flatnonzero(only_first), 1)):
            if order == 1 and o == 2:
                continue
            for start in range(0, len(all_rows), blocks[o]):
                rows = all_rows[start:start + blocks[o]]
                if rows[-1] - rows[0] + 1 == len(rows):  # consecutive: views, no copies
                    rows = slice(rows[0], rows[-1] + 1)
                nodes, _, g, t2, method = _derivatives(
                    model, xm[rows], rule, o, batch, sigma, triu=True,
                    z=None if z is None else z[rows])
                wr = wv[rows]
                # an event whose coefficients are not finite is left out of that order's
                # sums, and counted
                ok1 = _finite_rows(g) if first_order else None
                ok2 = None if t2 is None else _finite_rows(t2)
                for k, ok in enumerate((ok1, ok2)):
                    if ok is not None:
                        nonfinite[k, np.arange(len(xm))[rows][~ok]] = True
                for group, sel in _targets(model, sums, rule, nodes):
                    if first_order:
                        take = _selected(sel, ok1)
                        sums.first.add(group, wr if take is None else wr[take],
                                       g if take is None else g[take])
                    if t2 is not None:
                        take = _selected(sel, ok2)
                        sums.second.add(group, wr if take is None else wr[take],
                                        t2 if take is None else t2[take])
    sums.derivative_method = method
    sums.n_nonfinite, sums.n_nonfinite_second = (int(k) for k in nonfinite.sum(axis=1))
    return sums


def _finite_rows(values: np.ndarray) -> np.ndarray | None:
    """Which events' (rows') coefficients are all finite; None where every one is (the common
    case: no copy)."""
    finite = np.isfinite(values)
    if finite.all():  # one reduction over the block, 9x cheaper than the per-row one
        return None
    return finite.all(axis=1)


def _selected(sel: np.ndarray | None, finite: np.ndarray | None) -> np.ndarray | None:
    """The rows a group takes (``sel``, None: all) that are also finite (None: all)."""
    if finite is None:
        return sel
    return finite if sel is None else sel & finite


def derivative_rules(model: AuditedModel) -> list[int | str]:
    """The nodes a network is differentiated at, one pass each: ``"max"`` (each event's
    highest node) for a multi-class network, its node for a one-node network, every node of a
    multi-output regression (module docstring)."""
    if model.kind == "multiclass" or model.n_outputs == 1:
        return ["max" if model.kind == "multiclass" else 0]
    return list(range(model.n_outputs))


def _targets(model: AuditedModel, sums: TaylorSums, rule: int | str, nodes: np.ndarray
             ) -> list[tuple[int, np.ndarray | None]]:
    """The groups the events of one pass add to, and which of its events each takes (None:
    all): a multi-class network's node groups and ``all``, else the rule's node."""
    if model.kind != "multiclass":
        return [(int(rule), None)]
    return [(c, nodes == c) for c in range(model.n_outputs)] + [(len(sums.groups) - 1, None)]


# ---------------------------------------------------------------------------------------------
# the first order on every event, with the network's outputs (the planning scan)


def shares_forward(model: AuditedModel) -> bool:
    """Whether the network that evaluates the outputs is the one autograd differentiates
    (TorchScript and ``torch.export`` without a fixed batch), so that one forward pass gives
    both, the outputs the same numbers as :meth:`AuditedModel.evaluate`'s (the same module on
    the same batches)."""
    backend = model._backend
    return model.derivative_method == "autograd" and backend is not None \
        and backend.session is None and backend.grad_module is None \
        and backend.static_batch is None and backend.torch_module is not None


def outputs_and_first_order(model: AuditedModel, chunk: Mapping[str, np.ndarray],
                            label: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The outputs ``(n, n_outputs)`` (float64, NaN where an input is not finite, as
    :meth:`AuditedModel.evaluate`), the first-order derivatives of every event ``(n, R, N)``
    with respect to the network's model-space inputs of its data inputs at each of the R
    :func:`derivative_rules` (NaN where an input is not finite; :func:`first_order_sums`
    applies the chain rule through the scaler), and for a multi-class network the node each
    event was differentiated at (else None).

    With :func:`shares_forward`, one forward and one backward pass per batch of
    ``model.batch_size`` events (the evaluation's batches), the derivatives in the network's
    precision; otherwise the outputs from :meth:`~AuditedModel.run_network` and the
    derivatives (float64) from :func:`_derivatives`."""
    z, good = model.network_inputs(chunk, label)
    rules = derivative_rules(model)
    cols, inv, _ = input_columns(model)
    n, dim = len(z), len(cols)
    outputs = np.full((n, model.n_outputs), np.nan)
    shared = shares_forward(model)
    dtype = np.float32 if shared and model._backend.dtype == np.float32 else np.float64
    grads = np.full((n, len(rules), dim), np.nan, dtype=dtype)
    nodes = np.full(n, -1, dtype=np.int64) if model.kind == "multiclass" else None
    rows = np.arange(n) if good.all() else np.flatnonzero(good)
    zr = z if len(rows) == n else z[rows]
    if not shared:
        outputs[rows] = model.run_network(zr)
        xm = model.matrix(chunk)[rows]
        for r, rule in enumerate(rules):
            top, _, g, _, _ = _derivatives(model, xm, rule, 1, None, None, z=zr)
            grads[rows, r] = g / inv  # to model space: first_order_sums scales again
            if nodes is not None:
                nodes[rows] = top
        return outputs, grads, nodes
    import torch

    net = model._backend.torch_forward()
    tcols = torch.as_tensor(cols)
    every = np.array_equal(cols, np.arange(z.shape[1]))
    for s in range(0, len(zr), model.batch_size):
        batch = slice(s, min(s + model.batch_size, len(zr)))
        zt = torch.from_numpy(zr[batch]).requires_grad_(True)
        with torch.enable_grad():
            out = net(zt)
            for r, rule in enumerate(rules):
                top = out.detach().argmax(dim=1) if rule == "max" else \
                    torch.full((len(zt),), int(rule), dtype=torch.int64)
                picked = out.gather(1, top[:, None])[:, 0]
                (g,) = torch.autograd.grad(picked.sum(), zt, retain_graph=r < len(rules) - 1)
                grads[rows[batch], r] = (g if every else g[:, tcols]).numpy()
                if nodes is not None:
                    nodes[rows[batch]] = top.numpy()
        outputs[rows[batch]] = out.detach().numpy()
    return outputs, grads, nodes


def first_order_sums(model: AuditedModel, chunk: Mapping[str, np.ndarray], w: np.ndarray,
                     gradients: np.ndarray, nodes: np.ndarray | None = None,
                     block_rows: int = 32_768) -> TaylorSums:
    """The first-order sums of :func:`taylor_sums` (order 2, its second-order sums empty)
    from the derivatives (and nodes) :func:`outputs_and_first_order` gave for the events of
    ``chunk`` (the same events, after any selection), weights ``w``; events with a NaN/inf
    input or weight are skipped and counted. The coefficients are those of
    :func:`taylor_sums` (the chain rule applied in float64 to the network's derivatives, as
    :func:`_autograd` does). ``block_rows``: events whose float64 coefficients exist at
    once."""
    model.check_chunk(chunk)
    wv = np.asarray(w, dtype=float).reshape(-1)
    n = len(gradients)
    if len(wv) != n:
        raise ValueError(f"{len(wv)} weights for {n} events' derivatives")
    if model.kind == "multiclass" and (nodes is None or len(nodes) != n):
        raise ValueError("a multi-class network's first-order sums need each event's node")
    sums = TaylorSums.empty(model, 2)
    good = np.isfinite(wv)
    for c in model.inputs:  # the inputs' finiteness, without their float64 matrix
        good &= np.isfinite(chunk[c])
    sums.n_skipped = int(n - good.sum())
    rows_good = np.flatnonzero(good)
    _, inv, _ = input_columns(model)
    nonfinite = np.zeros(n, dtype=bool)  # an event's derivative at any node
    for start in range(0, len(rows_good), block_rows):
        rows = rows_good[start:start + block_rows]
        if rows[-1] - rows[0] + 1 == len(rows):
            rows = slice(rows[0], rows[-1] + 1)
        for r, rule in enumerate(derivative_rules(model)):
            g = np.multiply(gradients[rows, r], inv, dtype=np.float64)
            wr = wv[rows]
            top = nodes[rows] if nodes is not None else None
            finite = _finite_rows(g)
            if finite is not None:  # left out of this node's sums, and counted
                nonfinite[np.arange(n)[rows][~finite]] = True
                g, wr = g[finite], wr[finite]
                top = None if top is None else top[finite]
            for group, sel in _targets(model, sums, rule, top):
                sums.first.add(group, wr if sel is None else wr[sel],
                               g if sel is None else g[sel])
    sums.n_nonfinite = int(nonfinite.sum())
    return sums
