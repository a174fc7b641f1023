"""The statistics' public API, pinned (as pyhf's ``tests/test_public_api.py``): what
``validator.stats`` exports, the calling convention of every test (data first, then the
simulation, options keyword-only), and type hints on every public function. A change here is
a change of the public contract: make it on purpose, with this table."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import validator.stats
from validator.stats import toys

POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD

#: The tests of the catalogue: their positional parameters, data first.
CALLING_CONVENTION = {
    "chi2_uw": ("data_counts", "sim_sumw", "sim_sumw2"),
    "saturated": ("data_counts", "sim_sumw", "sim_sumw2"),
    "dependence": ("data_counts", "sim_sumw", "sim_sumw2"),
    "ks_hist": ("data_counts", "sim_sumw", "sim_sumw2_total", "data_sumw2_total"),
    "ad_hist": ("data_counts", "sim_sumw", "sim_sumw2_total", "data_sumw2_total"),
    "edf_hist_tests": ("data_counts", "sim_sumw", "sim_sumw2_total", "data_sumw2_total"),
    "ks_weighted": ("x_data", "x_sim", "w_sim"),
    "ad_weighted": ("x_data", "x_sim", "w_sim"),
    "wasserstein_hist": ("data_counts", "sim_sumw", "positions"),
    "corr_pearson": ("data_S", "data_neff", "sim_S", "sim_neff"),
    "corr_spearman": ("data_table", "data_neff", "sim_table", "sim_neff"),
}
#: Tests outside the package's top level, with the same convention.
MODULE_TESTS = {
    ("systematics", "saturated_syst"): ("data_counts", "sim_sumw", "sim_sumw2"),
    ("edf", "wasserstein_weighted"): ("x_data", "x_sim", "w_sim"),
}


def test_the_package_exports():
    assert sorted(validator.stats.__all__) == sorted([
        "GofResult", "ad_hist", "ad_weighted", "chi2_uw", "corr_pearson", "corr_spearman",
        "dependence", "edf_hist_tests", "ipf", "ks_hist", "ks_weighted",
        "max_abs_ratio_deviation", "merge_histogram", "merge_sparse_bins", "moment_sums",
        "pearson_from_moments", "saturated", "spearman_from_table", "wasserstein_hist"])
    for name in validator.stats.__all__:
        assert hasattr(validator.stats, name), name


def test_the_one_toy_engine_exports():
    assert {"ToyOptions", "ToyOutcome", "run_toys", "run_toy_columns", "toy_pvalue",
            "clopper_pearson", "chi2_tail", "chi2_tail_law"} <= set(toys.__all__)
    assert list(inspect.signature(toys.run_toys).parameters) == [
        "observed", "draw", "options", "tail"]


@pytest.mark.parametrize("name", sorted(CALLING_CONVENTION))
def test_data_first_and_options_keyword_only(name):
    _check(getattr(validator.stats, name), CALLING_CONVENTION[name])


@pytest.mark.parametrize(("module", "name"), sorted(MODULE_TESTS))
def test_module_tests_follow_the_convention(module, name):
    function = getattr(importlib.import_module(f"validator.stats.{module}"), name)
    _check(function, MODULE_TESTS[(module, name)])


def _check(function, positional):
    params = list(inspect.signature(function).parameters.values())
    assert tuple(p.name for p in params if p.kind == POSITIONAL) == positional
    options = [p for p in params if p.kind != POSITIONAL]
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in options), options


def _public_functions():
    for info in pkgutil.iter_modules(validator.stats.__path__):
        module = importlib.import_module(f"validator.stats.{info.name}")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj


def test_every_public_function_has_type_hints():
    missing = []
    for name, function in _public_functions():
        sig = inspect.signature(function)
        bare = [p.name for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if bare or sig.return_annotation is inspect.Signature.empty:
            missing.append((name, bare))
    assert not missing
