"""Null samples with realistic simulation weightings, for calibrating the whole chain.

``make_null(scenario, n_data, seed)`` returns ``(sim, data)`` polars frames whose *weighted*
simulation law equals the data law exactly: every test of a run on them is a null test, so its
p-values must be uniform whatever the weights look like. The weightings are the ones analyses
meet (issue 14): importance sampling, HT-sliced samples, NLO ±1 weights whose negative fraction
depends on the kinematics, a simulation smaller than the data, and features with spikes, caps,
sentinels, booleans and counts; and (issue 31) importance weights rising x1000 into a tail the
simulation undersamples (``importance_tail``: there the simulation holds few, heavy events).

The law
-------
Every scenario shares one kinematic model, driven by ``u = (ht - 100)/100`` (an HT-like,
falling variable; under the data law p, ``u ~ Exp(1)``, except where a scenario says otherwise).
Given ``u`` the other features are drawn from a conditional law r(rest | u) that is the same in
simulation and data (:func:`_given_u`):

- ``jet1_pt = ht * B``, ``B ~ Beta(4, 2)`` (the leading jet carries about 2/3 of HT);
- ``njet = 2 + Poisson(0.3 + 0.4 u)`` (a small integer, more jets at high HT);
- ``eta1 ~ N(0, s(u)²)``, ``s(u) = 1.4 / sqrt(1 + 0.2 u)`` (central at high HT);
- ``eta2 = 0.6 eta1 + 0.8 N(0, s(u)²)`` (correlation 0.6 with ``eta1``).

A scenario only changes how the simulation draws ``u`` (and, for ``spiky``, the feature set),
and which weight each simulated event gets. The null then holds exactly in expectation: for any
set A of feature values, E[Σ_sim w 1_A] / E[Σ_sim w] = P_data(A). The weights are scaled so
that Σw = n_data (a global factor, which no test sees: every test normalises the simulation).

Each generator's docstring derives its null. ``tests/test_calibration_weightings.py`` checks the
generators at large N (weighted means and deciles of simulation vs data and vs the analytic law
of ``u``; negative fractions and weight ranges) and runs the chain on replicas.
"""

from __future__ import annotations

import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats
from scipy.special import ndtr, ndtri

__all__ = [
    "HT_SLICE_EDGES",
    "HT_SLICE_WEIGHTS",
    "IMPORTANCE_TAIL_RATE",
    "IMPORTANCE_TAIL_U_MAX",
    "IMPORTANCE_U_MAX",
    "NLO_NEG_RANGE",
    "PLAIN_NEG_FRACTION",
    "REPLICA_SEED",
    "SCENARIOS",
    "SIM_PER_DATA",
    "SPIKY_CAP",
    "Band",
    "ReplicaResult",
    "fpr_band",
    "make_null",
    "nlo_negative_fraction",
    "run_replica",
    "run_replicas",
]

#: Simulated events per data event, per scenario: the simulation's effective size (Σw)²/Σw²
#: is then 1.0-1.7 × n_data (measured: importance 1.67, ht_slices 1.22, nlo 1.00, spiky 1.16,
#: plain 1.65, importance_tail 0.92 by the law, 0.86-0.95 measured at 12k-100k data events),
#: except ``small_sim``: 0.31 × n_data, on purpose.
#: New scenarios go at the end: a scenario's position seeds its replicas.
SIM_PER_DATA: dict[str, float] = {
    "importance": 2.0,
    "ht_slices": 4.0,
    "nlo": 9.0,
    "small_sim": 0.49,
    "spiky": 2.0,
    "plain": 2.0,
    "importance_tail": 10.0,
}
SCENARIOS: tuple[str, ...] = tuple(SIM_PER_DATA)

#: ``importance``: u is truncated to [0, IMPORTANCE_U_MAX] in both samples, where the weight
#: p/q has fallen by a factor 1000 from its value at u = 0 (see :func:`_importance`).
IMPORTANCE_U_MAX = 1.5 * math.log(6.0 * (1000.0 * 2.0 / 3.0 - 0.5))
#: ``importance_tail``: the simulation draws u ~ Exp(rate IMPORTANCE_TAIL_RATE) on [0, T], the
#: data u ~ Exp(1) on [0, T]; the weight p/q ∝ e^{(rate - 1) u} rises x1000 from u = 0 to T.
IMPORTANCE_TAIL_RATE = 3.0
IMPORTANCE_TAIL_U_MAX = math.log(1000.0) / (IMPORTANCE_TAIL_RATE - 1.0)
#: ``ht_slices``: slice edges in u (ht = 100 + 100 u) and the weight of each slice relative to
#: the last one: x300 ... x1.
HT_SLICE_EDGES = (0.0, 0.7, 2.0, 3.5, 5.5, math.inf)
HT_SLICE_WEIGHTS = (300.0, 120.0, 30.0, 6.0, 1.0)
#: ``nlo``: the negative fraction rises linearly in F(u) = 1 - exp(-u) from 10 % to 45 %.
NLO_NEG_RANGE = (0.10, 0.45)
#: ``plain`` and ``spiky``: fraction of simulated events with a negative weight.
PLAIN_NEG_FRACTION = 0.04
#: ``spiky``: ``met = 40 E`` with E ~ Exp(1) is capped at 40 ln 10: exactly 10 % at the cap.
SPIKY_CAP = 40.0 * math.log(10.0)


def nlo_negative_fraction(u: np.ndarray) -> np.ndarray:
    """The ``nlo`` scenario's probability that a simulated event at ``u`` has weight -1."""
    lo, hi = NLO_NEG_RANGE
    return lo + (hi - lo) * (1.0 - np.exp(-np.asarray(u, dtype=float)))


# ------------------------------------------------------------------ the shared kinematics


def _given_u(rng: np.random.Generator, u: np.ndarray) -> dict[str, np.ndarray]:
    """The features of the shared model given u: the same conditional law in both samples."""
    n = len(u)
    ht = 100.0 + 100.0 * u
    s = 1.4 / np.sqrt(1.0 + 0.2 * u)
    eta1 = rng.normal(0.0, 1.0, n) * s
    return {
        "ht": ht,
        "jet1_pt": ht * rng.beta(4.0, 2.0, n),
        "njet": (2 + rng.poisson(0.3 + 0.4 * u)).astype(np.int32),
        "eta1": eta1,
        "eta2": 0.6 * eta1 + 0.8 * rng.normal(0.0, 1.0, n) * s,
    }


def _trunc_exp(rng: np.random.Generator, n: int, scale: float, upper: float) -> np.ndarray:
    """Exp(scale) truncated to [0, upper], by inverting its CDF."""
    return -scale * np.log1p(-rng.random(n) * -np.expm1(-upper / scale))


def _frames(sim: dict[str, np.ndarray], w: np.ndarray, data: dict[str, np.ndarray], n_data: int,
            ) -> tuple[pl.DataFrame, pl.DataFrame]:
    w = w * (n_data / w.sum())
    n_sim = len(w)
    sim_frame = pl.DataFrame({**sim, "weight": w, "event": np.arange(n_sim, dtype=np.int64)})
    data_frame = pl.DataFrame({**data, "event": np.arange(n_data, dtype=np.int64)})
    return sim_frame, data_frame


# ------------------------------------------------------------------ the scenarios


Draw = tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]


def _importance(rs: np.random.Generator, rd: np.random.Generator, n_sim: int, n_data: int,
                ) -> Draw:
    """Importance sampling: the simulation oversamples the tail of ht, weights w = p/q.

    Data law: u ~ p_T(u) = e^{-u} / (1 - e^{-T}) on [0, T], T = ``IMPORTANCE_U_MAX``.
    Simulation: u ~ q_T(u) ∝ ½ e^{-u} + ⅙ e^{-u/3} on [0, T] (a mixture with a component three
    times broader), drawn by picking a component with probability proportional to its mass on
    [0, T] and inverting its truncated CDF; the rest of the event from r(rest | u) in both.
    Weight w(u) = p_T(u) / q_T(u). Null: for any A,
    E_q[w 1_A] = ∫∫ q_T(u) (p_T(u)/q_T(u)) r(rest|u) 1_A = ∫∫ p_T(u) r(rest|u) 1_A = P_p(A),
    and E_q[w] = 1; p_T > 0 wherever q_T > 0 and q_T ≥ ½ p_T · const, so w is bounded.
    w(u) ∝ 1 / (½ + ⅙ e^{2u/3}) falls monotonically, from its largest value at u = 0 to 1/1000
    of it at u = T: the small weights sit in the tail that q oversamples.
    """
    t = IMPORTANCE_U_MAX
    m1, m2 = 0.5 * -math.expm1(-t), 0.5 * -math.expm1(-t / 3.0)  # masses of q's components
    broad = rs.random(n_sim) < m2 / (m1 + m2)
    u_sim = np.where(broad, _trunc_exp(rs, n_sim, 3.0, t), _trunc_exp(rs, n_sim, 1.0, t))
    p = np.exp(-u_sim) / -math.expm1(-t)
    q = (0.5 * np.exp(-u_sim) + np.exp(-u_sim / 3.0) / 6.0) / (m1 + m2)
    u_data = _trunc_exp(rd, n_data, 1.0, t)
    return _given_u(rs, u_sim), p / q, _given_u(rd, u_data)


def _importance_tail(rs: np.random.Generator, rd: np.random.Generator, n_sim: int, n_data: int,
                     ) -> Draw:
    """Importance weights up to x1000 in the upper tail of ht, which the simulation undersamples.

    Data law: u ~ p_T(u) = e^{-u} / (1 - e^{-T}) on [0, T], T = ``IMPORTANCE_TAIL_U_MAX``.
    Simulation: u ~ q_T(u) = λ e^{-λu} / (1 - e^{-λT}) on [0, T], λ = ``IMPORTANCE_TAIL_RATE``
    = 3 (a steeper fall), by inverting its truncated CDF; the rest of the event from
    r(rest | u) in both. Weight w(u) = p_T(u) / q_T(u) ∝ e^{(λ-1)u}: 1 at u = 0, 1000 at
    u = T = ln(1000) / 2. Null: E_q[w 1_A] = ∫∫ p_T(u) r(rest|u) 1_A = P_p(A), as for
    ``importance``. The rare simulated events of the tail carry the large weights: above
    u = ln(100) / 2 (weights x100 to x1000) the data hold 7 % of their events, the simulation
    0.1 % of its events (per 10k data events: 700 data events, 100 of the 100k simulated
    ones). Kish size:
    n_sim / ∫ p_T²/q_T = n_sim 3 (1 - e^{-T})² / ((e^T - 1)(1 - e^{-3T})) = n_sim / 10.9, i.e.
    0.92 n_data; the fourth moment of w, ∝ ∫ e^{5u}, is dominated by the tail.
    """
    t, lam = IMPORTANCE_TAIL_U_MAX, IMPORTANCE_TAIL_RATE
    u_sim = _trunc_exp(rs, n_sim, 1.0 / lam, t)
    w = np.exp((lam - 1.0) * u_sim)  # p_T / q_T up to a constant (the scale is set later)
    u_data = _trunc_exp(rd, n_data, 1.0, t)
    return _given_u(rs, u_sim), w, _given_u(rd, u_data)


def _slice_fractions() -> np.ndarray:
    """``ht_slices``: share of the simulated events generated in each slice."""
    edges = np.array(HT_SLICE_EDGES)
    prob = np.exp(-edges[:-1]) - np.exp(-edges[1:])
    share = prob / np.array(HT_SLICE_WEIGHTS)
    return share / share.sum()


def _ht_slices(rs: np.random.Generator, rd: np.random.Generator, n_sim: int, n_data: int,
               ) -> Draw:
    """HT-binned samples: fixed event counts per ht slice, one weight per slice (x300 ... x1).

    Data law: u ~ Exp(1). Simulation: slice k = [a_k, b_k) of u (``HT_SLICE_EDGES``) holds
    N_k events (a fixed count, as for separately generated HT-binned samples) drawn from p
    restricted to the slice, u = a_k - ln(1 - V (1 - e^{-(b_k - a_k)})), V ~ U(0, 1), and
    weight w_k = P_k / N_k with P_k = e^{-a_k} - e^{-b_k} (a cross-section over the number
    generated). Null: E[Σ_i w_i 1_A] = Σ_k N_k w_k P(A | slice k) = Σ_k P_k P(A | k) = P(A).
    The N_k are chosen so that w_k / w_last = ``HT_SLICE_WEIGHTS`` (300, 120, 30, 6, 1): the
    low-ht slice, where most data are, has the largest weight.
    """
    edges = np.array(HT_SLICE_EDGES)
    counts = np.floor(_slice_fractions() * n_sim).astype(int)
    counts[-1] += n_sim - counts.sum()
    u_parts, w_parts = [], []
    for k, n_k in enumerate(counts):
        a, b = edges[k], edges[k + 1]
        u_parts.append(a - np.log1p(-rs.random(n_k) * -np.expm1(-(b - a))))
        w_parts.append(np.full(n_k, (math.exp(-a) - math.exp(-b)) / n_k))
    u_sim = np.concatenate(u_parts)
    return _given_u(rs, u_sim), np.concatenate(w_parts), _given_u(rd, rd.exponential(1.0, n_data))


def _nlo(rs: np.random.Generator, rd: np.random.Generator, n_sim: int, n_data: int) -> Draw:
    """NLO-like ±1 weights, negative fraction from 10 % to 45 % along ht.

    Data law: u ~ p(u) = e^{-u}. Wanted: simulated events of density f(u) (both signs),
    a fraction ρ(u) of them with weight -1 (``nlo_negative_fraction``, 10 % at u = 0 rising to
    45 % as u → ∞), such that the *net* density f₊ - f₋ = (1 - ρ) f - ρ f = (1 - 2ρ) f is
    proportional to p. Hence f ∝ p / (1 - 2ρ), i.e. f₊ = p + g and f₋ = g with
    g = ρ p / (1 - 2ρ) (up to a constant), g largest where ρ is. f is drawn by rejection from
    p: accept u with probability a(u) = (1 - 2ρ_max) / (1 - 2ρ(u)) ∈ [0.125, 1]; the accepted
    density is ∝ p a ∝ p / (1 - 2ρ). Then the sign is negative with probability ρ(u), and the
    rest of the event comes from r(rest | u) whatever the sign. Null: for any A,
    E[Σ_i s_i 1_A] ∝ ∫∫ f(u) (1 - 2ρ(u)) r(rest|u) 1_A ∝ ∫∫ p(u) r(rest|u) 1_A = P(A).
    |w| is the same for every event. The effective size is n (∫(1-2ρ) f)² = n / Z² with
    Z = ∫ p / (1 - 2ρ) = ln 8 / 0.7 ≈ 2.97: about 0.11 n.
    """
    rho_max = NLO_NEG_RANGE[1]
    kept: list[np.ndarray] = []
    n_kept = 0
    while n_kept < n_sim:
        u = rs.exponential(1.0, 4 * (n_sim - n_kept) + 1000)
        accept = rs.random(len(u)) < (1.0 - 2.0 * rho_max) / (1.0 - 2.0 * nlo_negative_fraction(u))
        kept.append(u[accept])
        n_kept += int(accept.sum())
    u_sim = np.concatenate(kept)[:n_sim]
    sign = np.where(rs.random(n_sim) < nlo_negative_fraction(u_sim), -1.0, 1.0)
    return _given_u(rs, u_sim), sign, _given_u(rd, rd.exponential(1.0, n_data))


def _small_sim(rs: np.random.Generator, rd: np.random.Generator, n_sim: int, n_data: int,
               ) -> Draw:
    """A small simulation: n_sim = 0.49 n_data, log-normal weights, n_eff ≈ 0.3 n_data.

    Both samples: u ~ Exp(1), rest from r(rest | u). Weights w = exp(0.7 Z), Z ~ N(0, 1),
    independent of the event. Null: E[w 1_A] = E[w] P(A). Effective size:
    n E[w]² / E[w²] = n e^{-0.49} = 0.613 n = 0.300 n_data.
    """
    w = np.exp(0.7 * rs.normal(0.0, 1.0, n_sim))
    return (_given_u(rs, rs.exponential(1.0, n_sim)), w,
            _given_u(rd, rd.exponential(1.0, n_data)))


def _plain(rs: np.random.Generator, rd: np.random.Generator, n_sim: int, n_data: int) -> Draw:
    """Control: |w| ~ U(0.8, 1.2), 4 % negative, sign and |w| independent of the event.

    Both samples: u ~ Exp(1), rest from r(rest | u). Null: E[w 1_A] = E[|w|] (1 - 2·0.04) P(A).
    """
    w = rs.uniform(0.8, 1.2, n_sim) * np.where(rs.random(n_sim) < PLAIN_NEG_FRACTION, -1.0, 1.0)
    return (_given_u(rs, rs.exponential(1.0, n_sim)), w,
            _given_u(rd, rd.exponential(1.0, n_data)))


def _spiky_features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The ``spiky`` law (the same in both samples): six features with spikes and specials.

    - ``ht = 100 + 100 u``, u ~ Exp(1); ``njet = 2 + Poisson(0.3 + 0.4 u)``;
    - ``iso``: 0 with probability 0.6 (a spike, isolation-like), else
      0.03 (1 + 0.3 (njet - 2)) Exp(1) (a tail, broader with more jets);
    - ``met = min(40 E, SPIKY_CAP)`` with E = -ln(1 - Φ(z)), z = 0.5 Φ⁻¹(1 - e^{-u}) +
      √0.75 N(0, 1): z ~ N(0, 1), so E ~ Exp(1) exactly (correlated with ht through a Gaussian
      copula) and P(met = cap) = P(E ≥ ln 10) = 10 % exactly;
    - ``eta ~ N(0, s(u)²)`` except -999 (a sentinel) in 5 % of events, independently;
    - ``tight``: a boolean, true with probability 0.04 if iso = 0 and 0.015 otherwise:
      0.6·0.04 + 0.4·0.015 = 3 % true (97/3);
    - ``ntrk``: 0 with probability 0.4 (a spike of exact zeros), else Poisson(6 + 3u) (counts,
      more at high HT; about 30 distinct values, so it is binned as a continuous feature whose
      quantiles tie on integers): issue 31's spiky feature.
    """
    u = rng.exponential(1.0, n)
    njet = (2 + rng.poisson(0.3 + 0.4 * u)).astype(np.int32)
    spike = rng.random(n) < 0.6
    iso = np.where(spike, 0.0, 0.03 * (1.0 + 0.3 * (njet - 2)) * rng.exponential(1.0, n))
    z = 0.5 * ndtri(-np.expm1(-u)) + math.sqrt(0.75) * rng.normal(0.0, 1.0, n)
    met = np.minimum(-40.0 * np.log(ndtr(-z)), SPIKY_CAP)  # 1 - Φ(z) = Φ(-z)
    eta = rng.normal(0.0, 1.0, n) * 1.4 / np.sqrt(1.0 + 0.2 * u)
    eta = np.where(rng.random(n) < 0.05, -999.0, eta)
    tight = rng.random(n) < np.where(spike, 0.04, 0.015)
    ntrk = np.where(rng.random(n) < 0.4, 0, rng.poisson(6.0 + 3.0 * u)).astype(np.int32)
    return {"ht": 100.0 + 100.0 * u, "njet": njet, "iso": iso, "met": met, "eta": eta,
            "tight": tight, "ntrk": ntrk}


def _spiky(rs: np.random.Generator, rd: np.random.Generator, n_sim: int, n_data: int) -> Draw:
    """Spikes, a cap, a sentinel, a boolean and a count; two processes and 4 % negative weights.

    Both samples draw their events from the same law (:func:`_spiky_features`). Weights: |w| is
    0.5 (60 % of events) or 2.0 (40 %), negative in 4 % of events, all independently of the
    event. Null: E[w 1_A] = E[w] P(A), for the sentinel fraction (5 % in both) as for any A.
    """
    w = np.where(rs.random(n_sim) < 0.6, 0.5, 2.0)
    w = w * np.where(rs.random(n_sim) < PLAIN_NEG_FRACTION, -1.0, 1.0)
    return _spiky_features(rs, n_sim), w, _spiky_features(rd, n_data)


_GENERATORS: dict[str, Callable[..., Draw]] = {
    "importance": _importance,
    "ht_slices": _ht_slices,
    "nlo": _nlo,
    "small_sim": _small_sim,
    "spiky": _spiky,
    "plain": _plain,
    "importance_tail": _importance_tail,
}


def make_null(scenario: str, n_data: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A weighted simulation and data drawn from one law (see the module docstring).

    Deterministic: the simulation and the data each have their own stream, derived from
    ``(seed, scenario, n_data)`` (two sizes with one seed are independent samples). The
    simulation has ``SIM_PER_DATA[scenario] * n_data`` events and a ``weight`` column scaled
    to Σw = n_data; both frames have an ``event`` id.
    """
    if scenario not in _GENERATORS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    index = SCENARIOS.index(scenario)
    sim_seq, data_seq = np.random.SeedSequence([seed, index, n_data]).spawn(2)
    n_sim = round(SIM_PER_DATA[scenario] * n_data)
    sim, w, data = _GENERATORS[scenario](np.random.default_rng(sim_seq),
                                         np.random.default_rng(data_seq), n_sim, n_data)
    return _frames(sim, w, data, n_data)


# ------------------------------------------------------------------ replicas through the chain

#: Base seed of the replicas (issue 14): replica r uses make_null(..., seed=REPLICA_SEED + r)
#: and runs the chain with that seed.
REPLICA_SEED = 14_000

#: One record of a run: kind, method, feature_x, feature_y, p-value (NaN when the test did
#: not run), reliable, pvalue_method (None when the test did not run); then, for diagnosis,
#: statistic, ndf, n_toys (NaN / None where none) and a few of the result's details
#: (:data:`ROW_DETAILS`: why it was unreliable, the asymptotic p-value beside a toy one, ...).
Row = tuple[str, str, str, "str | None", float, bool, "str | None", float, "float | None",
            "int | None", dict]

#: The result details a :data:`Row` keeps (scalars only; the rest is left out to keep the
#: per-replica files small).
ROW_DETAILS = ("unreliable_reason", "pvalue_asymptotic", "pvalue_is_bound", "toys_stop",
               "toy_scheme", "toy_variance", "n_bins_used", "min_expected",
               "n_groups_before_variance_merge", "sim_effective_entries", "limit", "n_values",
               "n_toys_reaching", "pvalue_from", "not_run_reason")


@dataclass(frozen=True)
class ReplicaResult:
    """What one null replica gave: every record of the run, and the run's summary figures.

    ``p_global_min`` and ``p_global_nfail`` are the run-level test's p-values (the run
    summary's ``runs.p_global_min`` / ``runs.p_global_nfail``; NaN when the run has none),
    ``global_info`` the rest of that result (tests in its family, failures, smallest p).
    """

    scenario: str
    n_data: int
    replica: int
    rows: list[Row]
    p_uniformity: float
    p_binomial: float
    seconds: float
    p_global_min: float = math.nan
    p_global_nfail: float = math.nan
    global_info: dict = field(default_factory=dict)
    n_eff_sim: float = math.nan

    def pvalues(self, kind: str, method: str) -> np.ndarray:
        """The p-values of the reliable tests of (kind, method) that ran."""
        return np.array([r[4] for r in self.rows
                         if r[0] == kind and r[1] == method and r[5] and np.isfinite(r[4])])

    def to_json(self) -> dict:
        """A JSON-able dict (NaN as null); :meth:`from_json` reads it back."""
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            return x
        return clean(asdict(self))

    @classmethod
    def from_json(cls, d: dict) -> ReplicaResult:
        def num(x):
            return math.nan if x is None else float(x)
        rows = [(r[0], r[1], r[2], r[3], num(r[4]), bool(r[5]), r[6], num(r[7]),
                 r[8], r[9], r[10] or {}) for r in d["rows"]]
        return cls(d["scenario"], int(d["n_data"]), int(d["replica"]), rows,
                   num(d["p_uniformity"]), num(d["p_binomial"]), num(d["seconds"]),
                   num(d.get("p_global_min")), num(d.get("p_global_nfail")),
                   d.get("global_info") or {}, num(d.get("n_eff_sim")))


def _scalar(x):
    """A JSON-able scalar of a result detail, or None."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    if isinstance(x, str):
        return x
    return None


def run_replica(task: tuple[str, int, int]) -> ReplicaResult:
    """The whole chain (``run_validation``, no database, one process) on replica
    (scenario, n_data, r)."""
    from validator.pipeline import RunConfig, run_validation

    scenario, n_data, replica = task
    seed = REPLICA_SEED + replica
    t0 = time.perf_counter()
    sim, data = make_null(scenario, n_data, seed)
    w = sim["weight"].to_numpy()
    n_eff_sim = float(w.sum() ** 2 / np.sum(w**2))
    with tempfile.TemporaryDirectory(prefix="null-") as tmp:
        sim_path, data_path = Path(tmp) / "sim.parquet", Path(tmp) / "data.parquet"
        sim.write_parquet(sim_path)
        data.write_parquet(data_path)
        outcome = run_validation(RunConfig(sim=[str(sim_path)], data=[str(data_path)],
                                           weight="weight", db=None, seed=seed, jobs=1))
    rows: list[Row] = []
    for rec in outcome.records:
        res = rec.result
        if res is None:
            rows.append((rec.kind, rec.method, rec.feature_x, rec.feature_y, math.nan, False,
                         None, math.nan, None, None, {"not_run_reason": rec.not_run_reason}))
            continue
        details = {k: _scalar(res.details[k]) for k in ROW_DETAILS if k in res.details}
        rows.append((rec.kind, rec.method, rec.feature_x, rec.feature_y, float(res.pvalue),
                     bool(res.reliable), res.pvalue_method, float(res.statistic),
                     None if res.ndf is None else float(res.ndf),
                     None if res.n_toys is None else int(res.n_toys), details))
    g = outcome.global_result
    p_min = p_nfail = math.nan
    info: dict = {}
    if g is not None:
        p_min = float(getattr(g, "p_min", math.nan))
        p_nfail = float(getattr(g, "p_nfail", math.nan))
        info = {k: _scalar(v) for k, v in vars(g).items()
                if k not in ("p_min", "p_nfail") and _scalar(v) is not None}
    return ReplicaResult(scenario, n_data, replica, rows, float(outcome.summary.p_uniformity),
                         float(outcome.summary.p_binomial), time.perf_counter() - t0,
                         p_min, p_nfail, info, n_eff_sim)


def run_replicas(tasks: Sequence[tuple[str, int, int]], workers: int = 1) -> list[ReplicaResult]:
    """:func:`run_replica` on every task, in order; in ``workers`` spawned processes if > 1."""
    if workers <= 1:
        return [run_replica(t) for t in tasks]
    context = multiprocessing.get_context("spawn")  # no fork of a process with polars threads
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(run_replica, tasks))


# ------------------------------------------------------------------ the false-positive band


@dataclass(frozen=True)
class Band:
    """A false-positive rate, the band it must lie in, and how the band was made.

    ``deff`` is the design effect measured by the bootstrap over replicas: the variance of the
    rate over the binomial variance p(1-p)/n (at least 1); ``n_eff = n / deff``.
    """

    alpha: float
    n: int
    n_fail: int
    rate: float
    deff: float
    n_eff: float
    low: float
    high: float

    @property
    def ok(self) -> bool:
        return self.low <= self.rate <= self.high


def fpr_band(strata: Sequence[Sequence[np.ndarray]], alpha: float, level: float = 0.999,
             n_boot: int = 2000, seed: int = 0) -> Band:
    """False-positive rate at ``alpha`` and its band, from a bootstrap over whole replicas.

    ``strata``: one list per sample size, holding each replica's p-values (of one method).
    Tests of one run are correlated (the 1D tests of a feature share its histogram; the pairs
    share features), so the p-values are not independent Bernoulli trials and a binomial band
    would be too narrow. The replicas, on the other hand, are independent. So:

    1. resample whole replicas with replacement (within each sample size, B = ``n_boot``
       times) and recompute the pooled rate: its variance var* includes the correlation;
    2. the design effect deff = var* / (r(1-r)/n) at the observed rate r (1 if r is 0 or 1;
       never below 1), and the effective number of independent tests n_eff = n / deff;
    3. the band is the central ``level`` interval of Binomial(n_eff, alpha) / n_eff: where
       the rate falls if the p-values are calibrated, with the measured correlation.

    Step 3 centres the band on alpha (the null), not on the observed rate, and keeps the
    binomial's skewness, which matters at alpha = 1 % with a few hundred tests.
    """
    rng = np.random.default_rng(seed)
    n_total = k_total = 0
    boot_n = np.zeros(n_boot)
    boot_k = np.zeros(n_boot)
    for groups in strata:
        if not groups:
            continue
        n_r = np.array([len(g) for g in groups], dtype=float)
        k_r = np.array([int(np.sum(np.asarray(g) < alpha)) for g in groups], dtype=float)
        n_total += int(n_r.sum())
        k_total += int(k_r.sum())
        idx = rng.integers(0, len(groups), (n_boot, len(groups)))
        boot_n += n_r[idx].sum(axis=1)
        boot_k += k_r[idx].sum(axis=1)
    if n_total == 0:
        return Band(alpha, 0, 0, math.nan, math.nan, 0.0, math.nan, math.nan)
    rate = k_total / n_total
    deff = 1.0
    if 0 < k_total < n_total:
        var_boot = float(np.var(boot_k / np.maximum(boot_n, 1.0)))
        deff = max(1.0, var_boot / (rate * (1.0 - rate) / n_total))
    n_eff = n_total / deff
    trials = max(1, math.floor(n_eff))
    lo, hi = stats.binom.interval(level, trials, alpha)
    return Band(alpha, n_total, k_total, rate, deff, n_eff, lo / trials, hi / trials)
