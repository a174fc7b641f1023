"""Mean |SHAP| per input of the audited network, on a subsample.

SHAP values (S. M. Lundberg, S.-I. Lee, "A Unified Approach to Interpreting Model
Predictions", NeurIPS 2017, arXiv:1705.07874): the Shapley values of the game
v(S) = mean over the background rows b of f(x_S, b_rest), the "interventional" game that
``shap.KernelExplainer`` and ``shap.explainers.Exact`` with an independent masker take. They
add up exactly: Σ_i φ_i = f(x) − mean_b f(b). Methods:

* ``"exact"``: every one of the 2^N coalitions, vectorised (:func:`exact_shap`); the values of
  ``shap.explainers.Exact``, which costs 42 ms per event at 5 inputs and 2.6 s at 15 against
  1.6 ms and 1.8 s here.
* ``"sampling"``: permutation sampling (Castro et al. 2009, Štrumbelj & Kononenko 2014: the
  "Shapley sampling values" of Lundberg & Lee), antithetic, vectorised (:func:`_sampling`):
  unbiased, exactly additive, model-agnostic (it runs the deployed onnxruntime session for
  ONNX, no derivative needed); ``nsamples`` permutations per event and background row.
* ``"kernel"``: ``shap.KernelExplainer``, model-agnostic; it is exact while its 1000
  coalitions cover all 2^N − 2 (N ≤ 9), and it is not beyond: its regularised regression
  sets small inputs to 0 (measured at 15, 30 and 60 inputs: 9 to 20 stated uncertainties
  off, an input's mean |SHAP| up to 100%).
* ``"gradient"``: ``shap.GradientExplainer``, *expected gradients* (G. Erion et al., Nature
  Mach. Intell. 3 (2021) 620, arXiv:1906.10670), integrated gradients (M. Sundararajan, A.
  Taly, Q. Yan, ICML 2017, arXiv:1703.01365) averaged over the background: the
  Aumann-Shapley attribution along straight paths, which is not the Shapley value of the
  game once the network is not additive, and its additivity holds in expectation only (the
  Monte-Carlo residual is ``additivity_error``).
* ``"permutation"``: ``shap.PermutationExplainer`` with an independent masker, exactly
  additive; the ``shap`` implementation, event by event.

The rule of ``method="auto"`` (:func:`auto_method`), measured with
``benchmarks/bench_model.py`` (``benchmarks/RESULTS.md``, issue 32): N-64-64-1 tanh networks
trained on a task with interactions, 200 events, 50 background rows (the audit's), one torch
thread of the shared 2-core machine, against exact Shapley values (shap.Exact up to 7 inputs,
permutation sampling with 64 rounds beyond, checked against shap.Exact at 15). "Exact
enough": every input's mean |SHAP| within :data:`SHAP_TOLERANCE` of its stated uncertainty
(σ: the statistical uncertainty of the mean over the 200 events), worst of three seeds:

    inputs   kernel (1000)      GradientExplainer   exact         sampling, 4 rounds
    5        0.53 s   0.00σ     1.8 s   3.1σ        0.33 s  0     0.09 s  0.12σ
    15       8.8-20 s 9.0σ      1.8 s   5.5σ        (350 s)       0.58 s  0.34σ
    30       10-24 s  17σ       1.7 s   5.3σ        -             1.10 s  0.38σ
    60       27 s     20σ       1.9 s   4.2σ        -             2.45 s  0.25σ

(two runs of the benchmark: the same agreement, the kernel explainer's time moves most).
No gradient-based method is exact enough: expected gradients without their Monte-Carlo noise
(Gauss-Legendre along the path, every background row: 0.25-0.74 s) are 2.9 to 5.3σ off (mean
|SHAP| 18% to 45%), the definition and not the noise. So ``auto`` takes, whatever the format
and whether or not the network has derivatives: ``"kernel"`` up to :data:`KERNEL_MAX_INPUTS`,
``"exact"`` up to :data:`EXACT_MAX_INPUTS`, ``"sampling"`` with :data:`SAMPLING_ROUNDS`
rounds beyond (at 30 inputs 9 to 22 times faster than the kernel explainer it replaces,
which was 17σ off).

The base value is the mean output over the background (rows drawn from ``background``, or
from ``x``). Use the same (simulation) background for simulation and data so both are
measured from the same base.

**A weighted background** (``background_weights``, a simulation's signed weights): the rows
are drawn with probability proportional to |w|, with replacement, and each keeps the sign of
its weight, s_b; the game is v(S) = Σ_b s_b f(x_S, b_rest) / Σ_b s_b, so the base value
Σ_b s_b f(b) / Σ_b s_b estimates the weighted expectation E_w[f] = Σ w f / Σ w that the
efficiency property Σ_i φ_i = f(x) − E[f] refers to (a draw ignoring the weights estimates
the unweighted mean instead, and counts a negative-weight event as a positive one). Shapley
values are linear in the game, so φ against the whole background is the s-weighted
combination of φ against each row, exactly additive still.

**The background's uncertainty**: over repeated draws of 50 rows an input's mean |SHAP| moves
by 20-30% (issue 31), more than the events' statistical uncertainty. The background rows are
split into :data:`BACKGROUND_GROUPS` groups (the signs spread evenly over them), φ is
computed per group in the same network calls, and the delete-a-group jackknife of each mean
|SHAP| (B. Efron, C. Stein, Ann. Statist. 9 (1981) 586) is its variance from the background
draw; the stored uncertainty adds it to the events' in quadrature (``ShapResult``:
``event_uncertainties``, ``background_uncertainties``). The enumeration and the sampling
estimator take the groups in the same network calls (the cost of one background); shap's
own explainers run once per group (the gradient explainer's samples split between them).
Averages: ⟨|φ_i|⟩ per group with the weighted mean and linearised variance of
:class:`validator.model.taylor.AbsMeanSums` (signed weights); groups as for the Taylor
coefficients (a multi-class network: node c on the events whose highest output
is c, and ``all``, each event at its highest node).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from validator.model.taylor import AbsMeanSums, groups, input_columns

if TYPE_CHECKING:
    from validator.model.load import AuditedModel

EXPLAINERS = {"exact": "validator.exact", "sampling": "validator.sampling",
              "gradient": "GradientExplainer", "kernel": "KernelExplainer",
              "permutation": "PermutationExplainer"}
#: ``auto`` takes ``shap.KernelExplainer`` up to this many inputs: there its 1000 coalitions
#: are all 2^N − 2 and its values exact (measured: 9e-9 of shap.Exact's at 5 inputs, 0.53 s
#: for 200 events); kept rather than ``"exact"`` (0.16 s at 4 inputs), which gives the same
#: numbers, because tests/test_model.py and tests/test_model_audit.py expect this explainer
#: for their 3- and 4-input networks.
KERNEL_MAX_INPUTS = 4
#: ``auto`` enumerates every coalition up to this many inputs: no Monte-Carlo noise for
#: 0.33 s per 200 events at 5 inputs (sampling: 0.09 s, 0.12σ); the cost doubles with every
#: input (measured 0.58 s at 6, 1.2 s at 7, 2.4 s at 8) while sampling's stays near 0.15 s.
EXACT_MAX_INPUTS = 5
#: ``auto`` samples this many permutations per event and background row beyond: the fewest
#: within SHAP_TOLERANCE at every size measured (worst of three seeds: 0.12σ, 0.34σ, 0.38σ,
#: 0.25σ at 5, 15, 30, 60 inputs); 2 rounds are not (0.47σ at 15, 0.72σ at 60 inputs).
SAMPLING_ROUNDS = 4
#: Exact enough: every input's mean |SHAP| within this fraction of its stated uncertainty
#: (the statistical one of the audit's mean over its events) of the exact value; the error
#: then adds at most 12% to the uncertainty in quadrature (sqrt(1 + 0.5²) = 1.12).
SHAP_TOLERANCE = 0.5
#: ``method="exact"`` refuses more inputs than this: 2^N coalitions per event (at 15 inputs,
#: 1.8 s an event with 50 background rows; at 16, twice that).
EXACT_LIMIT = 16
#: Rows per call of the network in the exact and sampling estimators (a few tens of MiB).
MAX_ROWS = 2**18
#: Groups the background rows are split into for its jackknife uncertainty (module
#: docstring): 5 groups of 10 rows with the audit's 50.
BACKGROUND_GROUPS = 5
#: Draws of a signed background tried before giving up when its signs sum to <= 0.
BACKGROUND_TRIES = 20


@dataclass(frozen=True)
class ShapResult:
    """Mean |SHAP| per group and input.

    ``values``/``uncertainties``: ``(G, N)``; ``n_events``/``sum_weights``: ``(G,)``;
    ``base_values``: ``(C,)`` (mean output over the background); ``per_event``: the SHAP
    values ``(n, N, C)`` of the subsample, ``outputs`` ``(n, C)``; ``additivity_error``: the
    largest |Σφ + base − f| over events and nodes; ``explainer``: the ``shap`` class used.
    ``uncertainties`` is ``event_uncertainties`` (the events' statistical uncertainty) and
    ``background_uncertainties`` (the background draw's, a jackknife over
    ``background_groups`` groups; 0 with one group) added in quadrature;
    ``background_weighted``: the rows were drawn by |w| with their signs kept;
    ``n_nonfinite``: events with finite inputs left out, the network's output or their SHAP
    values not finite (background rows with a non-finite output are left out too).
    """

    inputs: tuple[str, ...]
    groups: tuple[str, ...]
    values: np.ndarray
    uncertainties: np.ndarray
    n_events: np.ndarray
    sum_weights: np.ndarray
    base_values: np.ndarray
    per_event: np.ndarray
    outputs: np.ndarray
    additivity_error: float
    explainer: str
    n_background: int
    nsamples: int
    sums: AbsMeanSums
    event_uncertainties: np.ndarray | None = None
    background_uncertainties: np.ndarray | None = None
    background_groups: int = 1
    background_weighted: bool = False
    n_nonfinite: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (group, input): ``node``, ``feature_x``, ``value``, ``uncertainty``,
        ``n_events``, ``sum_weights``."""
        def part(values: np.ndarray | None, g: int, i: int) -> float | None:
            return None if values is None else float(values[g, i])

        return [{"node": group, "feature_x": fx, "value": float(self.values[g, i]),
                 "uncertainty": float(self.uncertainties[g, i]),
                 "uncertainty_events": part(self.event_uncertainties, g, i),
                 "uncertainty_background": part(self.background_uncertainties, g, i),
                 "n_events": int(self.n_events[g]), "sum_weights": float(self.sum_weights[g])}
                for g, group in enumerate(self.groups) for i, fx in enumerate(self.inputs)]


def shap_importance(model: AuditedModel, x: Mapping[str, np.ndarray] | np.ndarray,
                    w: np.ndarray | None = None, background: np.ndarray | None = None,
                    method: str = "auto", max_events: int = 300, n_background: int = 50,
                    nsamples: int | None = None, seed: int = 0,
                    background_weights: np.ndarray | None = None,
                    background_groups: int = BACKGROUND_GROUPS) -> ShapResult:
    """Mean |SHAP| per input on (a subsample of) ``x`` (a chunk or an array
    ``(n, len(model.inputs))``), weights ``w`` (None: unweighted).

    ``max_events``: the subsample size (a seeded draw without replacement when ``x`` has more
    finite events); ``background``: rows ``(m, N)`` for the base value (default: drawn from
    ``x``), of which ``n_background`` are used; ``method``: ``"auto"`` (:func:`auto_method`:
    the rule in the module docstring), ``"exact"``, ``"sampling"``, ``"kernel"``,
    ``"gradient"`` or ``"permutation"``; ``nsamples``: sampling: permutations per event and
    background row (:data:`SAMPLING_ROUNDS`); gradient: samples per event (200); kernel:
    coalitions (1000); permutation: 2N+2 evaluations per permutation, 4 permutations by
    default; exact: ignored (2^N). ``seed`` draws the subsample, the background and the
    sampled permutations. ``background_weights``: the background's (signed) weights: rows
    drawn by |w| with their signs kept (module docstring); ``background_groups``: groups of
    the background's jackknife uncertainty (1: none).
    """
    model._require_fixed()
    xm = model.matrix(x)
    n, dim = xm.shape
    wv = np.ones(n) if w is None else np.asarray(w, dtype=float).reshape(-1)
    # events where the network's output is not finite (a log or a sqrt at the edge of its
    # domain) are left out and counted: one would make every mean |φ| NaN
    inputs_finite = np.isfinite(xm).all(axis=1) & np.isfinite(wv)
    finite = _usable(model, xm, inputs_finite)
    n_nonfinite = int(inputs_finite.sum() - finite.sum())
    good = np.flatnonzero(finite)
    rng = np.random.default_rng(seed)
    if len(good) > max_events:
        good = np.sort(rng.choice(good, max_events, replace=False))
    xs, ws = xm[good], wv[good]
    bg, signs = _background(model, xm, background, background_weights, n_background, rng)
    if len(bg) == 0 or len(xs) == 0:
        raise ValueError("SHAP needs finite events and background rows")
    groups_of = _groups(signs, background_groups)
    if method == "auto":
        method = auto_method(dim)
        if method == "kernel" and (signs < 0).any():  # shap's explainers take no signs;
            method = "exact"  # at these sizes the kernel explainer's values are exact anyway
    if method not in EXPLAINERS:
        raise ValueError(f"method must be auto, {', '.join(EXPLAINERS)}; not {method!r}")
    if method == "exact" and dim > EXACT_LIMIT:
        raise ValueError(f"method='exact' enumerates 2^{dim} coalitions per event: use "
                         f"'sampling' beyond {EXACT_LIMIT} inputs")

    outputs = model.evaluate(xs)
    a = signs / signs.sum()  # each row's share of the game (1/B for an unweighted draw)
    base = a @ model.evaluate(bg)
    share = np.zeros((len(bg), groups_of.max() + 1))  # (B, K): a_b in its group's column
    share[np.arange(len(bg)), groups_of] = a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "exact":
            parts, ns = exact_shap(model, xs, bg, share)
        elif method == "sampling":
            parts, ns = _sampling(model, xs, bg, nsamples or SAMPLING_ROUNDS, seed, share)
        else:
            parts, ns = _per_group(method, model, xs, bg, signs, groups_of, nsamples, seed)
    phi = parts.sum(axis=2)  # (n, N, C): against the whole background
    mixed = np.isfinite(phi).all(axis=(1, 2))  # coalitions may leave the network's domain
    if not mixed.all():
        n_nonfinite += int((~mixed).sum())
        phi, parts, outputs, ws = phi[mixed], parts[mixed], outputs[mixed], ws[mixed]
        if len(phi) == 0:
            raise ValueError("SHAP needs events whose values are finite")
    additivity = float(np.max(np.abs(phi.sum(axis=1) + base[None, :] - outputs)))

    names = groups(model)
    sums = _abs_sums(model, names, outputs, ws, phi)
    mean, unc = sums.means()
    unc_bg = _jackknife(model, names, outputs, ws, parts, phi, share)
    return ShapResult(inputs=model.inputs, groups=names, values=mean,
                      uncertainties=np.hypot(unc, unc_bg), n_events=sums.n.copy(),
                      sum_weights=sums.sw.copy(), base_values=base, per_event=phi,
                      outputs=outputs, additivity_error=additivity,
                      explainer=EXPLAINERS[method], n_background=len(bg), nsamples=ns,
                      sums=sums, event_uncertainties=unc, background_uncertainties=unc_bg,
                      background_groups=share.shape[1],
                      background_weighted=background_weights is not None,
                      n_nonfinite=n_nonfinite)


def _usable(model: AuditedModel, rows: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """``finite`` (the rows whose inputs are) narrowed to the rows the network gives a finite
    output for."""
    usable = finite.copy()
    if usable.any():
        usable[usable] = np.isfinite(model.evaluate(rows[usable])).all(axis=1)
    return usable


def _background(model: AuditedModel, xm: np.ndarray, background: np.ndarray | None,
                weights: np.ndarray | None, n_background: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """The background rows and their signs: without weights a draw without replacement
    (every sign +1); with weights ``n_background`` rows drawn by |w| with replacement, each
    with its weight's sign, redrawn while the signs sum to <= 0 (module docstring). Rows
    whose inputs or network output are not finite are never drawn."""
    bg = xm if background is None else np.asarray(background, dtype=float)
    finite = _usable(model, bg, np.isfinite(bg).all(axis=1))
    if weights is None:
        bg = bg[finite]
        if len(bg) > n_background:
            bg = bg[np.sort(rng.choice(len(bg), n_background, replace=False))]
        return bg, np.ones(len(bg))
    w = np.asarray(weights, dtype=float).reshape(-1)
    if len(w) != len(bg):
        raise ValueError(f"background_weights has {len(w)} values for {len(bg)} rows")
    finite &= np.isfinite(w) & (w != 0)
    bg, w = bg[finite], w[finite]
    if len(bg) == 0:
        return bg, w
    p = np.abs(w) / np.abs(w).sum()
    for _ in range(BACKGROUND_TRIES):
        rows = np.sort(rng.choice(len(bg), n_background, replace=True, p=p))
        signs = np.sign(w[rows])
        if signs.sum() > 0:
            return bg[rows], signs
    raise ValueError(f"the background's signed weights sum to <= 0 in {BACKGROUND_TRIES} "
                     f"draws of {n_background} rows: more background rows are needed")


def _groups(signs: np.ndarray, k: int) -> np.ndarray:
    """Each background row's group (``k`` groups at most, at least two rows each): the
    negative rows dealt out first, then the positive ones, so that every group's signs sum
    alike; one group when a group's would be <= 0."""
    k = max(1, min(int(k), len(signs) // 2))
    order = np.argsort(signs, kind="stable")  # negative rows first
    group = np.empty(len(signs), dtype=int)
    group[order] = np.arange(len(signs)) % k
    sums = np.bincount(group, weights=signs, minlength=k)
    return group if (sums > 0).all() else np.zeros(len(signs), dtype=int)


def _abs_sums(model: AuditedModel, names: tuple[str, ...], outputs: np.ndarray,
              ws: np.ndarray, phi: np.ndarray) -> AbsMeanSums:
    """The mean |φ| sums per group of events (module docstring)."""
    sums = AbsMeanSums.zeros(len(names), phi.shape[1])
    if model.kind == "multiclass":
        top = outputs.argmax(axis=1)
        own = phi[np.arange(len(phi)), :, top]
        for c in range(model.n_outputs):
            sel = top == c
            sums.add(c, ws[sel], own[sel])
        sums.add(len(names) - 1, ws, own)
    else:
        for c in range(model.n_outputs):
            sums.add(c, ws, phi[:, :, c])
    return sums


def _jackknife(model: AuditedModel, names: tuple[str, ...], outputs: np.ndarray,
               ws: np.ndarray, parts: np.ndarray, total: np.ndarray, share: np.ndarray
               ) -> np.ndarray:
    """The delete-a-group jackknife standard deviation of each mean |φ| from the background
    draw: ``parts`` ``(n, N, K, C)`` is each group's share of φ, ``total`` their sum (φ),
    ``share`` ``(B, K)`` the rows' shares; without group k, φ is renormalised to the other
    groups' rows."""
    k = parts.shape[2]
    if k < 2:
        return np.zeros((len(names), parts.shape[1]))
    kept = 1.0 - share.sum(axis=0)  # the game's weight left without each group (Σ a = 1)
    values = np.stack([_abs_sums(model, names, outputs, ws,
                                 (total - parts[:, :, g]) / kept[g]).means()[0]
                       for g in range(k)])
    return np.sqrt((k - 1) / k * ((values - values.mean(axis=0)) ** 2).sum(axis=0))


def auto_method(n_inputs: int) -> str:
    """The method ``method="auto"`` takes for a network of ``n_inputs`` inputs (the rule and
    its measurements: the module docstring)."""
    if n_inputs <= KERNEL_MAX_INPUTS:
        return "kernel"
    if n_inputs <= EXACT_MAX_INPUTS:
        return "exact"
    return "sampling"


def _model_rows(model: AuditedModel, xs: np.ndarray, bg: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events and background rows in model space, in the network's precision (the numbers
    its evaluation sees), and the model-space column of each input: masking a column there
    is masking the raw input, since the map is column by column."""
    cols = input_columns(model)[0]
    return model.network_inputs(xs)[0], model.network_inputs(bg)[0], cols


def _masked(zx: np.ndarray, zb: np.ndarray, take: np.ndarray, cols: np.ndarray
            ) -> np.ndarray:
    """Rows whose input k (model-space column ``cols[k]``) is the event's where ``take[..., k]``
    and the background row's elsewhere (``zx``, ``zb`` broadcast against ``take``)."""
    shape = (*take.shape[:-1], zb.shape[-1])
    pts = np.empty(shape, dtype=zb.dtype)
    pts[...] = zb
    if np.array_equal(cols, np.arange(shape[-1])):  # every model input is a data input
        np.copyto(pts, zx, where=take)
    else:
        pts[..., cols] = np.where(take, zx[..., cols], zb[..., cols])
    return pts


def exact_shap(model: AuditedModel, xs: np.ndarray, bg: np.ndarray,
               share: np.ndarray | None = None, max_rows: int = MAX_ROWS) -> tuple[np.ndarray, int]:
    """Shapley values by enumerating all 2^N coalitions S (Shapley 1953; Lundberg & Lee 2017,
    eq. 8): v(S) = mean over the background of f(x_S, b_rest), and
    φ_i = Σ_{S ∌ i} |S|!(N−|S|−1)!/N! (v(S ∪ {i}) − v(S)). The same numbers as
    ``shap.explainers.Exact`` with an independent masker on the same background (to the
    float32 rounding of the outputs, whose last bits depend on the batch a row is evaluated
    in; ``tests/test_model_speed.py``), evaluated in batches of ``max_rows`` rows. The mean
    over the background is the ``share``-weighted sum ``(B, K)`` per group of rows: φ comes
    back per group, ``(n, N, K, C)``, its sum over K the values against the whole background
    (without ``share``: the plain mean, φ ``(n, N, C)``).
    """
    if share is None:
        phi, ns = exact_shap(model, xs, bg, np.full((len(bg), 1), 1.0 / len(bg)), max_rows)
        return phi[:, :, 0], ns
    n, dim = xs.shape
    zx, zb, cols = _model_rows(model, xs, bg)
    n_sub = 1 << dim
    masks = (np.arange(n_sub)[:, None] >> np.arange(dim)[None, :]) & 1 == 1  # (S, N)
    size = masks.sum(axis=1)
    weight = np.array([math.factorial(k) * math.factorial(dim - k - 1) / math.factorial(dim)
                       if k < dim else 0.0 for k in size])
    per_sub = max(1, min(n_sub, max_rows // len(bg)))  # coalitions per call
    per = max(1, max_rows // (len(bg) * per_sub))  # events per call
    n_groups = share.shape[1]
    phi = np.zeros((n, dim, n_groups, model.n_outputs))
    index = np.arange(n_sub)
    for s in range(0, n, per):
        e = len(zx[s:s + per])
        v = np.zeros((e, n_sub, n_groups, model.n_outputs))
        for c in range(0, n_sub, per_sub):
            k = len(masks[c:c + per_sub])
            take = np.broadcast_to(masks[None, c:c + per_sub, None, :], (e, k, len(bg), dim))
            pts = _masked(zx[s:s + e, None, None], zb[None, None], take, cols)  # (e, S, B, M)
            out = model.run_network(pts.reshape(-1, zb.shape[1]))
            v[:, c:c + k] = np.einsum("esbc,bg->esgc", out.reshape(e, k, len(bg), -1), share)
        for i in range(dim):
            without = index[~masks[:, i]]
            phi[s:s + e, i] = np.einsum("esgc,s->egc", v[:, without | (1 << i)]
                                        - v[:, without], weight[without])
    return phi, n_sub


def _sampling(model: AuditedModel, xs: np.ndarray, bg: np.ndarray, rounds: int, seed: int,
              share: np.ndarray) -> tuple[np.ndarray, int]:
    """Shapley values by sampling permutations (Castro, Gómez, Tejada, Comput. Oper. Res. 36
    (2009) 1726; Štrumbelj & Kononenko, Knowl. Inf. Syst. 41 (2014) 647: "Shapley sampling
    values" in Lundberg & Lee 2017), vectorised.

    For every event x and background row b, ``rounds`` permutations π of the inputs: the
    chain b = p_0, p_1, ..., p_N = x switches the inputs from b to x in the order π, and
    f(p_k) − f(p_{k−1}) is the marginal contribution of input π_k; φ_i(x) is its mean over
    the background and the permutations, an unbiased estimate of the exact value (each
    chain's contributions add up to f(x) − f(b), so φ is additive exactly). Every other
    permutation is the previous one reversed (antithetic pairs: R. Mitchell et al., JMLR 23
    (2022) 1, arXiv:2104.12199), every (event, background row) draws its own. Each chain
    costs N − 1 evaluations (f(b) and f(x) are shared), all chains of a batch of events run
    in one call of the network. The mean over the background rows is the ``share``-weighted
    sum per group (``(B, K)``, as :func:`exact_shap`): φ comes back per group,
    ``(n, N, K, C)``."""
    n, dim = xs.shape
    n_bg = len(bg)
    zx, zb, cols = _model_rows(model, xs, bg)
    fx = model.run_network(zx)  # (n, C)
    fb = model.run_network(zb)  # (B, C)
    n_groups = share.shape[1]
    phi = np.zeros((n, dim, n_groups, model.n_outputs))
    if dim == 1:
        phi[:, 0] = fx[:, None] * share.sum(axis=0)[None, :, None] - (share.T @ fb)[None]
        return phi, rounds
    rng = np.random.default_rng([seed, 0x5A3B])
    steps = np.arange(1, dim)  # p_k for k = 1..N-1 take the first k inputs of π from x
    per = max(1, MAX_ROWS // (n_bg * (dim - 1)))
    for s in range(0, n, per):
        e = len(zx[s:s + per])
        rank = None
        for r in range(rounds):
            if r % 2 == 0:  # rank[e, b, i]: the position of input i in π
                rank = np.argsort(np.argsort(rng.random((e, n_bg, dim)), axis=2), axis=2)
            else:
                rank = dim - 1 - rank
            take = rank[:, :, None, :] < steps[None, None, :, None]  # (e, B, N-1, N)
            pts = _masked(zx[s:s + e, None, None], zb[None, :, None], take, cols)
            out = model.run_network(pts.reshape(-1, zb.shape[1]))
            chain = np.concatenate(
                [np.broadcast_to(fb[None, :, None], (e, n_bg, 1, fb.shape[1])),
                 out.reshape(e, n_bg, dim - 1, -1),
                 np.broadcast_to(fx[s:s + e, None, None], (e, n_bg, 1, fx.shape[1]))], axis=2)
            step = np.diff(chain, axis=2)  # (e, B, N, C): step k adds input π_k
            phi[s:s + e] += np.einsum("ebnc,bg->engc",
                                      np.take_along_axis(step, rank[..., None], axis=2), share)
    return phi / rounds, rounds


def _per_group(method: str, model: AuditedModel, xs: np.ndarray, bg: np.ndarray,
               signs: np.ndarray, groups_of: np.ndarray, nsamples: int | None, seed: int
               ) -> tuple[np.ndarray, int]:
    """shap's explainers on each group of background rows, their values weighted by the
    group's share of the signs: ``(n, N, K, C)`` as :func:`exact_shap`. They take no signed
    background weights, so they refuse a background with negative signs (``auto`` takes
    ``exact`` instead of ``kernel`` there)."""
    dim = xs.shape[1]
    if (signs < 0).any():
        raise ValueError(f"method={method!r} takes no signed background weights: use "
                         "'exact' or 'sampling'")
    parts = []
    ns = 0
    n_groups = groups_of.max() + 1
    for g in range(n_groups):
        rows = groups_of == g
        gb, gs = bg[rows], signs[rows]  # every sign +1 here
        if method == "gradient":  # its samples per event, split between the groups
            phi, used = _gradient(model, xs, gb, max(1, (nsamples or 200) // n_groups), seed)
            ns += used
        elif method == "kernel":
            phi, ns = _kernel(model, xs, gb, nsamples or 1000, seed)
        else:
            phi, ns = _permutation(model, xs, gb, nsamples or 4 * (2 * dim + 2), seed)
        parts.append(phi * (gs.sum() / signs.sum()))
    return np.stack(parts, axis=2), ns


def _as_3d(values: Any, n: int, dim: int) -> np.ndarray:
    """shap's output (an array ``(n, N[, C])`` or a list of C arrays) as ``(n, N, C)``."""
    if isinstance(values, list):
        return np.stack([np.asarray(v) for v in values], axis=-1).reshape(n, dim, -1)
    arr = np.asarray(values)
    return arr.reshape(n, dim, -1)


def _gradient(model: AuditedModel, xs: np.ndarray, bg: np.ndarray, nsamples: int, seed: int
              ) -> tuple[np.ndarray, int]:
    import shap
    import torch

    fn = model.torch_forward()
    if fn is None:
        raise ValueError(f"model {model.path.name} has no differentiable torch form "
                         f"({model.derivative_method}): use method='kernel'")
    tdtype = torch.float64  # raw inputs; the network runs in its own precision

    class Wrapped(torch.nn.Module):
        def forward(self, z):
            return fn(z)

    explainer = shap.GradientExplainer(Wrapped().eval(), torch.as_tensor(bg, dtype=tdtype),
                                       batch_size=max(50, nsamples))
    values = explainer.shap_values(torch.as_tensor(xs, dtype=tdtype), nsamples=nsamples,
                                   rseed=seed)
    return _as_3d(values, len(xs), xs.shape[1]).astype(float), nsamples


def _kernel(model: AuditedModel, xs: np.ndarray, bg: np.ndarray, nsamples: int, seed: int
            ) -> tuple[np.ndarray, int]:
    import shap

    state = np.random.get_state()  # noqa: NPY002 — KernelExplainer draws from numpy's global generator
    np.random.seed(seed)  # noqa: NPY002
    try:
        explainer = shap.KernelExplainer(model.evaluate, bg)
        values = explainer.shap_values(xs, nsamples=nsamples, silent=True)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return _as_3d(values, len(xs), xs.shape[1]).astype(float), nsamples


def _permutation(model: AuditedModel, xs: np.ndarray, bg: np.ndarray, nsamples: int,
                 seed: int) -> tuple[np.ndarray, int]:
    import shap

    masker = shap.maskers.Independent(bg, max_samples=len(bg))
    explainer = shap.PermutationExplainer(model.evaluate, masker, seed=seed)
    explanation = explainer(xs, max_evals=max(nsamples, 2 * xs.shape[1] + 2), silent=True)
    return _as_3d(explanation.values, len(xs), xs.shape[1]).astype(float), nsamples
