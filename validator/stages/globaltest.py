"""The run-level global test: are the results of the whole run, taken together, compatible with
"the simulation describes the data"? It keeps the correlations between the tests.

Tests of one run are strongly correlated: ``chi2_uw`` and ``saturated`` read one histogram, a
feature's 1D test and its pairs share events, correlated features share fluctuations. The
number of failures at ``alpha`` then has a variance several times the binomial one, and the
uniformity of all p-values fails under the null. This module gives two run-level p-values that
hold under any such correlation:

- ``p_min``: the probability of a smallest p-value at least as small as observed;
- ``p_nfail``: the probability of at least as many failures at ``alpha``.

**Method: a sign-flip randomization test over random event groups.** Every event carries a
random group ``g`` (a hash of its file and row; :func:`validator.stages.fill.event_groups`), and the
fill keeps Σw per group and bin. For a histogram, the group residuals
:math:`r_g = d_g - (N/W)\\,s_g` (data counts minus the simulation normalised to the data) are
independent across groups, and under the null each is centred and, by the central limit
theorem within a group, symmetric. The observed residual is :math:`r = \\sum_g r_g`; a replica
is :math:`r^* = \\sum_g \\epsilon_g r_g` with independent random signs :math:`\\epsilon_g`, the
*same* signs for every histogram of the run, so every correlation between tests (shared events,
shared histograms, correlated features) is kept. Where the group residuals are symmetric, the
observed vector is under the null one more draw of the same law as the replicas, so the p-value
:math:`(1 + \\#\\{b: S^*_b \\ge S\\})/(1 + B)` of any run-level statistic :math:`S` is valid
(Fisher's randomization principle; Westfall & Young, *Resampling-Based Multiple Testing*,
Wiley 1993, ch. 2, for the min-p statistic; the sign-flip form of Pesarin & Salmaso,
*Permutation Tests for Complex Data*, Wiley 2010, ch. 1). A mismodelling shifts the observed
residual but not the sign-flipped ones, which are centred whatever the truth.

**Observed values: the stored tests, with their laws.** The family is the run's histograms:
each feature's binned histogram and its fine (EDF) histogram, each pair's 2D histogram. A
block's observed p-value is that of the tests stored for it (:func:`observed_pvalues`), each
with the law it used: toys where the test needed toys, a bound at its bound. Under heavy
weights this matters: where the simulation's rare heavy events happen to be absent, the data's
excess is coherent over those bins, and an asymptotic law read off the linearised statistic
fires far more often than ``alpha`` while the stored toy p-values stay calibrated.

**Replicas: the dependence between the tests.** For each histogram the replicas compute the
linearised form of its tests (1D test binning, pair binning, with the tests' sparse-bin
merging): Pearson's :math:`X^2 = \\sum r'^2/V` with the normalisation projected out and
:math:`V = \\hat e + (N/W)^2 \\sum w^2`, and for the fine histogram a Kolmogorov-Smirnov-type
maximum of the standardised cumulative residual. Each block's replica p-values are calibrated
to be uniform over its own sign flips (:func:`_calibrate`): the replicas then carry the
correlations between the blocks (a copula), the stored tests the marginal laws, and the
smallest p-value and the number of failures are compared between the observed vector and the
replicas. The correlation, ``dependence``, network and multivariate tests are not in the
family (every face says so).

**Systematics.** With systematic uncertainties, data that follow the simulation at some true
value of the nuisances θ are the null. A binned histogram is decided by its profiled test
(``saturated_syst``), whose p-value already holds for every θ: its replicas are the sign flips
alone. The EDF tests compare with the nominal simulation, so their replicas also vary the
nuisances within their constraints: each replica draws θ_k ~ N(0, 1) (one value per
systematic for the whole run, so its correlation across every histogram is kept) and adds the
residual shift it causes, (N/W)·[s(θ) − s], to the sign-flipped residual, with the vertical
interpolation of the templates (up for θ > 0, down for θ < 0; linear, HistFactory's
``code0``), a process's log-normal normalisation alike (its values at ±1 are
s_p(κ − 1) and s_p(1/κ − 1)); their calibration map is that of the sign flips alone, so the
spread the nuisances add is kept: "how many nominal EDF failures would the data show if they
followed the simulation anywhere within its uncertainties?".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from validator.stages.fill import N_GROUPS, Accumulator, Layout
from validator.stats import merge_sparse_bins

if TYPE_CHECKING:
    from validator.stages.compare import SystInputs, TestRecord

#: Sign-flip replicas: p-values resolve down to 1/(1 + N_REPLICAS), below 1e-3.
N_REPLICAS = 1999


#: The tests that read a block (one histogram read one way), in order of preference: a block's
#: observed p-value is that of the first that ran reliably. Under systematics the profiled
#: test decides a binned histogram (as in the verdict); otherwise the likelihood-ratio test
#: CMS uses for input validation, and the KS test, whose form the replicas linearise. (The
#: smallest of a block's tests times their number would also be valid, and costs a factor 2
#: on tests that nearly coincide.)
BLOCK_METHODS = {"binned": ("saturated_syst", "saturated", "chi2_uw"), "ks": ("ks", "ad")}
#: Test kinds whose histograms are blocks (a network output's histograms are tested as "output").
FAMILY_KINDS = frozenset({"1d", "2d", "output"})
#: Below the replicas' CALIBRATION_TAIL-th smallest linearised p-value, a block's calibration
#: map is extrapolated as the asymptotic law's ratio there (a smaller p-value than the
#: replicas resolve keeps its size rather than sticking at the last rank).
CALIBRATION_TAIL = 20


@dataclass(frozen=True)
class BlockKey:
    """Which histogram a block of the family is, and how it is read."""

    category: str
    feature_x: str
    feature_y: str | None
    kind: str  # "binned" or "ks"


@dataclass(frozen=True)
class GlobalResult:
    """The run-level p-values and what they rest on."""

    p_min: float  # P(smallest p-value of the family <= observed)
    p_nfail: float  # P(at least the observed number of family failures at alpha)
    n_tests: int  # blocks (histograms) in the family
    n_failed: int  # blocks with an observed p < alpha
    min_pvalue: float  # the family's smallest observed p-value (block-adjusted)
    n_replicas: int
    n_nuisances: int = 0  # nuisance parameters varied in the replicas


@dataclass(frozen=True)
class Replicas:
    """The null law of the run's family: ``pvalues[b, t]`` is block ``t``'s p-value in
    sign-flip replica ``b``, each column calibrated to be uniform under the sign flips (see
    :func:`sign_flip_replicas`); ``linearised[t]`` the block's observed linearised p-value."""

    keys: tuple[BlockKey, ...]
    pvalues: np.ndarray  # (n_replicas, n_blocks)
    linearised: np.ndarray  # (n_blocks,)
    n_nuisances: int = 0

    @property
    def n_replicas(self) -> int:
        return int(self.pvalues.shape[0])


@dataclass
class Block:
    """One histogram's group residuals, merged into its test groups."""

    kind: str  # "binned" or "ks"
    residuals: np.ndarray  # (N_GROUPS, M)
    variance: np.ndarray  # (M,)
    share: np.ndarray  # (M,) expected fraction of the total per bin, for the normalisation
    shift_up: np.ndarray | None = None  # (K, M) residual shift per unit θ_k > 0
    shift_down: np.ndarray | None = None  # (K, M) per unit θ_k < 0 (log-normal: κ^θ − 1)


def histogram_block(kind: str, data: np.ndarray, sim: np.ndarray, sim_w2: np.ndarray,
                    data_groups: np.ndarray, sim_groups: np.ndarray, min_expected: float,
                    deltas: tuple[np.ndarray, np.ndarray] | None = None) -> Block | None:
    """One histogram's block; ``deltas``: (up − nominal, nominal − down) of each nuisance,
    ``(K, bins)`` each, in simulated Σw."""
    total_d, total_s = data.sum(), sim.sum()
    if total_d <= 0 or total_s <= 0:
        return None
    ratio = total_d / total_s
    expected = np.clip(sim, 0.0, None) * ratio
    if kind == "binned":
        labels = merge_sparse_bins(expected, min_expected, sim_sumw=sim, sim_sumw2=sim_w2)
        n = int(labels.max()) + 1
        if n < 2:
            return None
        merging = np.zeros((len(labels), n))
        merging[np.arange(len(labels)), labels] = 1.0  # bins x groups of bins
        expected, sim_w2 = expected @ merging, sim_w2 @ merging
        data_groups, sim_groups = data_groups @ merging, sim_groups @ merging
        if deltas is not None:
            deltas = (deltas[0] @ merging, deltas[1] @ merging)
    variance = np.clip(expected, 0.0, None) + ratio * ratio * sim_w2
    keep = variance > 0
    if keep.sum() < 2:
        return None
    residuals = (data_groups - ratio * sim_groups)[:, keep]
    share = np.clip(expected[keep], 0.0, None)
    share = share / share.sum() if share.sum() > 0 else np.full(keep.sum(), 1 / keep.sum())
    if deltas is None:
        return Block(kind, residuals, variance[keep], share)
    return Block(kind, residuals, variance[keep], share, ratio * deltas[0][:, keep],
                  ratio * deltas[1][:, keep])


def _law(block: Block) -> tuple[str, int]:
    """The null law of a block's linearised statistic: (kind, degrees of freedom)."""
    return (block.kind, len(block.variance) - 1 if block.kind == "binned" else 0)


def _statistics(block: Block, r: np.ndarray) -> np.ndarray:
    """Linearised statistic of each row of residual vectors ``r`` (n, M): Pearson's X² for a
    binned block, the standardised maximum cumulative residual for a KS-type one."""
    centred = r - r.sum(axis=1, keepdims=True) * block.share  # the normalisation is free
    if block.kind == "binned":
        return np.sum(centred**2 / block.variance, axis=1)
    # KS-type: the cumulative residual, standardised like a Brownian bridge
    return np.max(np.abs(np.cumsum(centred, axis=1)), axis=1) / np.sqrt(block.variance.sum())


def _replica_statistics(block: Block, signs: np.ndarray, up: np.ndarray, down: np.ndarray,
                        ) -> np.ndarray:
    """:func:`_statistics` of every replica, the residual ``signs @ residuals`` (+ the
    nuisances' shifts). Both the residual and its centring are linear in the replica's
    coefficients ``x`` (signs, θ⁺, θ⁻), so with ``C`` the centred per-coefficient residuals,
    X² is the quadratic form ``x (C V⁻¹ Cᵀ) xᵀ``, a (groups x groups) matrix per histogram
    instead of a pass over replicas x bins; the KS-type statistic needs the cumulative
    residual of every replica, ``x @ cumsum(C)``."""
    coefficients, rows = signs, block.residuals
    if block.shift_up is not None:
        coefficients = np.hstack([signs, up, down])
        rows = np.vstack([block.residuals, block.shift_up, block.shift_down])
    centred = rows - rows.sum(axis=1, keepdims=True) * block.share
    if block.kind == "binned":
        form = (centred / block.variance) @ centred.T
        return np.einsum("ng,ng->n", coefficients @ form, coefficients)
    cumulative = coefficients @ np.cumsum(centred, axis=1)
    return np.max(np.abs(cumulative), axis=1) / np.sqrt(block.variance.sum())


def _sf(law: tuple[str, int], statistic: np.ndarray) -> np.ndarray:
    """p-values of statistics of one law (chi² with its ndf, or Kolmogorov's)."""
    kind, ndf = law
    return stats.chi2.sf(statistic, ndf) if kind == "binned" else stats.kstwobign.sf(statistic)


def linearised_pvalues(block: Block, r: np.ndarray) -> np.ndarray:
    """Linearised p-value of each row of residual vectors ``r`` (n, M)."""
    return _sf(_law(block), _statistics(block, r))


def _deltas(field: str, lo: int, hi: int, category: str, sim: Accumulator,
            syst: SystInputs | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(up − nominal, nominal − down) of every nuisance over bins ``lo:hi`` of a histogram
    field (``h1_sumw``, ``fine_sumw``, ``h2_sumw``); a one-sided variation is mirrored; a
    process normalisation's are s_p(κ − 1) and s_p(1 − 1/κ)."""
    if syst is None:
        return None
    nominal = getattr(sim, field)[0, lo:hi]
    ups, downs = [], []
    for v in syst.rows.weights:
        up = getattr(sim, field)[syst.rows.index(f"{v.name}_up"), lo:hi]
        d = syst.rows.index(f"{v.name}_down")
        ups.append(up - nominal)
        downs.append(nominal - getattr(sim, field)[d, lo:hi] if d is not None else up - nominal)
    for ups_acc, downs_acc in syst.shapes.values():
        up = getattr(ups_acc[category], field)[0, lo:hi] if category in ups_acc else nominal
        ups.append(up - nominal)
        if downs_acc is None:
            downs.append(up - nominal)
        else:
            down = getattr(downs_acc[category], field)[0, lo:hi] if category in downs_acc \
                else nominal
            downs.append(nominal - down)
    for process, delta in syst.norms.items():
        s_p = getattr(sim, field)[syst.rows.index(f"process:{process}"), lo:hi]
        ups.append(s_p * delta)  # κ = 1 + δ: s_p (κ − 1)
        downs.append(s_p * (1.0 - 1.0 / (1.0 + delta)))
    if not ups:
        return None
    return np.stack(ups), np.stack(downs)


def _blocks(layout: Layout, sim: Accumulator, data: Accumulator, min_expected: float,
            category: str = "", syst: SystInputs | None = None,
            ) -> list[tuple[BlockKey, Block]]:
    names = layout.plan.feature_names
    blocks = []
    for k in range(layout.n_features):
        lo, hi = layout.offsets_1d[k], layout.offsets_1d[k + 1]
        blocks.append((BlockKey(category, names[k], None, "binned"), histogram_block(
            "binned", data.h1_sumw[0, lo:hi], sim.h1_sumw[0, lo:hi], sim.h1_sumw2[0, lo:hi],
            data.group_h1[:, lo:hi], sim.group_h1[:, lo:hi], min_expected,
            _deltas("h1_sumw", lo, hi, category, sim, syst))))
        lo, hi = layout.offsets_fine[k], layout.offsets_fine[k + 1]
        blocks.append((BlockKey(category, names[k], None, "ks"), histogram_block(
            "ks", data.fine_sumw[0, lo:hi], sim.fine_sumw[0, lo:hi], sim.fine_sumw2[0, lo:hi],
            data.group_fine[:, lo:hi], sim.group_fine[:, lo:hi], min_expected,
            _deltas("fine_sumw", lo, hi, category, sim, syst))))
    for p, (i, j) in enumerate(layout.plan.pairs):
        lo, hi = layout.offsets_2d[p], layout.offsets_2d[p + 1]
        blocks.append((BlockKey(category, names[i], names[j], "binned"), histogram_block(
            "binned", data.h2_sumw[0, lo:hi], sim.h2_sumw[0, lo:hi], sim.h2_sumw2[0, lo:hi],
            data.group_h2[:, lo:hi], sim.group_h2[:, lo:hi], min_expected,
            _deltas("h2_sumw", lo, hi, category, sim, syst))))
    return [(key, b) for key, b in blocks if b is not None]


def _calibrate(reference: np.ndarray, pvalues: np.ndarray) -> np.ndarray:
    """Map a block's linearised p-values to its sign-flip law: the fraction of the
    ``reference`` replicas (the sign flips alone) at least as extreme, at mid-rank, so the
    reference replicas themselves become uniform whatever the law of the linearised statistic
    (a discrete feature's KS-type maximum is far from Kolmogorov's law). Below the
    :data:`CALIBRATION_TAIL`-th smallest reference the map is p times its ratio there."""
    ranked = np.sort(reference)
    n = len(ranked)
    levels = (np.arange(1, n + 1) - 0.5) / n
    anchor = max(float(ranked[CALIBRATION_TAIL - 1]), np.finfo(float).tiny)
    body = np.interp(pvalues, ranked, levels)
    tail = pvalues * (levels[CALIBRATION_TAIL - 1] / anchor)
    return np.where(pvalues < anchor, tail, body)


def sign_flip_replicas(layout: Layout, sims: dict[str, Accumulator],
                       datas: dict[str, Accumulator], seed: int, min_expected: float = 5.0,
                       n_replicas: int = N_REPLICAS, syst: SystInputs | None = None,
                       ) -> Replicas | None:
    """The null law of the run's family of histogram tests, from sign flips of event groups.

    Every category both samples populate contributes its histograms; the signs of a replica
    are shared by all of them (an event's group is the same in every category it is in), so
    the replicas carry the correlations between the tests. Each block's linearised p-values
    are then calibrated to its own sign-flip law (:func:`_calibrate`): the replicas give the
    dependence between the tests, the stored tests their marginal laws
    (:func:`global_test`). With ``syst``, a block read by a non-profiled test (the EDF tests)
    also varies the nuisances (module docstring), calibrated by the sign flips alone, so the
    spread the nuisances add is kept. Returns None when no histogram can be tested.
    """
    blocks = [kb for cat in sims if cat in datas and sims[cat].sumw[0] > 0
              for kb in _blocks(layout, sims[cat], datas[cat], min_expected, cat, syst)]
    if not blocks:
        return None
    entropy = np.frombuffer(hashlib.sha256(b"global_test").digest()[:8], dtype=np.uint32)
    rng = np.random.default_rng(np.random.SeedSequence([seed % (1 << 63), *entropy.tolist()]))
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_replicas, N_GROUPS))
    n_nuisances = max((len(b.shift_up) for _, b in blocks if b.shift_up is not None),
                      default=0)
    # drawn after the signs: without systematics the replicas are exactly those of before
    theta = rng.standard_normal((n_replicas, n_nuisances))
    up, down = np.clip(theta, 0.0, None), np.clip(theta, None, 0.0)
    pvalues = np.empty((n_replicas, len(blocks)))
    linearised = np.empty(len(blocks))
    for t, (key, block) in enumerate(blocks):
        law = _law(block)
        linearised[t] = linearised_pvalues(block, block.residuals.sum(axis=0)[None, :])[0]
        flips_only = replace(block, shift_up=None, shift_down=None)
        reference = _sf(law, _replica_statistics(flips_only, signs, up, down))
        if block.shift_up is None or key.kind == "binned":
            pvalues[:, t] = _calibrate(reference, reference)
        else:
            varied = _sf(law, _replica_statistics(block, signs, up, down))
            pvalues[:, t] = _calibrate(reference, varied)
    return Replicas(tuple(k for k, _ in blocks), pvalues, linearised, n_nuisances)


def observed_pvalues(records: Iterable[TestRecord]) -> dict[BlockKey, float]:
    """Each block's observed p-value: that of its first reliable stored test in
    :data:`BLOCK_METHODS` order, with the law that test used (toys where the test needed
    toys; a bound at its bound). Blocks with no reliable stored test are left out."""
    by_block: dict[BlockKey, dict[str, float]] = {}
    for r in records:
        if r.kind not in FAMILY_KINDS or not r.reliable or not np.isfinite(r.pvalue):
            continue
        for kind, methods in BLOCK_METHODS.items():
            if r.method in methods:
                key = BlockKey(r.category, r.feature_x, r.feature_y, kind)
                by_block.setdefault(key, {})[r.method] = float(r.pvalue)
    return {key: next(pvalues[m] for m in BLOCK_METHODS[key.kind] if m in pvalues)
            for key, pvalues in by_block.items()}


def global_test(replicas: Replicas, alpha: float,
                observed: Mapping[BlockKey, float] | None = None) -> GlobalResult | None:
    """The run-level p-values of the smallest p-value and of the number of failures.

    ``observed``: each block's p-value (:func:`observed_pvalues` of the stored tests); the
    family is the blocks both the replicas and ``observed`` have. Without it, the blocks'
    linearised p-values (asymptotic laws: fine for a notebook's quick look, not under heavy
    weights, where the stored tests needed toys). Returns None for an empty family.
    """
    if observed is None:
        columns = np.arange(len(replicas.keys))
        values = replicas.linearised
    else:
        columns = np.array([t for t, k in enumerate(replicas.keys) if k in observed], dtype=int)
        values = np.array([observed[replicas.keys[t]] for t in columns])
    if len(columns) == 0:
        return None
    family = replicas.pvalues[:, columns]
    n_failed = int(np.sum(values < alpha))
    min_p = float(values.min())
    more_extreme_min = int(np.sum(family.min(axis=1) <= min_p))
    more_failures = int(np.sum(np.sum(family < alpha, axis=1) >= n_failed))
    b = replicas.n_replicas
    return GlobalResult(
        p_min=(1 + more_extreme_min) / (1 + b), p_nfail=(1 + more_failures) / (1 + b),
        n_tests=len(columns), n_failed=n_failed, min_pvalue=min_p, n_replicas=b,
        n_nuisances=replicas.n_nuisances)
