"""Learned multivariate two-sample tests over all inputs at once: ``c2st`` and ``nplm``.

1D and 2D tests cannot see a mismodelling that lives in three or more inputs together; a
network trained on the simulation can exploit exactly that. These two tests learn the
density ratio of data to simulation over every input and ask whether it differs from one.
Both are pure functions of event arrays; their randomness comes only from the numpy
``Generator`` passed in (torch generators are seeded from it), so a result is a function of
the inputs and the generator's state.

``c2st`` — the classifier two-sample test (D. Lopez-Paz, M. Oquab, "Revisiting classifier
two-sample tests", ICLR 2017, arXiv:1610.06545). A small network (:data:`C2ST_HIDDEN`, tanh)
is trained to separate simulation from data on half of the events (early-stopped on a
validation part of that half) and judged on the other, held-out half. Statistic: the
log-likelihood ratio of the held-out data under the simulation reweighted by the learned
ratio e^f against the simulation itself,

    T = 2 Σ_{data, held out} [ f(x) − log Ẑ ],   Ẑ = ⟨e^f⟩ over the held-out simulation,

(T/2n estimates a lower bound of the Kullback-Leibler divergence of data from simulation).
p-value: the held-out rank test of Lopez-Paz & Oquab (sec. 3): conditional on the trained
classifier, the held-out data and held-out simulation scores f(x) are two independent
samples of one law under the null (the simulation is unweighted exactly, below), so the
one-sided Mann-Whitney test of "data scores higher" (scipy ``mannwhitneyu``, its normal
approximation with the tie correction) is valid and resolves any p-value: a strong effect is
stored as strong (a permutation p-value cannot go below 1/(1 + permutations)). The statistic
stored is the held-out AUC = U/(n_d n_s). ``n_permutations`` > 0 adds, as a cross-check, the
permutation p-value of T (labels shuffled, split, training and T rerun;
(1 + k)/(1 + n)) in ``details['pvalue_permutation']``.

**Negative weights (both tests).** A loss with signed weights is unbounded below where
negative weights dominate (a flexible f grows without bound on a negative-weight event: seen
in practice, t ~ 10²²), and no permutation null exists for it. So the negative weights are
first *cancelled locally* by cell resampling (:func:`cell_resample`, Andersen & Maier,
arXiv:2109.07851): each negative-weight event and its nearest neighbours in the standardised
inputs share their summed weight, so every weight is ≥ 0 and every distribution on scales
above the cells (two to three events for NLO-style negative weights) is the signed
simulation's. A region where negative weights dominate beyond :data:`MAX_CELL` events is left
unresolved, set to zero and counted (``details['negative_weights']``). Unlike |w|, this keeps
the signed prediction even when the sign depends on the kinematics.

**Weights in c2st.** A permutation test needs exchangeable events, which weighted simulation
and unweighted data are not. The (cell-resampled) simulation is therefore *unweighted*
exactly by acceptance-rejection: event i is kept with probability w_i / max w (an exact draw
from the weighted distribution, without duplicates), and the kept events enter unweighted;
data and kept simulation are then exchangeable under the null and the permutation p-value is
exact. The price is efficiency: with weights spread over a factor of ten (the sample data),
about one simulated event in five is kept (``details['acceptance']``), which is why the
pipeline's simulation subsample is larger than the data's.

``nplm`` — the New Physics Learning Machine (R. T. D'Agnolo, A. Wulzer, "Learning New
Physics from a Machine", Phys. Rev. D 99 (2019) 015014, arXiv:1806.02350). A network f(x)
(:data:`NPLM_HIDDEN`, tanh, weights clipped to ±:data:`NPLM_WEIGHT_CLIP` after every step,
the paper's regulariser) minimises the extended-likelihood loss

    L[f] = Σ_ref w (e^f − 1) − Σ_data f,   t = −2 min_f L[f] ≥ 0,

with the reference (the weighted simulation, negative weights cancelled locally as above)
normalised to the data's count; the loss is then convex in f and bounded below. The last
layer starts at zero (f ≡ 0), so t ≥ 0.

Calibration by toys under the null: the simulation is split in two halves by the generator;
one is the reference in every fit, the other a pool, unweighted exactly (acceptance ∝ w, as
in c2st). Each toy draws as many "data" events as the data fitted, without replacement, from
the union of the pool and the data, and is fitted exactly as the data; p = (1 + k)/(1 +
n_toys). Under the null the data and the pool's exact draws are exchangeable, so conditional
on the reference the observed t is one more draw of the toys' law: a permutation test, exact
for any pool size. (Toys drawn from the pool alone carry only 1 − n/M of the data's
sampling variance, M the pool's size: measured over 100 null replicas with 19 toys, FPR at
5% 0.11 and 11 statistics beyond every toy. A Poisson or multinomial resampling of the
weighted pool instead adds the pool's own fluctuation to every toy: conservative, most null
p-values near 1.) The pool must hold :data:`NPLM_POOL_RATIO` times the data fitted; the data
are subsampled to fit when it does not (``details['n_data']`` of ``n_data_given``).
Beyond every toy (at least :data:`NPLM_TAIL_MIN_TOYS`), the p-value
continues the toys' own tail with the shape of the χ² fitted to them (the papers' asymptotic
form): 1/(1 + n) times sf(t)/sf(t_max) of that χ², t_max the largest toy
(``details['pvalue_from'] = 'chi2_fit_tail'``): a strong effect is stored as strong, not as
the bound 1/(1 + n), and a statistic just beyond the toys stays near 1/(1 + n).

**Nuisances: learning from an imperfect machine** (R. T. d'Agnolo, G. Grosso, M. Pierini,
A. Wulzer, M. Zanetti, Eur. Phys. J. C 82 (2022) 275, arXiv:2111.13633). Given per-event
simulation weights at ±1σ of each nuisance ν_k, the reference becomes
n(x|ν) = n(x|0)·exp Σ_k [ν_k a_k(x) + ν_k² b_k(x)], the quadratic-in-log ("log-normal")
interpolation through the up and down variations: a = (log r_up − log r_down)/2,
b = (log r_up + log r_down)/2 with r = w_var/w. a_k(x), b_k(x) are learned from the
per-event ratios by a ridge regression on the inputs (quadratic polynomial, linear above
:data:`POLY_MAX_DIM` inputs), so they are known at data events too. With unit Gaussian
auxiliary likelihoods for ν (central values A = 0 for the data, drawn from N(0, 1) for each
toy),

    τ = −2 min_{f,ν} [L(f, ν) + ½|ν − A|² − ½|A|²],   Δ = −2 min_ν [L(0, ν) + ...],
    t = τ − Δ,

so a difference that a nuisance within its constraint explains does not make t large.
τ's fit starts from Δ's ν and f ≡ 0, so t ≥ 0. Toys are drawn at ν = 0.

**Attribution** (:func:`taylor_attribution`): which inputs drive the learned f — first-order
Taylor coefficients ⟨|∂f/∂x_i|⟩ on the data events (Wunsch, Friese, Wagner, Quast,
arXiv:1803.08782, as the network audit), raw and scaled to standardised inputs (× σ_i, the
simulation's |w|-weighted standard deviation), with the audit's mergeable means
(:class:`validator.stats.weighted_means.AbsMeanSums`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

from validator.stats.result import GofResult
from validator.stats.weighted_means import AbsMeanSums

#: Hidden layers of the c2st classifier: enough to learn a three-input sign correlation on
#: standardised inputs, small enough to train in about a second on 10^4 events on one core.
C2ST_HIDDEN: tuple[int, ...] = (32, 32)
#: Permutations of c2st by default: none, the held-out rank test needs none (each
#: permutation is a retraining, ~1 s on the sample data; asked for, they cross-check it).
C2ST_PERMUTATIONS = 0
#: Fraction of the events held out to evaluate the classifier (the rest trains it).
C2ST_TEST_FRACTION = 0.5
#: Fraction of the training half used for early stopping.
C2ST_VALIDATION_FRACTION = 0.25
C2ST_MAX_EPOCHS = 60
#: Epochs before early stopping may stop training: a correlation of three or more inputs
#: (no linear or pairwise part) leaves the loss on a plateau for the first epochs.
C2ST_MIN_EPOCHS = 20
#: Epochs without improvement of the validation loss before training stops.
C2ST_PATIENCE = 8
C2ST_BATCH = 512
C2ST_LR = 1e-2
#: Hidden layers of the NPLM network (the paper uses one to three small layers).
NPLM_HIDDEN: tuple[int, ...] = (5,)
#: Weight clipping of the NPLM network, the paper's regulariser: bounds f, so the loss is
#: bounded with negative reference weights, and keeps t's null distribution near χ².
NPLM_WEIGHT_CLIP = 2.0
#: Full-batch Adam steps per NPLM fit (the same for the data and every toy).
NPLM_STEPS = 300
NPLM_LR = 0.02
#: The toys' pool of exact (unweighted) simulated draws holds at least this many times the
#: data events fitted (the data are subsampled when it does not): toys drawn without
#: replacement then share at most this fraction of their events.
NPLM_POOL_RATIO = 2
#: Toys of nplm by default: p-values resolved to 1/50.
NPLM_TOYS = 49
#: Toys from which a statistic beyond every toy takes its p-value from the tail of the χ²
#: fitted to the toys (the NPLM papers' asymptotic form: t ~ χ² with as many degrees of
#: freedom as the network effectively fits; D'Agnolo et al., Eur. Phys. J. C 81 (2021) 89,
#: arXiv:1912.12155), anchored at the largest toy, instead of the bound 1/(1 + n).
NPLM_TAIL_MIN_TOYS = 19
#: Default wall-clock budget per test (s): no permutation or toy starts after it.
TIME_BUDGET_S = 180.0
#: Below this many held-out events per class (c2st) or data events (nplm) the result is
#: flagged unreliable.
MIN_EVENTS = 100
#: Nuisance-dependence models: a quadratic polynomial of the standardised inputs up to this
#: many inputs (d(d+3)/2 + 1 terms), linear above.
POLY_MAX_DIM = 30
#: Ridge strength of the nuisance-dependence regression (relative to the design's scale).
POLY_RIDGE = 1e-3
#: Variation ratios w_var/w at or below zero are clipped here before the logarithm.
MIN_RATIO = 1e-3


#: Largest cell of the negative-weight cancellation (:func:`cell_resample`): with NLO-style
#: negative weights (a few per cent) cells hold two or three events; a region where
#: negative weights dominate is left unresolved (and counted) rather than smeared far.
MAX_CELL = 64
#: Torch threads while a test runs (restored after): see :func:`_torch_threads`.
TORCH_THREADS = 1

Progress = Callable[[int, int], None]


@dataclass
class Attribution:
    """First-order Taylor coefficients ⟨|∂f/∂x_i|⟩ of a learned function on data events."""

    inputs: tuple[str, ...]
    value: np.ndarray
    uncertainty: np.ndarray
    scaled_value: np.ndarray
    scaled_uncertainty: np.ndarray
    n_events: int
    sum_weights: float

    def rows(self) -> list[dict[str, Any]]:
        """One dict per input (``feature_x``, ``value``, ..., ``n_events``)."""
        return [{"feature_x": name, "value": float(self.value[i]),
                 "uncertainty": float(self.uncertainty[i]),
                 "scaled_value": float(self.scaled_value[i]),
                 "scaled_uncertainty": float(self.scaled_uncertainty[i]),
                 "n_events": self.n_events, "sum_weights": self.sum_weights}
                for i, name in enumerate(self.inputs)]

    def ranking(self) -> dict[str, float]:
        """Scaled coefficients by input, largest first (what drives the separation)."""
        order = np.argsort(-np.nan_to_num(self.scaled_value, nan=-1.0), kind="stable")
        return {self.inputs[i]: round(float(self.scaled_value[i]), 6) for i in order}


@dataclass
class _Prepared:
    """Finite events, standardised with the simulation's |w|-weighted mean and σ."""

    zs: np.ndarray
    ws: np.ndarray
    zd: np.ndarray
    mean: np.ndarray
    sigma: np.ndarray
    n_dropped_sim: int
    n_dropped_data: int
    cells: dict[str, Any] = field(default_factory=dict)


def prepare_samples(x_sim: np.ndarray, w_sim: np.ndarray | None, x_data: np.ndarray) -> _Prepared:
    x_sim = np.asarray(x_sim, dtype=float)
    x_data = np.asarray(x_data, dtype=float)
    if x_sim.ndim != 2 or x_data.ndim != 2 or x_sim.shape[1] != x_data.shape[1]:
        raise ValueError(f"x_sim {x_sim.shape} and x_data {x_data.shape} must be (n, d) "
                         "with the same d")
    w = np.ones(len(x_sim)) if w_sim is None else np.asarray(w_sim, dtype=float)
    if w.shape != (len(x_sim),):
        raise ValueError(f"w_sim has shape {w.shape}, expected ({len(x_sim)},)")
    good_s = np.isfinite(x_sim).all(axis=1) & np.isfinite(w)
    good_d = np.isfinite(x_data).all(axis=1)
    xs, ws, xd = x_sim[good_s], w[good_s], x_data[good_d]
    aw = np.abs(ws)
    if aw.sum() <= 0 or len(xd) == 0:
        raise ValueError("no simulated event with a non-zero weight or no data event")
    mean = aw @ xs / aw.sum()
    sigma = np.sqrt(np.maximum(aw @ (xs - mean) ** 2 / aw.sum(), 0.0))
    sigma = np.where(sigma > 0, sigma, 1.0)  # a constant input stays constant (0)
    zs = (xs - mean) / sigma
    resampled, cells = cell_resample(zs, ws)
    return _Prepared(zs, resampled, (xd - mean) / sigma, mean, sigma,
                     int((~good_s).sum()), int((~good_d).sum()), cells)


def cell_resample(z: np.ndarray, w: np.ndarray, max_cell: int = MAX_CELL
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Cancel negative weights locally: cell resampling (J. R. Andersen, A. Maier, "Unbiased
    elimination of negative weights in Monte Carlo samples", Eur. Phys. J. C 82 (2022) 433,
    arXiv:2109.07851).

    Seeds are the negative-weight events, most negative first; a seed's cell grows over its
    nearest neighbours in the standardised inputs ``z`` until its weights sum to ≥ 0, and
    the cell's weights become ``Σw · |w_i| / Σ|w|``: every weight ≥ 0, each cell's sum (so
    every distribution on scales above the cells) unchanged. A seed whose cell is still
    negative at ``max_cell`` events (a region where negative weights dominate) keeps its
    cell unchanged and is set to zero (counted). Deterministic (no randomness).
    Returns the new weights and a summary for ``details``.
    """
    w = np.asarray(w, dtype=float).copy()
    neg = np.flatnonzero(w < 0)
    info: dict[str, Any] = {"n_negative": len(neg), "n_cells": 0, "mean_cell_size": None,
                            "n_unresolved": 0}
    if len(neg) == 0:
        return w, info
    from sklearn.neighbors import NearestNeighbors

    neg = neg[np.argsort(w[neg], kind="stable")]
    k = min(max_cell, len(w))
    _, rows = NearestNeighbors(n_neighbors=k).fit(z).kneighbors(z[neg])
    sizes, unresolved = [], 0
    for seed, row in zip(neg, rows, strict=True):
        if w[seed] >= 0:  # already absorbed by an earlier cell
            continue
        row = np.concatenate([[seed], row[row != seed]])
        reached = np.flatnonzero(np.cumsum(w[row]) >= 0)
        if len(reached) == 0:
            unresolved += 1
            w[seed] = 0.0
            continue
        cell = row[: reached[0] + 1]
        aw = np.abs(w[cell])
        w[cell] = w[cell].sum() * aw / aw.sum()
        sizes.append(len(cell))
    info.update(n_cells=len(sizes), n_unresolved=unresolved,
                mean_cell_size=float(np.mean(sizes)) if sizes else None)
    return w, info


def _torch_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


def _net(dim: int, hidden: tuple[int, ...], gen: Any, zero_last: bool = False) -> Any:
    """A tanh MLP ``dim -> hidden... -> 1`` initialised from the torch generator ``gen``
    (PyTorch's default ranges, U(±1/√fan_in)); ``zero_last`` starts it at f ≡ 0."""
    import torch

    layers: list[Any] = []
    prev = dim
    for h in hidden:
        layers += [torch.nn.Linear(prev, h), torch.nn.Tanh()]
        prev = h
    layers.append(torch.nn.Linear(prev, 1))
    net = torch.nn.Sequential(*layers)
    with torch.no_grad():
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        for m in linear:
            bound = 1.0 / np.sqrt(m.in_features)
            torch.nn.init.uniform_(m.weight, -bound, bound, generator=gen)
            torch.nn.init.uniform_(m.bias, -bound, bound, generator=gen)
        if zero_last:
            linear[-1].weight.zero_()
            linear[-1].bias.zero_()
    return net


def _f(net: Any, z: Any) -> Any:
    return net(z).squeeze(1)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads inside the block, restoring the setting after it: these
    networks are so small that thread synchronisation costs more than it saves (one thread is
    ~5× faster than two on a shared two-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _on_torch_threads(fn: Callable[..., GofResult]) -> Callable[..., GofResult]:
    """Run ``fn`` inside :func:`_torch_threads` (:data:`TORCH_THREADS`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> GofResult:
        with _torch_threads(TORCH_THREADS):
            return fn(*args, **kwargs)

    return wrapper


def _tensor(a: np.ndarray) -> Any:
    """float32 tensor (training in float32 is ~4× faster than float64 on CPU; a result is
    still a function of the inputs and the seed on a given machine)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# c2st


def unweight(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of the events kept by acceptance-rejection with probability |w|/max|w|: an
    exact, duplicate-free draw from the |w|-weighted distribution (module docstring)."""
    aw = np.abs(np.asarray(w, dtype=float))
    u = rng.random(len(aw))
    return np.flatnonzero(u * aw.max() < aw)


def _train_classifier(z: Any, y: Any, sw: Any, gen: Any, hidden: tuple[int, ...]
                      ) -> tuple[Any, int]:
    """Weighted logistic regression by the MLP, early-stopped on a validation part."""
    import torch

    n = len(z)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(n * C2ST_VALIDATION_FRACTION))
    val, fit = perm[:n_val], perm[n_val:]
    net = _net(z.shape[1], hidden, gen)
    opt = torch.optim.Adam(net.parameters(), lr=C2ST_LR)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def loss_of(idx: Any) -> Any:
        return (bce(_f(net, z[idx]), y[idx], reduction="none") * sw[idx]).sum() / sw[idx].sum()

    best, best_state, bad, epochs = np.inf, None, 0, 0
    for epoch in range(1, C2ST_MAX_EPOCHS + 1):
        epochs = epoch
        order = fit[torch.randperm(len(fit), generator=gen)]
        for start in range(0, len(order), C2ST_BATCH):
            loss = loss_of(order[start:start + C2ST_BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            v = float(loss_of(val))
        if v < best - 1e-5:
            best, bad = v, 0
            best_state = {k: t.clone() for k, t in net.state_dict().items()}
        else:
            bad += 1
            if bad >= C2ST_PATIENCE and epochs >= C2ST_MIN_EPOCHS:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net, epochs


def _c2st_once(z: np.ndarray, label: np.ndarray, rng: np.random.Generator,
               hidden: tuple[int, ...]) -> tuple[float, float, Any, np.ndarray, int]:
    """Split, train, evaluate: ``(T, AUC, net, held-out indices, epochs)``."""
    import torch

    gen = torch.Generator().manual_seed(_torch_seed(rng))
    n = len(z)
    test = np.zeros(n, dtype=bool)
    for cls in (0, 1):  # stratified: the same held-out fraction of each class
        idx = np.flatnonzero(label == cls)
        test[rng.choice(idx, round(len(idx) * C2ST_TEST_FRACTION), replace=False)] = True
    train = ~test
    n_d, n_s = int((label[train] == 1).sum()), int((label[train] == 0).sum())
    sw = np.where(label[train] == 1, 1.0, n_d / max(n_s, 1))  # balanced classes
    net, epochs = _train_classifier(_tensor(z[train]), _tensor(label[train]), _tensor(sw),
                                    gen, hidden)
    with torch.no_grad():
        f = _f(net, _tensor(z[test])).numpy().astype(float)
    lt = label[test]
    f_d, f_s = f[lt == 1], f[lt == 0]
    log_z = float(np.logaddexp.reduce(f_s) - np.log(len(f_s)))
    t_stat = float(2.0 * np.sum(f_d - log_z))
    ranks = stats.rankdata(f)
    auc = float((ranks[lt == 1].sum() - len(f_d) * (len(f_d) + 1) / 2) / (len(f_d) * len(f_s)))
    return t_stat, auc, net, np.flatnonzero(test), epochs


@_on_torch_threads
def c2st(x_sim: np.ndarray, w_sim: np.ndarray | None, x_data: np.ndarray,
         rng: np.random.Generator, *, inputs: tuple[str, ...] | None = None,
         n_permutations: int = C2ST_PERMUTATIONS, hidden: tuple[int, ...] = C2ST_HIDDEN,
         time_budget_s: float = TIME_BUDGET_S, progress: Progress | None = None,
         ) -> GofResult:
    """The classifier two-sample test of weighted simulation vs data (module docstring).

    ``x_sim`` ``(n, d)`` with weights ``w_sim`` (None: unweighted; negative allowed),
    ``x_data`` ``(m, d)``; events with a NaN/inf input are dropped (counted in
    ``details``). ``inputs`` names the columns (attribution). ``time_budget_s``: no
    permutation starts after it (``details['stopped_by_time_budget']``); ``n_toys`` is the
    number of permutations run. ``details['attribution']`` holds the classifier's Taylor
    coefficients and ``details['_attribution']`` the :class:`Attribution` (not stored).
    """
    start = time.perf_counter()
    prep = prepare_samples(x_sim, w_sim, x_data)
    inputs = inputs or tuple(f"x{i}" for i in range(prep.zs.shape[1]))
    kept = unweight(prep.ws, rng)
    zs = prep.zs[kept]
    z = np.concatenate([zs, prep.zd])
    label = np.concatenate([np.zeros(len(zs), dtype=np.int64),
                            np.ones(len(prep.zd), dtype=np.int64)])
    t_obs, auc, net, test, epochs = _c2st_once(z, label, rng, hidden)
    held_data = test[label[test] == 1]
    attribution = taylor_attribution(net, z[held_data], prep.sigma, inputs)
    lt = label[test]
    n_test_d, n_test_s = int((lt == 1).sum()), int((lt == 0).sum())
    import torch

    with torch.no_grad():
        scores = _f(net, _tensor(z[test])).numpy().astype(float)
    rank_test = stats.mannwhitneyu(scores[lt == 1], scores[lt == 0], alternative="greater",
                                   method="asymptotic")
    null: list[float] = []
    stopped = False
    for k in range(n_permutations):
        if time.perf_counter() - start > time_budget_s:
            stopped = True
            break
        t_k, *_ = _c2st_once(z, rng.permutation(label), rng, hidden)
        null.append(t_k)
        if progress:
            progress(k + 1, n_permutations)
    n = len(null)
    exceed = int(np.sum(np.asarray(null) >= t_obs))
    # a constant classifier (every score tied) separates nothing: no evidence, p = 1
    pvalue = float(rank_test.pvalue) if np.isfinite(rank_test.pvalue) else 1.0
    details = {
        "auc": auc, "statistic_llr": t_obs, "pvalue_held_out_rank_test": pvalue,
        "pvalue_permutation": (1 + exceed) / (1 + n) if n else None,
        "permutation_pvalue_is_bound": exceed == 0 if n else None,
        "n_sim": len(prep.zs), "n_sim_unweighted": len(zs),
        "acceptance": len(zs) / len(prep.zs),
        "negative_weights": prep.cells,
        "n_data": len(prep.zd), "n_test_sim": n_test_s, "n_test_data": n_test_d,
        "n_dropped_sim": prep.n_dropped_sim, "n_dropped_data": prep.n_dropped_data,
        "epochs": epochs, "hidden": list(hidden), "n_permutations_requested": n_permutations,
        "stopped_by_time_budget": stopped, "time_s": round(time.perf_counter() - start, 2),
        "null_quantiles": _quantiles(null),
        "weights": "negative weights cancelled by cell resampling, then unweighted by "
                   "acceptance w/max(w)",
        "attribution": attribution.ranking(), "_attribution": attribution,
    }
    return GofResult(method="c2st", statistic=auc, pvalue=pvalue, ndf=None,
                     effect_size=t_obs / (2.0 * max(n_test_d, 1)), effect_name="kl_per_event",
                     pvalue_method="asymptotic", n_toys=n or None,
                     reliable=min(n_test_d, n_test_s) >= MIN_EVENTS,
                     details=details, pvalue_is_bound=False)


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    q = np.quantile(values, [0.5, 0.9, 0.99])
    return {"median": float(q[0]), "q90": float(q[1]), "q99": float(q[2]),
            "max": float(np.max(values))}


# ---------------------------------------------------------------------------------------------
# attribution


def taylor_attribution(net: Any, z: np.ndarray, sigma: np.ndarray, inputs: tuple[str, ...],
                       w: np.ndarray | None = None) -> Attribution:
    """⟨|∂f/∂x_i|⟩ of ``net`` (a function of standardised inputs ``z = (x − μ)/σ``) over the
    events ``z`` (weights ``w``, default 1): raw (per unit of x_i: ∂f/∂z_i / σ_i) and scaled
    (∂f/∂z_i = t_i·σ_i), with the linearised uncertainty of the weighted mean
    (:class:`validator.stats.weighted_means.AbsMeanSums`)."""
    import torch

    w = np.ones(len(z)) if w is None else np.asarray(w, dtype=float)
    zt = _tensor(z).requires_grad_(True)
    f = _f(net, zt)
    (grad,) = torch.autograd.grad(f.sum(), zt)
    g = grad.detach().numpy().astype(float)
    scaled, raw = AbsMeanSums.zeros(1, z.shape[1]), AbsMeanSums.zeros(1, z.shape[1])
    scaled.add(0, w, g)
    raw.add(0, w, g / sigma)
    ms, us = scaled.means()
    mr, ur = raw.means()
    return Attribution(tuple(inputs), mr[0], ur[0], ms[0], us[0], len(z), float(w.sum()))


# ---------------------------------------------------------------------------------------------
# nplm


@dataclass
class _Nuisances:
    """Quadratic-in-log nuisance dependence: per event, ``a`` and ``b`` ``(n, K)``."""

    names: tuple[str, ...]
    a_ref: np.ndarray
    b_ref: np.ndarray
    a_pool: np.ndarray
    b_pool: np.ndarray
    a_data: np.ndarray
    b_data: np.ndarray
    fit_r2: list[float]


def _design(z: np.ndarray) -> np.ndarray:
    """Ridge regression design: 1, z, and z_i z_j (i ≤ j) up to :data:`POLY_MAX_DIM` inputs."""
    cols = [np.ones((len(z), 1)), z]
    if z.shape[1] <= POLY_MAX_DIM:
        i, j = np.triu_indices(z.shape[1])
        cols.append(z[:, i] * z[:, j])
    return np.concatenate(cols, axis=1)


def _nuisance_models(z_sim: np.ndarray, w: np.ndarray,
                     systematics: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     keep: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per nuisance: ridge coefficients of a(x) and b(x), and the R² of a."""
    x = _design(z_sim)
    aw = np.abs(w)
    xtx = (x * aw[:, None]).T @ x
    ridge = POLY_RIDGE * np.trace(xtx) / len(xtx) * np.eye(len(xtx))
    out = []
    for name, (up, down) in systematics.items():
        up = np.asarray(up, dtype=float)[keep]
        down = np.asarray(down, dtype=float)[keep]
        if up.shape != w.shape or down.shape != w.shape:
            raise ValueError(f"systematic {name!r}: up/down weights must have one value per "
                             "simulated event")
        with np.errstate(divide="ignore", invalid="ignore"):
            lu = np.log(np.clip(np.where(w != 0, up / w, 1.0), MIN_RATIO, None))
            ld = np.log(np.clip(np.where(w != 0, down / w, 1.0), MIN_RATIO, None))
        a, b = (lu - ld) / 2.0, (lu + ld) / 2.0
        ca = np.linalg.solve(xtx + ridge, (x * aw[:, None]).T @ a)
        cb = np.linalg.solve(xtx + ridge, (x * aw[:, None]).T @ b)
        resid = a - x @ ca
        var = np.average((a - np.average(a, weights=aw)) ** 2, weights=aw)
        r2 = float(1.0 - np.average(resid**2, weights=aw) / var) if var > 0 else 1.0
        out.append((ca, cb, r2))
    return out


def _nu_fit(ar: np.ndarray, br: np.ndarray, wr: np.ndarray, ad: np.ndarray, bd: np.ndarray,
            cd: np.ndarray, aux: np.ndarray) -> tuple[float, np.ndarray]:
    """min over ν of L(0, ν) + ½|ν − A|² − ½|A|² (Δ's fit), by BFGS: ``(min, ν)``."""
    sa, sb = cd @ ad, cd @ bd

    def fun(nu: np.ndarray) -> tuple[float, np.ndarray]:
        g = ar @ nu + br @ (nu * nu)
        e = wr * np.exp(g)
        value = e.sum() - wr.sum() - (sa @ nu + sb @ (nu * nu)) \
            + 0.5 * np.sum((nu - aux) ** 2) - 0.5 * np.sum(aux**2)
        grad = e @ ar + 2 * nu * (e @ br) - sa - 2 * nu * sb + (nu - aux)
        return float(value), grad

    res = optimize.minimize(fun, aux.copy(), jac=True, method="BFGS")
    return float(res.fun), np.asarray(res.x)


def _nplm_fit(zr: Any, wr: Any, zd: Any, cd: Any, gen: Any, hidden: tuple[int, ...],
              nus: tuple[Any, ...] | None = None, nu0: np.ndarray | None = None,
              aux: np.ndarray | None = None) -> tuple[float, Any]:
    """−2 min L over f (and ν with nuisances), full-batch Adam with weight clipping.

    ``nus``: torch ``(a_ref, b_ref, a_data, b_data)``; ``nu0`` the start of ν; ``aux`` the
    auxiliary central values. Returns ``(min L, net)``.
    """
    import torch

    net = _net(zr.shape[1], hidden, gen, zero_last=True)
    params = list(net.parameters())
    nu = None
    if nus is not None:
        nu = _tensor(nu0).requires_grad_(True)
        aux_t = _tensor(aux)
        params.append(nu)
    opt = torch.optim.Adam(params, lr=NPLM_LR)
    net_params = list(net.parameters())
    best = np.inf
    for _ in range(NPLM_STEPS + 1):
        fr, fd = _f(net, zr), _f(net, zd)
        extra = 0.0
        if nu is not None:
            ar, br, ad, bd = nus
            fr = fr + ar @ nu + br @ (nu * nu)
            fd = fd + ad @ nu + bd @ (nu * nu)
            extra = 0.5 * ((nu - aux_t) ** 2).sum() - 0.5 * (aux_t**2).sum()
        loss = (wr * torch.expm1(fr)).sum() - (cd * fd).sum() + extra
        value = float(loss.detach())
        if value < best:
            best = value
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in net_params:
                p.clamp_(-NPLM_WEIGHT_CLIP, NPLM_WEIGHT_CLIP)
    return best, net


@_on_torch_threads
def _tail_ratio(dof: float, t_obs: float, t_max: float) -> float:
    """How far beyond the largest toy, by the χ² fitted to the toys: sf(t_obs)/sf(t_max),
    computed in logs (both may underflow). The fitted law gives only the tail's shape beyond
    the toys; its level stays the toys' own, 1/(1 + n) at the largest toy (fitted levels from
    19 toys were too light in the tail: measured, 6 of 100 null replicas below 0.01)."""
    log_ratio = float(stats.chi2.logsf(t_obs, dof) - stats.chi2.logsf(t_max, dof))
    return float(np.exp(min(log_ratio, 0.0)))


def nplm(x_sim: np.ndarray, w_sim: np.ndarray | None, x_data: np.ndarray,
         rng: np.random.Generator, *, inputs: tuple[str, ...] | None = None,
         systematics: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
         n_toys: int = NPLM_TOYS, hidden: tuple[int, ...] = NPLM_HIDDEN,
         time_budget_s: float = TIME_BUDGET_S, progress: Progress | None = None,
         ) -> GofResult:
    """The NPLM test of data against the weighted simulation (module docstring).

    ``systematics``: name -> (weights up, weights down), one value per simulated event
    (aligned with ``x_sim``): then the imperfect-machine statistic t = τ − Δ with the
    nuisances profiled (``details['nuisances']``: Δ's fitted ν). ``n_toys`` toys under
    the null (fewer if ``time_budget_s`` runs out). ``details['attribution']``: the learned
    f's Taylor coefficients on the data.
    """
    import torch

    start = time.perf_counter()
    prep = prepare_samples(x_sim, w_sim, x_data)
    inputs = inputs or tuple(f"x{i}" for i in range(prep.zs.shape[1]))
    keep = np.flatnonzero(np.isfinite(np.asarray(x_sim, dtype=float)).all(axis=1)
                          & np.isfinite(np.asarray(w_sim if w_sim is not None else
                                                   np.ones(len(x_sim)), dtype=float)))
    n_s = len(prep.zs)
    half = rng.permutation(n_s)
    ref, pool = np.sort(half[: n_s // 2]), np.sort(half[n_s // 2:])
    accepted = pool[unweight(prep.ws[pool], rng)]  # exact draws of the weighted simulation
    n_data = min(len(prep.zd), len(accepted) // NPLM_POOL_RATIO)
    used_data = np.arange(len(prep.zd)) if n_data == len(prep.zd) else \
        np.sort(rng.choice(len(prep.zd), n_data, replace=False))
    z_data = prep.zd[used_data]
    w_ref = prep.ws[ref] * (n_data / prep.ws[ref].sum())
    zr, wr, zp, zd = (_tensor(a) for a in (prep.zs[ref], w_ref, prep.zs[accepted], z_data))
    ones = _tensor(np.ones(n_data))
    nuis = None
    if systematics:
        models = _nuisance_models(prep.zs, prep.ws, systematics, keep)
        xr, xp, xd = _design(prep.zs[ref]), _design(prep.zs[accepted]), _design(z_data)
        nuis = _Nuisances(tuple(systematics),
                          np.stack([xr @ ca for ca, _, _ in models], axis=1),
                          np.stack([xr @ cb for _, cb, _ in models], axis=1),
                          np.stack([xp @ ca for ca, _, _ in models], axis=1),
                          np.stack([xp @ cb for _, cb, _ in models], axis=1),
                          np.stack([xd @ ca for ca, _, _ in models], axis=1),
                          np.stack([xd @ cb for _, cb, _ in models], axis=1),
                          [r2 for *_, r2 in models])

    def statistic(z_obs: Any, counts: Any, a_obs: np.ndarray | None, b_obs: np.ndarray | None,
                  aux: np.ndarray | None) -> tuple[float, Any, np.ndarray | None]:
        gen = torch.Generator().manual_seed(_torch_seed(rng))
        if nuis is None:
            best, net = _nplm_fit(zr, wr, z_obs, counts, gen, hidden)
            return -2.0 * best, net, None
        c = counts.numpy().astype(float)
        delta_min, nu_hat = _nu_fit(nuis.a_ref, nuis.b_ref, w_ref, a_obs, b_obs, c, aux)
        tensors = tuple(_tensor(a) for a in (nuis.a_ref, nuis.b_ref, a_obs, b_obs))
        tau_min, net = _nplm_fit(zr, wr, z_obs, counts, gen, hidden, tensors, nu_hat, aux)
        tau_min = min(tau_min, delta_min)
        return -2.0 * tau_min - (-2.0 * delta_min), net, nu_hat

    n_k = len(nuis.names) if nuis else 0
    t_obs, net, nu_hat = statistic(zd, ones, nuis.a_data if nuis else None,
                                   nuis.b_data if nuis else None, np.zeros(n_k))
    attribution = taylor_attribution(net, z_data, prep.sigma, inputs)
    null: list[float] = []
    stopped = False
    # the toys' events: the pool's exact draws and the data, exchangeable under the null
    z_union = torch.cat([zp, zd])
    a_union = np.concatenate([nuis.a_pool, nuis.a_data]) if nuis else None
    b_union = np.concatenate([nuis.b_pool, nuis.b_data]) if nuis else None
    for k in range(n_toys):
        if time.perf_counter() - start > time_budget_s:
            stopped = True
            break
        toy = np.sort(rng.choice(len(accepted) + n_data, n_data, replace=False))
        aux = rng.standard_normal(n_k)
        t_k, _, _ = statistic(z_union[torch.from_numpy(toy)], ones,
                              a_union[toy] if nuis else None,
                              b_union[toy] if nuis else None, aux)
        null.append(t_k)
        if progress:
            progress(k + 1, n_toys)
    n = len(null)
    exceed = int(np.sum(np.asarray(null) >= t_obs))
    details: dict[str, Any] = {
        "n_ref": len(ref), "n_pool": len(pool), "n_pool_unweighted": len(accepted),
        "n_data": n_data, "n_data_given": len(prep.zd),
        "sumw_ref_before_normalisation": float(prep.ws[ref].sum()),
        "negative_weights": prep.cells,
        "n_dropped_sim": prep.n_dropped_sim, "n_dropped_data": prep.n_dropped_data,
        "hidden": list(hidden), "weight_clip": NPLM_WEIGHT_CLIP, "steps": NPLM_STEPS,
        "n_toys_requested": n_toys, "stopped_by_time_budget": stopped,
        "time_s": round(time.perf_counter() - start, 2), "null_quantiles": _quantiles(null),
        "attribution": attribution.ranking(), "_attribution": attribution,
    }
    pvalue, is_bound = (1 + exceed) / (1 + n), exceed == 0
    if n >= 5 and np.ptp(null) > 0:  # the papers' asymptotic form
        dof, _, _ = stats.chi2.fit(np.maximum(null, 1e-9), floc=0, fscale=1)
        details["chi2_fit_dof"] = float(dof)
        details["pvalue_chi2_fit"] = float(stats.chi2.sf(t_obs, dof))
        if is_bound and n >= NPLM_TAIL_MIN_TOYS:
            anchored = pvalue * _tail_ratio(dof, t_obs, float(np.max(null)))
            if anchored < pvalue:
                pvalue, is_bound = anchored, False
                details["pvalue_from"] = "chi2_fit_tail"
    if nuis is not None:
        details["nuisances"] = {name: float(v) for name, v in zip(nuis.names, nu_hat,
                                                                    strict=True)}
        details["nuisance_model_r2"] = dict(zip(nuis.names, nuis.fit_r2, strict=True))
    return GofResult(method="nplm", statistic=float(t_obs), pvalue=pvalue,
                     ndf=None, effect_size=float(t_obs) / (2.0 * n_data),
                     effect_name="kl_per_event", pvalue_method="toys", n_toys=n,
                     reliable=n_data >= MIN_EVENTS and n > 0, details=details,
                     pvalue_is_bound=is_bound)
