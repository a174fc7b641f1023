"""The network audit stage: Taylor coefficients and SHAP, simulation vs data, and criticality.

Accumulated in the two passes over the data. In the planning scan, where the network is
evaluated for its outputs anyway, the first-order Taylor sums of every event:
:class:`OutputsWithFirstOrder` (the network's derived columns in the scan's transform chain)
differentiates each batch in the pass that gives its outputs and carries the derivatives
beside them through the selection and the blinding, and :class:`FirstOrderTaylor` (a
collector of the scan) sums them. The fill takes the outputs the scan recorded, so the
network's forward pass over every event runs once, not twice. In the fill pass (a collector
of :class:`validator.engine.pool.FillTask`), per sample, one :class:`AuditSums` holding

* the Taylor-coefficient sums (:class:`validator.model.taylor.TaylorSums`) of every audited
  network point (a parametric network at each value of its grid): the simulation weighted,
  the data plain. Second order on a deterministic subsample (an event is in it when the hash
  key of its position in its file is below ``second_order_events / n_events``: the same
  events however the input is chunked), whose size is stored; the scan's first order is
  added to them (:meth:`ModelAudit.result`);
* the weighted moments of the inputs (σ of the standardised coefficients, from simulation);
* a reservoir of ``shap_events`` events (the smallest hash keys), for SHAP.

All three add with ``+`` (chunks, jobs and workers merge the same way).

After the pass, :func:`audit_results` turns the two samples' sums into

* ``importances`` rows (method ``taylor``: ⟨|t|⟩ per node, degree 1 and 2, raw and scaled to
  standardised inputs; method ``shap``: mean |SHAP|);
* one test per Taylor coefficient (``kind='taylor'``, methods ``taylor1``/``taylor2``): the
  difference of the data's and the simulation's ⟨|t|⟩ over its uncertainty,
  z = (m_data − m_sim)/√(u_data² + u_sim²), two-sided normal p-value (the means are sums of
  many events: central limit theorem), effect size the relative difference
  (m_data − m_sim)/m_sim. Tested on the combined node (``all``: each event at its highest
  output) of a multi-class network, on each node of a one-node or regression network;
* the rank correlations (Spearman) of the simulation's and the data's rankings.

:func:`criticality_rows` puts each input's and each pair's importance beside its worst
goodness-of-fit result (see the function).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from validator.inputs.sources import ENTRY, FILE
from validator.inputs.transform import INCLUSIVE
from validator.stats.result import GofResult

if TYPE_CHECKING:  # the fill's workers unpickle ModelAudit: no tests nor scipy for them
    from validator.model.load import AuditedModel
    from validator.model.taylor import TaylorMeans, TaylorSums
    from validator.stages.compare import TestRecord

#: Second-order coefficients (N(N+1)/2 per event, N Hessian-vector products) are taken on
#: this many events per sample at most: their means are then known to ~0.5% of their spread,
#: far below any mismodelling that matters, at a fraction of the time.
SECOND_ORDER_EVENTS = 50_000
#: Events per sample explained with SHAP (explainers cost ~ms per event), and background rows.
SHAP_EVENTS = 200
SHAP_BACKGROUND = 50
#: A Taylor test needs this many events on each side for its normal approximation (means of
#: |t|, skewed per event, are near-normal well before this).
MIN_TAYLOR_EVENTS = 100
#: The KIT convention (Wunsch et al.): a coefficient is important when it exceeds this
#: fraction of the largest coefficient of its order.
IMPORTANT_FRACTION = 0.10
#: Events of a chunk whose audit sums are taken at once: the network's inputs, derivatives and
#: their float64 copies are a few MB per block instead of hundreds per 250k-event chunk (a
#: fill worker's peak memory), and a block is still many batches of the network's GEMMs.
AUDIT_BLOCK_ROWS = 32_768
#: Salt of the hash keys of the audit's subsamples (independent of the planning reservoir's).
_KEY_SALT = 0x5EED_A0D1


# ---------------------------------------------------------------------------------------------
# accumulation


@dataclass
class AuditSums:
    """One sample's audit sums, mergeable with ``+``.

    ``taylor``: one :class:`TaylorSums` per audited point; ``moments`` ``(3, N)``: Σw, Σwx,
    Σwx² per input over events with finite inputs; ``keys``, ``x``, ``w``: the SHAP reservoir
    (at most ``capacity`` events with the smallest keys).
    """

    taylor: tuple[TaylorSums, ...]
    moments: np.ndarray
    keys: np.ndarray
    x: np.ndarray
    w: np.ndarray
    capacity: int

    def __add__(self, other: AuditSums) -> AuditSums:
        if not isinstance(other, AuditSums):
            return NotImplemented
        if len(self.taylor) != len(other.taylor) or self.moments.shape != other.moments.shape:
            raise ValueError("cannot merge audit sums of different networks or inputs")
        from validator.stages.plan import smallest_keys

        keys = np.concatenate([self.keys, other.keys])
        keep = smallest_keys(keys, self.capacity)
        return AuditSums(tuple(a + b for a, b in zip(self.taylor, other.taylor, strict=True)),
                         self.moments + other.moments, keys[keep],
                         np.concatenate([self.x, other.x])[keep],
                         np.concatenate([self.w, other.w])[keep], self.capacity)

    def sigma(self) -> np.ndarray:
        """Weighted standard deviation of each input (NaN where Σw ≤ 0)."""
        sw, swx, swxx = self.moments
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = swx / sw
            var = swxx / sw - mean * mean
        return np.where(sw > 0, np.sqrt(np.maximum(var, 0.0)), np.nan)


#: Prefix of the key under which :class:`OutputsWithFirstOrder` carries an audited point's
#: derivatives through the scan's chain (no column of a file starts with it), and the suffix
#: of its nodes' key (multi-class networks).
FIRST_ORDER_KEY = "__first_order__:"
NODES_SUFFIX = ":nodes"


def first_order_key(model: AuditedModel) -> str:
    """The chunk key of ``model``'s carried derivatives (one per audited point)."""
    return FIRST_ORDER_KEY + model.names[0]


@dataclass(frozen=True, eq=False)
class OutputsWithFirstOrder:
    """An audited point's outputs as derived columns (the transform chain's
    ``DerivedColumns``), with each event's first-order derivatives carried beside them
    (:data:`FIRST_ORDER_KEY`: not a column, never recorded for the fill; the chain's row
    selections apply to them as to any column). Computed in one pass over the network
    (:func:`validator.model.taylor.outputs_and_first_order`); the outputs are
    :meth:`AuditedModel.evaluate`'s."""

    model: AuditedModel

    @property
    def names(self) -> tuple[str, ...]:
        return self.model.names

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.model.inputs

    @property
    def carried(self) -> tuple[str, ...]:
        key = first_order_key(self.model)
        return (key, key + NODES_SUFFIX) if self.model.kind == "multiclass" else (key,)

    def __call__(self, chunk: Mapping[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
        from validator.model.taylor import outputs_and_first_order

        out, grads, nodes = outputs_and_first_order(self.model, chunk, label)
        values = {name: np.ascontiguousarray(out[:, k]) for k, name in enumerate(self.names)}
        values[first_order_key(self.model)] = grads
        if nodes is not None:
            values[first_order_key(self.model) + NODES_SUFFIX] = nodes
        return values


@dataclass(frozen=True)
class PointSums:
    """One :class:`~validator.model.taylor.TaylorSums` per audited point; adds point by
    point."""

    taylor: tuple[TaylorSums, ...]

    def __add__(self, other: PointSums) -> PointSums:
        if not isinstance(other, PointSums):
            return NotImplemented
        return PointSums(tuple(a + b for a, b in zip(self.taylor, other.taylor, strict=True)))


@dataclass
class FirstOrderTaylor:
    """The scan's collector of one sample's first-order Taylor sums (:class:`PointSums`), from
    the derivatives :class:`OutputsWithFirstOrder` carried (a
    :class:`validator.engine.pool.Collector`: ``collect`` runs in the scan's workers, its
    states add)."""

    models: Sequence[AuditedModel]
    state: PointSums | None = field(default=None, init=False)

    def collect(self, chunk: Mapping[str, np.ndarray], w: np.ndarray) -> PointSums:
        from validator.model.taylor import first_order_sums

        out = []
        for model in self.models:
            key = first_order_key(model)
            if key not in chunk:
                raise ValueError(f"the scan's chunk carries no derivatives of {model.names[0]}")
            out.append(first_order_sums(model, chunk, w, chunk[key],
                                        chunk.get(key + NODES_SUFFIX)))
        return PointSums(tuple(out))

    def absorb(self, state: PointSums) -> None:
        self.state = state if self.state is None else self.state + state

    @property
    def sums(self) -> tuple[TaylorSums, ...] | None:
        """The sample's sums per point (None: no chunk was seen)."""
        return None if self.state is None else self.state.taylor


@dataclass
class ModelAudit:
    """What to audit: the network's points (``models``, one per parameter value) and how.

    ``n_events``: the sample's events after selection and blinding (from the planning scan),
    which sets the second-order subsample's fraction. ``first_order``: the scan's first-order
    sums (:class:`FirstOrderTaylor`), added to the fill's (which then take the second order
    only); None: the fill takes both orders.
    """

    models: Sequence[AuditedModel]
    n_events: int
    seed: int
    second_order_events: int = SECOND_ORDER_EVENTS
    shap_events: int = SHAP_EVENTS
    first_order: tuple[TaylorSums, ...] | None = None
    sums: AuditSums | None = field(default=None, init=False)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.models[0].inputs

    def add(self, chunk: Mapping[str, np.ndarray], w: np.ndarray) -> None:
        """Accumulate one chunk here."""
        self.absorb(self.collect(chunk, w))

    def collect(self, chunk: Mapping[str, np.ndarray], w: np.ndarray) -> AuditSums:
        """One chunk's sums (the fill pass's collector, :class:`validator.engine.pool.Collector`:
        run wherever the chunk is filled)."""
        return chunk_sums(self, chunk, w)

    def absorb(self, sums: AuditSums) -> None:
        """Add sums gathered elsewhere (a chunk's, or a whole sample's merged ones)."""
        self.sums = sums if self.sums is None else self.sums + sums

    def empty(self) -> AuditSums:
        from validator.model.taylor import TaylorSums

        dim = len(self.inputs)
        return AuditSums(tuple(TaylorSums.empty(m, 2) for m in self.models), np.zeros((3, dim)),
                         np.zeros(0), np.zeros((0, dim)), np.zeros(0), self.shap_events)

    def result(self) -> AuditSums:
        sums = self.sums if self.sums is not None else self.empty()
        if self.first_order is None:
            return sums
        return replace(sums, taylor=tuple(a + b for a, b in zip(sums.taylor, self.first_order,
                                                                  strict=True)))


def chunk_sums(audit: ModelAudit, chunk: Mapping[str, np.ndarray], w: np.ndarray) -> AuditSums:
    """The audit sums of one chunk with nominal weights ``w``, taken over blocks of
    :data:`AUDIT_BLOCK_ROWS` events (the sums add; the network's inputs, derivatives and
    their temporaries exist for one block at a time). With the first order taken by the scan
    (``audit.first_order``), the chunk's second-order subsample goes to the network at once:
    the Hessians of a batch cost 20-23 us an event from 1,600 rows, 48 us at the 160 rows
    that a 32k block holds at 10M events."""
    from validator.stages.plan import uniform_keys

    model = audit.models[0]
    model.check_chunk(chunk)
    w = np.asarray(w, dtype=float)
    n = len(w)
    columns = (*model.inputs, ENTRY, FILE)
    keys = uniform_keys(chunk[ENTRY], chunk[FILE], audit.seed ^ _KEY_SALT)
    second = keys < min(1.0, audit.second_order_events / max(audit.n_events, 1))
    by_block = audit.first_order is None  # the first order of every event, a block at a time
    parts = []
    for start in range(0, n, AUDIT_BLOCK_ROWS) if n else [0]:
        rows = slice(start, min(start + AUDIT_BLOCK_ROWS, n))
        block = {c: chunk[c][rows] for c in columns}
        taylor = _taylor(audit, block, w[rows], second[rows]) if by_block else None
        parts.append(_block_sums(audit, block, w[rows], keys[rows], taylor))
    sums = functools.reduce(operator.add, parts)
    if by_block:
        return sums
    sub = np.flatnonzero(second)
    taylor = _taylor(audit, {c: chunk[c][sub] for c in columns}, w[sub], None)
    return replace(sums, taylor=tuple(a + b for a, b in zip(sums.taylor, taylor, strict=True)))


def _taylor(audit: ModelAudit, chunk: Mapping[str, np.ndarray], w: np.ndarray,
            second: np.ndarray | None) -> tuple[TaylorSums, ...]:
    """The fill's Taylor sums of every point: the second order on ``second`` (None: every
    event of ``chunk``), and the first order on every event unless the scan takes it."""
    from validator.model.taylor import taylor_sums

    return tuple(taylor_sums(m, chunk, w, order=2, second_order_mask=second,
                             first_order=audit.first_order is None) for m in audit.models)


def _block_sums(audit: ModelAudit, chunk: Mapping[str, np.ndarray], w: np.ndarray,
                keys: np.ndarray, taylor: tuple[TaylorSums, ...] | None) -> AuditSums:
    """A block's sums: its ``taylor`` sums (None: empty, taken per chunk), the inputs'
    moments and its SHAP reservoir, by the events' ``keys``."""
    from validator.stages.plan import smallest_keys

    x = audit.models[0].matrix(chunk)
    good = np.isfinite(x).all(axis=1)
    xg, wg = x[good], w[good]
    moments = np.stack([np.full(x.shape[1], wg.sum()), wg @ xg, wg @ (xg * xg)])
    keep = np.flatnonzero(good)
    keep = keep[smallest_keys(keys[keep], audit.shap_events)]
    return AuditSums(taylor if taylor is not None else audit.empty().taylor, moments,
                     keys[keep], x[keep], w[keep], audit.shap_events)


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class AuditResult:
    """The audit's products: ``importances`` rows, Taylor ``records`` (tests), rank
    correlations, and the simulation's scaled means per point (for criticality)."""

    importances: list[dict[str, Any]]
    records: list[TestRecord]
    rank_corr_first: float | None
    rank_corr_second: float | None
    shap_rank_corr: float | None
    sim_means: list[TaylorMeans]
    models: Sequence[AuditedModel]
    notes: list[str] = field(default_factory=list)


def tested_groups(model: AuditedModel) -> list[int]:
    """Indices of the Taylor groups that are tested: the combined group of a multi-class
    network, every node otherwise."""
    from validator.model.taylor import groups

    names = groups(model)
    return [len(names) - 1] if model.kind == "multiclass" else list(range(len(names)))


def node_label(model: AuditedModel, group: str) -> str:
    """A group's label in the ``tests`` table: output names carry a parametric point's tag;
    the combined group ``all`` gets it here (``all_mass300``)."""
    from validator.model.taylor import ALL

    return f"{ALL}{model.tag}" if group == ALL else group


def audit_results(models: Sequence[AuditedModel], sim: AuditSums, data: AuditSums,
                  seed: int, shap_events: int = SHAP_EVENTS) -> AuditResult:
    """Importances, Taylor tests and rank correlations from both samples' sums."""
    sigma = sim.sigma()
    importances: list[dict[str, Any]] = []
    records: list[TestRecord] = []
    sim_means: list[TaylorMeans] = []
    corr1 = corr2 = corr_shap = None
    notes: list[str] = []
    for k, model in enumerate(models):
        ms, md = sim.taylor[k].means(sigma), data.taylor[k].means(sigma)
        sim_means.append(ms)
        for sample, means, sums in (("sim", ms, sim.taylor[k]), ("data", md, data.taylor[k])):
            for row in means.rows():
                importances.append(_importance_row(model, sample, "taylor", row, {
                    "derivative_method": sums.derivative_method, "n_skipped": sums.n_skipped,
                    "n_nonfinite": sums.n_nonfinite,
                    "n_nonfinite_second": sums.n_nonfinite_second}))
        note = nonfinite_note(model, sim.taylor[k], data.taylor[k])
        if note:
            notes.append(note)
        for g in tested_groups(model):
            records.extend(taylor_tests(model, ms, md, g))
        if k == 0:
            g = tested_groups(model)[0]
            corr1 = _spearman(ms.scaled().first[g], md.scaled().first[g])
            iu = np.triu_indices(len(model.inputs), 1)
            if len(iu[0]) > 1:
                corr2 = _spearman(ms.scaled().second[g][iu], md.scaled().second[g][iu])
        if shap_events > 0 and len(sim.x) and len(data.x):
            shap_rows, corr, note = _shap_rows(model, sim, data, seed + k, shap_events)
            importances.extend(shap_rows)
            if note:
                notes.append(note)
            if k == 0:
                corr_shap = corr
    return AuditResult(importances, records, corr1, corr2, corr_shap, sim_means, models, notes)


def nonfinite_note(model: AuditedModel, sim: TaylorSums, data: TaylorSums) -> str | None:
    """A note where the network's Taylor coefficients are not finite at events whose inputs
    are (left out of the sums, :class:`~validator.model.taylor.TaylorSums`), or None."""
    counts = [(sim.n_nonfinite, data.n_nonfinite), (sim.n_nonfinite_second,
                                                     data.n_nonfinite_second)]
    if not any(a or b for a, b in counts):
        return None
    label = f" ({model.param_label})" if model.param_label else ""
    parts = [f"{what}: {a} simulated and {b} data events" for what, (a, b)
             in zip(("first order", "second order's subsample"), counts, strict=True) if a or b]
    return (f"the network's derivatives{label} are not finite at events whose inputs are "
            f"(a log, a sqrt or a division at the edge of its domain); left out of the Taylor "
            f"coefficients: {'; '.join(parts)}")


def _importance_row(model: AuditedModel, sample: str, method: str, row: Mapping[str, Any],
                    details: Mapping[str, Any]) -> dict[str, Any]:
    values = list(model.param_values.values())
    return {"model_id": model.sha256, "sample": sample, "method": method,
            "degree": row.get("order", 1), "node": row["node"], "feature_x": row["feature_x"],
            "feature_y": row.get("feature_y"), "value": row["value"],
            "uncertainty": row["uncertainty"], "scaled_value": row.get("scaled_value"),
            "scaled_uncertainty": row.get("scaled_uncertainty"),
            "n_events": row["n_events"], "sum_weights": row["sum_weights"],
            "param_label": model.param_label, "param_value": values[0] if values else None,
            "details": json.dumps(dict(details))}


def taylor_tests(model: AuditedModel, sim: TaylorMeans, data: TaylorMeans, group: int
                 ) -> list[TestRecord]:
    """One test per coefficient of ``group``: data vs simulation ⟨|t|⟩ (module docstring)."""
    from validator.stages.compare import TestRecord

    node = node_label(model, sim.groups[group])
    inputs = model.inputs
    out = []
    coefficients = [("taylor1", i, None, sim.first[group, i], sim.first_unc[group, i],
                     data.first[group, i], data.first_unc[group, i], sim.n_first[group],
                     data.n_first[group]) for i in range(len(inputs))]
    if sim.second is not None and data.second is not None:
        for i, j in zip(*np.triu_indices(len(inputs)), strict=True):
            coefficients.append(("taylor2", i, j, sim.second[group, i, j],
                                 sim.second_unc[group, i, j], data.second[group, i, j],
                                 data.second_unc[group, i, j], sim.n_second[group],
                                 data.n_second[group]))
    for method, i, j, ms, us, md, ud, ns, nd in coefficients:
        fy = None if j is None else inputs[j]
        if not (np.isfinite(ms) and np.isfinite(md)):
            why = "no simulated events" if not np.isfinite(ms) else "no data events"
            out.append(TestRecord(INCLUSIVE, "taylor", method, inputs[i], fy, None,
                                  f"{why} for the network's node {node}", node))
            continue
        out.append(TestRecord(INCLUSIVE, "taylor", method, inputs[i], fy,
                              taylor_difference(method, ms, us, md, ud, int(ns), int(nd), node),
                              None, node))
    return out


def taylor_difference(method: str, m_sim: float, u_sim: float, m_data: float, u_data: float,
                      n_sim: int, n_data: int, node: str | None = None) -> GofResult:
    """The z-test of one coefficient's ⟨|t|⟩, data vs simulation (module docstring)."""
    from scipy import stats

    diff = m_data - m_sim
    sd = float(np.hypot(u_sim, u_data))
    if sd > 0:
        z = diff / sd
        p = float(2 * stats.norm.sf(abs(z)))
    else:  # both means exact (e.g. a coefficient that is the same constant on every event)
        z, p = (0.0, 1.0) if diff == 0 else (float(np.copysign(np.inf, diff)), 0.0)
    effect = diff / m_sim if m_sim > 0 else None
    return GofResult(method=method, statistic=float(z), pvalue=p, ndf=None, effect_size=effect,
                     effect_name="relative_difference", pvalue_method="asymptotic",
                     reliable=min(n_sim, n_data) >= MIN_TAYLOR_EVENTS,
                     details={"sim": m_sim, "sim_unc": u_sim, "data": m_data,
                              "data_unc": u_data, "n_sim": n_sim, "n_data": n_data,
                              "node": node})


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy import stats

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def _shap_rows(model: AuditedModel, sim: AuditSums, data: AuditSums, seed: int,
               shap_events: int) -> tuple[list[dict[str, Any]], float | None, str | None]:
    """Mean |SHAP| on both reservoirs, against the same simulation background."""
    from validator.model.shap_values import shap_importance

    rows: list[dict[str, Any]] = []
    results = {}
    for sample, sums, w in (("sim", sim, sim.w), ("data", data, None)):
        # the background: simulated rows drawn by |w|, signs kept (its base is E_w[f])
        res = shap_importance(model, sums.x, w, background=sim.x, max_events=shap_events,
                              n_background=SHAP_BACKGROUND, seed=seed,
                              background_weights=sim.w)
        results[sample] = res
        details = {"explainer": res.explainer, "n_background": res.n_background,
                   "background_draw": "by |w|, sign kept" if res.background_weighted
                   else "uniform", "background_groups": res.background_groups,
                   "nsamples": res.nsamples, "additivity_error": res.additivity_error,
                   "base_values": res.base_values.tolist(), "n_nonfinite": res.n_nonfinite}
        for row in res.rows():
            # n_events (its column): the events explained; n_background: the rows of the
            # background; the uncertainty: both samples' parts in quadrature, each stored
            rows.append(_importance_row(model, sample, "shap", row, {
                **details, "uncertainty_events": row["uncertainty_events"],
                "uncertainty_background": row["uncertainty_background"]}))
    g = tested_groups(model)[0]
    corr = _spearman(results["sim"].values[g], results["data"].values[g])
    note = None
    worst = max(r.additivity_error for r in results.values())
    if results["sim"].explainer == "GradientExplainer" and worst > 0.05:
        note = (f"SHAP (expected gradients) additivity holds to {worst:.2g} in output units "
                "(a Monte-Carlo estimate: more samples make it exact)")
    left = {sample: r.n_nonfinite for sample, r in results.items() if r.n_nonfinite}
    if left:
        also = (f"SHAP left out events whose network output or SHAP values are not finite: "
                f"{', '.join(f'{k} {v}' for k, v in left.items())} of the explained events")
        note = also if note is None else f"{note}; {also}"
    return rows, corr, note


# ---------------------------------------------------------------------------------------------
# criticality


def criticality_rows(result: AuditResult, tests: Sequence[Mapping[str, Any]], alpha: float
                     ) -> list[dict[str, Any]]:
    """Each input's and each pair's importance beside its worst goodness-of-fit result.

    Importance: the simulation's ⟨|t|⟩ scaled to standardised inputs, on the tested node
    (:func:`tested_groups`): t_i·σ_i for an input (degree 1), t_ij·σ_i·σ_j for a pair i < j
    (degree 2); ``importance_rank`` counts from 1 within the degree. ``important``: at least
    :data:`IMPORTANT_FRACTION` of the largest coefficient of that degree (for pairs, of all
    second-order coefficients, t_ii included: the KIT convention).

    Worst result: for an input, its 1D tests (every category); for a pair, its correlation
    tests (``dependence``, ``corr_pearson``, ``corr_spearman``), since a pair's plain 2D
    test also fails through either input's 1D mismodelling, which the input's row shows. The
    worst is the smallest Holm-adjusted p-value of a reliable test (ties: the larger effect);
    ``mismodelled`` when it is below ``alpha``.

    Order (``criticality_rank``): important and mismodelled first, then mismodelled, then
    important, then the rest; inputs before pairs within each, by importance.
    """
    by_input: dict[str, list[Mapping[str, Any]]] = {}
    by_pair: dict[frozenset[str], list[Mapping[str, Any]]] = {}
    for t in tests:
        if t.get("pvalue") is None or not t.get("reliable") or t.get("p_holm") is None:
            continue
        if t["kind"] == "1d":
            by_input.setdefault(t["feature_x"], []).append(t)
        elif t["method"] in ("dependence", "corr_pearson", "corr_spearman"):
            by_pair.setdefault(frozenset((t["feature_x"], t["feature_y"])), []).append(t)
    rows: list[dict[str, Any]] = []
    for model, means in zip(result.models, result.sim_means, strict=True):
        sc = means.scaled()
        for g in tested_groups(model):
            node = node_label(model, means.groups[g])
            entries = []
            first = sc.first[g]
            top1 = np.nanmax(first) if np.isfinite(first).any() else np.nan
            for i, fx in enumerate(model.inputs):
                entries.append((1, fx, None, float(first[i]), top1,
                                by_input.get(fx, [])))
            if sc.second is not None:
                second = sc.second[g]
                top2 = np.nanmax(second) if np.isfinite(second).any() else np.nan
                for i, j in zip(*np.triu_indices(len(model.inputs), 1), strict=True):
                    fx, fy = model.inputs[i], model.inputs[j]
                    entries.append((2, fx, fy, float(second[i, j]), top2,
                                    by_pair.get(frozenset((fx, fy)), [])))
            block = []
            for degree, fx, fy, value, top, candidates in entries:
                worst = min(candidates, key=lambda t: (t["p_holm"], -abs(t.get("effect_size")
                                                                        or 0.0)),
                            default=None)
                block.append({
                    "model_id": model.sha256, "node": node, "param_label": model.param_label,
                    "feature_x": fx, "feature_y": fy, "degree": degree, "importance": value,
                    "important": bool(np.isfinite(value) and np.isfinite(top) and top > 0
                                      and value >= IMPORTANT_FRACTION * top),
                    "worst_test_id": worst.get("test_id") if worst else None,
                    "worst_method": worst["method"] if worst else None,
                    "worst_category": worst["category"] if worst else None,
                    "worst_p_holm": worst["p_holm"] if worst else None,
                    "worst_effect_size": worst.get("effect_size") if worst else None,
                    "worst_effect_name": worst.get("effect_name") if worst else None,
                    "mismodelled": bool(worst is not None and worst["p_holm"] < alpha),
                })
            for degree in (1, 2):
                same = sorted((r for r in block if r["degree"] == degree),
                              key=lambda r: -_finite_or(r["importance"], -np.inf))
                for rank, r in enumerate(same, 1):
                    r["importance_rank"] = rank
            block.sort(key=lambda r: (_tier(r), r["degree"], r["importance_rank"]))
            for rank, r in enumerate(block, 1):
                r["criticality_rank"] = rank
            rows.extend(block)
    return rows


def _tier(row: Mapping[str, Any]) -> int:
    important, bad = row["important"], row["mismodelled"]
    return 0 if important and bad else 1 if bad else 2 if important else 3


def _finite_or(value: float, default: float) -> float:
    return value if value is not None and np.isfinite(value) else default
