"""Generate the toy dilepton + jets samples shipped with validator.

The toy analysis selects events with two charged leptons and at least two jets at the LHC. The
simulation is a weighted mixture of four processes (Drell-Yan, ttbar, single top tW, diboson); the
"collision data" are drawn from a truth that equals the simulation model except for exactly two
planted mismodellings (see ``sample_data/README.md``):

1. ``met`` is scaled by :data:`MET_SCALE` in data (a 1D mismodelling). No other feature is derived
   from ``met``, so no other marginal moves.
2. ``lep1_iso`` and ``lep2_iso`` are joined through a Gaussian copula with correlation
   :data:`ISO_RHO_SIM` in simulation and :data:`ISO_RHO_DATA` in data. Both marginals are
   identical in simulation and data; only the joint distribution differs.

:func:`make_multivariate_case` (``--with-tracks``) adds a third, multivariate mismodelling in
three extra columns: in a fraction :data:`TRK_PARITY_FRACTION` of the data events the sign of
``trk3_d0sig`` is the sign of ``trk1_d0sig * trk2_d0sig`` (:func:`_tracks`). Every 1D and 2D
distribution is exact; only the three together differ, which a multivariate test (``c2st``,
``nplm``) finds. It is not in the shipped files, whose planted effects stay two.

Everything else goes through identical code paths with independent random streams, so it is well
modelled. The output is deterministic: the same arguments give bit-identical files.

The sample network (``classifier.pt``, TorchScript, and ``classifier.onnx``) is a small
three-class classifier (``drell_yan``, ``ttbar``, ``other``) trained on the simulation by
:func:`make_model`, deterministically in a few seconds on one CPU thread: a network to audit with
``validator run --model``.

Usage::

    python sample_data/generate.py [--out sample_data] [--seed N] [--n-sim N] [--n-data N] [--null]
                                   [--no-model | --model-only]
"""

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from scipy.special import ndtr

__all__ = [
    "DEFAULT_N_DATA",
    "DEFAULT_N_SIM",
    "DEFAULT_SEED",
    "FEATURES",
    "INTEGER_FEATURES",
    "ISO_RHO_DATA",
    "ISO_RHO_SIM",
    "MET_SCALE",
    "MODEL_CLASSES",
    "MODEL_FILES",
    "MODEL_INPUTS",
    "MODEL_SEED",
    "PROCESSES",
    "RUNS",
    "TRACK_FEATURES",
    "TRK_D0SIG_DOF",
    "TRK_PARITY_FRACTION",
    "Process",
    "copula_spearman",
    "make_model",
    "make_multivariate_case",
    "make_samples",
    "model_labels",
    "model_metadata",
    "model_training_weights",
    "process_weights",
    "write_model",
    "write_samples",
]

DEFAULT_SEED = 20_240_917
DEFAULT_N_SIM = 150_000
DEFAULT_N_DATA = 75_000

#: Planted 1D mismodelling: data ``met`` = simulated-model ``met`` times this factor.
MET_SCALE = 1.05
#: The MET-scale systematic (unclustered energy and jet energy scale): the simulation's ``met``
#: varied by ± this fraction (:func:`met_scale_variations`, alternative simulation files for
#: ``--syst-file``). It covers the planted scale: the ``met`` tests fail without it
#: (``saturated``) and pass with it (``saturated_syst``).
MET_SCALE_UNCERTAINTY = 0.05
#: File names of the MET-scale variations (written by ``--met-variations``; not shipped).
MET_VARIATION_FILES = ("sim_met_up.parquet", "sim_met_down.parquet")
#: Gaussian-copula correlation of (``lep1_iso``, ``lep2_iso``) in the simulation.
ISO_RHO_SIM = 0.2
#: Gaussian-copula correlation of (``lep1_iso``, ``lep2_iso``) in the planted data.
ISO_RHO_DATA = 0.5
#: Planted three-input mismodelling: in this fraction of the data events the sign of
#: ``trk3_d0sig`` is the sign of ``trk1_d0sig * trk2_d0sig`` (in the simulation, and in the
#: other data events, the three signs are independent). Every 1D and 2D distribution stays
#: exact; only the joint distribution of the three moves (see :func:`_tracks`).
TRK_PARITY_FRACTION = 0.25
#: Student-t degrees of freedom of the impact-parameter significances (resolution core with
#: the tails of mismeasured tracks).
TRK_D0SIG_DOF = 5

#: Input features of the toy network, in column order.
FEATURES: tuple[str, ...] = (
    "lep1_pt",
    "lep1_eta",
    "lep2_pt",
    "lep2_eta",
    "lep_delta_phi",
    "delta_r_ll",
    "m_ll",
    "pt_ll",
    "lep1_iso",
    "lep2_iso",
    "jet1_pt",
    "jet1_eta",
    "jet2_pt",
    "jet2_eta",
    "delta_eta_jj",
    "m_jj",
    "ht",
    "n_jets",
    "n_btag",
    "met",
)
#: The three columns of the multivariate case (:func:`make_multivariate_case`), not in the
#: shipped files.
TRACK_FEATURES: tuple[str, ...] = ("trk1_d0sig", "trk2_d0sig", "trk3_d0sig")
#: Features stored as integers (everything else is float32).
INTEGER_FEATURES: tuple[str, ...] = ("n_jets", "n_btag")

#: Data-taking runs and the fraction of the integrated luminosity each one holds.
RUNS: tuple[tuple[int, float], ...] = (
    (315_257, 0.18),
    (315_764, 0.27),
    (316_187, 0.34),
    (317_080, 0.21),
)

# Physics constants (GeV).
M_Z, GAMMA_Z = 91.1876, 2.4952
M_W = 80.379
M_TOP = 172.5
M_B = 4.8

# Selection (GeV).
LEP1_PT_MIN, LEP2_PT_MIN, LEP_ETA_MAX, M_LL_MIN = 25.0, 20.0, 2.4, 20.0
JET_PT_MIN, JET_ETA_MAX = 30.0, 2.4
ISO_MAX = 0.15
#: Scales of the truncated-exponential isolation marginals of the leading / subleading lepton.
ISO_SCALES = (0.025, 0.032)

# Detector model.
LEP_RESOLUTION = 0.015  # relative lepton pT resolution
JET_RESOLUTION = 0.10  # relative jet energy resolution
SOFT_MET_SIGMA = 9.0  # unclustered-energy resolution per transverse component (GeV)
BTAG_EFF_B = 0.70
BTAG_EFF_LIGHT = 0.015

MAX_ISR = 5  # at most this many radiated jet candidates per event
MANTISSA_BITS = 10  # float32 features keep this many mantissa bits (like NanoAOD's precision)

_SAMPLE_CODES = {"sim": 0, "data": 1}


@dataclass(frozen=True)
class Process:
    """One simulated physics process.

    Attributes
    ----------
    name
        The value in the simulation's ``process`` column.
    code
        A small integer that seeds the process's random stream.
    yield_fraction
        Expected fraction of the selected events (data) that this process makes up.
    sim_fraction
        Fraction of the simulated events that belong to this process.
    negative_fraction
        Fraction of simulated events with a negative weight (NLO-style). Their kinematics follow
        the same distribution as the positive ones.
    isr_min
        Minimum number of radiated (initial-state) jet candidates (a jet-binned sample).
    isr_mean
        Mean number of radiated jet candidates above ``isr_min`` (Poisson).
    isr_hf
        Probability that a radiated jet is a heavy-flavour jet (b-tagged like a b jet).
    """

    name: str
    code: int
    yield_fraction: float
    sim_fraction: float
    negative_fraction: float
    isr_min: int
    isr_mean: float
    isr_hf: float


#: The simulated processes. Yield fractions sum to one, and so do simulation fractions.
PROCESSES: tuple[Process, ...] = (
    Process("drell_yan", 1, 0.55, 0.40, 0.06, 2, 0.6, 0.04),
    Process("ttbar", 2, 0.35, 0.50, 0.02, 0, 1.0, 0.03),
    Process("single_top", 3, 0.04, 0.09, 0.0, 1, 0.9, 0.03),
    Process("diboson", 4, 0.06, 0.01, 0.0, 2, 0.6, 0.03),
)


# ---------------------------------------------------------------------------------------------
# Four-vectors: one contiguous array per component, of any common shape (events, or events x
# objects), so every operation is a plain element-wise numpy operation.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _P4:
    """Four-vectors (px, py, pz, E) in GeV."""

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray

    @classmethod
    def from_pt_y_phi_m(
        cls, pt: np.ndarray, y: np.ndarray, phi: np.ndarray, m: np.ndarray
    ) -> "_P4":
        """From transverse momentum, rapidity, azimuth and mass."""
        mt = np.sqrt(m * m + pt * pt)
        return cls(pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y), mt * np.cosh(y))

    @classmethod
    def from_pt_eta_phi_m(
        cls, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, m: np.ndarray
    ) -> "_P4":
        """From transverse momentum, pseudorapidity, azimuth and mass."""
        pz = pt * np.sinh(eta)
        return cls(pt * np.cos(phi), pt * np.sin(phi), pz, np.sqrt(pt * pt + pz * pz + m * m))

    def __add__(self, other: "_P4") -> "_P4":
        return _P4(self.px + other.px, self.py + other.py, self.pz + other.pz, self.e + other.e)

    def scaled(self, factor: np.ndarray) -> "_P4":
        """Every component times ``factor`` (a detector response)."""
        return _P4(self.px * factor, self.py * factor, self.pz * factor, self.e * factor)

    def take(self, index: np.ndarray) -> "_P4":
        """Objects ``index`` (events x k) of every event (components of shape events x J)."""
        return _P4(
            *(np.take_along_axis(c, index, axis=1) for c in (self.px, self.py, self.pz, self.e))
        )

    def column(self, j: int) -> "_P4":
        """Object ``j`` of every event (components of shape events x J)."""
        return _P4(self.px[:, j], self.py[:, j], self.pz[:, j], self.e[:, j])

    @staticmethod
    def stack(objects: "list[_P4]") -> "_P4":
        """Objects side by side: per-event (n,) or (n, k) components become (n, sum k)."""
        return _P4(
            *(
                np.concatenate([np.atleast_2d(getattr(o, c).T).T for o in objects], axis=1)
                for c in ("px", "py", "pz", "e")
            )
        )

    @property
    def pt(self) -> np.ndarray:
        return np.sqrt(self.px * self.px + self.py * self.py)

    @property
    def phi(self) -> np.ndarray:
        return np.arctan2(self.py, self.px)

    @property
    def eta(self) -> np.ndarray:
        return np.arcsinh(self.pz / np.maximum(self.pt, 1e-9))

    @property
    def mass(self) -> np.ndarray:
        m2 = self.e * self.e - self.px * self.px - self.py * self.py - self.pz * self.pz
        return np.sqrt(np.maximum(m2, 0.0))

    def boosted(self, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> "_P4":
        """Lorentz boost by the velocity (bx, by, bz)."""
        b2 = bx * bx + by * by + bz * bz
        gamma = 1.0 / np.sqrt(1.0 - b2)
        bp = bx * self.px + by * self.py + bz * self.pz
        k = np.where(b2 > 0.0, (gamma - 1.0) / np.where(b2 > 0.0, b2, 1.0), 0.0) * bp
        k += gamma * self.e
        return _P4(self.px + k * bx, self.py + k * by, self.pz + k * bz, gamma * (self.e + bp))


def _delta_phi(phi1: np.ndarray, phi2: np.ndarray) -> np.ndarray:
    """Absolute azimuthal difference in [0, pi]."""
    return np.abs(np.mod(phi1 - phi2 + np.pi, 2.0 * np.pi) - np.pi)


def _cos_theta_1pc2(u: np.ndarray) -> np.ndarray:
    """Inverse CDF of the angular distribution ``1 + cos^2(theta)`` (Cardano's formula)."""
    q = 4.0 - 8.0 * u  # solve c^3 + 3c + q = 0
    root = np.sqrt(q * q / 4.0 + 1.0)
    return np.cbrt(-q / 2.0 + root) + np.cbrt(-q / 2.0 - root)


def _two_body(
    parent: _P4,
    m1: float,
    m2: float,
    rng: np.random.Generator,
    spin1: bool = False,
) -> tuple[_P4, _P4]:
    """Decay ``parent`` into two daughters of masses ``m1``, ``m2``, both in the lab frame.

    The decay is isotropic in the parent's rest frame, or ``1 + cos^2`` about the beam axis when
    ``spin1`` is true (a vector boson from quark-antiquark annihilation).
    """
    n = parent.e.shape[0]
    mass = parent.mass
    kallen = (mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)
    pstar = np.sqrt(np.maximum(kallen, 0.0)) / (2.0 * mass)
    u = rng.random(n)
    cos = _cos_theta_1pc2(u) if spin1 else 2.0 * u - 1.0
    sin = np.sqrt(np.maximum(1.0 - cos * cos, 0.0))
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    px, py, pz = pstar * sin * np.cos(phi), pstar * sin * np.sin(phi), pstar * cos
    d1 = _P4(px, py, pz, np.sqrt(pstar**2 + m1 * m1))
    d2 = _P4(-px, -py, -pz, np.sqrt(pstar**2 + m2 * m2))
    beta = (parent.px / parent.e, parent.py / parent.e, parent.pz / parent.e)
    return d1.boosted(*beta), d2.boosted(*beta)


def _system(
    pt_x: np.ndarray, pt_y: np.ndarray, mass: np.ndarray, y_sigma: float, rng: np.random.Generator
) -> _P4:
    """A produced system with given transverse momentum and mass, and Gaussian rapidity."""
    y = rng.normal(0.0, y_sigma, mass.shape[0])
    return _P4.from_pt_y_phi_m(np.hypot(pt_x, pt_y), y, np.arctan2(pt_y, pt_x), mass)


# ---------------------------------------------------------------------------------------------
# Process models: each returns the true final-state objects of a batch of events.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Truth:
    """True final-state objects of a batch of ``n`` events."""

    leptons: _P4  # (n, 2): the two charged leptons
    nu_px: np.ndarray  # (n,): sum of the neutrinos' px
    nu_py: np.ndarray  # (n,): sum of the neutrinos' py
    jets: _P4  # (n, J): jet candidates (zero where absent)
    jet_present: np.ndarray  # (n, J) bool
    jet_is_b: np.ndarray  # (n, J) bool: heavy flavour (tagged with the b efficiency)


@dataclass(frozen=True)
class _Radiation:
    """Radiated (initial-state) jet candidates and the recoil of the hard system."""

    jets: _P4  # (n, MAX_ISR), zero where absent
    present: np.ndarray  # (n, MAX_ISR) bool
    is_b: np.ndarray  # (n, MAX_ISR) bool
    recoil_x: np.ndarray  # (n,)
    recoil_y: np.ndarray  # (n,)


def _isr(n: int, proc: Process, rng: np.random.Generator) -> _Radiation:
    """Radiated jet candidates; the hard system recoils against them (plus soft radiation)."""
    count = np.minimum(proc.isr_min + rng.poisson(proc.isr_mean, n), MAX_ISR)
    present = np.arange(MAX_ISR)[None, :] < count[:, None]
    # Falling (Pareto) spectrum above 25 GeV, capped at 2 TeV; absent candidates stay zero.
    pt = np.minimum(25.0 * (1.0 - rng.random((n, MAX_ISR))) ** (-1.0 / 2.4), 2000.0)[present]
    eta = rng.normal(0.0, 1.5, (n, MAX_ISR))[present]
    phi = rng.uniform(-np.pi, np.pi, (n, MAX_ISR))[present]
    compact = _P4.from_pt_eta_phi_m(pt, eta, phi, 0.08 * pt)
    components = []
    for values in (compact.px, compact.py, compact.pz, compact.e):
        full = np.zeros((n, MAX_ISR))
        full[present] = values
        components.append(full)
    jets = _P4(*components)
    is_b = present & (rng.random((n, MAX_ISR)) < proc.isr_hf)
    soft = rng.normal(0.0, 6.0, (n, 2))
    recoil_x = soft[:, 0] - jets.px.sum(axis=1)
    recoil_y = soft[:, 1] - jets.py.sum(axis=1)
    return _Radiation(jets, present, is_b, recoil_x, recoil_y)


def _drell_yan(n: int, proc: Process, rng: np.random.Generator) -> _Truth:
    """Z/gamma* -> ll with radiated jets: a Z peak over a small falling continuum."""
    isr = _isr(n, proc, rng)
    peak = M_Z + 0.5 * GAMMA_Z * np.tan(np.pi * (rng.random(n) - 0.5))  # Breit-Wigner
    continuum = 15.0 * (1.0 - rng.random(n)) ** (-1.0 / 1.6)  # gamma* tail
    mass = np.clip(np.where(rng.random(n) < 0.9, peak, continuum), 15.0, 1500.0)
    boson = _system(isr.recoil_x, isr.recoil_y, mass, 1.6, rng)
    l1, l2 = _two_body(boson, 0.0, 0.0, rng, spin1=True)
    zero = np.zeros(n)
    return _Truth(_P4.stack([l1, l2]), zero, zero, isr.jets, isr.present, isr.is_b)


def _top_decay(top: _P4, rng: np.random.Generator) -> tuple[_P4, _P4, _P4]:
    """t -> W b, W -> l nu. Returns the lepton, neutrino and b-quark four-vectors."""
    w, b = _two_body(top, M_W, M_B, rng)
    lep, nu = _two_body(w, 0.0, 0.0, rng)
    return lep, nu, b


def _with_b_jets(isr: _Radiation, b_quarks: list[_P4]) -> tuple[_P4, np.ndarray, np.ndarray]:
    """Jet candidates: the b quarks (always present, heavy flavour) then the radiated jets."""
    ones = np.ones((isr.present.shape[0], len(b_quarks)), dtype=bool)
    jets = _P4.stack([*b_quarks, isr.jets])
    return jets, np.concatenate([ones, isr.present], axis=1), np.concatenate([ones, isr.is_b], 1)


def _ttbar(n: int, proc: Process, rng: np.random.Generator) -> _Truth:
    """ttbar -> (l nu b)(l nu b) with radiated jets: a broad m_ll continuum, genuine met."""
    isr = _isr(n, proc, rng)
    m_tt = 2.0 * M_TOP + 15.0 + rng.gamma(1.6, 95.0, n)
    pair = _system(isr.recoil_x, isr.recoil_y, m_tt, 0.9, rng)
    t1, t2 = _two_body(pair, M_TOP, M_TOP, rng)
    l1, n1, b1 = _top_decay(t1, rng)
    l2, n2, b2 = _top_decay(t2, rng)
    nu = n1 + n2
    return _Truth(_P4.stack([l1, l2]), nu.px, nu.py, *_with_b_jets(isr, [b1, b2]))


def _single_top(n: int, proc: Process, rng: np.random.Generator) -> _Truth:
    """tW -> (l nu b)(l nu) with radiated jets."""
    isr = _isr(n, proc, rng)
    m_tw = M_TOP + M_W + 10.0 + rng.gamma(1.5, 85.0, n)
    pair = _system(isr.recoil_x, isr.recoil_y, m_tw, 1.0, rng)
    top, w = _two_body(pair, M_TOP, M_W, rng)
    l1, n1, b = _top_decay(top, rng)
    l2, n2 = _two_body(w, 0.0, 0.0, rng)
    nu = n1 + n2
    return _Truth(_P4.stack([l1, l2]), nu.px, nu.py, *_with_b_jets(isr, [b]))


def _diboson(n: int, proc: Process, rng: np.random.Generator) -> _Truth:
    """WW -> (l nu)(l nu) (60 %) and ZZ -> (ll)(nu nu) (40 %) with radiated jets."""
    isr = _isr(n, proc, rng)
    is_ww = rng.random(n) < 0.6
    m_vv = 2.0 * np.where(is_ww, M_W, M_Z) + 5.0 + rng.gamma(1.5, 90.0, n)
    pair = _system(isr.recoil_x, isr.recoil_y, m_vv, 1.2, rng)
    # Decay both bosons with the W mass, then the same with the Z mass, and pick per event.
    w1, w2 = _two_body(pair, M_W, M_W, rng)
    z1, z2 = _two_body(pair, M_Z, M_Z, rng)
    lw1, nw1 = _two_body(w1, 0.0, 0.0, rng)  # W1 -> l nu
    lw2, nw2 = _two_body(w2, 0.0, 0.0, rng)  # W2 -> l nu
    lz1, lz2 = _two_body(z1, 0.0, 0.0, rng, spin1=True)  # Z1 -> l l; Z2 -> nu nu
    leptons_ww, leptons_zz = _P4.stack([lw1, lw2]), _P4.stack([lz1, lz2])
    sel = is_ww[:, None]
    leptons = _P4(
        *(
            np.where(sel, getattr(leptons_ww, c), getattr(leptons_zz, c))
            for c in ("px", "py", "pz", "e")
        )
    )
    nu_ww = nw1 + nw2
    nu_px = np.where(is_ww, nu_ww.px, z2.px)
    nu_py = np.where(is_ww, nu_ww.py, z2.py)
    return _Truth(leptons, nu_px, nu_py, isr.jets, isr.present, isr.is_b)


_MODELS = {
    "drell_yan": _drell_yan,
    "ttbar": _ttbar,
    "single_top": _single_top,
    "diboson": _diboson,
}


# ---------------------------------------------------------------------------------------------
# Detector response, selection and features.
# ---------------------------------------------------------------------------------------------


def _reconstruct(
    truth: _Truth, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Smear the true objects, apply the selection and compute the features.

    Returns the features of every event of the batch (values of failing events are meaningless)
    and the boolean selection mask.
    """
    n = truth.nu_px.shape[0]
    # Leptons: Gaussian pT resolution, ordered by reconstructed pT.
    lep_resp = rng.normal(1.0, LEP_RESOLUTION, (n, 2))
    leps = truth.leptons.scaled(lep_resp)
    order = np.argsort(-leps.pt, axis=1, kind="stable")
    leps = leps.take(order)
    lep_pt, lep_eta, lep_phi = leps.pt, leps.eta, leps.phi
    dilep = leps.column(0) + leps.column(1)

    # Jets: Gaussian energy resolution (it scales the four-vector, so eta is unchanged),
    # acceptance; the two leading ones by reconstructed pT.
    jet_resp = np.maximum(rng.normal(1.0, JET_RESOLUTION, truth.jet_present.shape), 0.05)
    true_pt = truth.jets.pt
    jet_pt = true_pt * jet_resp
    central = np.abs(truth.jets.pz) < np.sinh(JET_ETA_MAX) * true_pt
    accepted = truth.jet_present & (jet_pt > JET_PT_MIN) & central
    n_jets = accepted.sum(axis=1)
    lead = np.argsort(np.where(accepted, -jet_pt, np.inf), axis=1, kind="stable")[:, :2]
    lead_jets = truth.jets.take(lead).scaled(np.take_along_axis(jet_resp, lead, axis=1))
    j1, j2 = lead_jets.column(0), lead_jets.column(1)
    jet1_eta, jet2_eta = j1.eta, j2.eta
    eff = np.where(truth.jet_is_b, BTAG_EFF_B, BTAG_EFF_LIGHT)
    tagged = accepted & (rng.random(accepted.shape) < eff)
    n_btag = np.minimum(tagged.sum(axis=1), 3)

    # Missing transverse momentum: neutrinos, minus what the detector mismeasured, plus the
    # resolution of the unclustered energy. Nothing else is derived from it.
    jet_loss, lep_loss = 1.0 - jet_resp, 1.0 - lep_resp
    soft = rng.normal(0.0, SOFT_MET_SIGMA, (n, 2))
    met_x = truth.nu_px + soft[:, 0] + np.sum(jet_loss * truth.jets.px, axis=1)
    met_y = truth.nu_py + soft[:, 1] + np.sum(jet_loss * truth.jets.py, axis=1)
    met_x += np.sum(lep_loss * truth.leptons.px, axis=1)
    met_y += np.sum(lep_loss * truth.leptons.py, axis=1)

    dphi = _delta_phi(lep_phi[:, 0], lep_phi[:, 1])
    features = {
        "lep1_pt": lep_pt[:, 0],
        "lep1_eta": lep_eta[:, 0],
        "lep2_pt": lep_pt[:, 1],
        "lep2_eta": lep_eta[:, 1],
        "lep_delta_phi": dphi,
        "delta_r_ll": np.hypot(lep_eta[:, 0] - lep_eta[:, 1], dphi),
        "m_ll": dilep.mass,
        "pt_ll": dilep.pt,
        "jet1_pt": j1.pt,
        "jet1_eta": jet1_eta,
        "jet2_pt": j2.pt,
        "jet2_eta": jet2_eta,
        "delta_eta_jj": np.abs(jet1_eta - jet2_eta),
        "m_jj": (j1 + j2).mass,
        "ht": np.sum(np.where(accepted, jet_pt, 0.0), axis=1),
        "n_jets": n_jets,
        "n_btag": n_btag,
        "met": np.hypot(met_x, met_y),
    }
    passed = (
        (lep_pt[:, 0] > LEP1_PT_MIN)
        & (lep_pt[:, 1] > LEP2_PT_MIN)
        & np.all(np.abs(lep_eta) < LEP_ETA_MAX, axis=1)
        & (features["m_ll"] > M_LL_MIN)
        & (n_jets >= 2)
    )
    return features, passed


def _select(proc: Process, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Generate batches of ``proc`` until ``n`` events pass the selection; keep the first ``n``."""
    model = _MODELS[proc.name]
    chunks: list[dict[str, np.ndarray]] = []
    n_pass, n_tried = 0, 0
    while n_pass < n:
        eff = max(n_pass / n_tried, 0.02) if n_tried else 0.3
        batch = int(min(max((n - n_pass) / eff * 1.1, 2_000), 400_000))
        features, passed = _reconstruct(model(batch, proc, rng), rng)
        chunks.append({k: v[passed] for k, v in features.items()})
        n_pass += int(passed.sum())
        n_tried += batch
    return {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}


def _isolation(n: int, rho: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lepton isolations: truncated-exponential marginals joined by a Gaussian copula.

    The pair (z1, z2) is standard bivariate normal with correlation ``rho``; each is mapped to
    [0, ISO_MAX) by u = Phi(z) and the inverse CDF of an exponential truncated at ISO_MAX. The
    marginals do not depend on ``rho``.
    """
    z1 = rng.standard_normal(n)
    z2 = rho * z1 + np.sqrt(1.0 - rho * rho) * rng.standard_normal(n)
    out = []
    for z, scale in zip((z1, z2), ISO_SCALES, strict=True):
        u = ndtr(z)
        out.append(-scale * np.log1p(-u * -np.expm1(-ISO_MAX / scale)))
    return out[0], out[1]


def copula_spearman(rho: float) -> float:
    """Spearman rank correlation of a Gaussian copula with correlation ``rho``: (6/pi) asin(rho/2).

    Reference: K. Pearson (1907); e.g. Kruskal, J. Am. Stat. Assoc. 53 (1958) 814.
    """
    return float(6.0 / np.pi * np.arcsin(rho / 2.0))


# ---------------------------------------------------------------------------------------------
# Samples.
# ---------------------------------------------------------------------------------------------


def _rng(seed: int, sample: str, code: int, stream: int) -> np.random.Generator:
    """An independent random stream per (seed, sample, process, purpose)."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, _SAMPLE_CODES[sample], code, stream])
    )


def _allocate(total: int, fractions: list[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``fractions`` (largest remainder)."""
    raw = np.asarray(fractions, dtype=float) * total / float(np.sum(fractions))
    counts = np.floor(raw).astype(np.int64)
    remainder = total - int(counts.sum())
    for i in np.argsort(-(raw - counts), kind="stable")[:remainder]:
        counts[i] += 1
    return [int(c) for c in counts]


def process_weights(n_sim: int, n_data: int) -> dict[str, float]:
    """Magnitude of the event weight of each process.

    ``|w| = Y / (N (1 - 2 f))``: the expected selected yield ``Y`` (cross-section x efficiency x
    luminosity, with the luminosity such that the total expected yield is ``n_data``) over the net
    number of simulated events ``N (1 - 2 f)``, ``f`` being the negative-weight fraction. So the
    expected sum of weights of each process is its expected yield.
    """
    counts = _allocate(n_sim, [p.sim_fraction for p in PROCESSES])
    return {
        p.name: p.yield_fraction * n_data / (n * (1.0 - 2.0 * p.negative_fraction))
        for p, n in zip(PROCESSES, counts, strict=True)
    }


def _round_mantissa(x: np.ndarray, bits: int = MANTISSA_BITS) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits (monotone; like NanoAOD's precision)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    drop = 23 - bits
    mask = np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    return ((u + np.uint32(1 << (drop - 1))) & mask).view(np.float32)


def _features_frame(cols: dict[str, np.ndarray]) -> dict[str, pl.Series]:
    out = {}
    for name in FEATURES:
        if name in INTEGER_FEATURES:
            out[name] = pl.Series(name, cols[name].astype(np.int32), dtype=pl.Int32)
        else:
            out[name] = pl.Series(name, _round_mantissa(cols[name]), dtype=pl.Float32)
    return out


def _generate(
    sample: str, counts: list[int], seed: int, rho: float, met_scale: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Events of every process for one sample, shuffled. Returns (features, process index)."""
    parts = []
    for proc, n in zip(PROCESSES, counts, strict=True):
        parts.append(_select(proc, n, _rng(seed, sample, proc.code, 0)))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    index = np.repeat(np.arange(len(PROCESSES)), counts)
    n = int(sum(counts))
    misc = _rng(seed, sample, 0, 1)
    cols["lep1_iso"], cols["lep2_iso"] = _isolation(n, rho, misc)
    cols["met"] = cols["met"] * met_scale
    perm = misc.permutation(n)
    return {k: v[perm] for k, v in cols.items()}, index[perm]


def _tracks(n: int, parity: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Signed transverse impact-parameter significances d0/σ(d0) of three tracks.

    Each is Student-t (:data:`TRK_D0SIG_DOF`), symmetric about zero, independent of each
    other and of every other feature (prompt tracks: the sign is resolution noise). With
    ``parity`` > 0, in that fraction of the events (chosen at random) the sign of the third
    is set to the sign of the product of the first two: a three-track correlation (a
    three-prong decay whose vertex the simulation misses). Given any *one* of the three, the
    other's sign is still a fair coin and its |value| unchanged, so every pair, and every
    single variable, has exactly the simulated distribution; only E[sign(d1 d2 d3)] =
    ``parity`` differs from 0. A 1D or 2D test cannot see it; a multivariate one can.
    """
    d = rng.standard_t(TRK_D0SIG_DOF, size=(3, n))
    planted = rng.random(n) < parity
    d[2] = np.where(planted, np.abs(d[2]) * np.sign(d[0] * d[1]), d[2])
    return {"trk1_d0sig": d[0], "trk2_d0sig": d[1], "trk3_d0sig": d[2]}


def make_samples(
    n_sim: int = DEFAULT_N_SIM,
    n_data: int = DEFAULT_N_DATA,
    seed: int = DEFAULT_SEED,
    planted: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate the simulation and the data samples.

    Parameters
    ----------
    n_sim
        Number of simulated events (split over the processes by ``Process.sim_fraction``).
    n_data
        Number of data events. The simulation is normalised so that its expected sum of weights
        is ``n_data``.
    seed
        Seed of every random stream; the same arguments give identical frames.
    planted
        When true, data carry the two planted mismodellings (``met`` scaled by
        :data:`MET_SCALE`; ``lep1_iso``-``lep2_iso`` copula correlation :data:`ISO_RHO_DATA`
        instead of :data:`ISO_RHO_SIM`). When false, data are drawn from the simulation model.

    Returns
    -------
    tuple of polars.DataFrame
        ``(sim, data)``. ``sim`` has the features, ``weight`` (Float64), ``process`` (String) and
        ``event`` (Int64). ``data`` has the features, ``run`` (Int32) and ``event`` (Int64).
    """
    if n_sim < len(PROCESSES) or n_data < 1:
        raise ValueError(f"need n_sim >= {len(PROCESSES)} and n_data >= 1")

    # Simulation.
    sim_counts = _allocate(n_sim, [p.sim_fraction for p in PROCESSES])
    cols, index = _generate("sim", sim_counts, seed, ISO_RHO_SIM, 1.0)
    sign_rng = _rng(seed, "sim", 0, 2)
    magnitude = np.array(list(process_weights(n_sim, n_data).values()))[index]
    negative_fraction = np.array([p.negative_fraction for p in PROCESSES])[index]
    sign = np.where(sign_rng.random(n_sim) < negative_fraction, -1.0, 1.0)
    names = np.array([p.name for p in PROCESSES], dtype=object)[index]
    sim = pl.DataFrame(
        [
            *_features_frame(cols).values(),
            pl.Series("weight", sign * magnitude, dtype=pl.Float64),
            pl.Series("process", names.tolist(), dtype=pl.String),
            pl.Series("event", np.arange(1, n_sim + 1, dtype=np.int64), dtype=pl.Int64),
        ]
    )

    # Data: the truth mixture, drawn with independent streams.
    mix_rng = _rng(seed, "data", 0, 2)
    data_counts = [
        int(c) for c in mix_rng.multinomial(n_data, [p.yield_fraction for p in PROCESSES])
    ]
    rho = ISO_RHO_DATA if planted else ISO_RHO_SIM
    scale = MET_SCALE if planted else 1.0
    cols, _ = _generate("data", data_counts, seed, rho, scale)
    lumi = np.array([f for _, f in RUNS])
    run_counts = [int(c) for c in mix_rng.multinomial(n_data, lumi / lumi.sum())]
    runs = np.repeat(np.array([r for r, _ in RUNS], dtype=np.int32), run_counts)
    events = np.cumsum(mix_rng.integers(1, 4_000, n_data, dtype=np.int64)) + 10_000_000
    data = pl.DataFrame(
        [
            *_features_frame(cols).values(),
            pl.Series("run", runs, dtype=pl.Int32),
            pl.Series("event", events, dtype=pl.Int64),
        ]
    )
    return sim, data


def make_multivariate_case(
    n_sim: int = DEFAULT_N_SIM,
    n_data: int = DEFAULT_N_DATA,
    seed: int = DEFAULT_SEED,
    planted: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The samples of :func:`make_samples` plus the three :data:`TRACK_FEATURES` columns.

    With ``planted``, the data carry :func:`make_samples`'s two planted effects and the
    three-track sign correlation (:func:`_tracks`, :data:`TRK_PARITY_FRACTION`); without,
    none. The other columns are exactly :func:`make_samples`'s (the tracks come from their
    own random streams), appended as ``Float32`` with 10 mantissa bits.
    """
    sim, data = make_samples(n_sim, n_data, seed, planted)
    frames = []
    for sample, frame, parity in (("sim", sim, 0.0),
                                  ("data", data, TRK_PARITY_FRACTION if planted else 0.0)):
        tracks = _tracks(frame.height, parity, _rng(seed, sample, 0, 3))
        frames.append(frame.with_columns(
            pl.Series(name, _round_mantissa(values), dtype=pl.Float32)
            for name, values in tracks.items()))
    return frames[0], frames[1]


def write_samples(sim: pl.DataFrame, data: pl.DataFrame, out: Path) -> tuple[Path, Path]:
    """Write ``sim.parquet`` and ``data.parquet`` into ``out``.

    Float features are byte-stream-split encoded, ``event`` delta encoded, the other columns
    dictionary encoded, all zstd compressed. The files hold several row groups (so readers that
    stream chunks are exercised) and carry no timestamps, so the same frames give bit-identical
    files.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in (("sim", sim), ("data", data)):
        encoding = {c: "BYTE_STREAM_SPLIT" for c in (*FEATURES, *TRACK_FEATURES)
                    if c not in INTEGER_FEATURES and c in frame.columns}
        encoding["event"] = "DELTA_BINARY_PACKED"
        path = out / f"{name}.parquet"
        pq.write_table(
            frame.to_arrow(),
            path,
            compression="zstd",
            compression_level=19,
            use_dictionary=[c for c in frame.columns if c not in encoding],
            column_encoding=encoding,
            row_group_size=50_000,
        )
        paths.append(path)
    return paths[0], paths[1]


def met_scale_variations(sim: pl.DataFrame, uncertainty: float = MET_SCALE_UNCERTAINTY,
                         ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The simulation with ``met`` scaled by 1 ± ``uncertainty`` (kept at the features'
    precision): the up and down files of a shape systematic. Nothing else changes, so the
    varied samples have the same events and weights."""
    met = sim["met"].to_numpy().astype(np.float64)
    return tuple(sim.with_columns(pl.Series("met", _round_mantissa(met * factor),
                                            dtype=pl.Float32))
                 for factor in (1.0 + uncertainty, 1.0 - uncertainty))


def write_met_variations(out: Path) -> tuple[Path, Path]:
    """Write the MET-scale variations of ``out/sim.parquet`` beside it (fast zstd level: they
    are made on demand, e.g. by ``make demo``, and not shipped)."""
    sim = pl.read_parquet(out / "sim.parquet")
    paths = []
    for frame, name in zip(met_scale_variations(sim), MET_VARIATION_FILES, strict=True):
        path = out / name
        pq.write_table(frame.to_arrow(), path, compression="zstd", compression_level=3,
                       row_group_size=50_000)
        paths.append(path)
    return paths[0], paths[1]


# ---------------------------------------------------------------------------------------------
# The sample network: a three-class classifier trained on the simulation.
# ---------------------------------------------------------------------------------------------

#: Inputs of the sample network, in its input order. ``met`` carries the planted 1D
#: mismodelling and discriminates ttbar (neutrinos) from Drell-Yan; ``lep1_iso`` and
#: ``lep2_iso`` carry the planted correlation mismodelling and discriminate nothing.
MODEL_INPUTS: tuple[str, ...] = (
    "lep1_pt",
    "lep2_pt",
    "m_ll",
    "pt_ll",
    "delta_r_ll",
    "lep1_iso",
    "lep2_iso",
    "jet1_pt",
    "jet2_pt",
    "m_jj",
    "ht",
    "n_jets",
    "n_btag",
    "met",
)
#: Output nodes of the sample network (``output_drell_yan``, ... in validator) and the
#: processes each one stands for.
MODEL_CLASSES: dict[str, tuple[str, ...]] = {
    "drell_yan": ("drell_yan",),
    "ttbar": ("ttbar",),
    "other": ("single_top", "diboson"),
}
#: File names of the exported network (TorchScript, ONNX).
MODEL_FILES: tuple[str, str] = ("classifier.pt", "classifier.onnx")
#: Seed of the initial weights and of the minibatch order.
MODEL_SEED = 20_181_023
MODEL_HIDDEN = 32  # two hidden layers of this width, tanh
MODEL_EPOCHS = 8
MODEL_BATCH = 1024
#: Adam learning rate per epoch (a step decay for a stable final epoch).
MODEL_LR: tuple[float, ...] = (3e-3, 3e-3, 3e-3, 3e-3, 3e-3, 1e-3, 1e-3, 3e-4)
_METADATA_KEY = "validator.json"  # validator.model.METADATA_KEY
_ONNX_OPSET = 17


def model_metadata() -> dict[str, object]:
    """The ``validator.json`` document stored in both model files."""
    return {"inputs": list(MODEL_INPUTS), "outputs": list(MODEL_CLASSES), "kind": "multiclass"}


def model_labels(sim: pl.DataFrame) -> np.ndarray:
    """The class index (position in :data:`MODEL_CLASSES`) of every simulated event."""
    index = {p: k for k, procs in enumerate(MODEL_CLASSES.values()) for p in procs}
    return sim["process"].replace_strict(index, return_dtype=pl.Int64).to_numpy()


def model_training_weights(sim: pl.DataFrame) -> np.ndarray:
    """Training weight of every simulated event: ``|weight|``, rescaled per class so that the
    three classes weigh the same, normalised to a mean of one.

    The sign of an NLO-style negative weight is independent of the kinematics, so ``|weight|``
    has the same distribution in expectation and keeps the loss positive; within ``other`` it
    weighs diboson against single top by their expected yields.
    """
    labels = model_labels(sim)
    absw = np.abs(sim["weight"].to_numpy())
    per_class = np.bincount(labels, weights=absw, minlength=len(MODEL_CLASSES))
    w = absw * (absw.sum() / (len(MODEL_CLASSES) * per_class))[labels]
    return w / w.mean()


def _classifier(mean: np.ndarray, std: np.ndarray, hidden: int):
    """The network: standardisation (buffers) -> tanh -> tanh -> softmax over the classes."""
    import torch

    class Standardize(torch.nn.Module):
        """``(x - mean) / std`` per input, the simulation's mean and standard deviation."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64))

        def forward(self, x):
            return (x - self.mean) / self.std

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.standardize = Standardize()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(len(mean), hidden),
                torch.nn.Tanh(),
                torch.nn.Linear(hidden, hidden),
                torch.nn.Tanh(),
                torch.nn.Linear(hidden, len(MODEL_CLASSES)),
            )

        def logits(self, x):
            return self.body(self.standardize(x))

        def forward(self, x):
            return torch.softmax(self.logits(x), dim=1)

    return Classifier().double()


def make_model(sim: pl.DataFrame, seed: int = MODEL_SEED, epochs: int = MODEL_EPOCHS):
    """Train the sample network on the simulation ``sim`` (a frame from :func:`make_samples`
    or ``sim.parquet``); returns a float32 ``torch.nn.Module`` in eval mode.

    Deterministic: the initial weights and the minibatch order come from ``seed``, training
    runs on one thread in float64 (so rounding differences between CPUs stay far below the
    float32 precision of the exported network), minibatches of :data:`MODEL_BATCH` events,
    Adam with the learning rates :data:`MODEL_LR`, a cross-entropy weighted by
    :func:`model_training_weights`. The standardisation (the simulation's unweighted mean and
    standard deviation per input) is part of the module, as buffers.
    """
    import torch

    x = sim.select(MODEL_INPUTS).to_numpy().astype(np.float64)
    labels = model_labels(sim)
    weights = model_training_weights(sim)
    mean, std = x.mean(axis=0), x.std(axis=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        net = _classifier(mean, std, MODEL_HIDDEN)
        xt = torch.from_numpy(x)
        yt = torch.tensor(labels)
        wt = torch.from_numpy(weights)
        order = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=MODEL_LR[0])
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = MODEL_LR[min(epoch, len(MODEL_LR) - 1)]
            perm = torch.randperm(len(xt), generator=order)
            for start in range(0, len(xt), MODEL_BATCH):
                idx = perm[start : start + MODEL_BATCH]
                ce = torch.nn.functional.cross_entropy(
                    net.logits(xt[idx]), yt[idx], reduction="none"
                )
                loss = (ce * wt[idx]).sum() / wt[idx].sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    net = net.float().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def write_model(net, out: Path) -> tuple[Path, Path]:
    """Write ``net`` as ``classifier.pt`` (TorchScript) and ``classifier.onnx`` into ``out``,
    each with the :func:`model_metadata` document (``validator.json``: TorchScript extra file,
    ONNX ``metadata_props``). The batch axis is dynamic."""
    import onnx
    import torch

    out.mkdir(parents=True, exist_ok=True)
    pt_path, onnx_path = out / MODEL_FILES[0], out / MODEL_FILES[1]
    meta = json.dumps(model_metadata())
    example = torch.zeros((2, len(MODEL_INPUTS)), dtype=torch.float32)
    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript and the exporter
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (example,), check_trace=False)
        torch.jit.save(traced, str(pt_path), _extra_files={_METADATA_KEY: meta})
        # The TorchScript-based exporter (dynamo=False) works offline without onnxscript.
        torch.onnx.export(
            net,
            (example,),
            str(onnx_path),
            dynamo=False,
            input_names=["inputs"],
            output_names=["probabilities"],
            dynamic_axes={"inputs": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=_ONNX_OPSET,
        )
    proto = onnx.load(str(onnx_path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = _METADATA_KEY, meta
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))
    return pt_path, onnx_path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--n-sim", type=int, default=DEFAULT_N_SIM)
    parser.add_argument("--n-data", type=int, default=DEFAULT_N_DATA)
    parser.add_argument(
        "--null",
        action="store_true",
        help="draw data from the simulation model (no planted effects)",
    )
    parser.add_argument(
        "--with-tracks",
        action="store_true",
        help="add the three-track columns and their multivariate planted effect "
        "(make_multivariate_case; not the shipped files: pass --out)",
    )
    parser.add_argument(
        "--met-variations",
        action="store_true",
        help="only write the MET-scale systematic's files (sim_met_up/down.parquet) from "
        "OUT/sim.parquet, for --syst-file met_scale=...",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--no-model",
        action="store_true",
        help="write only the samples, not the sample network",
    )
    which.add_argument(
        "--model-only",
        action="store_true",
        help="write only the sample network (trained on the generated simulation)",
    )
    args = parser.parse_args(argv)
    if args.met_variations:
        for path in write_met_variations(args.out):
            print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")
        return 0
    start = time.perf_counter()
    make = make_multivariate_case if args.with_tracks else make_samples
    sim, data = make(args.n_sim, args.n_data, args.seed, planted=not args.null)
    if not args.model_only:
        sim_path, data_path = write_samples(sim, data, args.out)
        elapsed = time.perf_counter() - start
        for path, frame in ((sim_path, sim), (data_path, data)):
            print(f"{path}: {frame.height} events, {path.stat().st_size / 1e6:.2f} MB")
        print(f"sum of simulation weights {sim['weight'].sum():.1f}, data events {data.height}")
        print(f"generated in {elapsed:.1f} s")
    if args.no_model:
        return 0
    try:
        import torch  # noqa: F401
    except ImportError:
        if args.model_only:
            raise
        print("torch is not installed: the sample network is not written")
        return 0
    start = time.perf_counter()
    net = make_model(sim)
    trained = time.perf_counter() - start
    paths = write_model(net, args.out)
    print(f"{', '.join(f'{p}: {p.stat().st_size / 1e3:.0f} kB' for p in paths)}")
    print(f"sample network trained in {trained:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
