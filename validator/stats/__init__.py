"""Statistical tests: pure functions of histograms and arrays, no I/O.

Every test returns a :class:`GofResult` (``statistic``, ``pvalue``, ``ndf``, an effect size,
how the p-value was obtained, whether its asymptotics hold). The ``method`` names are the values
stored in DuckDB ``tests.method``:

- ``chi2_uw``: Gagunashvili's chi² for unweighted vs weighted histograms (ROOT ``Chi2Test`` "UW").
- ``saturated``: Poisson likelihood ratio against the saturated model, free normalisation,
  Barlow-Beeston-lite simulation statistical uncertainty.
- ``ks``, ``ad``: weighted Kolmogorov-Smirnov and Anderson-Darling with Kish's n_eff.
- ``corr_pearson``, ``corr_spearman``: correlation of a pair in simulation vs data.
- ``dependence``: a pair's 2D test after the simulation is raked to the data's marginals.
"""

from __future__ import annotations

from validator.stats.binned import max_abs_ratio_deviation, merge_histogram, merge_sparse_bins
from validator.stats.chi2 import chi2_uw
from validator.stats.correlation import (
    corr_pearson,
    corr_spearman,
    moment_sums,
    pearson_from_moments,
    spearman_from_table,
)

# binds the function `dependence` over the submodule of the same name
from validator.stats.dependence import dependence, ipf
from validator.stats.edf import (
    ad_hist,
    ad_weighted,
    edf_hist_tests,
    ks_hist,
    ks_weighted,
    wasserstein_hist,
)
from validator.stats.likelihood import saturated
from validator.stats.result import GofResult

__all__ = [
    "GofResult",
    "ad_hist",
    "ad_weighted",
    "chi2_uw",
    "corr_pearson",
    "corr_spearman",
    "dependence",
    "edf_hist_tests",
    "ipf",
    "ks_hist",
    "ks_weighted",
    "max_abs_ratio_deviation",
    "merge_histogram",
    "merge_sparse_bins",
    "moment_sums",
    "pearson_from_moments",
    "saturated",
    "spearman_from_table",
    "wasserstein_hist",
]
