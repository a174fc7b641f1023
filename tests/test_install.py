"""Installs and behaves like a package of its own: the wheel runs outside the repository,
a database that is not validator's is never touched, a report folder is made."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import duckdb
import pytest
from conftest import REPO, SAMPLE_DIR, make_frames

from validator.cli import main
from validator.results.store import query


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small(tmp_path: Path) -> list[str]:
    sim, data = make_frames(n_sim=3_000, n_data=1_500)
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    return ["--sim", str(tmp_path / "sim.parquet"), "--data", str(tmp_path / "data.parquet"),
            "--weight", "weight", "--features", "a,b"]


@pytest.mark.parametrize("ddl", [
    "CREATE TABLE runs (a INT); INSERT INTO runs VALUES (1)",
    "CREATE TABLE measurements (x DOUBLE); INSERT INTO measurements VALUES (1.5)",
    "CREATE TABLE runs (run_id VARCHAR, a INT); CREATE TABLE tests (b INT)",
    "CREATE SCHEMA s; CREATE TABLE s.t (x INT)",
    "CREATE MACRO plus_one(a) AS a + 1",
    "CREATE SEQUENCE ids",
    "CREATE TYPE mood AS ENUM ('a', 'b')",
])
def test_a_database_of_someone_else_is_never_touched(tmp_path, small, capsys, ddl):
    db = tmp_path / "mine.duckdb"
    con = duckdb.connect(str(db))
    con.execute(ddl)
    con.close()
    before = _sha(db)
    assert main(["run", "--quiet", *small, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"{db}: not a validator database" in err and err.count("\n") == 1, err
    assert _sha(db) == before
    for command in (["show", "--db", str(db)], ["report", "--db", str(db), "--out",
                                                str(tmp_path / "rep")],
                    ["gate", "--db", str(db), "--rules", str(REPO / "rules/default.yaml")]):
        assert main(command) == 2, command
        assert capsys.readouterr().err.count("\n") == 1
    assert _sha(db) == before


def test_merge_refuses_a_file_that_is_not_a_side_file(tmp_path, small, capsys):
    db = tmp_path / "runs.duckdb"
    assert main(["run", "--quiet", *small, "--db", str(db)]) == 0
    capsys.readouterr()
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE runs (a INT)")
    con.close()
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database at all\n")
    second = tmp_path / "second.duckdb"  # a user's other validator database
    assert main(["run", "--quiet", *small, "--db", str(second)]) == 0
    same = tmp_path / "runs.x.pending.duckdb"
    capsys.readouterr()
    for side, why in ((other, "not a side file"), (text, "not a side file"),
                      (second, "not a side file"), (db, "not a side file")):
        before, db_before = _sha(side), _sha(db)
        assert main(["merge", "--db", str(db), str(side)]) == 2
        err = capsys.readouterr().err
        assert f"{side}: {why}" in err and err.count("\n") == 1, err
        assert _sha(side) == before and _sha(db) == db_before
    same.write_bytes(db.read_bytes())  # named like a side file, and the database itself
    assert main(["merge", "--db", str(same), str(same)]) == 2
    assert "is the database itself" in capsys.readouterr().err and same.exists()


def test_a_missing_report_folder_is_made(tmp_path, small, capsys):
    report = tmp_path / "rep" / "sub" / "report.md"
    assert main(["run", "--quiet", *small, "--db", str(tmp_path / "r.duckdb"),
                 "--report", str(report)]) == 0
    assert report.is_file() and "report written to" in capsys.readouterr().out
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--quiet", *small, "--no-db", "--report",
                 str(blocker / "r.md")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_go_to_the_log(verbose):
    """A library's warning (torch deprecates TorchScript loading with a FutureWarning) is not
    the user's to act on: off the terminal, in the log that -v prints."""
    code = ("import warnings; from validator.cli import route_library_warnings; "
            f"route_library_warnings({verbose}); "
            "warnings.warn('torch.jit.load is deprecated', FutureWarning)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if k != "PYTHONWARNINGS"})
    if verbose:
        assert "validator: log: py.warnings:" in run.stderr and "FutureWarning" in run.stderr
    else:
        assert run.stderr == ""


@pytest.mark.slow
def test_the_wheel_runs_outside_the_repository(tmp_path, capsys):
    """``python -m build`` makes an sdist and a wheel from it; the wheel, installed into a new
    environment (its dependencies taken from this one, never the repository's files), runs the
    sample data to the same p-values as this checkout."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist),
                    str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    wheels = list(dist.glob("hep_validator-*.whl"))
    assert len(wheels) == 1 and list(dist.glob("hep_validator-*.tar.gz"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True
                          ).stdout.strip()
    # the dependencies: this environment's site-packages as a plain path (its .pth files, the
    # editable install's among them, are not processed)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheels[0])], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import validator; print(validator.__file__)"],
                           check=True, capture_output=True, text=True, cwd=work, env=env)
    assert where.stdout.startswith(site), where.stdout
    args = ["run", "--quiet", "--sim", str(SAMPLE_DIR / "sim.parquet"), "--data",
            str(SAMPLE_DIR / "data.parquet"), "--weight", "weight", "--features",
            "met,m_ll,lep1_iso,lep2_iso"]
    run = subprocess.run([str(venv / "bin" / "validator"), *args, "--db",
                          str(work / "wheel.duckdb")], capture_output=True, text=True, cwd=work,
                         env=env, check=False)
    assert run.returncode == 0, run.stderr
    assert main([*args, "--db", str(tmp_path / "here.duckdb")]) == 0
    capsys.readouterr()

    def pvalues(db: Path) -> list:
        return query(db, "SELECT category, method, feature_x, feature_y, pvalue FROM tests "
                         "ORDER BY ALL").values.tolist()

    assert pvalues(work / "wheel.duckdb") == pvalues(tmp_path / "here.duckdb")
    versions = json.loads(query(work / "wheel.duckdb", "SELECT * FROM runs").iloc[0][
        "versions_json"]) if "versions_json" in query(
        work / "wheel.duckdb", "SELECT * FROM runs").columns else {}
    assert not versions or "statsmodels" not in versions


def test_output_paths_are_checked_before_any_event_is_read(tmp_path, small, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for option in ("--report", "--evidently-report"):
        assert main(["run", "--quiet", *small, "--no-db", option, str(blocker / "r.out")]) == 2
        err = capsys.readouterr().err
        assert f"{option} {blocker / 'r.out'}: {blocker} is a file" in err, err
    db = tmp_path / "r.duckdb"
    assert main(["run", "--quiet", *small, "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--out", str(blocker / "rep")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_a_selection_may_read_a_defined_column(tmp_path, small, capsys):
    """A selection on a defined column keeps the events the same cut on its inputs keeps."""
    counts = []
    for cut in (["--define", "a2=a * 2", "--sim-selection", "a2 > 1",
                 "--data-selection", "a2 > 1"],
                ["--sim-selection", "a > 0.5", "--data-selection", "a > 0.5"]):
        db = tmp_path / f"sel{len(counts)}.duckdb"
        assert main(["run", "--quiet", *small, *cut, "--db", str(db)]) == 0
        counts.append(tuple(query(db, "SELECT n_sim, n_data FROM runs").iloc[0]))
    capsys.readouterr()
    assert counts[0] == counts[1] and counts[0][0] < 3_000
