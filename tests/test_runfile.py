"""`validator run --config FILE`: the file holds any option, the command line overrides it,
and a bad key is exit 2 naming the key and its line."""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLE_DIR, make_frames

from validator.cli import main
from validator.config.file import load_run_file, run_file_model
from validator.results.store import query


@pytest.fixture
def folder(tmp_path):
    sim, data = make_frames(n_sim=6_000, n_data=3_000)
    sim = sim.with_columns((sim["weight"] * 1.1).alias("w_up"))
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    return tmp_path


def _run(capsys, *args):
    code = main(["run", "--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_file_options_relative_paths_and_overrides(folder, tmp_path_factory, capsys,
                                                   monkeypatch):
    (folder / "analysis.yaml").write_text(
        "config_version: 1\n"
        "sim: sim.parquet\n"
        "data: [data.parquet]\n"
        "weight: weight\n"
        "features: [a, b, c]\n"
        "alpha: 0.1\n"
        "bins: 8\n"
        "define: {ab: a + b}\n"
        "systematics:\n"
        "  weights:\n"
        "    scale: {up: w_up}\n"
        "toys: {syst: 50}\n"
        "tags: {era: 2018B}\n"
        "db: results.duckdb\n")
    elsewhere = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(elsewhere)  # paths are relative to the file, not to where we are
    code, _, err = _run(capsys, "--config", str(folder / "analysis.yaml"), "--alpha", "0.05",
                        "--features", "a,b")
    assert code == 0, err
    run = query(folder / "results.duckdb", "SELECT * FROM runs").iloc[0]
    config = json.loads(run["config_json"])
    assert config["alpha"] == 0.05 and config["features"] == ["a", "b"]  # the command line wins
    assert config["plan"]["n_bins"] == 8 and config["defines"] == ["ab=a + b"]
    assert config["systematics"]["weights"] == [{"name": "scale", "up": "w_up", "down": None}]
    assert config["compare"]["syst_toys"] == 50
    assert list(run["tags"]) == ["era=2018B"]
    db = folder / "results.duckdb"
    assert "saturated_syst" in set(query(db, "SELECT DISTINCT method FROM tests")["method"])
    # --features on the command line replaced the file's list (the definition is still made)
    assert set(query(db, "SELECT feature FROM features")["feature"]) == {"a", "b"}


@pytest.mark.parametrize("text, message", [
    ("sim: s.parquet\nbinz: 5\n", "line 2: binz: unknown key"),
    ("sim: s.parquet\nbins: ten\n", "line 2: bins: Input should be a valid integer"),
    ("sim: s.parquet\nsystematics:\n  weights:\n    pu: {upp: w}\n",
     "line 4: systematics.weights.pu.upp: unknown key"),
    ("sim: s.parquet\nsim: t.parquet\n", "line 2: sim: key given twice"),
    ("alpha: 2\n", "line 1: alpha: Input should be less than 1"),
    ("- a\n- b\n", "a configuration file is a mapping"),
    ("sim: [unclosed\n", "not valid YAML"),
    ("", "the configuration file is empty"),
])
def test_bad_files_exit_2_naming_key_and_line(folder, capsys, text, message):
    path = folder / "bad.yaml"
    path.write_text(text)
    code, _, err = _run(capsys, "--config", str(path), "--no-db")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert str(path) in err


def test_inputs_are_required_somewhere(folder, capsys):
    path = folder / "partial.yaml"
    path.write_text("weight: weight\n")
    code, _, err = _run(capsys, "--config", str(path), "--no-db")
    assert code == 2 and "--sim is required (on the command line or in --config)" in err
    code, _, err = _run(capsys, "--config", str(folder / "missing.yaml"), "--no-db")
    assert code == 2 and "configuration file not found" in err


def test_shipped_example_and_schema(capsys):
    options, sha = load_run_file(SAMPLE_DIR / "analysis.yaml")
    assert options["sim"] == [str(SAMPLE_DIR / "sim.parquet")]
    assert options["model"] == str(SAMPLE_DIR / "classifier.onnx")
    assert options["norm_unc"] == ["drell_yan=0.05,ttbar=0.06"]
    assert options["process_column"] == "process" and len(sha) == 64
    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "validator run configuration"
    assert set(schema["properties"]) == set(run_file_model().model_fields)
    assert schema["additionalProperties"] is False
