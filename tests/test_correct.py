"""validator correct: corrections derived on the training half of a failing run, exported as
correctionlib, applied (``run --apply``) and closed on the held-out half (issue 34)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import REPO, load_sample_generator

from validator.cli import main
from validator.inputs.sources import ENTRY, FILE, open_sample
from validator.results.reading import read_run
from validator.results.store import query
from validator.results.tables import load_run_tables
from validator.stages.correct import (
    HALVES,
    HalfFilter,
    corrector_for,
    derive_corrections,
    load_corrections,
)
from validator.stats.reweight import (
    binned_ratio,
    legendre_design,
    smooth_log_ratio,
    split_keys,
    to_unit,
)

RULES = str(REPO / "rules" / "default.yaml")
FEATURES = "met,ht,m_ll"
FAST = ["--quiet", "--jobs", "1", "--syst-toys", "100", "--toys", "100"]


def _write(frames: tuple[pl.DataFrame, pl.DataFrame], folder: Path) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    sim, data = folder / "sim.parquet", folder / "data.parquet"
    frames[0].write_parquet(sim)
    frames[1].write_parquet(data)
    return str(sim), str(data)


def _run(sim: str, data: str, db: Path, *extra: str) -> int:
    return main(["run", "--sim", sim, "--data", data, "--weight", "weight", "--features",
                 FEATURES, "--db", str(db), *FAST, *extra])


def _latest(db: Path) -> str:
    return str(query(db, "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")
               ["run_id"][0])


@pytest.fixture(scope="module")
def met_case(tmp_path_factory) -> dict:
    """The sample data (met scaled by 5% in data), a failing run, its binned correction and
    the closure runs on the held-out and the training half."""
    gen = load_sample_generator()
    folder = tmp_path_factory.mktemp("met")
    sim, data = _write(gen.make_samples(n_sim=40_000, n_data=20_000), folder)
    db = folder / "v.duckdb"
    assert _run(sim, data, db) == 0
    source = _latest(db)
    out = folder / "corrections.json"
    assert main(["correct", "--db", str(db), "--out", str(out)]) == 0
    closure = {}
    for half in ("held-out", "training"):
        code = _run(sim, data, db, "--apply", str(out), "--apply-half", half, "--rules", RULES)
        closure[half] = (code, _latest(db))
    return {"sim": sim, "data": data, "db": db, "source": source, "out": out,
            "closure": closure}


def _problems(db: Path, run_id: str, feature: str) -> list:
    reading = read_run(load_run_tables(db, run_id))
    return [p for p in reading.significant if feature in (p.feature_x, p.feature_y)]


def test_met_scale_is_corrected_and_closes_on_the_held_out_half(met_case, capsys):
    db = met_case["db"]
    assert _problems(db, met_case["source"], "met")  # the source run fails in met
    corr = load_corrections(met_case["out"])
    assert [c.inputs for c in corr.corrections] == [("met",)]
    assert corr.metadata["source_run"] == met_case["source"]
    assert corr.metadata["split"]["derived_on"] == "training"
    met = corr.corrections[0]
    assert met.nominal.max() > 1.1 and met.nominal.min() < 0.95  # data harder than sim
    code, run_id = met_case["closure"]["held-out"]
    assert code == 0  # rules/default.yaml passes
    assert not _problems(db, run_id, "met")
    tests = query(db, "SELECT method, p_holm FROM tests WHERE run_id = ? AND feature_x = 'met' "
                      "AND feature_y IS NULL", [run_id])
    assert (tests["p_holm"] > 0.05).all()
    assert "saturated_syst" in set(tests["method"])  # the correction's ±1σ is a systematic


def test_corrections_table_links_source_correction_and_closures(met_case):
    rows = query(met_case["db"], "SELECT * FROM corrections ORDER BY created_at")
    derived = rows[rows["role"] == "derived"]
    closures = rows[rows["role"] == "closure"]
    assert len(derived) == 1 and derived["run_id"].iloc[0] == met_case["source"]
    assert set(closures["sha256"]) == set(derived["sha256"])
    assert sorted(closures["half"]) == ["held-out", "training"]
    assert set(closures["run_id"]) == {r for _, r in met_case["closure"].values()}
    assert list(closures["corrections"].iloc[0]) == ["corr_met"]
    assert json.loads(derived["details"].iloc[0])["fits"]["met"]["degree"] >= 1


def test_correctionlib_validates_and_gives_the_weights_of_apply(met_case):
    correctionlib = pytest.importorskip("correctionlib")
    from correctionlib import schemav2

    out = met_case["out"]
    schemav2.CorrectionSet.model_validate(json.loads(out.read_text()))
    cset = correctionlib.CorrectionSet.from_file(str(out))
    frame = pl.read_parquet(met_case["sim"])
    sample = open_sample("sim", [met_case["sim"]], "weight")
    chunk = {c: frame[c].to_numpy().astype(float) for c in ("met", "weight")}
    chunk[ENTRY], chunk[FILE] = np.arange(frame.height), np.zeros(frame.height, np.int64)
    held = HalfFilter.of(sample, "held-out").mask(chunk)
    chunk = {c: v[held] for c, v in chunk.items()}
    applied = corrector_for(load_corrections(out), sample).apply(chunk, "sim")
    for syst, column in (("nominal", "weight"), ("up", "_validator_corr_met_up"),
                         ("down", "_validator_corr_met_down")):
        expected = chunk["weight"] * cset["met"].evaluate(chunk["met"], syst)
        np.testing.assert_allclose(applied[column], expected, rtol=1e-12)


def test_a_closure_run_is_not_corrected_again(met_case, capsys):
    closure = met_case["closure"]["held-out"][1]
    out = met_case["out"].with_name("again.json")
    assert main(["correct", "--db", str(met_case["db"]), "--run", closure, "--out",
                 str(out)]) == 2
    assert "is a closure run" in capsys.readouterr().err
    assert not out.exists()


def test_training_and_held_out_closure_side_by_side(met_case):
    """Overfitting is measured: the training half, which the correction saw, agrees at
    least as well as the held-out half (met's smallest p-value)."""
    db = met_case["db"]
    p = {half: query(db, "SELECT min(pvalue) AS p FROM tests WHERE run_id = ? AND "
                         "feature_x = 'met' AND feature_y IS NULL", [run])["p"][0]
         for half, (_code, run) in met_case["closure"].items()}
    assert met_case["closure"]["training"][0] == 0
    assert p["training"] > 0.05 and p["held-out"] > 1e-3


def test_null_correction_is_consistent_with_one_and_closes(tmp_path):
    gen = load_sample_generator()
    sim, data = _write(gen.make_samples(n_sim=40_000, n_data=20_000, planted=False), tmp_path)
    db = tmp_path / "v.duckdb"
    assert _run(sim, data, db) == 0
    result = derive_corrections(db, features=["met", "ht"])
    assert {c.name for c in result.corrections} == {"met", "ht"}
    for c in result.corrections:
        chi2, ndf, p = c.consistency()
        assert p > 0.001, (c.name, chi2, ndf)
        assert c.max_pull() < 3.0, c.name
    out = tmp_path / "null.json"
    assert main(["correct", "--db", str(db), "--out", str(out), "--features", "met"]) == 0
    assert _run(sim, data, db, "--apply", str(out), "--rules", RULES) == 0


def test_nothing_failing_writes_no_file(tmp_path, capsys):
    gen = load_sample_generator()
    sim, data = _write(gen.make_samples(n_sim=20_000, n_data=10_000, planted=False), tmp_path)
    db = tmp_path / "v.duckdb"
    assert _run(sim, data, db) == 0
    out = tmp_path / "c.json"
    assert main(["correct", "--db", str(db), "--out", str(out)]) == 0
    assert not out.exists()
    assert "nothing to correct" in capsys.readouterr().out


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, samples):
    sim, data = (str(p) for p in samples)
    db = tmp_path / "v.duckdb"
    bad = tmp_path / "plain.json"
    bad.write_text(json.dumps({"schema_version": 2, "corrections": []}))
    cases = [
        (["run", "--sim", sim, "--data", data, "--weight", "weight", "--no-db", "--apply",
          str(tmp_path / "missing.json")], "missing.json: file not found"),
        (["run", "--sim", sim, "--data", data, "--weight", "weight", "--no-db", "--apply",
          str(bad)], "not a correction file of validator correct"),
        (["run", "--sim", sim, "--data", data, "--weight", "weight", "--no-db",
          "--apply-half", "training"], "--apply-half: needs --apply"),
        (["correct", "--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "c.json")],
         "database not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not db.exists()


# ---------------------------------------------------------------------------------------------
# building blocks


def test_split_is_by_event_and_even():
    rows = np.arange(200_000)
    keys = split_keys(rows, 12345, 99)
    assert 0.49 < np.mean(keys < 0.5) < 0.51
    np.testing.assert_array_equal(split_keys(rows[1000:2000], 12345, 99), keys[1000:2000])
    assert not np.array_equal(split_keys(rows, 12346, 99) < 0.5, keys < 0.5)


def test_half_filter_halves_are_disjoint_and_cover(tmp_path, samples):
    sample = open_sample("sim", [str(samples[0])], "weight")
    n = sample.n_rows
    chunk = {ENTRY: np.arange(n), FILE: np.zeros(n, np.int64)}
    masks = [HalfFilter.of(sample, h).mask(chunk) for h in HALVES]
    assert not (masks[0] & masks[1]).any() and (masks[0] | masks[1]).all()


def test_binned_ratio_uncertainty_is_data_poisson_and_sim_sumw2():
    r = binned_ratio(np.array([100.0, 300.0]), np.array([50.0, 100.0]), np.array([50, 150]))
    np.testing.assert_allclose(r.ratio, [1.0, 1.0])
    np.testing.assert_allclose(r.sigma_log, np.sqrt([1 / 50 + 50 / 100**2,
                                                     1 / 150 + 100 / 300**2]))


def test_smoothing_recovers_a_linear_log_ratio_and_stays_at_one_for_none():
    rng = np.random.default_rng(3)
    x = np.linspace(0, 10, 40)
    sigma = np.full(40, 0.02)
    designs = [legendre_design(to_unit(x), d) for d in range(7)]
    truth = 0.03 * x - 0.15
    fit = smooth_log_ratio(designs, truth + rng.normal(0, 0.02, 40), sigma)
    assert fit.degree >= 1 and fit.pvalue > 0.01
    assert np.all(np.abs(fit.log_ratio - truth) < 3 * fit.sigma_log + 1e-3)
    assert np.all(fit.sigma_log < 0.02)  # smoothing: better than one bin's uncertainty
    flat = smooth_log_ratio(designs, rng.normal(0, 0.02, 40), sigma)
    assert np.all(np.abs(flat.log_ratio) < 3 * flat.sigma_log + 1e-3)


# ---------------------------------------------------------------------------------------------
# the learned correction


@pytest.mark.slow
def test_classifier_removes_a_three_variable_effect_on_the_held_out_half(tmp_path):
    """The planted three-track sign correlation (every 1D and 2D marginal exact): c2st fails
    in the source run; after --method classifier, c2st on the held-out half passes and no 1D
    or 2D test fails."""
    gen = load_sample_generator()
    sim, data = _write(gen.make_multivariate_case(n_sim=60_000, n_data=30_000), tmp_path)
    db = tmp_path / "v.duckdb"
    argv = ["--features", "trk1_d0sig,trk2_d0sig,trk3_d0sig,m_ll", "--multivariate", "c2st"]

    def run(*extra: str) -> int:
        return main(["run", "--sim", sim, "--data", data, "--weight", "weight", "--db", str(db),
                     *FAST, *argv, *extra])

    assert run() == 0
    before = read_run(load_run_tables(db, _latest(db)))
    assert before.findings.multivariate
    out = tmp_path / "mv.json"
    assert main(["correct", "--db", str(db), "--out", str(out), "--method", "classifier"]) == 0
    assert (tmp_path / "mv.events.parquet").is_file()
    assert run("--apply", str(out), "--rules", RULES) == 0
    reading = read_run(load_run_tables(db, _latest(db)))
    c2st = reading.tests[reading.tests["method"] == "c2st"]
    assert float(c2st["pvalue"].iloc[0]) > 0.05
    found = reading.findings
    assert not (found.features or found.correlations or found.pairs_other
                or found.multivariate)


def test_the_gate_requires_a_passing_held_out_closure(met_case, tmp_path, capsys):
    """A run that applies the correction to all events passes a closure rule because its
    held-out closure run passed its gate; a correction without one fails it."""
    import pandas as pd

    from validator.gate.judge import judge
    from validator.gate.rules import load_rules

    rules = tmp_path / "use.yaml"
    rules.write_text("rules_version: 1\nname: use\nrules:\n"
                     "  - kind: closure\n    name: corrections-closed\n")
    assert met_case["closure"]["held-out"][0] == 0
    code = _run(met_case["sim"], met_case["data"], met_case["db"], "--apply",
                str(met_case["out"]), "--apply-half", "all", "--rules", str(rules))
    out = capsys.readouterr().out
    held_out = met_case["closure"]["held-out"][1]
    assert code == 0, out
    assert f"held-out closure run {held_out} passed" in out

    spec = load_rules(rules)
    run = pd.DataFrame([{"run_id": "r", "alpha": 0.05}])
    applied = pd.DataFrame([{"run_id": "r", "role": "closure", "name": "met",
                             "sha256": "ab" * 32, "half": "all"}])
    none = pd.DataFrame(columns=["run_id", "sha256", "half", "gate_passed"])
    failed = pd.DataFrame([{"run_id": "c", "sha256": "ab" * 32, "half": "held-out",
                            "gate_passed": False}])
    for closures, why in ((none, "no passing held-out closure"),
                          (failed, "none passed its gate"), (None, "not at hand")):
        tables = {"runs": run, "corrections": applied, "closure_runs": closures}
        verdict = judge(tables, spec)
        assert not verdict.passed and why in verdict.rules[0].reason, verdict.rules[0].reason
    assert judge({"runs": run}, spec).passed  # no correction applied: nothing to close


def test_history_shows_run_correction_and_closures(met_case, monkeypatch):
    """The loader links source run -> correction -> closure runs, and the dashboard's History
    page shows them."""
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from validator.dashboard.common import PAGE_FILES
    from validator.results.tables import correction_chains

    chains = correction_chains(met_case["db"])
    closures = chains.dropna(subset=["closure_run_id"])
    assert set(chains["source_run_id"]) == {met_case["source"]}
    held_out = closures[closures["half"] == "held-out"]
    assert list(held_out["closure_run_id"]) == [met_case["closure"]["held-out"][1]]
    assert bool(held_out["gate_passed"].iloc[0])
    monkeypatch.setenv("VALIDATOR_DB", str(met_case["db"]))
    at = AppTest.from_file(str(REPO / "validator" / "dashboard" / "app.py"),
                           default_timeout=180)
    at.run()
    at.switch_page(PAGE_FILES["history"]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("run → correction → closure" in s.value for s in at.subheader)
    shown = next(d.value for d in at.dataframe if "closure_run_id" in d.value.columns)
    assert met_case["closure"]["held-out"][1] in set(shown["closure_run_id"])
