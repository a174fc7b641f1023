"""The result value every statistical test returns.

Modelled on ``scipy.stats``: a small immutable value with ``statistic`` and ``pvalue``,
plus what a reviewer needs beside them (degrees of freedom, an effect size, how the
p-value was obtained, and whether the asymptotics behind it hold).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GofResult:
    """Outcome of one goodness-of-fit or comparison test.

    Attributes
    ----------
    method:
        Catalogue name of the test (``chi2_uw``, ``saturated``, ``ks``, ``ad``, ``corr``,
        ``dependence``); stored in DuckDB ``tests.method``.
    statistic:
        The test statistic.
    pvalue:
        The p-value of the statistic under the null hypothesis "simulation describes data".
    ndf:
        Degrees of freedom where the test has them, else ``None``.
    effect_size:
        A size of the disagreement that does not shrink with the sample size
        (its meaning is named by ``effect_name``), or ``None``.
    effect_name:
        What ``effect_size`` is, e.g. ``max_abs_ratio_dev`` or ``delta_pearson``.
    pvalue_method:
        ``asymptotic``, ``toys`` or ``exact``.
    n_toys:
        Number of pseudo-experiments behind a toy p-value (the total, when more toys were
        added adaptively), else ``None``.
    reliable:
        ``False`` when the asymptotic approximation behind the p-value is not trusted
        (too few events or bins); such a result must not be reported as a confident failure.
    residuals:
        Per-bin normalised residuals, where the test defines them.
    details:
        Any further named numbers (kept small: they are stored as JSON).
    pvalue_is_bound:
        True when no toy reached the statistic: the true p-value is below ``pvalue``, which
        is ``1/(1+n_toys)``.
    """

    method: str
    statistic: float
    pvalue: float
    ndf: float | None = None
    effect_size: float | None = None
    effect_name: str | None = None
    pvalue_method: str = "asymptotic"
    n_toys: int | None = None
    reliable: bool = True
    residuals: np.ndarray | None = field(default=None, repr=False, compare=False)
    details: dict[str, Any] = field(default_factory=dict, compare=False)
    pvalue_is_bound: bool = False
