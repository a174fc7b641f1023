"""Weighted EDF two-sample tests: Kolmogorov–Smirnov, Anderson–Darling, Wasserstein.

All tests compare a weighted simulation sample with (usually unweighted) data. The core of every
test works on *weighted values with ties*: the pooled sorted distinct values of both samples and,
per value, each sample's sum of weights. The array forms (``ks_weighted``, ``ad_weighted``,
``wasserstein_weighted``) reduce raw per-event arrays to that representation; the histogram forms
(``ks_hist``, ``ad_hist``, ``wasserstein_hist``) take it directly from the pipeline's fine
histograms, whose bins play the role of the distinct values (events in one bin are ties).
Given the same binned values, the two forms give the same result.

Weights
-------
The size of a weighted sample entering the asymptotic distributions is Kish's effective sample
size ``n_eff = (Σw)² / Σw²`` (Kish, *Survey Sampling*, Wiley 1965, §11.7); for unit weights it is
``n``. A sample must have ``Σw > 0``.

Negative weights make the weighted ECDF ``F(x) = Σ_{x_i ≤ x} w_i / Σw`` possibly non-monotone and
possibly outside ``[0, 1]``. The choices made here:

* KS and Wasserstein use the ECDF as it is (an unbiased estimate of the CDF), clipped to
  ``[0, 1]``.
* Anderson–Darling needs a non-negative measure (it weights by ``1/(H(1-H))`` and integrates
  ``dH``), so each sample's cumulative is first made monotone: the average of its smallest
  non-decreasing majorant (running maximum) and its largest non-decreasing minorant (reversed
  running minimum), clipped to ``[0, 1]`` with the last value set to 1. This leaves a monotone
  cumulative unchanged and is symmetric (no upward or downward bias).

Ties and binning
----------------
Binned values are heavily tied, which the textbook asymptotic p-values ignore. Measured on
weighted null replicas: the KS p-values are conservative (mean 0.53 instead of 0.50 with 1000
quantile bins, 0.64 with 20 bins, where the 5% false-positive rate drops to 1.4%); the AD ones
with the A∞² limit are anti-conservative for coarse bins (6.7% at 5% with 5 bins). Both tests
correct for it, so the binned p-values are close to uniform under H0 when no value holds a
large share of the events (see ``tests/test_calibration_edf_corr.py``):

* KS: a continuity correction of the statistic for the grid on which the ECDF difference is
  observed (``_tie_shift``); zero without ties.
* AD: the midrank statistic already accounts for ties in its mean; for few distinct values
  (≤ ``DISCRETE_MAX_VALUES`` holding ≥ 5 events each on average) its p-value comes from the
  exact discrete limit (``ad_discrete_sf``) instead of A∞², whose tail is then too light.

Limits of the asymptotic p-values (measured in ``tests/test_stats_edf_calibration.py``, 2000
data events, false-positive rate at 5% / 1%):

* Kish's global ``n_eff`` is wrong when the weights depend on the feature. Heavy weights in one
  tail (importance weights up to ×1000): KS 0.155 / 0.068, AD 0.345 / 0.188 (null p-values
  down to 5e-9). Heavy weights in the bulk (HT slices): conservative (AD 0.028 / 0.000).
  Negative weights whose fraction grows along the feature (NLO, 10% to 45%): AD 0.11 / 0.03.
* A spike (60% of the events at one value): KS 0.12 / 0.03 (the continuity correction assumes
  a fine grid). A 97/3 boolean: KS never rejects (mean p 0.70).

Toy p-values
------------
``ks_hist``/``ad_hist``/``edf_hist_tests`` with ``n_toys > 0`` replace the asymptotic p-value
by a parametric bootstrap on the fine histogram itself (Davison & Hinkley, *Bootstrap Methods
and their Application*, CUP 1997, §4.2), which handles both problems: the statistic of each
toy is computed on the same bins (ties, spikes and booleans need no correction), and with the
per-bin ``Σw²`` (``sim_sumw2_bins``) the simulation's fluctuations follow its weights along the
feature. Under H0 both histograms share a shape ``p``:

* ``p̂`` is the per-bin maximum-likelihood shape for Poisson data and a Gaussian simulation of
  variance ``Σw²_j`` (Gagunashvili, arXiv:physics/0605123, the estimate of ``chi2_uw``), which
  weights data and simulation by their information in each bin; a bin without simulated event
  counts as one event of the local weight ``u`` (``_local_weight``: ``Σw²/Σw`` of the nearest
  filled bins, the larger of the two sides).
* Data toys: ``Multinomial(N, p̂)`` (weighted data: ``N`` = its Kish size); after a test's
  first thousand toys drawn from exact tables where those are faster (``NullModel``).
* Simulation toys, independently per bin: ``W p̂_j + σ_j z`` with ``σ_j² = Σw²_j`` (the bin's own
  ``Σw²``; the variance estimate of a weighted sum, Kish 1965; Bohm & Zech, NIM A 748 (2014) 1)
  and, for a bin without simulated event, ``σ_j² = W p̂_j u`` (Poisson events of the local
  weight). Without ``sim_sumw2_bins``: ``σ_j² = W p̂_j Σw²/Σw`` (weights independent of the
  feature; the global Kish model of the asymptotic p-value).
* ``p = (1 + #{T* ≥ T})/(1 + n)``, adaptive in the number of toys (the one engine,
  :func:`validator.stats.toys.run_toy_columns`). When
  no toy reaches ``T``: the statistic's limit law with its scale fitted to the toys
  (:func:`limit_law_tail`; ``details["pvalue_from"] = "limit_law_tail"``), an estimate that
  says how strong a strong effect is (a x1.04 scale of 100k events: KS p 9.8e-8 where
  scipy's ``ks_2samp`` gives 9.3e-8 on the same events), or the analytic asymptotic
  p-value where that is larger (a discrete statistic); else an upper bound
  (``details["pvalue_is_bound"]``): ``1/(1 + n)``, or the smaller bound of Gaussian
  concentration (``GaussianBound``), conservative by a factor 30 to 1000 (measured). Every
  decision at a threshold is the toys' (the tail is used only below ``1/(1 + n)``).

Why this model. Alternatives measured on the same null replicas, each against the exact
("oracle") null distribution of the statistic simulated from the generator: scaled-Poisson
bins with the bin's own effective weight ``Σw²/Σw`` (the law of ``chi2_uw``'s toys) are
anti-conservative with heavy weights in a tail (AD 0.107 at 5%, oracle 0.047) and with NLO
weights; a variance ``W p̂_j u`` with ``u`` smoothed over neighbouring bins is worse (0.18–0.28);
the bin's own ``Σw²`` with a Gaussian law matches the oracle within the replicas' precision in
every scenario except two where it is conservative: heavy weights in a tail (KS) and
HT-sliced samples tested on the slicing variable, whose per-slice event counts are fixed while
the toys let every bin fluctuate (this information is not in the histograms). Where the
simulation is sparse next to the data (bins without simulated event beside bins of one heavy
event) the variance is over-estimated, on the safe side: with 20000 data events in 1000 bins,
FPR at 5% 0.020 (KS and AD) for heavy weights in a tail and 0.025 for the spike (asymptotic:
0.19 / 0.33 and 0.17 / 0.09). Restricting the variance to ``W p̂_j u_j`` with the bin's own
``u_j`` (Gaussian) removes that but is anti-conservative in the heavy tail (AD 0.110, oracle
0.047): the heaviest weights are those the simulation most often lacks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from validator.stats import compiled
from validator.stats.edf_kernel import edf_rows
from validator.stats.multinomial_toys import MultinomialToys, tables_pay
from validator.stats.poisson_toys import TABLE_MIN_TOYS
from validator.stats.result import GofResult
from validator.stats.toys import ToyOptions, check_toy_options, run_toy_columns

__all__ = [
    "ad_hist",
    "ad_inf_cdf",
    "ad_inf_sf",
    "ad_weighted",
    "edf_hist_tests",
    "ks_hist",
    "ks_weighted",
    "wasserstein_hist",
    "wasserstein_weighted",
]

#: Below this effective sample size (of either sample) the asymptotic p-values are flagged
#: ``reliable=False``.
MIN_NEFF = 20.0

# Standard deviation of the limiting two-sample A² (= one-sample A∞²):
# Var(A∞²) = 2(π² − 9)/3 (Anderson & Darling 1952, Ann. Math. Stat. 23, 193).
_SIGMA_INF = math.sqrt(2.0 * (math.pi**2 - 9.0) / 3.0)

# −ζ(1/2)/√(2π): the Broadie–Glasserman–Kou continuity-correction constant.
_BETA_BGK = 0.5825971579390107


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _kish(sumw: float, sumw2: float) -> float:
    """Kish effective sample size ``(Σw)²/Σw²``."""
    if not (sumw2 > 0.0) or not np.isfinite(sumw2):
        raise ValueError(f"sum of squared weights must be positive and finite, got {sumw2!r}")
    return float(sumw) ** 2 / float(sumw2)


def _check_array(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return a


def _sample(name: str, x, w) -> tuple[np.ndarray, np.ndarray]:
    x = _check_array(f"x_{name}", x)
    if w is None:
        w = np.ones_like(x)
    else:
        w = _check_array(f"w_{name}", w)
        if w.shape != x.shape:
            raise ValueError(f"x_{name} and w_{name} differ in length ({x.size} vs {w.size})")
    if x.size == 0:
        raise ValueError(f"the {name} sample is empty")
    if not np.sum(w) > 0.0:
        raise ValueError(f"the {name} sample has a non-positive sum of weights")
    return x, w


def _pool(x_sim, w_sim, x_data, w_data):
    """Reduce two weighted samples to per-distinct-value weight sums.

    Returns ``(values, sim_sumw, data_sumw, neff_sim, neff_data)``, ``values`` sorted, distinct.
    """
    x_sim, w_sim = _sample("sim", x_sim, w_sim)
    x_data, w_data = _sample("data", x_data, w_data)
    values, inverse = np.unique(np.concatenate([x_sim, x_data]), return_inverse=True)
    m = values.size
    s = np.bincount(inverse[: x_sim.size], weights=w_sim, minlength=m)
    d = np.bincount(inverse[x_sim.size :], weights=w_data, minlength=m)
    neff_s = _kish(np.sum(w_sim), np.sum(w_sim**2))
    neff_d = _kish(np.sum(w_data), np.sum(w_data**2))
    return values, s, d, neff_s, neff_d


@dataclasses.dataclass(frozen=True)
class HistInputs:
    d: np.ndarray  # data per bin
    s: np.ndarray  # simulation Σw per bin
    v: np.ndarray | None  # simulation Σw² per bin, if given
    neff_s: float
    neff_d: float
    sim_sumw2_total: float
    data_unit: bool  # unit-weight data (Σw² = Σw)


def hist_inputs(data_counts, sim_sumw, sim_sumw2_total, data_sumw2_total, sim_sumw2_bins=None):
    d = _check_array("data_counts", data_counts)
    s = _check_array("sim_sumw", sim_sumw)
    if d.shape != s.shape:
        raise ValueError(f"data_counts and sim_sumw differ in length ({d.size} vs {s.size})")
    v = None
    if sim_sumw2_bins is not None:
        v = _check_array("sim_sumw2_bins", sim_sumw2_bins)
        if v.shape != s.shape:
            raise ValueError(f"sim_sumw2_bins and sim_sumw differ in length ({v.size} vs {s.size})")
        if np.any(v < 0.0):
            raise ValueError("sim_sumw2_bins has negative entries")
        if sim_sumw2_total is None:
            sim_sumw2_total = float(np.sum(v))
    if sim_sumw2_total is None:
        raise ValueError("give sim_sumw2_total or sim_sumw2_bins")
    if not np.sum(s) > 0.0:
        raise ValueError("the simulation histogram has a non-positive sum of weights")
    if not np.sum(d) > 0.0:
        raise ValueError("the data histogram is empty")
    neff_s = _kish(np.sum(s), sim_sumw2_total)
    # Unit-weight data: Σw² = Σw.
    neff_d = _kish(np.sum(d), np.sum(d) if data_sumw2_total is None else data_sumw2_total)
    return HistInputs(d, s, v, neff_s, neff_d, float(sim_sumw2_total), data_sumw2_total is None)


def _cdf_clipped(c: np.ndarray) -> np.ndarray:
    """Weighted ECDF at each distinct value (right-continuous), as is, clipped to [0, 1]."""
    return np.clip(np.cumsum(c) / np.sum(c), 0.0, 1.0)


def _monotone_fractions(c: np.ndarray) -> np.ndarray:
    """Per-value probability masses from weight sums, made non-negative (see module notes)."""
    total = np.sum(c)
    if np.all(c >= 0.0):
        return c / total
    cdf = np.cumsum(c) / total
    upper = np.maximum.accumulate(cdf)
    lower = np.minimum.accumulate(cdf[::-1])[::-1]
    mono = np.clip(0.5 * (upper + lower), 0.0, 1.0)
    mono[-1] = 1.0
    return np.diff(mono, prepend=0.0)


# --------------------------------------------------------------------------------------------
# Kolmogorov–Smirnov
# --------------------------------------------------------------------------------------------


def _tie_shift(s: np.ndarray, d: np.ndarray, neff_s: float, neff_d: float) -> float:
    """Continuity correction for ties (binned values) of the KS statistic, in units of √n·D.

    With ties the difference of the ECDFs is only observed on a grid, whose mesh in the
    Brownian-bridge time (the pooled CDF) is the pooled mass ``π_j`` of each distinct value.
    The sup of a Brownian motion over a grid of mesh δ exceeds ``b`` about as often as the
    continuous sup exceeds ``b + β√δ``, ``β = −ζ(1/2)/√(2π) ≈ 0.5826`` (Broadie, Glasserman & Kou,
    Math. Finance 7 (1997) 325, after Siegmund 1985). Untied samples already are such a grid,
    of mesh ``1/N`` (``N = n_eff,sim + n_eff,data``), which the reference distribution accounts
    for, so the shift is ``β (√δ − √(1/N))`` with the mass-weighted mesh ``δ = Σ π_j²``; it
    vanishes without ties (``π_j = 1/N``, so unit weights reproduce scipy) and removes the
    conservativeness of the binned test (measured for 5 to 4000 quantile bins; see the tests).
    """
    n_total = neff_s + neff_d
    pooled = (neff_s * s / np.sum(s) + neff_d * d / np.sum(d)) / n_total
    delta = float(np.sum(pooled**2))
    excess = math.sqrt(delta) - math.sqrt(1.0 / n_total)
    if excess <= 1e-9 * math.sqrt(1.0 / n_total):
        return 0.0
    return _BETA_BGK * excess


#: Above this n, the finite-n Kolmogorov law (scipy.stats.kstwo) is replaced by the limit law
#: with Stephens' correction: scipy evaluates the tail of kstwo for 1e5 < n < 1e6 by an exact
#: Smirnov sum that takes half a second per call, while the corrected limit law agrees with it
#: to 3e-4 (relative) at p >= 0.01 (n = 3.6e5), and further out is smaller by 3e-3 at 1e-6 and
#: 1e-2 at 1e-20: nothing a decision could notice.
KS_LIMIT_LAW_MIN_N = 100_000


def kolmogorov_sf(d: float, n: int) -> float:
    r"""P(D_n >= d) of the two-sided one-sample Kolmogorov statistic: scipy's ``kstwo`` up to
    :data:`KS_LIMIT_LAW_MIN_N`, beyond it the limit law at :math:`d(\sqrt n + 0.12 +
    0.11/\sqrt n)` (M. A. Stephens, J. R. Statist. Soc. B 32 (1970) 115)."""
    if n <= KS_LIMIT_LAW_MIN_N:
        return float(stats.kstwo.sf(d, n))
    root = math.sqrt(n)
    return float(stats.kstwobign.sf(d * (root + 0.12 + 0.11 / root)))


def _ks_core(s: np.ndarray, d: np.ndarray, neff_s: float, neff_d: float) -> GofResult:
    """KS test on per-value weight sums ``s`` (simulation) and ``d`` (data), sorted by value."""
    diff = _cdf_clipped(s) - _cdf_clipped(d)
    d_plus = float(max(np.max(diff), 0.0))
    d_minus = float(max(-np.min(diff), 0.0))
    stat = max(d_plus, d_minus)
    en = neff_s * neff_d / (neff_s + neff_d)
    shift = _tie_shift(s, d, neff_s, neff_d)
    # As scipy.stats.ks_2samp(method="asymp"): the one-sample finite-n Kolmogorov distribution
    # (scipy.stats.kstwo, Simard & L'Ecuyer 2011) at the rounded n1 n2/(n1 + n2); for ties the
    # statistic is first shifted by the continuity correction.
    n_round = max(round(en), 1)
    pvalue = float(np.clip(kolmogorov_sf(stat + shift / math.sqrt(en), n_round), 0.0, 1.0))
    return GofResult(
        method="ks",
        statistic=stat,
        pvalue=pvalue,
        effect_size=stat,
        effect_name="ks_distance",
        pvalue_method="asymptotic",
        reliable=bool(min(neff_s, neff_d) >= MIN_NEFF),
        details={
            "n_eff_sim": float(neff_s),
            "n_eff_data": float(neff_d),
            "n_eff": float(en),
            "d_plus": d_plus,
            "d_minus": d_minus,
            "tie_shift": float(shift),
            "n_values": int(s.size),
        },
    )


def ks_weighted(x_data: ArrayLike, x_sim: ArrayLike, w_sim: ArrayLike | None, *,
                w_data: ArrayLike | None = None) -> GofResult:
    """Two-sample Kolmogorov–Smirnov test between weighted simulation and data.

    Statistic ``D = sup_x |F_sim(x) − F_data(x)|`` over the pooled support, with the weighted
    ECDFs ``F(x) = Σ_{x_i ≤ x} w_i / Σw`` (clipped to [0, 1]; see the module notes on negative
    weights). The p-value is the asymptotic one of Kolmogorov (1933) and Smirnov (1948) with
    ``n = n1 n2 / (n1 + n2)``, each ``n_i`` replaced by Kish's effective size ``(Σw)²/Σw²``
    (the substitution of ROOT's ``TH1::KolmogorovTest`` for weighted histograms), evaluated as
    ``scipy.stats.ks_2samp(method="asymp")`` does: ``scipy.stats.kstwo.sf(D, round(n))``
    (above n = 1e5 with the corrected limit law instead, :data:`KS_LIMIT_LAW_MIN_N`).
    For unit weights and no ties this reproduces ``ks_2samp(x_data, x_sim, method="asymp")``
    (statistic and p-value). With ties (e.g. values that are bin positions) the p-value includes
    the continuity correction of ``_tie_shift`` (scipy's does not, and is conservative then);
    the statistic is unchanged.

    Effect size: ``D`` itself (``effect_name="ks_distance"``).

    Parameters
    ----------
    x_sim, w_sim : simulated values and their weights (a few may be negative; ``Σw > 0``).
    x_data, w_data : data values and weights (``None``: unit weights).
    """
    _, s, d, neff_s, neff_d = _pool(x_sim, w_sim, x_data, w_data)
    return _ks_core(s, d, neff_s, neff_d)


def ks_hist(
    data_counts: ArrayLike,
    sim_sumw: ArrayLike,
    sim_sumw2_total: float | None = None,
    data_sumw2_total: float | None = None,
    *,
    sim_sumw2_bins: ArrayLike | None = None,
    n_toys: int = 0,
    rng: np.random.Generator | int | None = None,
    max_toys: int | None = None,
    thresholds: Sequence[float] = (),
    coarse_above: float | None = None,
) -> GofResult:
    """Kolmogorov–Smirnov test on a fine histogram (the ``ks_weighted`` test on binned values).

    Parameters
    ----------
    data_counts : per-bin data counts (or sums of weights), bins in increasing order of value,
        under/overflow folded into the edge bins.
    sim_sumw : per-bin simulation sums of weights, same bins.
    sim_sumw2_total : total ``Σw²`` of the simulation (for its Kish effective size); ``None``:
        the sum of ``sim_sumw2_bins``.
    data_sumw2_total : total ``Σw²`` of the data; ``None`` for unit-weight data (``Σw² = Σw``).
    sim_sumw2_bins : per-bin ``Σw²`` of the simulation, same bins (keyword only). Used by the
        toys, whose simulated histograms then fluctuate as the weights do along the feature
        (module notes, "Toy p-values"); without it the toys assume weights that do not depend
        on the feature (global Kish size). The asymptotic p-value (``n_toys=0``) does not use
        it: it stays the global-Kish one, whatever the weights.
    n_toys : ``0`` (default): the asymptotic p-value, unchanged. ``> 0``: the p-value from at
        least this many pseudo-experiments under H0 (``pvalue_method="toys"``, ``n_toys`` the
        number used, ``details["pvalue_asymptotic"]`` the asymptotic one).
    rng : random generator or seed of the toys.
    max_toys : adaptive toys: add toys in batches (doubling the total) while a threshold lies
        inside the 99.9% Clopper–Pearson interval of ``#{T* ≥ T}/n``, or no toy reached the
        observation and the bound is above the smallest threshold; stop at ``max_toys``
        (default ``n_toys``: no adaptation).
    thresholds : significance levels at which the p-value will be read (e.g.
        ``(0.05, 0.01, 1e-4)``); they only steer the number of toys.
    coarse_above : p-values above this level (and above every threshold) may be coarse: the
        toys stop at the h-th toy reaching the observation (Besag & Clifford's sequential
        p-value, ``validator.stats.toys.sequential_stop``); ``details["toys_stop"]`` is then
        ``"sequential"``. Decisions at that level and below are unchanged.

    With toys, ``details`` also holds ``n_toys_ge`` (toys with ``T* ≥ T``), ``pvalue_ci``
    (Clopper–Pearson 99.9% interval of the tail probability) and ``pvalue_is_bound``: when no
    toy reaches ``T``, ``pvalue`` is an upper bound, ``1/(1 + n)`` or a smaller Gaussian-
    concentration bound (``details["pvalue_bound_from"]``: ``"toys"`` or
    ``"gaussian_concentration"``). ``GofResult.pvalue_is_bound`` is set too.

    Each bin is one tied value, so the result equals ``ks_weighted`` given every event's bin
    position as its value; the binning correction of ``_tie_shift`` keeps the asymptotic
    p-value calibrated from a handful of bins to thousands when the weights do not depend on
    the feature and no single value holds a large fraction of the events. Otherwise (weights
    that vary along the feature, spikes, a few distinct values) use the toys with
    ``sim_sumw2_bins``. The statistic does not depend on the p-value method. To run KS and AD
    on the same toys (half the cost), use ``edf_hist_tests``.
    """
    inputs = hist_inputs(data_counts, sim_sumw, sim_sumw2_total, data_sumw2_total,
                          sim_sumw2_bins)
    result = _ks_core(inputs.s, inputs.d, inputs.neff_s, inputs.neff_d)
    check_toy_options(n_toys, max_toys, thresholds)
    if n_toys == 0:
        return result
    return _toy_results({"ks": result}, inputs, n_toys, rng, max_toys, thresholds,
                        coarse_above)["ks"]


# --------------------------------------------------------------------------------------------
# Asymptotic Anderson–Darling distribution
# --------------------------------------------------------------------------------------------


def _adf(z: float, j: int) -> float:
    """Inner series of ``ADinf`` (Marsaglia & Marsaglia 2004, function ``ADf``)."""
    t = (4 * j + 1) ** 2 * 1.23370055013617 / z  # (4j+1)² π²/(8z)
    if t > 150.0:
        return 0.0
    a = 2.22144146907918 * math.exp(-t) / math.sqrt(t)  # π/√2
    b = 3.93740248643060 * math.erfc(math.sqrt(t))  # π^{3/2}/√2 · 2Φ̄(√(2t))
    r = z * 0.125
    f = a + b * r
    for i in range(1, 200):
        c = ((i - 0.5 - t) * b + t * a) / i
        a, b = b, c
        r *= z / (8 * i + 8)
        if abs(r) < 1e-40 or abs(c) < 1e-40:
            return f
        fnew = f + c * r
        if fnew == f:
            return f
        f = fnew
    return f


def ad_inf_cdf(z: float) -> float:
    """CDF of the limiting Anderson–Darling statistic, ``P(A∞² ≤ z)``.

    Direct port of ``ADinf`` from G. Marsaglia & J. Marsaglia, "Evaluating the Anderson–Darling
    distribution", J. Stat. Software 9(2) (2004), which sums the series representation of
    Anderson & Darling (1954, JASA 49, 765) to near double precision (checked against an
    independent Imhof (1961) inversion of the characteristic function of ``Σ Z_j²/(j(j+1))`` to
    ~1e-11). The limit of the two-sample (k = 2) statistic of Scholz & Stephens (1987) is the
    same ``A∞²``.
    """
    z = float(z)
    if not z >= 0.01:  # ADinf(0.01) ≈ 5e-53; also catches NaN -> 0
        return 0.0 if not math.isnan(z) else math.nan
    r = 1.0 / z
    ad = r * _adf(z, 0)
    for j in range(1, 100):
        r *= (0.5 - j) / j
        adnew = ad + (4 * j + 1) * r * _adf(z, j)
        if adnew == ad:
            return ad
        ad = adnew
    return ad


# Asymptotic expansion of the upper tail, P(A∞² > z) ~ √(3/(πz)) e^{−z} Σ_k c_k z^{−k}.
# Derivation: A∞² = Σ_{j≥1} Z_j²/(j(j+1)) = Z_1²/2 + R with R independent of Z_1, so
# P(A∞² > z) = E[erfc(√(z − R))] + O(e^{−3z}). Expanding erfc(√s) ~ e^{−s}/√(πs)·Σ (−1)^k
# (2k−1)!!/(2s)^k and (z − R)^{−1/2−k} in powers of R/z gives moments E[R^m e^R]; their
# generating function is M_R(t) = Π_{j≥2} (1 − 2t/(j(j+1)))^{−1/2}, with M_R(1) = √3
# (telescoping product) and cumulants of the tilted law κ_n = ½(n−1)! Σ_{j≥2} (2/((j−1)(j+2)))^n
# (κ_1 = 11/18, so c_1 = −7/36). Coefficients computed once from these sums; the expansion
# agrees with 1 − ad_inf_cdf to 3e-6 relative at z = 15 and better beyond (tests check it).
_TAIL_COEF = (
    1.0,
    -0.19444444444444442,
    0.49059086299322296,
    -1.0230288040753877,
    3.8781041562200613,
    -16.872203200197035,
    94.21696767382046,
)
_TAIL_SWITCH = 18.0


def ad_inf_sf_asymptotic(z: float) -> float:
    series = sum(c * z ** (-k) for k, c in enumerate(_TAIL_COEF))
    return math.sqrt(3.0 / (math.pi * z)) * math.exp(-z) * series


def ad_inf_sf(z: float) -> float:
    """Upper tail ``P(A∞² > z)`` of the limiting Anderson–Darling distribution.

    ``1 − ad_inf_cdf(z)`` (Marsaglia & Marsaglia 2004) for ``z < 18``; beyond, where that
    difference loses relative precision (p < 3e-9), the asymptotic tail expansion documented in
    this module's source (relative accuracy better than ~1e-6 there).
    """
    z = float(z)
    if math.isnan(z):
        return math.nan
    if z < _TAIL_SWITCH:
        return min(max(1.0 - ad_inf_cdf(z), 0.0), 1.0)
    return ad_inf_sf_asymptotic(z)


# --------------------------------------------------------------------------------------------
# Anderson–Darling
# --------------------------------------------------------------------------------------------


def ad_sigma(n_i: np.ndarray) -> float:
    """σ_N of A²_kN under H0 (exact variance of Scholz & Stephens 1987), as scipy computes it.

    ``h = Σ_{i=1}^{N−1} 1/i`` and ``g = Σ_{i=1}^{N−2} Σ_{j=i+1}^{N−1} 1/((N−i) j)`` are summed as
    scipy does, with ``N`` (a sum of effective sizes) rounded to an integer. Beyond N = 10⁶ the
    limit ``σ² = (4g − 6)(k − 1) + (10 − 6g) H`` with ``g = π²/6`` is used (the neglected terms
    are O(log N / N); the two agree to 2e-6 at the switch).
    """
    k = n_i.size
    n = float(np.sum(n_i))
    big_h = float(np.sum(1.0 / n_i))
    n_int = round(n)
    if n_int > 1_000_000:
        g = math.pi**2 / 6.0
        sigmasq = (4 * g - 6) * (k - 1) + (10 - 6 * g) * big_h
        return math.sqrt(sigmasq)
    hs_cs = np.cumsum(1.0 / np.arange(n_int - 1, 1, -1))
    h = float(hs_cs[-1] + 1.0)
    g = float(np.sum(hs_cs / np.arange(2, n_int)))
    a = (4 * g - 6) * (k - 1) + (10 - 6 * g) * big_h
    b = (2 * g - 4) * k**2 + 8 * h * k + (2 * g - 14 * h - 4) * big_h - 8 * h + 4 * g - 6
    c = (6 * h + 2 * g - 2) * k**2 + (4 * h - 4 * g + 6) * k + (2 * h - 6) * big_h + 4 * h
    d = (2 * h + 6) * k**2 - 4 * h * k
    sigmasq = (a * n**3 + b * n**2 + c * n + d) / ((n - 1.0) * (n - 2.0) * (n - 3.0))
    return math.sqrt(sigmasq) if sigmasq > 0 else math.nan


#: At most this many distinct values (bins) with ≥ 5 pooled events per value on average use the
#: discrete limit of the Anderson–Darling statistic instead of A∞².
DISCRETE_MAX_VALUES = 100
_IMHOF_KEEP = 40


def _imhof_sf(x: float, lam: np.ndarray) -> float:
    """``P(Σ λ_i χ²_1,i > x)`` (λ_i > 0) by Imhof's inversion (Biometrika 48 (1961) 419).

    ``P = 1/2 + (1/π) ∫_0^∞ sin θ(u) / (u ρ(u)) du`` with ``θ = ½Σ arctan(λ_i u) − ½xu`` and
    ``ρ = Π (1 + λ_i² u²)^{1/4}``. Eigenvalues below the largest ``_IMHOF_KEEP`` are replaced by
    their mean (they add ``Σλ`` to the location and a negligible variance). The oscillatory tail
    of the integral is done with QUADPACK's Fourier-integral rule (``quad(weight=...)``).
    """
    from scipy import integrate

    lam = np.sort(lam[lam > 0])[::-1]
    if lam.size > _IMHOF_KEEP:
        x = x - float(np.sum(lam[_IMHOF_KEEP:]))
        lam = lam[:_IMHOF_KEEP]
    if x <= 0:
        return 1.0
    if lam.size == 1:
        return float(stats.chi2.sf(x / lam[0], 1))

    def half_phase(u):
        return 0.5 * np.sum(np.arctan(lam * u))

    def inv_u_rho(u):
        return 1.0 / (u * math.exp(0.25 * np.sum(np.log1p((lam * u) ** 2))))

    def full(u):
        return math.sin(half_phase(u) - 0.5 * x * u) * inv_u_rho(u)

    omega = 0.5 * x
    a = 2.0 * math.pi / omega  # one period of the oscillation on [0, a], Fourier rule beyond
    v0, _ = integrate.quad(full, 0.0, a, limit=200, epsabs=1e-12)
    v1, _ = integrate.quad(
        lambda u: math.sin(half_phase(u)) * inv_u_rho(u), a, np.inf, weight="cos", wvar=omega
    )
    v2, _ = integrate.quad(
        lambda u: math.cos(half_phase(u)) * inv_u_rho(u), a, np.inf, weight="sin", wvar=omega
    )
    return float(min(max(0.5 + (v0 + v1 - v2) / math.pi, 0.0), 1.0))


def ad_discrete_sf(a2: float, pooled: np.ndarray) -> float:
    """Upper tail of the limit of the midrank A² (k = 2) for a parent with masses ``pooled``.

    With ties at m distinct values of pooled probabilities π_j, √n_h(F_sim − F_data) at the
    values tends to a Brownian bridge B at t_j = Σ_{i≤j} π_i, so the midrank statistic tends to
    the quadratic form ``Σ_j c_j X_j²`` with ``X_j = (B(t_{j−1}) + B(t_j))/2`` and
    ``c_j = π_j/(τ_j(1 − τ_j) − π_j/4)``, τ_j = (t_{j−1} + t_j)/2 (derived here from eq. (7) of
    Scholz & Stephens 1987; ``E = 1`` exactly, since ``Var X_j`` equals the denominator, as
    Scholz & Stephens note for the midrank statistic under ties). Its law is ``Σ λ_i χ²_1``
    with λ the eigenvalues of ``C^{1/2} Cov(X) C^{1/2}``, evaluated with Imhof's method. For
    fine grids it tends to A∞² (λ_i → 1/(i(i+1))).
    """
    t = np.concatenate([[0.0], np.cumsum(pooled)])
    t[-1] = 1.0
    g = np.minimum.outer(t, t) - np.outer(t, t)
    cov = 0.25 * (g[:-1, :-1] + g[1:, 1:] + g[:-1, 1:] + g[1:, :-1])
    tau = 0.5 * (t[:-1] + t[1:])
    den = tau * (1.0 - tau) - 0.25 * pooled
    c = np.where(den > 0, pooled / np.where(den > 0, den, 1.0), 0.0)
    sc = np.sqrt(c)
    lam = np.linalg.eigvalsh(sc[:, None] * cov * sc[None, :])
    if not np.any(lam > 0):
        return 1.0
    return _imhof_sf(a2, lam)


def _ad_core(s: np.ndarray, d: np.ndarray, neff_s: float, neff_d: float) -> GofResult:
    """Weighted midrank k = 2 Anderson–Darling test on per-value weight sums (sorted by value)."""
    n_i = np.array([neff_s, neff_d])
    # f_ij = n_eff_i · w_ij / Σw_i (non-negative after the monotone repair); unit weights: counts.
    f = np.vstack([neff_s * _monotone_fractions(s), neff_d * _monotone_fractions(d)])
    n_total = float(np.sum(n_i))
    lj = f.sum(axis=0)
    # Pooled weight strictly before (L) and strictly after (R) each value; R from a suffix sum
    # so that the upper tail does not suffer cancellation.
    left = np.cumsum(lj) - lj
    right = np.cumsum(lj[::-1])[::-1] - lj
    bj = left + 0.5 * lj
    # Scholz–Stephens denominator B_j(N − B_j) − N l_j/4 = L_j R_j + l_j (L_j + R_j)/4.
    denom = left * right + 0.25 * lj * (left + right)
    ok = (lj > 0) & (denom > 0)
    mij = np.cumsum(f, axis=1) - 0.5 * f  # M_ij: sample i's weight before value j plus half at j
    num = (n_total * mij[:, ok] - bj[ok] * n_i[:, None]) ** 2
    inner = (lj[ok] / n_total) * num / denom[ok]
    a2 = float((n_total - 1.0) / n_total * np.sum(inner.sum(axis=1) / n_i))

    n_h = neff_s * neff_d / n_total
    details = {
        "A2": a2,
        "n_eff_sim": float(neff_s),
        "n_eff_data": float(neff_d),
        "n_values": int(s.size),
    }
    if not np.any(ok):
        # A single distinct value: no information.
        return GofResult(
            method="ad",
            statistic=math.nan,
            pvalue=1.0,
            effect_size=0.0,
            effect_name="ad_distance",
            reliable=False,
            details=details,
        )
    sigma = ad_sigma(n_i) if n_total > 3.5 else math.nan
    t_stat = (a2 - 1.0) / sigma if np.isfinite(sigma) else math.nan
    pooled = lj[lj > 0] / np.sum(lj)
    coarse = pooled.size <= DISCRETE_MAX_VALUES and n_total * float(np.sum(pooled**2)) >= 5.0
    if coarse:
        # Few distinct values holding many events each: the limit is the discrete one.
        pvalue = ad_discrete_sf(a2, pooled)
        details["limit"] = "discrete"
    else:
        # Variance-matched asymptotic p-value: map T back to the scale of A∞² (mean 1,
        # s.d. _SIGMA_INF), as Scholz & Stephens' standardisation implies; → A² as N → ∞.
        a2_equiv = 1.0 + t_stat * _SIGMA_INF if np.isfinite(t_stat) else a2
        pvalue = ad_inf_sf(a2_equiv)
        details["limit"] = "continuous"
        details["A2_equiv"] = float(a2_equiv)
    details["sigma_N"] = float(sigma)
    return GofResult(
        method="ad",
        statistic=float(t_stat),
        pvalue=float(pvalue),
        effect_size=a2 / n_h,
        effect_name="ad_distance",
        pvalue_method="asymptotic",
        reliable=bool(min(neff_s, neff_d) >= MIN_NEFF and np.isfinite(sigma)),
        details=details,
    )


def ad_weighted(x_data: ArrayLike, x_sim: ArrayLike, w_sim: ArrayLike | None, *,
                w_data: ArrayLike | None = None) -> GofResult:
    """Two-sample Anderson–Darling test between weighted simulation and data.

    Statistic: the k-sample Anderson–Darling statistic ``A²_akN`` for ties (midrank version) of
    F. W. Scholz & M. A. Stephens, "K-Sample Anderson–Darling Tests", JASA 82 (1987) 918, eq. (7),
    with k = 2, generalised to weights by replacing each sample's count of a value ``f_ij`` by
    ``n_eff_i · w_ij/Σw_i`` and its size ``n_i`` by Kish's ``n_eff_i = (Σw_i)²/Σw_i²`` (so unit
    weights reproduce ``scipy.stats.anderson_ksamp(variant="midrank")`` exactly).

    ``statistic`` is the standardised ``T = (A² − 1)/σ_N`` with Scholz & Stephens' exact σ_N
    evaluated at the effective sizes (scipy's ``statistic``); ``details["A2"]`` holds A².

    p-value: asymptotic. Under H0, A²_kN for k = 2 tends to the one-sample limit ``A∞²``
    (Anderson & Darling 1954); ``P(A∞² > a)`` is evaluated with Marsaglia & Marsaglia (2004)
    (``ad_inf_sf``) at the variance-matched ``a = 1 + T·σ∞`` (σ∞² = 2(π² − 9)/3), which tends to
    A² for large samples and is the scale on which scipy's (clipped, interpolated) table of
    Scholz & Stephens is defined. For few distinct values holding many events each (coarse bins,
    discrete features) the p-value is instead ``P(Q > A²)`` for the exact discrete limit ``Q`` of
    the midrank statistic (``ad_discrete_sf``); ``details["limit"]`` says which was used.

    Effect size: ``A²/n_h`` with ``n_h = n1 n2/(n1 + n2)`` (``effect_name="ad_distance"``), which
    estimates ``∫ (F_sim − F_data)² / (H(1 − H)) dH`` and does not grow with the sample size.

    Negative weights: see the module notes (monotone repair of each cumulative).
    """
    _, s, d, neff_s, neff_d = _pool(x_sim, w_sim, x_data, w_data)
    return _ad_core(s, d, neff_s, neff_d)


def ad_hist(
    data_counts: ArrayLike,
    sim_sumw: ArrayLike,
    sim_sumw2_total: float | None = None,
    data_sumw2_total: float | None = None,
    *,
    sim_sumw2_bins: ArrayLike | None = None,
    n_toys: int = 0,
    rng: np.random.Generator | int | None = None,
    max_toys: int | None = None,
    thresholds: Sequence[float] = (),
    coarse_above: float | None = None,
) -> GofResult:
    """Anderson–Darling test on a fine histogram (``ad_weighted`` on binned values).

    Arguments as for ``ks_hist``. Each bin is one tied value of the midrank statistic, so the
    result equals ``ad_weighted`` given every event's bin position as its value. With toys the
    p-value is that of ``A²`` (``details["A2"]``; the reported standardised ``statistic`` is a
    fixed increasing function of it), computed on every toy with the observed effective sizes.
    """
    inputs = hist_inputs(data_counts, sim_sumw, sim_sumw2_total, data_sumw2_total,
                          sim_sumw2_bins)
    result = _ad_core(inputs.s, inputs.d, inputs.neff_s, inputs.neff_d)
    check_toy_options(n_toys, max_toys, thresholds)
    if n_toys == 0:
        return result
    return _toy_results({"ad": result}, inputs, n_toys, rng, max_toys, thresholds,
                        coarse_above)["ad"]


# --------------------------------------------------------------------------------------------
# Toy p-values (parametric bootstrap on the fine histogram)
# --------------------------------------------------------------------------------------------

#: Confidence level of the Clopper–Pearson interval that decides whether more toys are needed.
TOY_CL = 0.999
# Toys are drawn and evaluated in chunks of about this many toys × bins (cache-sized arrays).
_TOY_CHUNK = 100_000


@dataclasses.dataclass(frozen=True)
class NullModel:
    """H0 law of the fine histogram (module notes, "Toy p-values").

    Data toys ~ Multinomial(``n_data``, ``p_hat``); simulation toys ``beta + sigma·z`` per bin,
    independent standard normal ``z``. Only the ``keep`` bins are drawn (``p_hat`` is over
    them).

    The data toys of a batch that starts at toy :data:`~validator.stats.poisson_toys.
    TABLE_MIN_TOYS` or later (``first_toy``) come from the tables of
    :class:`~validator.stats.multinomial_toys.MultinomialToys` (built once per model, the same
    law exactly; at 1,000 bins 10, 3.5 and 1.5 times faster at ``n_data`` = 1e5, 1e6 and 1e7)
    where they are faster (:func:`~validator.stats.multinomial_toys.tables_pay`); earlier
    batches, and every batch where they are not, use numpy's ``Generator.multinomial`` as
    before. The rule of :mod:`validator.stats.poisson_toys` is on the batch size; here the
    batches hold ``_TOY_CHUNK / bins`` toys (100 at 1,000 bins), so it is on the toy's rank
    instead, with the same effect: a test of up to that many toys (the default 500, and its
    first adaptive doubling to 1,000) draws the numbers it drew before, and one that needs
    tens of thousands of toys builds the tables once and uses them for all but about its
    first thousand.
    """

    keep: np.ndarray
    p_hat: np.ndarray
    n_data: int
    beta: np.ndarray
    sigma: np.ndarray

    @functools.cached_property
    def data_toys(self) -> MultinomialToys | None:
        """The tables' sampler of the data toys, or None where numpy's draw is faster."""
        if not tables_pay(self.n_data, self.p_hat):
            return None
        return MultinomialToys(self.n_data, self.p_hat)

    def draw(self, n: int, gen: np.random.Generator,
             first_toy: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` toys (data, simulation), the first of them the test's toy ``first_toy``."""
        tables = self.data_toys if first_toy >= TABLE_MIN_TOYS else None
        if tables is not None:
            data = tables.draw(gen, n)
        else:
            data = gen.multinomial(self.n_data, self.p_hat, size=n).astype(float)
        sim = gen.standard_normal((n, self.beta.size))
        sim *= self.sigma
        sim += self.beta
        return data, sim


def _local_weight(s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Weight of one effective simulated event, ``Σw²/Σw``, per bin, filled where undefined.

    Bins with ``Σw > 0`` and ``Σw² > 0`` give ``u = Σw²/Σw``; the others (empty bins, bins of
    negative or cancelling weights) take the larger ``u`` of their nearest defined neighbours
    on either side, so that an empty bin in a region of heavy weights can receive a heavy event
    in the toys. Without any defined bin, the histogram's ``Σw²/Σw`` (or 1).
    """
    ok = (s > 0) & (v > 0)
    if not np.any(ok):
        tot_s, tot_v = float(np.sum(s)), float(np.sum(v))
        return np.full(s.size, tot_v / tot_s if tot_v > 0 and tot_s > 0 else 1.0)
    u_ok = np.where(ok, v / np.where(ok, s, 1.0), 0.0)
    idx = np.arange(s.size)
    first, last = int(np.argmax(ok)), int(s.size - 1 - np.argmax(ok[::-1]))
    left = np.maximum.accumulate(np.where(ok, idx, first))  # nearest defined bin at or before
    right = np.minimum.accumulate(np.where(ok, idx, last)[::-1])[::-1]  # at or after
    return np.where(ok, u_ok, np.maximum(u_ok[left], u_ok[right]))


def null_model(inp: HistInputs) -> NullModel:
    """Estimate the common shape p̂ and the laws of the toys (see the module notes)."""
    d, s = inp.d, inp.s
    w_tot, d_tot = float(np.sum(s)), float(np.sum(d))
    # Data toys: unit-weight events; weighted data as its Kish number of events.
    n_data = max(round(d_tot) if inp.data_unit else round(inp.neff_d), 1)
    n_obs = d * (n_data / d_tot)
    if inp.v is None:
        # Weights independent of the feature: Σw² per bin ∝ the bin's probability (Kish).
        p_hat = np.clip((inp.neff_s * s / w_tot + n_obs) / (inp.neff_s + n_data), 0.0, None)
        keep = p_hat > 0
        p_hat = p_hat[keep] / np.sum(p_hat[keep])
        var = (inp.sim_sumw2_total / w_tot) * w_tot * p_hat
        return NullModel(keep, p_hat, n_data, w_tot * p_hat, np.sqrt(var))
    v = inp.v
    u_loc = _local_weight(s, v)
    # Maximum-likelihood shape for Poisson data and a Gaussian simulation of known variance
    # (Gagunashvili, arXiv:physics/0605123, as in chi2_uw); a bin without simulated event
    # counts with the variance of one event of the local weight.
    var_fit = np.where(v > 0, v, u_loc**2)
    b = w_tot * s - n_data * var_fit
    p_hat = (b + np.sqrt(b * b + 4.0 * w_tot**2 * var_fit * n_obs)) / (2.0 * w_tot**2)
    keep = (p_hat > 0) | (v > 0)
    p_hat = p_hat[keep] / np.sum(p_hat[keep])
    beta = w_tot * p_hat
    v, u_loc = v[keep], u_loc[keep]
    # The bin's own Σw²; a bin without simulated event: Poisson variance β·u of events of the
    # local weight u.
    var = np.where(v > 0, v, beta * u_loc)
    return NullModel(keep, p_hat, n_data, beta, np.sqrt(var))


def ks_rows(sim: np.ndarray, data: np.ndarray) -> np.ndarray:
    """KS distance of each row pair (as ``_ks_core``), rows = toys."""
    fs = np.cumsum(sim, axis=1, dtype=float)
    fs /= fs[:, -1:].copy()
    np.clip(fs, 0.0, 1.0, out=fs)
    fd = np.cumsum(data, axis=1, dtype=float)
    fd /= fd[:, -1:].copy()
    fs -= fd
    return np.max(np.abs(fs), axis=1)


def _monotone_rows(c: np.ndarray) -> np.ndarray:
    """``_monotone_fractions`` of each row."""
    out = c / np.sum(c, axis=1, keepdims=True)
    neg = np.any(c < 0.0, axis=1)
    if np.any(neg):
        cdf = np.cumsum(out[neg], axis=1)
        upper = np.maximum.accumulate(cdf, axis=1)
        lower = np.minimum.accumulate(cdf[:, ::-1], axis=1)[:, ::-1]
        mono = np.clip(0.5 * (upper + lower), 0.0, 1.0)
        mono[:, -1] = 1.0
        out[neg] = np.diff(mono, axis=1, prepend=0.0)
    return out


def ad_rows(sim: np.ndarray, data: np.ndarray, neff_s: float, neff_d: float) -> np.ndarray:
    """Midrank two-sample ``A²`` of each row pair (as ``_ad_core``, same effective sizes)."""
    n_total = neff_s + neff_d
    fs = _monotone_rows(sim)
    fs *= neff_s
    fd = data * (neff_d / np.sum(data, axis=1, keepdims=True))
    lj = fs + fd
    cum = np.cumsum(lj, axis=1)
    cfs = np.cumsum(fs, axis=1)
    # k = 2: N·M_sj − B_j n_s = −(N·M_dj − B_j n_d) = n_d M_sj − n_s M_dj, with the midrank
    # M_sj = Σ_{i<j} f_si + f_sj/2 and M_dj likewise.
    num = n_total * cfs - neff_s * cum - 0.5 * (neff_d * fs - neff_s * fd)
    left = cum - lj
    right = cum[:, -1:] - cum
    denom = left * right + 0.25 * lj * (left + right)
    num *= num
    num *= lj
    ok = (lj > 0) & (denom > 0)
    out = np.zeros_like(num)
    np.divide(num, denom, out=out, where=ok)
    factor = (n_total - 1.0) / n_total**2 * (1.0 / neff_s + 1.0 / neff_d)
    return factor * np.sum(out, axis=1)


#: The function of each statistic that is Lipschitz in the toys' Gaussian variables.
_LIPSCHITZ_FORM = {"ks": np.positive, "ad": np.sqrt}


class GaussianBound:
    """Upper bound of a toy p-value far beyond the toys, from Gaussian concentration.

    Linearised, the toys' ECDF difference at the bin edges is a Gaussian vector
    ``Z = L e``: ``e_k`` the independent per-bin fluctuations (variance
    ``κ_k = σ_k²/W² + p̂_k/n_data``, the data's multinomial covariance included exactly) and
    ``(L e)_j = Σ_{k≤j} e_k − F_j Σ_k e_k``. The KS distance ``max_j |Z_j|`` and ``√A²`` (a
    weighted Euclidean norm of the midpoints ``(Z_{j−1} + Z_j)/2``, weights ``c_j`` at the
    null shape) are Lipschitz functions of standard normal variables, with constants
    ``σ_max = max_j sd(Z_j)`` and ``√λ_max`` (largest eigenvalue of the weighted covariance,
    by power iteration). The Borell–TIS / Tsirelson–Ibragimov–Sudakov inequality (C. Borell,
    Invent. Math. 30 (1975) 207; B. Tsirelson, I. Ibragimov & V. Sudakov, LNM 550 (1976) 20)
    then gives ``P(f ≥ E f + u) ≤ exp(−u²/(2 Lip²))``, with ``E f`` replaced by the toys' mean
    plus three standard errors. It is used only when no toy reaches the observation, as a
    smaller, still conservative bound than ``1/(1 + n)``: no tail is fitted.
    """

    def __init__(self, model: NullModel, inp: HistInputs):
        w_tot = float(np.sum(inp.s))
        p = model.p_hat
        kappa = (model.sigma / w_tot) ** 2 + p / model.n_data
        f = np.cumsum(p)
        f[-1] = 1.0
        k_cum = np.cumsum(kappa)
        var_z = (1.0 - f) ** 2 * k_cum + f**2 * (k_cum[-1] - k_cum)
        self.lip = {"ks": math.sqrt(float(np.max(var_z)))}
        # Anderson–Darling weights at the null shape (see ad_rows):
        # A² = Σ c_j X_j², c_j = (N − 1) n_s n_d p_j / (N² h_j), h_j = L_j R_j + p_j (L_j + R_j)/4.
        n_s, n_d = inp.neff_s, inp.neff_d
        n_tot = n_s + n_d
        left = f - p
        right = np.clip(1.0 - f, 0.0, None)
        h = left * right + 0.25 * p * (left + right)
        ok = (p > 0) & (h > 0)
        c = np.where(ok, (n_tot - 1.0) * n_s * n_d * p / (n_tot**2 * np.where(ok, h, 1.0)), 0.0)
        sc, sk = np.sqrt(c), np.sqrt(kappa)

        def g(x):  # C^½ A L K^½ x
            y = sk * x
            z = np.cumsum(y) - f * np.sum(y)
            return sc * 0.5 * (z + np.concatenate([[0.0], z[:-1]]))

        def gt(x):  # (C^½ A L K^½)ᵀ x
            y = sc * x
            z = 0.5 * (y + np.concatenate([y[1:], [0.0]]))
            return sk * (np.cumsum(z[::-1])[::-1] - np.sum(f * z))

        x = np.random.default_rng(0).standard_normal(p.size)
        lam = 0.0
        for _ in range(200):
            y = gt(g(x))
            new = float(np.linalg.norm(y))
            if new == 0.0:
                break
            x = y / new
            if abs(new - lam) <= 1e-9 * new:
                lam = new
                break
            lam = new
        self.lip["ad"] = math.sqrt(lam * (1.0 + 1e-6))

    def pvalue(self, name: str, observed: float, mean: float, sd: float, n: int) -> float:
        lip = self.lip[name]
        tr = _LIPSCHITZ_FORM[name]
        u = float(tr(max(observed, 0.0))) - (mean + 3.0 * sd / math.sqrt(n))
        if not (u > 0.0 and lip > 0.0):
            return 1.0
        return math.exp(-0.5 * (u / lip) ** 2)


#: E[K] of Kolmogorov's limit law: sqrt(pi/2) ln 2 (Kolmogorov 1933; Marsaglia, Tsang & Wang,
#: J. Stat. Softw. 8 (2003) 18).
KOLMOGOROV_MEAN = math.sqrt(math.pi / 2.0) * math.log(2.0)
#: E[sqrt(A∞²)] of the Anderson-Darling limit law: the integral of ad_inf_sf(t²) over t > 0
#: (scipy quad, 0.9444749, error 7e-10).
AD_SQRT_MEAN = 0.944475


def limit_law_tail(name: str, observed: float, toy_mean: float) -> float:
    """A p-value beyond every toy, from the statistic's limit law with its scale fitted to
    the toys (``toy_mean``: the toys' mean of ``_LIPSCHITZ_FORM[name](T)``).

    KS: sqrt(n_eff) D follows Kolmogorov's law K; the toys give the effective size,
    sqrt(n_eff) = E[K] / ⟨D⟩, and p = P(K ≥ sqrt(n_eff) D_obs). AD: A²/c follows the limit
    law A∞² (Anderson & Darling 1954; Scholz & Stephens 1987 for k samples), c =
    (⟨sqrt(A²)⟩ / E[sqrt(A∞²)])². Binned and weighted statistics follow these laws up to
    their scale, which the toys measure; beyond the toys the law's shape is extrapolated:
    an estimate (not a bound), used only where no toy reaches the observation, and never
    below the analytic asymptotic p-value (``_toy_results``)."""
    if not (toy_mean > 0 and observed > 0):
        return 1.0
    if name == "ks":
        return float(stats.kstwobign.sf(KOLMOGOROV_MEAN / toy_mean * observed))
    if name == "ad":
        return ad_inf_sf(observed / (toy_mean / AD_SQRT_MEAN) ** 2)
    return 1.0


def _toy_results(results: dict[str, GofResult], inp: HistInputs, n_toys: int, rng,
                 max_toys: int | None, thresholds: Sequence[float],
                 coarse_above: float | None = None) -> dict[str, GofResult]:
    """Replace the asymptotic p-values of ``results`` (keys ``ks``, ``ad``) by toy ones, from
    the one toy engine (:func:`validator.stats.toys.run_toy_columns`: both statistics of the
    same toys). Beyond every toy: the Gaussian-concentration bound (``GaussianBound``), or
    the limit law with the toys' scale (:func:`limit_law_tail`), never below the analytic
    asymptotic p-value: a discrete statistic (a boolean feature) fits a scale far too small
    (a null replica gave 5e-11), the analytic law is conservative for it."""
    options = ToyOptions(n_toys, max_toys, tuple(thresholds), coarse_above, TOY_CL)
    gen = np.random.default_rng(rng)
    model = null_model(inp)
    names = list(results)
    funcs = {"ks": ks_rows,
             "ad": lambda sim, data: ad_rows(sim, data, inp.neff_s, inp.neff_d)}

    def statistics(sim, data):
        if compiled.HAVE_NUMBA:  # both in one compiled pass (edf_kernel), the same to rounding
            ks, ad = edf_rows(sim, data, inp.neff_s, inp.neff_d)
            return np.stack([{"ks": ks, "ad": ad}[name] for name in names], axis=1)
        return np.stack([funcs[name](sim, data) for name in names], axis=1)

    drawn = 0

    def draw(size: int) -> np.ndarray:
        nonlocal drawn
        data, sim = model.draw(size, gen, first_toy=drawn)
        drawn += size
        with np.errstate(all="ignore"):
            return statistics(sim, data)

    d, s = inp.d[model.keep][None, :], inp.s[model.keep][None, :]
    observed = statistics(s, d)[0]
    gaussian = GaussianBound(model, inp)

    def lipschitz_toys(name: str, toys: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            t = _LIPSCHITZ_FORM[name](toys)
        return t[np.isfinite(t)]

    def bound_of(i: int):
        def bound(toys: np.ndarray) -> float:
            t = lipschitz_toys(names[i], toys)
            if t.size < 2:
                return 1.0
            return gaussian.pvalue(names[i], float(observed[i]), float(t.mean()),
                                   float(t.std(ddof=1)), t.size)
        return bound

    def tail_of(i: int):
        asymptotic = float(results[names[i]].pvalue)

        def tail(toys: np.ndarray) -> float:
            t = lipschitz_toys(names[i], toys)
            return max(limit_law_tail(names[i], float(observed[i]), float(t.mean())),
                       asymptotic) if t.size else 1.0
        return tail

    toys = run_toy_columns(observed, draw, options,
                           tails=[tail_of(i) for i in range(len(names))],
                           bounds=[bound_of(i) for i in range(len(names))],
                           batch_max=max(1, _TOY_CHUNK // max(model.p_hat.size, 1)))
    out = {}
    for name, toy in zip(names, toys, strict=True):
        result = results[name]
        details = {**result.details, "pvalue_asymptotic": result.pvalue, **toy.details,
                   "toy_variance": "per bin" if inp.v is not None else "global Kish"}
        out[name] = dataclasses.replace(
            result, pvalue=float(toy.pvalue), pvalue_method="toys", n_toys=toy.n_toys,
            details=details, pvalue_is_bound=toy.pvalue_is_bound)
    return out


def edf_hist_tests(
    data_counts: ArrayLike,
    sim_sumw: ArrayLike,
    sim_sumw2_total: float | None = None,
    data_sumw2_total: float | None = None,
    *,
    sim_sumw2_bins: ArrayLike | None = None,
    n_toys: int = 0,
    rng: np.random.Generator | int | None = None,
    max_toys: int | None = None,
    thresholds: Sequence[float] = (),
    coarse_above: float | None = None,
) -> dict[str, GofResult]:
    """``ks_hist`` and ``ad_hist`` together, both p-values from the same toys.

    Arguments as for ``ks_hist``. Returns ``{"ks": ..., "ad": ...}``. The toys (their drawing
    is most of the cost) are shared; adaptive toys continue while either test needs them, so
    both report the same ``n_toys``. Without toys this equals calling the two functions.
    """
    inputs = hist_inputs(data_counts, sim_sumw, sim_sumw2_total, data_sumw2_total,
                          sim_sumw2_bins)
    results = {"ks": _ks_core(inputs.s, inputs.d, inputs.neff_s, inputs.neff_d),
               "ad": _ad_core(inputs.s, inputs.d, inputs.neff_s, inputs.neff_d)}
    check_toy_options(n_toys, max_toys, thresholds)
    if n_toys == 0:
        return results
    return _toy_results(results, inputs, n_toys, rng, max_toys, thresholds,
                        coarse_above)


# --------------------------------------------------------------------------------------------
# Wasserstein
# --------------------------------------------------------------------------------------------


def _wasserstein_core(values, s, d, normalise_by):
    if values.size < 2:
        w1 = 0.0
    else:
        diff = _cdf_clipped(s) - _cdf_clipped(d)
        w1 = float(np.sum(np.abs(diff[:-1]) * np.diff(values)))
    if normalise_by is not None:
        if not normalise_by > 0:
            raise ValueError(f"normalise_by must be positive, got {normalise_by!r}")
        w1 /= float(normalise_by)
    return w1


def wasserstein_hist(data_counts: ArrayLike, sim_sumw: ArrayLike, positions: ArrayLike, *,
                     normalise_by: float | None = None) -> float:
    """First Wasserstein distance between the normalised data and simulation histograms.

    ``W1 = ∫ |F_sim(x) − F_data(x)| dx`` (Vallender 1974: W1 between distributions on the line is
    the L1 distance of their CDFs), with each histogram's mass located at ``positions`` (e.g. bin
    centres, in the feature's units; any order). Equals
    ``scipy.stats.wasserstein_distance(positions, positions, data_counts, sim_sumw)`` for
    non-negative contents; negative simulation contents are allowed (clipped ECDF, module notes).

    ``normalise_by``: divide the distance by this (e.g. the simulation's standard deviation) to
    get a dimensionless effect size.
    """
    d = _check_array("data_counts", data_counts)
    s = _check_array("sim_sumw", sim_sumw)
    x = _check_array("positions", positions)
    if not (d.shape == s.shape == x.shape):
        raise ValueError("data_counts, sim_sumw and positions must have the same length")
    if not (np.sum(s) > 0 and np.sum(d) > 0):
        raise ValueError("both histograms need a positive sum of weights")
    order = np.argsort(x, kind="stable")
    return _wasserstein_core(x[order], s[order], d[order], normalise_by)


def wasserstein_weighted(x_data: ArrayLike, x_sim: ArrayLike, w_sim: ArrayLike | None, *,
                         w_data: ArrayLike | None = None, normalise_by: float | None = None,
                         ) -> float:
    """First Wasserstein distance between the weighted simulation and the data (array form).

    Same definition as ``wasserstein_hist``; equals ``scipy.stats.wasserstein_distance(x_sim,
    x_data, w_sim, w_data)`` for non-negative weights.
    """
    values, s, d, _, _ = _pool(x_sim, w_sim, x_data, w_data)
    return _wasserstein_core(values, s, d, normalise_by)
