"""The one toy engine: every toy p-value of validator, binned or unbinned.

A test hands over its observed statistics and a function that draws toys of them under its
null; :func:`run_toys` decides how many toys to spend (a fixed number, a sequential early
stop above the run's alpha, more where a decision is open or no toy reaches the observation)
and what the p-value is: ``(1 + k)/(1 + n)``, ``h/L`` after an early stop, and beyond every
toy a bound (``1/(1 + n)``, or a test's own smaller conservative bound) or, where the test
knows its statistic's limit law, a tail estimate. One set of detail keys is stored for every
test (``n_toys_reaching``, ``pvalue_is_bound``, ``n_toys_initial``, ``toys_stop``,
``pvalue_interval``, and ``pvalue_from`` / ``pvalue_bound_from`` beyond every toy); ties are
handled one way (:func:`reaching`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "BOUND_MAX_FACTOR",
    "BOUND_RESOLUTION",
    "MIN_STOP_REACHING",
    "TAIL_MIN_TOYS",
    "TAIL_SETTLES_FACTOR",
    "TOY_BATCH_MAX",
    "ToyOptions",
    "ToyOutcome",
    "check_toy_options",
    "chi2_tail",
    "chi2_tail_law",
    "clopper_pearson",
    "reaching",
    "run_toy_columns",
    "run_toys",
    "sequential_batches",
    "sequential_stop",
    "toy_pvalue",
]

#: Toy statistics within this relative distance below the observation count as reaching it:
#: a toy that differs from the observation only by floating-point rounding is a tie.
TIE_RTOL = 1e-9
TIE_ATOL = 1e-14


@dataclass(frozen=True)
class ToyOptions:
    """How many toys a test may spend, and where its p-value must be precise.

    ``n_toys`` first; with ``coarse_above`` they stop early once a p-value is known to lie
    above it and every threshold (:func:`sequential_stop`); then more, up to ``max_toys``,
    while a decision at one of ``thresholds`` is open or no toy reaches the observation
    (:func:`run_toys`); ``confidence`` is that of the Clopper-Pearson interval deciding it.
    """

    n_toys: int
    max_toys: int | None = None
    thresholds: tuple[float, ...] = ()
    coarse_above: float | None = None
    confidence: float = 0.999

    def __post_init__(self) -> None:
        check_toy_options(self.n_toys, self.max_toys, self.thresholds)
        object.__setattr__(self, "thresholds", tuple(float(a) for a in self.thresholds))


def toy_pvalue(observed: float, toys: ArrayLike, n_failed: int = 0) -> tuple[float, dict]:
    r"""p-value of an observed statistic from pseudo-experiments (large values are extreme).

    :math:`p = (1 + \#\{t^* \ge t\} + n_\mathrm{failed}) / (1 + n_\mathrm{toys})` (Davison &
    Hinkley, "Bootstrap methods and their application", 1997, sec. 4.2; B. V. North,
    D. Curtis and P. C. Sham, Am. J. Hum. Genet. 71 (2002) 439), toys that could not be
    evaluated counting as extreme. This p-value is valid (:math:`P(p \le \alpha) \le \alpha`
    under the null) for any number of toys. When no toy reaches the observation it is
    :math:`1/(1 + n_\mathrm{toys})`, and that is only a *bound*: nothing is claimed beyond what
    the toys support (no tail is extrapolated). Add toys (:func:`run_toys`) where a smaller
    p-value matters.

    Parameters
    ----------
    observed:
        The observed statistic.
    toys:
        Statistics of the toys that could be evaluated.
    n_failed:
        Number of toys that could not be evaluated.

    Returns
    -------
    tuple
        The p-value and details: ``n_toys_reaching`` (:math:`\#\{t^* \ge t\} +
        n_\mathrm{failed}`) and ``pvalue_is_bound`` (``True`` when that is 0).
    """
    t = np.asarray(toys, dtype=float)
    n_toys = t.size + n_failed
    n_ge = int(np.sum(reaching(t, observed))) + int(n_failed)
    return float((1 + n_ge) / (1 + n_toys)), {
        "n_toys_reaching": n_ge,
        "pvalue_is_bound": n_ge == 0,
    }


def clopper_pearson(k: int, n: int, confidence: float = 0.999) -> tuple[float, float]:
    """Clopper-Pearson (exact, central) interval of a binomial probability from k of n.

    C. J. Clopper and E. S. Pearson, Biometrika 26 (1934) 404: the bounds are the
    ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles of Beta(k, n - k + 1) and
    Beta(k + 1, n - k), with 0 for ``k = 0`` and 1 for ``k = n``.
    """
    a = 0.5 * (1.0 - confidence)
    lo = float(stats.beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(stats.beta.ppf(1.0 - a, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def check_toy_options(n_toys: int, max_toys: int | None, thresholds: Sequence[float]) -> None:
    """Validate the toy arguments of every test (raises ``ValueError``): a non-negative
    integer ``n_toys``, ``max_toys`` an integer not below it (or None), thresholds in (0, 1)."""
    if isinstance(n_toys, bool) or int(n_toys) != n_toys or n_toys < 0:
        raise ValueError(f"n_toys must be a non-negative integer, got {n_toys!r}")
    if max_toys is not None and (isinstance(max_toys, bool) or int(max_toys) != max_toys
                                 or max_toys < n_toys):
        raise ValueError(f"max_toys must be an integer >= n_toys ({n_toys}), got {max_toys!r}")
    for a in thresholds:
        if not 0.0 < float(a) < 1.0:
            raise ValueError(f"thresholds must lie in (0, 1), got {a!r}")


@dataclass(frozen=True)
class ToyOutcome:
    """What :func:`run_toys` returns for one statistic.

    ``toys`` are the statistics of the toys that could be evaluated (up to an early stop),
    ``n_toys`` the number drawn for it (evaluated or failed).
    """

    pvalue: float
    pvalue_is_bound: bool
    n_toys: int
    toys: np.ndarray
    n_failed: int
    details: dict


#: A toy p-value no toy reached, 1/(1 + n), is refined until it is this many times below the
#: smallest threshold (see :func:`run_toys`).
BOUND_RESOLUTION = 2.0
#: ... but with at most this many times ``max_toys`` toys: each costs as much as any other,
#: and a run with many large mismodellings would otherwise spend most of its time proving
#: p-values far below anything the summary needs (100,000 toys by default: Holm's first
#: threshold of a run of up to 2,500 tests).
BOUND_MAX_FACTOR = 5


#: Most toys drawn at once: a batch's arrays (toys x bins, a dozen of them for a pair's
#: ``dependence``) stay within tens of MB however many toys a decision needs.
TOY_BATCH_MAX = 8192


#: Fewest toys reaching the observation at which :func:`run_toys` stops early (see
#: :func:`sequential_stop`): the p-value above the coarse level is then known to about
#: 1/sqrt(10), 30%, which is all such a p-value is used for.
MIN_STOP_REACHING = 10


def sequential_stop(n_toys: int, coarse_above: float | None,
                    thresholds: Sequence[float] = ()) -> int | None:
    r"""The number of toys reaching the observation, :math:`h`, at which toys may stop early.

    Besag and Clifford's sequential Monte Carlo p-value (J. Besag and P. Clifford, Biometrika
    78 (1991) 301): toys are drawn until :math:`h` of them reach the observation or ``n_toys``
    have been drawn. Stopped at the :math:`L`-th toy, :math:`p = h/L`; otherwise :math:`p =
    (1 + k)/(1 + n)` as without stopping. Both are exact p-values
    (:math:`P(p \le u) \le u` under the null for every :math:`u`). A stopped p-value is at
    least :math:`h/n_\mathrm{toys}`, so with :math:`h = \lceil a\, n_\mathrm{toys}\rceil`
    (:math:`a` the larger of ``coarse_above`` and every threshold) every decision at or below
    :math:`a` is the one the fixed ``n_toys`` would give: if :math:`h` toys reach the
    observation early, at least :math:`h` reach it among all ``n_toys``, and then
    :math:`(1+k)/(1+n_\mathrm{toys}) \ge h/n_\mathrm{toys} \ge a` as well. Only p-values
    above :math:`a` are coarser, and they cost a few dozen toys instead of hundreds: under the
    null (uniform :math:`p`) about :math:`h(1 + \ln(n_\mathrm{toys}/h))` on average.

    Returns ``None`` (no early stop) without ``coarse_above``, or when :math:`h` would not be
    below ``n_toys``.
    """
    if coarse_above is None or n_toys <= 0:
        return None
    level = max([float(coarse_above), *(float(a) for a in thresholds)])
    h = max(MIN_STOP_REACHING, math.ceil(level * n_toys))
    return h if h < n_toys else None


def sequential_batches(n_toys: int, h: int | None) -> list[int]:
    """Batch sizes of the first ``n_toys`` toys: one batch without early stopping; with it
    ``2h`` toys first (enough for p above 1/2), then batches that double the total (each a
    chance to stop), the last one capped at ``n_toys``. Fixed for given arguments, so the
    toys, which each batch draws in one go, are too."""
    if h is None:
        return [n_toys] if n_toys > 0 else []
    sizes, total = [], 0
    while total < n_toys:
        size = min(2 * h if total == 0 else total, n_toys - total)
        sizes.append(size)
        total += size
    return sizes


def reaching(toys: np.ndarray, observed: ArrayLike) -> np.ndarray:
    """Which toys reach the observation: ``t* >= t`` up to rounding (:data:`TIE_RTOL`), or
    not evaluable (NaN: conservative)."""
    observed = np.asarray(observed, dtype=float)
    return ~(toys < observed - TIE_RTOL * np.abs(observed) - TIE_ATOL)


def run_toys(
    observed: float,
    draw: Callable[[int], np.ndarray],
    options: ToyOptions,
    *,
    tail: Callable[[np.ndarray], float] | None = None,
) -> ToyOutcome:
    r"""Toy p-value with toys added until the decisions at the given thresholds are settled.

    One statistic (:func:`run_toy_columns` for several drawn together). ``draw(n)`` runs
    ``n`` more pseudo-experiments (from the caller's generator, so the whole
    sequence is deterministic for a given seed) and returns their statistics in the order
    drawn, ``nan`` for a toy that could not be evaluated (it counts as reaching the
    observation: conservative). First ``n_toys`` are run, and the p-value is
    :func:`toy_pvalue` (drawn at most :data:`TOY_BATCH_MAX` at a time, which bounds the
    memory). With ``coarse_above`` they stop as soon as :math:`h` of them reach the
    observation, :math:`p = h/L` after :math:`L` toys (:func:`sequential_stop`: only p-values
    above ``coarse_above`` and every threshold stop early; every decision at those levels is
    the fixed ``n_toys``' decision). Then, while fewer than ``max_toys`` have been run, more
    are added in batches that double the total (the last one capped at ``max_toys``) as
    long as

    - a threshold :math:`\alpha` lies inside the ``confidence`` (99.9%) Clopper-Pearson
      interval (:func:`clopper_pearson`) of the exceedance probability from
      :math:`k = \#\{t^* \ge t\} + n_\mathrm{failed}` of :math:`n` toys, so that the decision
      :math:`p < \alpha` is not settled; or
    - no toy reached the observation (the p-value :math:`1/(1+n)` is a bound) and that bound
      is above the smallest threshold: then up to the larger cap
      :math:`\min(\lceil R/\alpha_\min\rceil, F\cdot\text{max\_toys})` (R =
      :data:`BOUND_RESOLUTION`, F = :data:`BOUND_MAX_FACTOR`), so that a statistic beyond
      every toy can settle the strictest decision (Holm's first threshold alpha/m of a run
      with a few thousand tests), unless the limit law (``tail``) already puts the
      statistic :data:`TAIL_SETTLES_FACTOR` times below it; an open decision near a
      threshold stops at ``max_toys``.

    Where no toy reaches the observation and ``tail`` is given (``tail(toys)``: a p-value
    from the statistic's limit law with its scale fitted to at least :data:`TAIL_MIN_TOYS`
    toys, e.g. :func:`chi2_tail`), the p-value says how strong the effect is instead of the
    bound :math:`1/(1+n)` (``details['pvalue_from'] = 'limit_law_tail'``; every decision
    already settled by the toys stays: under the null this happens with probability
    :math:`1/(1+n)`).

    Such sequential Monte Carlo tests keep their level when the final p-value is
    :math:`(1+k)/(1+n)` (A. C. A. Hope, J. R. Statist. Soc. B 30 (1968) 582; J. Besag and
    P. Clifford, Biometrika 78 (1991) 301; the stopping rule is that of A. Gandy, J. Am.
    Statist. Assoc. 104 (2009) 1504, with a Clopper-Pearson interval in place of his
    boundaries): the rule only decides how many toys to spend, where the decision is close.

    Returns
    -------
    ToyOutcome
        With ``details``: ``n_toys_reaching``, ``n_toys_initial``, ``toys_stop``
        (``"fixed"``: no adaptive toys asked; ``"sequential"``: stopped early at the
        :math:`h`-th toy reaching the observation; ``"settled"``: every threshold outside
        the interval; ``"max_toys"``: the cap was reached with a decision still open or a
        bound above the smallest threshold) and ``pvalue_interval`` (the Clopper-Pearson
        interval of the last step).
    """
    def column(size: int) -> np.ndarray:
        return np.asarray(draw(size), dtype=float).reshape(-1, 1)

    return run_toy_columns(np.array([observed], dtype=float), column, options,
                           tails=[tail], batch_max=TOY_BATCH_MAX)[0]


def run_toy_columns(
    observed: ArrayLike,
    draw: Callable[[int], np.ndarray],
    options: ToyOptions,
    *,
    tails: Sequence[Callable[[np.ndarray], float] | None] | None = None,
    bounds: Sequence[Callable[[np.ndarray], float] | None] | None = None,
    batch_max: int = TOY_BATCH_MAX,
) -> list[ToyOutcome]:
    """:func:`run_toys` for ``m`` statistics of the same toys (``draw(n)`` returns ``(n, m)``):
    each column stops early on its own, and the toys go on while any column needs them.

    ``bounds[i](toys)``: a conservative p-value bound smaller than ``1/(1 + n)`` where no toy
    reaches observation ``i`` (e.g. a concentration inequality); it also settles a column
    whose bound lies below the smallest threshold, so no more toys are spent on it
    (``details['pvalue_bound_from']``). ``batch_max``: most toys drawn at once (memory).
    """
    observed = np.asarray(observed, dtype=float).reshape(-1)
    m = observed.size
    tails = list(tails) if tails is not None else [None] * m
    bounds = list(bounds) if bounds is not None else [None] * m
    thresholds = options.thresholds
    columns: list[list[np.ndarray]] = [[] for _ in range(m)]
    k = np.zeros(m, dtype=np.int64)  # toys reaching each observation
    stopped_at = np.zeros(m, dtype=np.int64)  # L of a column stopped early, else 0
    total = 0
    h = sequential_stop(options.n_toys, options.coarse_above, thresholds)

    def run(size: int) -> None:
        nonlocal total
        for start in range(0, size, batch_max):
            t = np.asarray(draw(min(batch_max, size - start)), dtype=float).reshape(-1, m)
            reach = reaching(t, observed)
            for i in range(m):
                if stopped_at[i]:
                    continue
                rows = t.shape[0]
                if h is not None and k[i] + int(np.sum(reach[:, i])) >= h:
                    rows = int(np.flatnonzero(reach[:, i])[h - 1 - k[i]]) + 1
                    stopped_at[i] = total + rows
                k[i] += int(np.sum(reach[:rows, i]))
                columns[i].append(t[:rows, i])
            total += t.shape[0]

    def toys_of(i: int) -> np.ndarray:
        return np.concatenate(columns[i]) if columns[i] else np.zeros(0)

    def bound(i: int) -> float:
        if k[i] > 0 or bounds[i] is None:
            return 1.0
        kept = toys_of(i)
        kept = kept[np.isfinite(kept)]
        return float(bounds[i](kept)) if kept.size >= 2 else 1.0

    def settled_by_bound(i: int) -> bool:
        """No toy reaches the observation, and a conservative bound or the limit law's
        estimate (far below: :data:`TAIL_SETTLES_FACTOR`) puts it below every threshold."""
        if k[i] > 0:
            return False
        if bound(i) < min(thresholds):
            return True
        if tails[i] is None:
            return False
        kept = toys_of(i)
        kept = kept[np.isfinite(kept)]
        return kept.size >= TAIL_MIN_TOYS and \
            float(tails[i](kept)) < min(thresholds) / TAIL_SETTLES_FACTOR

    def open_decision(i: int) -> bool:
        lo, hi = clopper_pearson(int(k[i]), total, options.confidence)
        return any(lo <= a <= hi for a in thresholds) and not settled_by_bound(i)

    def bound_above(i: int) -> bool:
        return k[i] == 0 and 1.0 / (1.0 + total) > min(thresholds) \
            and not settled_by_bound(i)

    for size in sequential_batches(options.n_toys, h):
        run(size)
        if h is not None and np.all(stopped_at > 0):
            break
    max_toys = options.max_toys
    adaptive = max_toys is not None and max_toys > options.n_toys and len(thresholds) > 0
    stop = "fixed"
    while adaptive and total > 0:
        live = [i for i in range(m) if not stopped_at[i]]
        wanting_bound = [i for i in live if bound_above(i)]
        if not ([i for i in live if open_decision(i)] or wanting_bound):
            stop = "settled"
            break
        cap = max(max_toys, min(math.ceil(BOUND_RESOLUTION / min(thresholds)),
                                BOUND_MAX_FACTOR * max_toys)) if wanting_bound else max_toys
        if total >= cap:  # type: ignore[operator]
            stop = "max_toys"
            break
        run(min(total, cap - total))  # type: ignore[operator]
    out = []
    for i in range(m):
        toys = toys_of(i)
        kept = toys[np.isfinite(toys)]
        if stopped_at[i]:
            n_i = int(stopped_at[i])
            lo, hi = clopper_pearson(h, n_i, options.confidence)  # type: ignore[arg-type]
            out.append(ToyOutcome(h / n_i, False, n_i, kept, n_i - kept.size, {  # type: ignore[operator]
                "n_toys_reaching": h, "pvalue_is_bound": False,
                "n_toys_initial": int(options.n_toys), "toys_stop": "sequential",
                "pvalue_interval": [lo, hi]}))
            continue
        lo, hi = clopper_pearson(int(k[i]), total, options.confidence) if total > 0 \
            else (0.0, 1.0)
        pvalue, info = toy_pvalue(observed[i], kept, toys.size - kept.size)
        details = {**info, "n_toys_initial": int(options.n_toys), "toys_stop": stop,
                   "pvalue_interval": [lo, hi]}
        if info["pvalue_is_bound"]:
            details["pvalue_bound_from"] = "toys"
            smaller = bound(i)
            if smaller < pvalue:
                pvalue, details["pvalue_bound_from"] = smaller, "gaussian_concentration"
            if tails[i] is not None and kept.size >= TAIL_MIN_TOYS:
                estimate = float(tails[i](kept))
                if estimate < pvalue:
                    pvalue = estimate
                    details.update(pvalue_is_bound=False, pvalue_from="limit_law_tail")
                    del details["pvalue_bound_from"]
        out.append(ToyOutcome(float(pvalue), bool(details["pvalue_is_bound"]), total, kept,
                              toys.size - kept.size, details))
    return out


#: A statistic beyond every toy whose limit-law estimate (never below the analytic asymptotic
#: p-value) lies this many times below the smallest threshold settles its decision: no more
#: toys are drawn to turn the bound 1/(1 + n) into one below the threshold. A strongly
#: mismodelled histogram under systematics otherwise draws up to BOUND_MAX_FACTOR x max_toys
#: toys, each a profile fit (measured: most of an audited run's time). Far out, the
#: extrapolated law is an estimate, not a bound: at 100 a null `dependence` test under x1000
#: importance weights (1 of 17,728 null tests) settled at 1.1e-6 on its first 300 toys, where
#: more toys reach it; 1e4 leaves such cases to the toys and still settles real effects.
TAIL_SETTLES_FACTOR = 1e4
#: Toys below which no tail is fitted (the scale of the limit law from their mean).
TAIL_MIN_TOYS = 100


def chi2_tail_law(observed: float, ndf: float | None, asymptotic: float | None = None,
                  ) -> Callable[[np.ndarray], float] | None:
    """The ``tail`` of :func:`run_toys` for a statistic whose limit law is a scaled
    :math:`\\chi^2_\\nu` (:func:`chi2_tail`); None without degrees of freedom."""
    if ndf is None or not ndf > 0:
        return None
    return lambda toys: chi2_tail(observed, toys, ndf, asymptotic)


def chi2_tail(observed: float, toys: np.ndarray, ndf: float,
              asymptotic: float | None = None) -> float:
    r"""A p-value beyond every toy: the :math:`\chi^2_\nu` law with its scale fitted to the
    toys (:math:`c = \langle t^*\rangle/\nu`, the law's mean being :math:`\nu`; the scaled
    χ² of Satterthwaite, Biometrics 2 (1946) 110), never below the analytic ``asymptotic``
    p-value. An estimate of how strong, not a bound."""
    mean = float(np.mean(toys)) if toys.size else 0.0
    if not (ndf > 0 and mean > 0 and observed > 0):
        return 1.0
    fitted = float(stats.chi2.sf(observed * ndf / mean, ndf))
    return max(fitted, asymptotic if asymptotic is not None and np.isfinite(asymptotic)
               else 0.0)
