"""The CI gate: every rule kind passes and fails on hand-built tables (references: scipy's
binomial test and KS test), and end to end through the command line: exit codes, the stored
verdicts, JUnit read back with junitparser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, load_sample_generator, make_frames
from junitparser import Failure, JUnitXml
from scipy import stats

from validator.cli import main
from validator.gate.judge import binomial_pvalue, judge
from validator.gate.junit import junit_xml
from validator.gate.rules import RulesFile
from validator.results.store import SCHEMA, ensure_schema, query

RULES = REPO / "rules"


# ------------------------------------------------------------------ hand-built tables


def _frame(table: str, rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[c for c, _ in SCHEMA[table]])


def _test(x: str, y: str | None = None, *, p: float = 0.5, holm: float | None = None,
          bh: float | None = None, effect: float = 0.1, effect_name: str = "max_abs_ratio_dev",
          method: str = "chi2_uw", kind: str | None = None, category: str = "all",
          reliable: bool = True, not_run: str | None = None, pvalue_method: str = "asymptotic",
          ) -> dict:
    ran = not_run is None
    return {"run_id": "r1", "category": category, "kind": kind or ("1d" if y is None else "2d"),
            "method": method, "feature_x": x, "feature_y": y,
            "pvalue": p if ran else None, "p_holm": (holm if holm is not None else p)
            if ran else None, "p_bh": (bh if bh is not None else p) if ran else None,
            "effect_size": effect if ran else None, "effect_name": effect_name if ran else None,
            "reliable": reliable, "passed": (not (reliable and p < 0.05)) if ran else None,
            "not_run_reason": not_run, "pvalue_method": pvalue_method if ran else None,
            "pvalue_is_bound": False}


def _tables(tests: list[dict], features: list[str] | None = None, **run) -> dict:
    for i, t in enumerate(tests):
        t["test_id"] = i
    row = {"run_id": "r1", "alpha": 0.05, "n_sim": 1000, "n_data": 1000, "config_json": "{}",
           "n_reliable": sum(bool(t["reliable"]) and t["pvalue"] is not None for t in tests),
           **run}
    feats = features if features is not None else sorted(
        {t["feature_x"] for t in tests} | {t["feature_y"] for t in tests if t["feature_y"]})
    return {"runs": _frame("runs", [row]), "tests": _frame("tests", tests),
            "features": _frame("features", [
                {"run_id": "r1", "category": "all", "feature": f, "n_nan_sim": 0,
                 "n_nan_data": 0, "n_sentinel_sim": 0, "n_sentinel_data": 0} for f in feats]),
            "models": _frame("models", []), "criticality": _frame("criticality", [])}


def _rules(*rules: dict) -> RulesFile:
    return RulesFile.model_validate({"rules_version": 1, "name": "t", "rules": list(rules)})


def _one(tables: dict, rule: dict):
    verdict = judge(tables, _rules({"name": "r", **rule}))
    (result,) = verdict.rules
    assert result.passed == verdict.passed or result.severity == "warning"
    return result, verdict


def _full(features: list[str]) -> list[dict]:
    """A 1D test per feature and a 2D test per pair, all passing."""
    tests = [_test(f) for f in features]
    tests += [_test(a, b) for i, a in enumerate(features) for b in features[i + 1:]]
    return tests


# ------------------------------------------------------------------ per_test


def test_per_test_fails_on_significance_and_effect_above_the_floor():
    tables = _tables([_test("met", p=1e-6, holm=1e-5, effect=0.10), _test("ht", p=0.3),
                      _test("met", "ht", p=1e-4, holm=1e-3, effect=0.01,
                            effect_name="delta_pearson", method="corr_pearson", kind="corr")])
    rule = {"kind": "per_test", "effect_floors": {"max_abs_ratio_dev": 0.05,
                                                  "delta_pearson": 0.05}}
    result, verdict = _one(tables, rule)
    assert not result.passed
    assert result.details["failing_test_ids"] == [0]
    assert result.details["below_floor_test_ids"] == [2]  # significant, too small to matter
    assert "1 of 3 tests fail" in result.reason and "met (chi2_uw) Holm p 1.0e-05" in result.reason
    assert [t["test_id"] for t in verdict.failing_tests] == [0]
    # the same difference below the floor passes
    tables["tests"].loc[0, "effect_size"] = 0.04
    result, _ = _one(tables, rule)
    assert result.passed and "2 more significant but below their effect floor" in result.reason


def test_per_test_reads_the_chosen_p_value():
    tables = _tables([_test("met", p=0.01, holm=0.2, bh=0.04)])
    for choice, passed in (("raw", False), ("holm", True), ("bh", False)):
        result, _ = _one(tables, {"kind": "per_test", "p_value": choice})
        assert result.passed is passed, choice


def test_unreliable_and_unrun_tests_never_fail_unless_required_to_run():
    tables = _tables([_test("met", p=1e-9, reliable=False),
                      _test("ht", not_run="one bin left after merging sparse bins"),
                      _test("ht", p=0.4, method="ks")])
    result, _ = _one(tables, {"kind": "per_test", "p_value": "raw"})
    assert result.passed
    result, verdict = _one(tables, {"kind": "per_test", "require_run": ["h*"]})
    assert not result.passed and result.details["not_run_test_ids"] == [1]
    assert "1 required tests did not run: ht chi2_uw (one bin left" in result.reason
    assert verdict.failing_tests[0]["why"].startswith("did not run")


def test_per_test_selection_globs_and_overrides():
    tests = [_test("jet1_pt", p=1e-6), _test("met", p=1e-6), _test("met", "jet1_pt", p=1e-6),
             _test("met", category="ee", p=1e-6)]
    tables = _tables(tests)
    result, _ = _one(tables, {"kind": "per_test", "select": {"features": ["jet*"]}})
    assert result.details["n_selected"] == 2  # a pair is selected by either feature
    assert result.details["failing_test_ids"] == [0, 2]
    result, _ = _one(tables, {"kind": "per_test", "select": {
        "kinds": ["1d"], "exclude_features": ["jet*"], "categories": ["all"]}})
    assert result.details["failing_test_ids"] == [1]
    # a tighter threshold for met: its tests pass, the others still fail
    result, _ = _one(tables, {"kind": "per_test",
                              "overrides": [{"features": ["met"], "threshold": 1e-7}]})
    assert result.details["failing_test_ids"] == [0]
    # a larger effect floor for met only
    result, _ = _one(tables, {"kind": "per_test", "overrides": [
        {"features": ["met"], "effect_floors": {"max_abs_ratio_dev": 0.5}}]})
    assert result.details["failing_test_ids"] == [0]


def test_a_selection_matching_nothing_fails_unless_allowed():
    tables = _tables([_test("met")])
    result, _ = _one(tables, {"kind": "per_test", "select": {"features": ["mett"]}})
    assert not result.passed and "matches no test" in result.reason
    result, _ = _one(tables, {"kind": "per_test", "select": {"features": ["mett"]},
                              "allow_empty": True})
    assert result.passed


# ------------------------------------------------------------------ failure_count


def _counted(n: int, n_failed: int, **run) -> dict:
    p = [0.01] * n_failed + list(np.linspace(0.06, 1.0, n - n_failed))
    return _tables([_test(f"f{i}", p=v) for i, v in enumerate(p)], **run)


def test_failure_count_binomial_against_scipy():
    # 12 failures among 100 tests at alpha = 0.05: P(X >= 12), X ~ Binomial(100, 0.05)
    reference = stats.binom.sf(11, 100, 0.05)
    assert binomial_pvalue(12, 100, 0.05) == pytest.approx(reference, rel=1e-10)
    assert reference == pytest.approx(0.004274, rel=1e-3)
    result, _ = _one(_counted(100, 12), {"kind": "failure_count", "threshold": 0.01})
    assert not result.passed and result.details["source"] == "binomial"
    assert result.details["p_value"] == pytest.approx(reference, rel=1e-10)
    assert "12 failures of 100 reliable histogram tests at alpha=0.05 (expected 5.0)" \
        in result.reason
    result, _ = _one(_counted(100, 5), {"kind": "failure_count", "threshold": 0.01})
    assert result.passed
    assert result.details["p_value"] == pytest.approx(stats.binom.sf(4, 100, 0.05), rel=1e-10)
    # another alpha counts other failures: 12 below 0.02, P(X >= 12 | 100, 0.02)
    result, _ = _one(_counted(100, 12), {"kind": "failure_count", "alpha": 0.02,
                                         "threshold": 0.01})
    assert result.details["n_failed"] == 12
    assert result.details["p_value"] == pytest.approx(stats.binom.sf(11, 100, 0.02), rel=1e-10)


def test_failure_count_prefers_the_run_level_test():
    run = {"p_global_nfail": 0.003, "p_global_min": 0.2, "n_global_failed": 9,
           "n_global_tests": 40}
    result, _ = _one(_counted(100, 5, **run), {"kind": "failure_count"})
    assert not result.passed and result.details["source"] == "global"
    assert "P(>= 9 failures of 40 histogram tests) = 0.003 < 0.01" in result.reason
    result, _ = _one(_counted(100, 12, **{**run, "p_global_nfail": 0.4}),
                     {"kind": "failure_count"})
    assert result.passed  # correlated tests: the run-level figure, not the binomial, decides
    result, _ = _one(_counted(100, 5, **run), {"kind": "failure_count", "source": "global_min"})
    assert result.passed and result.details["p_value"] == 0.2
    # at another alpha the run-level count does not apply: auto falls back to the binomial
    result, _ = _one(_counted(100, 5, **run), {"kind": "failure_count", "alpha": 0.01})
    assert result.details["source"] == "binomial"
    # a run without the run-level test fails a rule that requires it
    result, _ = _one(_counted(100, 5), {"kind": "failure_count", "source": "global"})
    assert not result.passed and "no run-level test" in result.reason


# ------------------------------------------------------------------ uniformity


def test_uniformity_stored_and_recomputed_against_scipy():
    uniform = (np.arange(50) + 0.5) / 50
    tables = _tables([_test(f"f{i}", p=v) for i, v in enumerate(uniform)], p_uniformity=1e-5)
    result, _ = _one(tables, {"kind": "uniformity"})  # everything selected: the stored value
    assert not result.passed and result.details["source"] == "stored"
    result, _ = _one(tables, {"kind": "uniformity", "source": "recompute"})
    assert result.passed
    assert result.details["p_value"] == pytest.approx(stats.kstest(uniform, "uniform").pvalue)
    piled = np.linspace(0.001, 0.2, 50)  # p-values piled up at small values
    tables = _tables([_test(f"f{i}", p=v) for i, v in enumerate(piled)], p_uniformity=0.5)
    result, _ = _one(tables, {"kind": "uniformity", "select": {"kinds": ["1d"]}})
    assert result.details["source"] == "recompute" and not result.passed
    assert result.details["p_value"] == pytest.approx(stats.kstest(piled, "uniform").pvalue)
    result, verdict = _one(tables, {"kind": "uniformity", "source": "recompute",
                                    "severity": "warning"})
    assert not result.passed and verdict.passed  # a warning never fails the gate


# ------------------------------------------------------------------ coverage


def test_coverage_of_the_runs_features():
    features = ["a", "b", "c"]
    result, _ = _one(_tables(_full(features)), {"kind": "coverage"})
    assert result.passed and result.reason.startswith("3 features: tested in 1D, in every pair")
    tests = [t for t in _full(features) if (t["feature_x"], t["feature_y"]) != ("b", "c")]
    tests[0] = _test("a", not_run="no data event in the category")
    result, _ = _one(_tables(tests, features), {"kind": "coverage"})
    assert not result.passed
    assert result.details["missing_1d"] == ["a"] and result.details["missing_pairs"] == ["b × c"]
    assert "1 of 3 input pairs without a 2D test that ran: b × c" in result.reason
    assert "1 tests of inputs left unrun: a chi2_uw (no data event" in result.reason


def test_coverage_of_invalid_values():
    tables = _tables(_full(["a", "b"]))
    tables["features"].loc[1, ["n_nan_data", "n_sentinel_sim"]] = [300, 40]
    result, _ = _one(tables, {"kind": "coverage", "max_nan_fraction": 0.2})
    assert not result.passed and "b (sim 0.0%, data 30.0%)" in result.reason
    result, _ = _one(tables, {"kind": "coverage", "max_nan_fraction": 0.5,
                              "max_sentinel_fraction": 0.05})
    assert result.passed
    result, _ = _one(tables, {"kind": "coverage", "max_sentinel_fraction": 0.01})
    assert not result.passed and "above 1.0% sentinel values: b (sim 4.0%" in result.reason


def test_coverage_of_the_model_inputs():
    tables = _tables(_full(["a", "b"]), model_id="sha")
    tables["models"] = _frame("models", [{"run_id": "r1", "model_id": "sha",
                                          "inputs": ["a", "b", "d"]}])
    result, _ = _one(tables, {"kind": "coverage"})
    assert not result.passed and result.details["missing_1d"] == ["d"]
    assert result.details["missing_pairs"] == ["a × d", "b × d"]
    tables["models"].at[0, "inputs"] = ["a", "b"]
    result, _ = _one(tables, {"kind": "coverage", "inputs": "model"})
    assert result.passed and result.reason.startswith("2 model inputs")
    result, _ = _one(_tables(_full(["a", "b"])), {"kind": "coverage", "inputs": "model"})
    assert not result.passed and result.reason.startswith("no model audited")


# ------------------------------------------------------------------ importance


def _crit(x: str, y: str | None, rank: int, *, mismodelled: bool = False,
          important: bool = False, p_holm: float = 0.5, tested: bool = True) -> dict:
    return {"run_id": "r1", "model_id": "sha", "node": "output", "feature_x": x,
            "feature_y": y, "degree": 1 if y is None else 2, "importance": 1.0 / rank,
            "importance_rank": rank, "important": important,
            "worst_test_id": 0 if tested else None, "worst_method": "chi2_uw",
            "worst_p_holm": p_holm, "worst_effect_size": 0.2,
            "worst_effect_name": "max_abs_ratio_dev", "mismodelled": mismodelled}


def test_importance_without_a_model():
    tables = _tables([_test("a")])
    result, _ = _one(tables, {"kind": "importance"})
    assert result.passed and result.reason == "no model audited"
    result, _ = _one(tables, {"kind": "importance", "required": True})
    assert not result.passed and result.reason == "no model audited (required)"


def test_importance_top_inputs_and_important_pairs_must_pass():
    tables = _tables([_test("a")], model_id="sha")
    tables["criticality"] = _frame("criticality", [
        _crit("a", None, 1), _crit("b", None, 2), _crit("c", None, 3, mismodelled=True,
                                                           p_holm=1e-4),
        _crit("a", "b", 1, important=True), _crit("a", "c", 2, mismodelled=True)])
    result, _ = _one(tables, {"kind": "importance", "top_k": 2})
    assert result.passed
    assert result.reason == "the 2 most important inputs and 1 important pairs pass"
    result, _ = _one(tables, {"kind": "importance", "top_k": 3})
    assert not result.passed
    assert "c (output, rank 3): chi2_uw Holm p 1.0e-04 max_abs_ratio_dev 0.2" in result.reason
    result, _ = _one(tables, {"kind": "importance", "top_k": 1, "top_k_pairs": 2})
    assert not result.passed and "a × c" in result.reason
    # with a threshold of its own: Holm p of c 1e-4 passes 1e-5, fails 1e-3
    assert _one(tables, {"kind": "importance", "top_k": 3, "threshold": 1e-5})[0].passed
    assert not _one(tables, {"kind": "importance", "top_k": 3, "threshold": 1e-3})[0].passed
    assert _one(tables, {"kind": "importance", "top_k": 3, "threshold": 1e-3,
                         "effect_floors": {"max_abs_ratio_dev": 0.3}})[0].passed
    tables["criticality"].loc[1, "worst_test_id"] = None
    result, _ = _one(tables, {"kind": "importance", "top_k": 2})
    assert not result.passed and "b (output, rank 2): not tested" in result.reason


def test_importance_of_an_audited_model_without_a_ranking():
    tables = _tables([_test("a")], model_id="sha")
    assert _one(tables, {"kind": "importance"})[0].passed
    result, _ = _one(tables, {"kind": "importance", "required": True})
    assert not result.passed and "no importance ranking stored" in result.reason


# ------------------------------------------------------------------ run_config


def test_run_configuration_for_unblinding():
    rule = {"kind": "run_config", "require_systematics": True, "require_toys": True,
            "require_model": True, "require_blinding": True}
    result, _ = _one(_tables([_test("a")]), rule)
    assert not result.passed
    assert result.reason == ("no systematics; no toy p-values; no model audited; "
                             "no blinding (--blind)")
    config = json.dumps({"blind": "m_bb > 100", "systematics": ["jes"]})
    tables = _tables([_test("a", pvalue_method="toys")], model_id="sha", config_json=config)
    result, _ = _one(tables, rule)
    assert result.passed and result.reason == "present: systematics, toys, model, blinding"
    result, _ = _one(_tables([_test("a")]), {"kind": "run_config"})
    assert result.passed and result.reason == "nothing required"


def test_judge_recomputes_nothing_and_junit_lists_the_failing_tests():
    tables = _tables([_test("met", p=1e-6, effect=0.2), _test("ht", p=0.3)])
    before = {k: v.copy() for k, v in tables.items()}
    verdict = judge(tables, _rules({"kind": "per_test", "name": "p"},
                                   {"kind": "failure_count", "name": "n"}))
    for k, frame in tables.items():
        pd.testing.assert_frame_equal(frame, before[k])
    assert not verdict.passed and [r.name for r in verdict.failed_rules] == ["p"]
    assert {r.name: r.passed for r in verdict.rules} == {"p": False, "n": True}
    xml = JUnitXml.fromstring(junit_xml(verdict))
    suites = {s.name: s for s in xml}
    assert set(suites) == {"rules", "failing tests"}
    assert suites["rules"].tests == 2 and suites["rules"].failures == 1
    (case,) = list(suites["failing tests"])
    assert case.name == "[all] 1d chi2_uw met"
    (failure,) = case.result
    assert isinstance(failure, Failure)
    assert failure.message.startswith("p = 1.0e-06, Holm p = 1.0e-06, max_abs_ratio_dev = 0.2")


# ------------------------------------------------------------------ end to end




#: A few features of the sample analysis: the planted met scale and isolation correlation,
#: and m_ll as a control. 40k/20k events: met's 5 % scale is significant after Holm.
E2E_FEATURES = "met,m_ll,lep1_iso,lep2_iso"


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    generate = load_sample_generator()
    folder = tmp_path_factory.mktemp("samples")
    files = {}
    for name, planted in (("planted", True), ("null", False)):
        sim, data = generate.make_samples(n_sim=40_000, n_data=20_000, seed=3, planted=planted)
        files[name] = (folder / f"{name}_sim.parquet", folder / f"{name}_data.parquet")
        sim.write_parquet(files[name][0])
        data.write_parquet(files[name][1])
    return files


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _run_args(files: tuple[Path, Path], db: Path, *more: str) -> list[str]:
    return ["run", "--quiet", "--sim", str(files[0]), "--data", str(files[1]), "--weight",
            "weight", "--features", E2E_FEATURES, "--db", str(db), *more]


def test_a_mismodelled_input_fails_the_default_rules(capsys, sample_files, tmp_path):
    db, xml = tmp_path / "v.duckdb", tmp_path / "gate.xml"
    code, out, err = _cli(capsys, *_run_args(sample_files["planted"], db, "--rules",
                                             str(RULES / "default.yaml"), "--junit", str(xml)))
    assert code == 1, err
    fail = next(line for line in out.splitlines() if line.startswith("FAIL"))
    assert fail.startswith("FAIL  no-significant-mismodelling (per_test): ")
    assert "met (chi2_uw" in fail
    assert re.search(r"lep1_iso × lep2_iso \([^)]*corr_spearman", fail), fail
    # six of the fourteen histograms read by the run-level test fail: more than its
    # replicas allow (met in 1D, in its pairs, and the planted correlation)
    assert re.search(r"FAIL  failures-as-expected \(failure_count\): run-level test: "
                     r"P\(>= \d+ failures of \d+ histogram tests\)", out), out
    assert "PASS  inputs-covered (coverage)" in out and "gate FAILED: 2 of 4 rules" in out
    stored = query(db, "SELECT * FROM gate_results")
    assert len(stored) == 4 and stored["verdict_id"].nunique() == 1
    assert stored.set_index("rule").loc["no-significant-mismodelling", "reason"] in fail
    run = query(db, "SELECT gate_passed, rules_name, gate_rules_sha256 FROM runs").iloc[0]
    assert not run["gate_passed"] and run["rules_name"] == "default"
    suites = {s.name: s for s in JUnitXml.fromfile(str(xml))}
    names = [case.name for case in suites["failing tests"]]
    assert "[all] 1d chi2_uw met" in names and "[all] corr corr_pearson lep1_iso × lep2_iso" \
        in names
    assert all(n.startswith("[all] ") for n in names)
    assert "[all] 1d chi2_uw m_ll" not in names
    failed_rules = [c.name for c in suites["rules"]
                    if any(isinstance(r, Failure) for r in c.result)]
    assert failed_rules == ["no-significant-mismodelling", "failures-as-expected"]
    # a warning rule is skipped with its warning, neither a failure nor a silent pass
    warned = next(c for c in suites["rules"] if c.name == "p-values-uniform")
    assert [type(r).__name__ for r in warned.result] in ([], ["Skipped"])

    # re-judged with the strict rules: a second verdict set, nothing recomputed
    n_tests = query(db, "SELECT count(*) AS n FROM tests")["n"][0]
    code, out, err = _cli(capsys, "gate", "--db", str(db), "--run", "latest", "--rules",
                          str(RULES / "unblinding.yaml"))
    assert code == 1, err
    assert ("FAIL  configured-for-unblinding (run_config): no systematics; no model audited; "
            "no blinding (--blind)") in out
    assert "FAIL  important-inputs-pass (importance): no model audited (required)" in out
    assert "FAIL  model-inputs-covered (coverage): no model audited" in out
    strict = next(line for line in out.splitlines() if line.startswith("FAIL  no-sig"))
    assert "met (chi2_uw" in strict  # the planted reasons fail the strict rules too
    verdicts = query(db, "SELECT DISTINCT verdict_id, rules_name FROM gate_results")
    assert sorted(verdicts["rules_name"]) == ["default", "unblinding"]
    assert query(db, "SELECT count(*) AS n FROM tests")["n"][0] == n_tests
    assert query(db, "SELECT rules_name FROM runs")["rules_name"][0] == "unblinding"


def test_data_drawn_from_the_simulation_pass_the_default_rules(capsys, sample_files, tmp_path):
    db = tmp_path / "v.duckdb"
    code, out, err = _cli(capsys, *_run_args(sample_files["null"], db, "--rules",
                                             str(RULES / "default.yaml")))
    assert code == 0, err
    assert "gate PASSED: 4 of 4 rules pass" in out
    assert query(db, "SELECT gate_passed FROM runs")["gate_passed"][0]
    code, _, err = _cli(capsys, "gate", "--db", str(db), "--rules", str(RULES / "default.yaml"))
    assert code == 0, err
    assert query(db, "SELECT count(DISTINCT verdict_id) AS n FROM gate_results")["n"][0] == 2


@pytest.mark.slow
def test_a_null_run_with_the_network_and_systematics_passes_the_default_rules(
        capsys, sample_files, tmp_path):
    """With the sample network audited (outputs, Taylor tests) and the met-scale systematic
    (saturated_syst), data drawn from the simulation still pass: nothing the audit or the
    systematics add fails a clean run."""
    import polars as pl

    sim_path, _ = sample_files["null"]
    up, down = load_sample_generator().met_scale_variations(pl.read_parquet(sim_path))
    up.write_parquet(tmp_path / "up.parquet")
    down.write_parquet(tmp_path / "down.parquet")
    db = tmp_path / "v.duckdb"
    code, out, err = _cli(capsys, *_run_args(
        sample_files["null"], db, "--rules", str(RULES / "default.yaml"), "--model",
        str(REPO / "sample_data" / "classifier.onnx"), "--syst-file",
        f"met_scale={tmp_path / 'up.parquet'}:{tmp_path / 'down.parquet'}", "--syst-toys",
        "100"))
    assert code == 0, out + err
    assert "gate PASSED" in out
    kinds = set(query(db, "SELECT DISTINCT kind FROM tests")["kind"])
    methods = set(query(db, "SELECT DISTINCT method FROM tests")["method"])
    assert {"output", "taylor"} <= kinds and "saturated_syst" in methods


def test_a_bad_rules_file_is_exit_2_before_any_event_is_read(capsys, tmp_path):
    rules = tmp_path / "r.yaml"
    rules.write_text("rules_version: 1\nrules:\n  - kind: per_test\n    name: a\n"
                     "    p_value: holm\n    treshold: 0.01\n")
    code, _, err = _cli(capsys, "run", "--sim", str(tmp_path / "absent.parquet"), "--data",
                        str(tmp_path / "absent.parquet"), "--db", str(tmp_path / "v.duckdb"),
                        "--rules", str(rules))
    assert code == 2 and err.count("\n") == 1
    assert f"{rules}: line 6: rules[0].treshold: unknown key" in err
    code, _, err = _cli(capsys, "gate", "--db", str(tmp_path / "v.duckdb"), "--rules",
                        str(rules))
    assert code == 2 and "line 6: rules[0].treshold: unknown key" in err
    code, _, err = _cli(capsys, "run", "--sim", "s.parquet", "--data", "d.parquet",
                        "--junit", str(tmp_path / "g.xml"))
    assert code == 2 and "--junit needs --rules" in err


@pytest.mark.parametrize("case", ["missing", "empty file", "no tables", "no runs"])
def test_a_gate_over_a_database_without_runs_is_exit_2(capsys, tmp_path, case):
    db = tmp_path / "v.duckdb"
    if case == "empty file":
        db.write_bytes(b"")
    elif case != "missing":
        con = duckdb.connect(str(db))
        if case == "no runs":
            ensure_schema(con)
        con.close()
    code, _, err = _cli(capsys, "gate", "--db", str(db), "--rules",
                        str(RULES / "default.yaml"))
    assert code == 2, err
    assert err.startswith(f"validator: error: {db}") and err.count("\n") == 1


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_run_in_a_side_file_or_not_stored_is_judged_too(capsys, tmp_path):
    sim, data = make_frames(n_sim=4_000, n_data=2_000, shift=0.3, seed=5)
    sim.write_parquet(tmp_path / "s.parquet")
    data.write_parquet(tmp_path / "d.parquet")
    db, xml = tmp_path / "v.duckdb", tmp_path / "g.xml"
    base = ["run", "--quiet", "--sim", str(tmp_path / "s.parquet"), "--data",
            str(tmp_path / "d.parquet"), "--weight", "weight", "--rules",
            str(RULES / "default.yaml")]
    code, out, err = _cli(capsys, *base, "--no-db", "--junit", str(xml))
    assert code == 1, err
    assert "FAIL  no-significant-mismodelling" in out and "a (chi2_uw" in out
    assert "[all] 1d chi2_uw a" in [c.name for s in JUnitXml.fromfile(str(xml)) for c in s]
    assert not db.exists()
    assert _cli(capsys, *base, "--db", str(db))[0] == 1
    reader = subprocess.Popen([sys.executable, "-c", HOLD, str(db), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "holding"
        started = time.monotonic()
        code, out, err = _cli(capsys, *base, "--db", str(db), "--db-wait", "1")
        assert time.monotonic() - started < 50
    finally:
        reader.kill()
        reader.wait()
    assert code == 1, err
    (side,) = tmp_path.glob("v.*.pending.duckdb")
    assert "FAIL  no-significant-mismodelling" in out
    assert len(query(side, "SELECT * FROM gate_results")) == 4  # the verdict goes with the run
    assert main(["merge", "--db", str(db), str(side)]) == 0
    assert query(db, "SELECT count(DISTINCT run_id) AS n FROM gate_results")["n"][0] == 2


def test_the_rules_schema_command_prints_the_shipped_schema(capsys):
    code, out, _ = _cli(capsys, "rules-schema")
    assert code == 0 and out == (RULES / "rules.schema.json").read_text()


def _clean_run(with_model: bool) -> dict:
    tests = _full(["a", "b", "c"])
    for t in tests:
        t["pvalue_method"] = "toys"
    run = {"p_global_nfail": 0.4, "p_global_min": 0.3, "n_global_failed": 2,
           "n_global_tests": 30, "p_uniformity": 0.6,
           "config_json": json.dumps({"blind": "m_bb > 100", "systematics": ["jes"]})}
    tables = _tables(tests, **({"model_id": "sha"} if with_model else {}), **run)
    if with_model:
        tables["models"] = _frame("models", [{"run_id": "r1", "model_id": "sha",
                                              "inputs": ["a", "b", "c"]}])
        tables["criticality"] = _frame("criticality", [
            _crit("a", None, 1), _crit("b", None, 2), _crit("a", "b", 1, important=True)])
    return tables


@pytest.mark.parametrize("with_model", [False, True])
def test_the_shipped_rules_pass_a_clean_run(with_model):
    from validator.gate.rules import load_rules

    default = judge(_clean_run(with_model), load_rules(RULES / "default.yaml"))
    assert default.passed and all(r.passed for r in default.rules), default.rules
    strict = judge(_clean_run(with_model), load_rules(RULES / "unblinding.yaml"))
    failed = {r.name for r in strict.rules if not r.passed}
    assert failed == (set() if with_model else {"model-inputs-covered",
                                                "important-inputs-pass",
                                                "configured-for-unblinding"})


def test_a_run_of_release_0_1_0_is_judged_and_its_file_migrated(capsys, tmp_path):
    import shutil

    from validator.results.store import SCHEMA_VERSION

    db = tmp_path / "old.duckdb"
    shutil.copy(REPO / "tests" / "data" / "release_0_1_0.duckdb", db)
    code, out, err = _cli(capsys, "gate", "--db", str(db), "--rules",
                          str(RULES / "default.yaml"))
    assert code == 0, err
    assert ("PASS  failures-as-expected (failure_count): 4 failures of 81 reliable histogram "
            "tests") in out
    assert query(db, "SELECT max(version) AS v FROM schema_info")["v"][0] == SCHEMA_VERSION
    assert query(db, "SELECT gate_passed FROM runs")["gate_passed"][0]
    details = query(db, "SELECT details FROM gate_results WHERE rule_kind = 'failure_count'")
    stored = json.loads(details["details"][0])
    assert stored["source"] == "binomial"  # release 0.1.0 had no run-level test
    assert stored["p_value"] == pytest.approx(stats.binom.sf(3, 81, 0.05), rel=1e-10)
