"""One option table: every ``validator run`` option is a flag and a configuration key, and
both give the same run configuration; derived columns work wherever a column is accepted."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import make_frames

from validator.cli import build_parser, main
from validator.config.file import load_run_file, run_file_model
from validator.config.options import file_options, run_config, run_options
from validator.results.store import query


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


#: For every option: its command-line arguments and the same value as a file's YAML.
#: A new option without an entry here fails test_every_option_has_a_round_trip_sample.
SAMPLES: dict[str, tuple[list[str], str]] = {
    "sim": (["--sim", "/x/s1.parquet", "/x/s2.parquet"], "sim: [/x/s1.parquet, /x/s2.parquet]"),
    "data": (["--data", "/x/d.parquet"], "data: /x/d.parquet"),
    "weight": (["--weight", "w"], "weight: w"),
    "unweighted": (["--unweighted"], "unweighted: true"),
    "features": (["--features", "a,b"], "features: [a, b]"),
    "exclude": (["--exclude", "event,c"], "exclude: [event, c]"),
    "category": (["--category", "chan"], "category: chan"),
    "sim_selection": (["--sim-selection", "a > 1"], "sim_selection: a > 1"),
    "data_selection": (["--data-selection", "b < 2"], "data_selection: b < 2"),
    "define": (["--define", "ab=a + b", "--define", "c2=c * 2"],
               "define: {ab: a + b, c2: c * 2}"),
    "model": (["--model", "/x/net.onnx"], "model: /x/net.onnx"),
    "model_inputs": (["--model-inputs", "a,b"], "model_inputs: [a, b]"),
    "model_scaler": (["--model-scaler", "/x/s.json"], "model_scaler: /x/s.json"),
    "model_kind": (["--model-kind", "binary"], "model_kind: binary"),
    "model_param": (["--model-param", "mass=300,500"], "model_params: {mass: [300, 500]}"),
    "syst": (["--syst", "pu=w_up:w_dn"], "syst: {pu: {up: w_up, down: w_dn}}"),
    "syst_file": (["--syst-file", "jes=/x/u.parquet:/x/d.parquet"],
                  "syst_file: {jes: {up: /x/u.parquet, down: /x/d.parquet}}"),
    "norm_unc": (["--norm-unc", "dy=0.05,tt=0.06", "--process-column", "p"],
                 "norm_unc: {dy: 0.05, tt: 0.06}\nprocess_column: p"),
    "process_column": (["--process-column", "proc"], "process_column: proc"),
    "syst_toys": (["--syst-toys", "77"], "syst_toys: 77"),
    "blind": (["--blind", "a > 3"], "blind: a > 3"),
    "db": (["--db", "/x/r.duckdb"], "db: /x/r.duckdb"),
    "no_db": (["--no-db"], "no_db: true"),
    "alpha": (["--alpha", "0.01"], "alpha: 0.01"),
    "bins": (["--bins", "7"], "bins: 7"),
    "max_pairs": (["--max-pairs", "3"], "max_pairs: 3"),
    "toys": (["--toys", "99"], "toys: 99"),
    "chunk_rows": (["--chunk-rows", "1000"], "chunk_rows: 1000"),
    "jobs": (["--jobs", "1"], "jobs: 1"),
    "engine": (["--engine", "dask"], "engine: dask"),
    "scheduler": (["--engine", "dask", "--scheduler", "tcp://h:8786"],
                  "engine: dask\nscheduler: tcp://h:8786"),
    "seed": (["--seed", "5"], "seed: 5"),
    "db_wait": (["--db-wait", "3"], "db_wait: 3"),
    "rules": (["--rules", "/x/r.yaml"], "rules: /x/r.yaml"),
    "junit": (["--junit", "/x/j.xml"], "junit: /x/j.xml"),
    "report": (["--report", "/x/r.md"], "report: /x/r.md"),
    "multivariate": (["--multivariate", "c2st,nplm"], "multivariate: [c2st, nplm]"),
    "multivariate_events": (["--multivariate-events", "500"], "multivariate_events: 500"),
    "multivariate_toys": (["--multivariate-toys", "9"], "multivariate_toys: 9"),
    "multivariate_time": (["--multivariate-time", "12.5"], "multivariate_time: 12.5"),
    "evidently_report": (["--evidently-report", "/x/e.html"], "evidently_report: /x/e.html"),
    "tag": (["--tag", "era=2018B", "--tag", "y=1"], "tags: {era: 2018B, y: '1'}"),
    "apply": (["--apply", "/x/corrections.json"], "apply: /x/corrections.json"),
    "apply_half": (["--apply", "/x/c.json", "--apply-half", "training"],
                   "apply: /x/c.json\napply_half: training"),
    "display": (["--display", "met:label=$p_T^{miss}$", "--display", "met:unit=GeV",
                 "--display", "met:logy=true", "--display", "m_ll:range=50,130"],
                "display: {met: {label: '$p_T^{miss}$', unit: GeV, logy: true}, "
                "m_ll: {range: [50, 130]}}"),
    "experiment_label": (["--experiment-label", "text=Private Work", "--experiment-label",
                          "com=13.6"], "experiment_label: {text: Private Work, com: 13.6}"),
    "top": (["--top", "4"], "top: 4"),
    "quiet": (["--quiet"], "quiet: true"),
}


def test_every_cli_option_is_a_file_key_and_back():
    cli = {a.dest for a in _run_parser()._actions if a.dest != "help"}
    table = {o.dest for o in run_options()}
    assert cli == table
    keys = set(run_file_model().model_fields) - {"config_version"}
    assert keys == set(file_options())
    assert {o.dest for o in file_options().values()} == table - {"config"}


def test_every_option_has_a_round_trip_sample():
    assert set(SAMPLES) == {o.dest for o in run_options()} - {"config"}


def _values_from_cli(args: list[str]) -> dict:
    return vars(build_parser().parse_args(["run", *args]))


def _values_from_file(tmp_path, text: str) -> dict:
    path = tmp_path / "run.yaml"
    path.write_text("config_version: 2\n" + text + "\n")
    values = _values_from_cli([])
    options, _ = load_run_file(path)
    values.update(options)
    return values


@pytest.mark.parametrize("dest", sorted(SAMPLES))
def test_flag_and_key_give_the_same_values_and_config(tmp_path, dest):
    args, text = SAMPLES[dest]
    base_args = [] if dest in ("sim", "data") else ["--sim", "/x/s.parquet", "--data",
                                                     "/x/d.parquet"]
    base_text = "" if dest in ("sim", "data") else "sim: /x/s.parquet\ndata: /x/d.parquet\n"
    if dest == "sim":
        base_args, base_text = ["--data", "/x/d.parquet"], "data: /x/d.parquet\n"
    if dest == "data":
        base_args, base_text = ["--sim", "/x/s.parquet"], "sim: /x/s.parquet\n"
    from_cli = _values_from_cli([*base_args, *args])
    from_file = _values_from_file(tmp_path, base_text + text)
    assert from_cli == from_file
    assert run_config(from_cli).to_dict() == run_config(from_file).to_dict()


def test_a_run_stores_the_same_configuration_from_flags_and_from_a_file(tmp_path, capsys):
    sim, data = make_frames(n_sim=4_000, n_data=2_000)
    sim = sim.with_columns((sim["weight"] * 1.05).alias("w_up"))
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    common = ["--quiet", "--sim", str(tmp_path / "sim.parquet"), "--data",
              str(tmp_path / "data.parquet")]
    flags = ["--weight", "weight", "--features", "a,b", "--bins", "6", "--define", "ab=a + b",
             "--syst", "s=w_up", "--syst-toys", "40", "--toys", "60", "--tag", "era=X",
             "--jobs", "1", "--seed", "11", "--alpha", "0.01"]
    assert main(["run", *common, *flags, "--db", str(tmp_path / "cli.duckdb")]) == 0
    (tmp_path / "run.yaml").write_text(
        "config_version: 2\nweight: weight\nfeatures: [a, b]\nbins: 6\ndefine: {ab: a + b}\n"
        "syst: {s: {up: w_up}}\nsyst_toys: 40\ntoys: 60\ntags: {era: X}\njobs: 1\nseed: 11\n"
        "alpha: 0.01\n")
    assert main(["run", *common, "--config", str(tmp_path / "run.yaml"), "--db",
                 str(tmp_path / "file.duckdb")]) == 0
    capsys.readouterr()

    def stored(name: str) -> tuple[dict, list]:
        db = tmp_path / name
        config = json.loads(query(db, "SELECT config_json FROM runs").iloc[0, 0])
        config.pop("command"), config.pop("db")
        tests = query(db, "SELECT method, feature_x, feature_y, pvalue FROM tests ORDER BY ALL")
        return config, tests.values.tolist()

    assert stored("cli.duckdb") == stored("file.duckdb")


def test_readme_define_and_syst_recipe_stores_saturated_syst(tmp_path, capsys):
    sim, data = make_frames(n_sim=6_000, n_data=3_000)
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    db = tmp_path / "r.duckdb"
    code = main(["run", "--quiet", "--sim", str(tmp_path / "sim.parquet"), "--data",
                 str(tmp_path / "data.parquet"), "--weight", "weight", "--features", "a,b,nj",
                 "--define", "w_pu_up=weight*(1 + 0.05*nj)",
                 "--define", "w_pu_dn=weight*(1 - 0.05*nj)",
                 "--define", "proc=a > 0", "--define", "chan=nj >= 2",
                 "--syst", "pu=w_pu_up:w_pu_dn", "--process-column", "proc",
                 "--norm-unc", "0.05", "--category", "chan", "--blind", "chan > 0 AND b > 3",
                 "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 0, err
    methods = query(db, "SELECT category, method, feature_x FROM tests")
    assert "saturated_syst" in set(methods["method"])
    assert {"all", "0", "1"} <= set(methods["category"])  # the derived category's values
    # the columns with a role (weights, process, category) are not tested as features
    assert set(methods["feature_x"].dropna()) <= {"a", "b", "nj", "*"}
    config = json.loads(query(db, "SELECT config_json FROM runs").iloc[0, 0])
    assert config["systematics"]["weights"][0]["up"] == "w_pu_up"
    assert config["process_column"] == "proc"


def test_a_define_reading_a_simulation_column_cannot_be_a_feature(tmp_path, capsys):
    sim, data = make_frames(n_sim=2_000, n_data=1_000)
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    code = main(["run", "--quiet", "--no-db", "--sim", str(tmp_path / "sim.parquet"),
                 "--data", str(tmp_path / "data.parquet"), "--weight", "weight",
                 "--define", "w2=weight*2"])
    err = capsys.readouterr().err
    assert code == 2 and "--define w2 reads 'weight', which data lacks" in err
    assert err.count("\n") == 1


def test_v1_configuration_files_are_still_read(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("config_version: 1\nsim: s.parquet\nsystematics:\n  process_column: p\n"
                    "  norm: 0.05\n  weights:\n    pu: {up: wu}\n"
                    "toys: {dependence: 10, syst: 20}\n")
    options, _ = load_run_file(path)
    assert options["process_column"] == "p" and options["norm_unc"] == ["0.05"]
    assert options["syst"] == ["pu=wu"]
    assert options["toys"] == 10 and options["syst_toys"] == 20


def test_a_v1_file_giving_a_setting_twice_is_refused(tmp_path):
    from validator.errors import InputError

    path = tmp_path / "old.yaml"
    path.write_text("config_version: 1\nsyst_toys: 5\ntoys: {syst: 20}\n")
    with pytest.raises(InputError, match="toys.syst: the same setting as syst_toys"):
        load_run_file(path)
