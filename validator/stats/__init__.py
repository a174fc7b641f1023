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

import importlib
import sys
import types
from typing import Any

#: Each exported name and the submodule that defines it. Loaded on first use (PEP 562): the
#: fill's workers import :mod:`validator.stats.histogram` and the compiled kernels through
#: this package, and an eager import of every test here would load scipy.stats into the
#: server they are forked from (0.5 s of its start-up, before any worker can run).
_EXPORTS = {
    "GofResult": "result",
    "ad_hist": "edf",
    "ad_weighted": "edf",
    "chi2_uw": "chi2",
    "corr_pearson": "correlation",
    "corr_spearman": "correlation",
    "dependence": "dependence",
    "edf_hist_tests": "edf",
    "ipf": "dependence",
    "ks_hist": "edf",
    "ks_weighted": "edf",
    "max_abs_ratio_deviation": "binned",
    "merge_histogram": "binned",
    "merge_sparse_bins": "binned",
    "moment_sums": "correlation",
    "pearson_from_moments": "correlation",
    "saturated": "likelihood",
    "spearman_from_table": "correlation",
    "wasserstein_hist": "edf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The package, whose attribute ``dependence`` is the test, never the submodule of the
    same name: importing a submodule sets the package's attribute of its name, which would
    otherwise hide the function (as the eager ``from .dependence import dependence`` did not)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS \
                and _EXPORTS[name] == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
