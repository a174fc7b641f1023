"""Binning invariants of the plan."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from validator.errors import InputError
from validator.stages.plan import (
    ColumnProfile,
    PlanConfig,
    choose_pairs,
    classify_columns,
    make_plan,
    plan_feature,
    uniform_keys,
)


def _profile(x: np.ndarray, seed: int = 0, start: int = 0) -> ColumnProfile:
    x = np.asarray(x, dtype=float)
    return ColumnProfile.of(x, uniform_keys(np.arange(start, start + len(x)), 0, seed))


def test_continuous_bins_are_equal_population_from_data():
    rng = np.random.default_rng(1)
    data = rng.exponential(3.0, 50_000)
    sim = rng.exponential(3.0, 80_000)
    fp = plan_feature("x", _profile(sim), _profile(data), "float", PlanConfig())
    edges = np.asarray(fp.edges)
    assert fp.kind == "continuous"
    assert len(edges) == 11 and np.all(np.diff(edges) > 0)
    counts, _ = np.histogram(np.clip(data, edges[0], edges[-1]), edges)
    # equal population within the reservoir's sampling precision
    assert counts.min() > 0.9 * len(data) / 10 and counts.max() < 1.1 * len(data) / 10
    # the pair binning is the same or coarser, the fine binning finer
    assert len(fp.pair_edges) <= len(fp.edges) and len(fp.fine_edges) > len(fp.edges)


def test_bins_shrink_with_few_events():
    rng = np.random.default_rng(2)
    data = rng.normal(size=90)
    fp = plan_feature("x", _profile(rng.normal(size=500)), _profile(data), "float", PlanConfig())
    assert fp.n_bins == 4  # 90 events // 20 per bin
    cfg = PlanConfig()
    assert (plan_feature("x", _profile(data), _profile(data[:30]), "float", cfg)
            == "too few data events (30) for two bins of 20")


def test_integer_mass_points_merge_duplicate_edges():
    rng = np.random.default_rng(3)
    # a continuous-looking integer variable with a large spike at zero (e.g. a track count)
    data = np.where(rng.random(40_000) < 0.5, 0, rng.integers(1, 200, 40_000)).astype(float)
    fp = plan_feature("ntrk", _profile(data), _profile(data), "int", PlanConfig())
    edges = np.asarray(fp.edges)
    assert np.all(np.diff(edges) > 0)
    assert fp.n_bins < 10  # the edges inside the spike collapsed into one
    assert fp.kind == "continuous"  # more distinct values than max_discrete_values


def test_discrete_one_bin_per_value_and_sparse_values_merged():
    rng = np.random.default_rng(4)
    data = rng.poisson(1.0, 20_000).astype(float)  # values 0..8, the tail is sparse
    fp = plan_feature("njet", _profile(data), _profile(data), "int", PlanConfig())
    assert fp.kind == "discrete"
    edges = np.asarray(fp.edges)
    counts, _ = np.histogram(np.clip(data, edges[0], edges[-1]), edges)
    assert counts.min() >= PlanConfig().min_data_per_bin
    assert edges[:4].tolist() == [-0.5, 0.5, 1.5, 2.5]  # the populated values keep a bin each
    booleans = (rng.random(1000) < 0.3).astype(float)
    fb = plan_feature("flag", _profile(booleans), _profile(booleans), "bool", PlanConfig())
    assert fb.kind == "discrete" and fb.edges == (-0.5, 0.5, 1.5)


def test_sentinels_are_counted_and_excluded():
    rng = np.random.default_rng(5)
    data = rng.normal(50, 5, 10_000)
    data[:500] = -999.0
    prof = _profile(data)
    assert prof.n_sentinel == 500 and prof.n_valid == 9_500
    fp = plan_feature("x", prof, prof, "float", PlanConfig())
    assert fp.edges[0] > 0  # the binning does not stretch down to -999
    assert fp.n_sentinel_data == 500


def test_constant_and_all_nan_columns():
    const = _profile(np.full(1000, 3.0))
    assert plan_feature("c", const, const, "float", PlanConfig()) == "constant in both samples"
    nan = _profile(np.full(1000, np.nan))
    message = ("simulation: feature 'bad' has no finite value (all NaN/inf/sentinel); "
               "leave it out with --exclude bad")
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        make_plan({"bad": nan}, {"bad": const}, {"bad": "float"}, weight=None, category=None,
                  requested=None, skipped={}, config=PlanConfig())


def test_profiles_merge_independently_of_the_split():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 5, 10_000).astype(float)
    x[::97] = np.nan
    whole = _profile(x)
    parts = _profile(x[:1234]) + _profile(x[1234:], start=1234)
    for attr in ("n", "n_nonfinite", "n_sentinel", "minimum", "maximum", "integral", "distinct"):
        assert getattr(whole, attr) == getattr(parts, attr)
    assert len(parts.values) == whole.n_valid  # under the reservoir size: every value kept


def test_reservoir_does_not_depend_on_chunking():
    rng = np.random.default_rng(9)
    x = rng.normal(size=30_000)
    whole = ColumnProfile.of(x, uniform_keys(np.arange(len(x)), 0, 5), capacity=1_000)
    parts = sum((ColumnProfile.of(x[a:a + 7_000], uniform_keys(np.arange(a, 30_000)[:7_000], 0, 5),
                                  capacity=1_000) for a in range(0, 30_000, 7_000)),
                ColumnProfile(capacity=1_000))
    assert np.array_equal(np.sort(whole.values), np.sort(parts.values))
    # the keys are uniform: the reservoir is a fair sample (KS against the full sample)
    keys = uniform_keys(np.arange(100_000), 0, 1)
    assert stats.kstest(keys, "uniform").pvalue > 0.001
    assert stats.ks_2samp(whole.values, x).pvalue > 0.001


def test_pairs_are_capped_and_the_cap_is_reported():
    pairs, k = choose_pairs(603, 1000)
    assert k == 45 and len(pairs) == 45 * 44 // 2
    assert choose_pairs(20, 1000)[0] == [(i, j) for i in range(20) for j in range(i + 1, 20)]
    rng = np.random.default_rng(7)
    profiles = {f"f{i}": _profile(rng.normal(size=500), i) for i in range(8)}
    plan = make_plan(profiles, profiles, {}, weight=None, category=None, requested=None,
                     skipped={}, config=PlanConfig(max_pairs=10))
    assert len(plan.pairs) == 10 and "max-pairs" in plan.notes[0]


def test_classify_columns():
    kinds = {"pt": "float", "run": "int", "Event": "int", "genWeight": "float", "Type": "string",
             "Jet_pt": "jagged", "isGood": "bool", "label": "int", "w": "float"}
    features, skipped = classify_columns(kinds, ["w"])
    assert features == ["pt", "isGood"]
    assert skipped == {
        "run": "identifier",
        "Event": "identifier",
        "genWeight": "weight-like",
        "Type": "string (usable as --category)",
        "Jet_pt": "jagged (name an element, e.g. NAME[0], in --features)",
        "label": "label/bookkeeping",
        "w": "weight/category column",
    }
    assert classify_columns({"x": "other"}, [])[1] == {"x": "unsupported type"}


def test_plan_round_trips_through_json():
    rng = np.random.default_rng(8)
    profiles = {"x": _profile(rng.normal(size=5000)),
                "k": _profile(rng.poisson(2, 5000).astype(float))}
    plan = make_plan(profiles, profiles, {"k": "int"}, weight="w", category=None, requested=None,
                     skipped={"Jet_pt": "jagged"}, config=PlanConfig(n_bins=8))
    assert type(plan).from_json(plan.to_json()) == plan


def test_spikes_get_a_bin_of_their_own():
    rng = np.random.default_rng(10)
    data = np.where(rng.random(20_000) < 0.75, 0.0, rng.exponential(1.0, 20_000))
    fp = plan_feature("iso", _profile(data), _profile(data), "float", PlanConfig())
    edges = np.asarray(fp.edges)
    counts, _ = np.histogram(np.clip(data, edges[0], edges[-1]), edges)
    assert edges[0] == 0.0 and edges[1] == np.nextafter(0.0, 1.0)
    assert counts[0] == int((data == 0).sum())  # the spike alone in the first bin


def test_few_valued_non_integer_feature_is_discrete():
    rng = np.random.default_rng(11)
    data = rng.choice([0.5, 1.5, 2.5], size=5_000, p=[0.3, 0.4, 0.3])
    fp = plan_feature("f", _profile(data), _profile(data), "float", PlanConfig())
    assert fp.kind == "discrete" and fp.values == (0.5, 1.5, 2.5)
    assert fp.edges == (0.0, 1.0, 2.0, 3.0)


def test_data_on_one_value_is_binned_on_both_samples():
    rng = np.random.default_rng(12)
    sim = rng.normal(5.0, 1.0, 5_000)
    data = np.full(2_000, 5.25)
    fp = plan_feature("c", _profile(sim), _profile(data, 1), "float", PlanConfig())
    assert not isinstance(fp, str) and fp.n_bins >= 5  # tested, not skipped
    flag_sim = (rng.random(4_000) < 0.5).astype(float)
    flag_data = np.ones(2_000)
    fb = plan_feature("flag", _profile(flag_sim), _profile(flag_data, 1), "bool", PlanConfig())
    assert not isinstance(fb, str) and fb.edges == (-0.5, 0.5, 1.5)


# ---------------------------------------------------------------- reasons for not testing


def _keyed(x, capacity: int = 100_000, keys=None) -> ColumnProfile:
    """A profile with explicit reservoir keys (seeded uniforms unless given)."""
    x = np.asarray(x, dtype=float)
    if keys is None:
        keys = np.random.default_rng(len(x)).random(len(x))
    return ColumnProfile.of(x, np.asarray(keys, dtype=float), capacity=capacity)


def _reason_case(case: str) -> tuple[ColumnProfile, ColumnProfile, str]:
    """(simulation, data, kind hint) that plan_feature cannot bin, one per reason."""
    rng = np.random.default_rng(20)
    normal = _keyed(rng.normal(size=500))
    if case == "no data":
        return normal, _keyed(np.full(100, np.nan)), "float"
    if case == "no simulation":
        return _keyed(np.r_[np.full(50, -999.0), np.full(50, np.inf)]), normal, "float"
    if case == "constant":
        return _keyed(np.full(300, 3.0)), _keyed(np.full(200, 3.0)), "float"
    if case == "discrete":
        # data 10 x 0 and 15 x 1, simulation 5 x 0: no two groups of 20, even pooled
        return _keyed(np.zeros(5)), _keyed(np.r_[np.zeros(10), np.ones(15)]), "bool"
    if case == "few events":
        return normal, _keyed(rng.normal(size=30)), "float"
    assert case == "single value"
    # data all at 5; the simulation's 70 other values (> MAX_DISTINCT distinct, so not
    # discrete) hold the largest keys and miss the reservoir, which holds only 5s
    sim = np.r_[np.full(1000, 5.0), np.linspace(6.0, 7.0, 70)]
    keys = np.r_[np.linspace(0.0, 0.5, 1000), np.linspace(0.9, 0.99, 70)]
    return _keyed(sim, capacity=500, keys=keys), _keyed(np.full(200, 5.0)), "float"


REASONS = {
    "no data": "no valid value in data",
    "no simulation": "no valid value in simulation",
    "constant": "constant in both samples",
    "discrete": "fewer than two values with 20 events each",
    "few events": "too few data events (30) for two bins of 20",
    "single value": "a single populated value",
}


@pytest.mark.parametrize("case", list(REASONS))
def test_plan_feature_gives_the_specific_reason(case):
    sim, data, kind = _reason_case(case)
    assert plan_feature("x", sim, data, kind, PlanConfig()) == REASONS[case]


def test_thresholds_in_the_reasons_follow_the_config():
    sim, data, _ = _reason_case("few events")
    cfg = PlanConfig(min_data_per_bin=17.5)
    assert plan_feature("x", sim, data, "float", cfg) == (
        "too few data events (30) for two bins of 17.5")
    sim, data, _ = _reason_case("discrete")
    assert plan_feature("x", sim, data, "bool", PlanConfig(min_data_per_bin=30)) == (
        "fewer than two values with 30 events each")


def _plan(sim: dict, data: dict, requested=None, skipped=None):
    return make_plan(sim, data, {}, weight=None, category=None, requested=requested,
                     skipped=dict(skipped or {}), config=PlanConfig())


def test_make_plan_records_the_reason_of_each_skipped_feature():
    good = _keyed(np.random.default_rng(21).normal(size=400))
    sims, datas = {"good": good}, {"good": good}
    for case in ("constant", "discrete", "few events", "single value"):
        sims[case], datas[case], _ = _reason_case(case)
    sims["empty"] = datas["empty"] = _keyed(np.full(20, np.nan))
    plan = _plan(sims, datas, skipped={"Jet_pt": "jagged"})
    assert plan.feature_names == ["good"]
    assert plan.skipped == {
        "Jet_pt": "jagged",
        # no kind hints: the two-valued column is discrete by its number of values
        "constant": "constant in both samples",
        "discrete": "fewer than two values with 20 events each",
        "few events": "too few data events (30) for two bins of 20",
        "single value": "a single populated value",
        "empty": "no valid value in either sample (all NaN/inf/sentinel)",
    }


@pytest.mark.parametrize(
    ("case", "requested", "message"),
    [
        ("no data", None, "data: feature 'x' has no finite value (all NaN/inf/sentinel); "
                          "leave it out with --exclude x"),
        ("no data", ["x"], "data: feature 'x' has no finite value (all NaN/inf/sentinel)"),
        ("no simulation", None, "simulation: feature 'x' has no finite value "
                                "(all NaN/inf/sentinel); leave it out with --exclude x"),
        ("few events", ["x"], "feature 'x': too few data events (30) for two bins of 20"),
        ("single value", ["x"], "feature 'x': a single populated value"),
    ],
)
def test_make_plan_errors_give_the_specific_reason(case, requested, message):
    sim, data, _ = _reason_case(case)
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        _plan({"x": sim}, {"x": data}, requested=requested)


def test_make_plan_with_nothing_left_lists_the_reasons():
    sim, data, _ = _reason_case("constant")
    few_sim, few_data, _ = _reason_case("few events")
    # a requested constant feature is skipped, not an error; then nothing is left
    message = ("no feature left to test (all columns were skipped: Type: string (usable as "
               "--category); c: constant in both samples; f: too few data events (30) for two "
               "bins of 20)")
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        _plan({"c": sim, "f": few_sim}, {"c": data, "f": few_data},
              skipped={"Type": "string (usable as --category)"})
    with pytest.raises(InputError, match=re.escape("skipped: c: constant in both samples)")):
        _plan({"c": sim}, {"c": data}, requested=["c"])


def test_sorted_quantiles_equal_numpys_quantile_bit_for_bit():
    from validator.stages.plan import sorted_quantiles

    rng = np.random.default_rng(31)
    samples = [rng.normal(size=1), rng.normal(size=2), rng.normal(size=1001),
               rng.integers(0, 4, 500).astype(float),  # ties: spikes in the edges
               rng.exponential(size=2000) * 1e6, np.round(rng.normal(size=777), 2),
               np.full(50, 3.5)]
    for values in samples:
        for probs in (np.linspace(0.0, 1.0, 1001), np.linspace(0.0, 1.0, 7),
                      [0.16, 0.5, 0.84], [0.005, 0.995], rng.random(50), [0.0], [1.0]):
            expected = np.quantile(values, probs)
            got = sorted_quantiles(np.sort(values), probs)
            np.testing.assert_array_equal(got, expected)


def test_columns_valid_everywhere_share_one_reservoir_selection_with_the_same_result():
    from validator.stages.plan import ScanPart

    rng = np.random.default_rng(8)
    capacity = 1_000

    def part(start: int, n: int) -> ScanPart:
        keys = uniform_keys(np.arange(start, start + n), 0, 3)
        first = np.argpartition(keys, capacity)[:capacity]
        smallest = (first, keys[first])
        c = rng.normal(size=n)
        c[rng.random(n) < 0.1] = np.nan  # not valid everywhere: a selection of its own
        columns = {"a": rng.normal(size=n), "b": rng.exponential(size=n), "c": c}
        shared = {k: ColumnProfile.of(x, keys, capacity, smallest) for k, x in columns.items()}
        plain = {k: ColumnProfile.of(x, keys, capacity) for k, x in columns.items()}
        for k in columns:  # the shared selection is the column's own
            np.testing.assert_array_equal(shared[k].values, plain[k].values)
        return ScanPart(shared, 0.0, n, ()), plain

    parts = [part(start, 4_000) for start in range(0, 20_000, 4_000)]
    total = parts[0][0]
    plain = dict(parts[0][1])
    for scan, columns in parts[1:]:
        total = total + scan
        plain = {k: plain[k] + columns[k] for k in plain}
    for k in plain:
        np.testing.assert_array_equal(total.profiles[k].keys, plain[k].keys)
        np.testing.assert_array_equal(total.profiles[k].values, plain[k].values)
    assert total.profiles["a"].keys is total.profiles["b"].keys  # selected once for both
    assert total.profiles["c"].keys is not total.profiles["a"].keys


def test_sentinels_are_what_numpys_isin_finds():
    from validator.stages.plan import SENTINEL_VALUES, is_sentinel

    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 300.0, (4, 5_000))
    x.flat[rng.integers(0, x.size, 400)] = rng.choice([*SENTINEL_VALUES, np.nan, np.inf,
                                                       -np.inf, -99.5, -1000.0], 400)
    np.testing.assert_array_equal(is_sentinel(x), np.isin(x, SENTINEL_VALUES))
    assert not is_sentinel(np.abs(x[0])).any()
