"""One verdict, read the same everywhere: the exit code, the gate's lines, ``validator show``,
report.md, report.html, the JUnit file and the dashboard's overview give the same verdict and
counts, because they render one reading of the stored run (validator/results); and the
systematics decide when a run has them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import REPO, SAMPLE_DIR, load_sample_generator
from junitparser import Failure, JUnitXml, Skipped

from validator.cli import main
from validator.results.format import format_p
from validator.results.reading import read_run
from validator.results.store import query
from validator.results.tables import load_run_tables

RULES = REPO / "rules" / "default.yaml"
#: The verdict as every face words it: failed rules, rules, warnings.
VERDICT = re.compile(r"gate (PASSED|FAILED): (\d+) of (\d+) rules (?:fail|pass)"
                     r"(?:, (\d+) warnings?)?")
#: What is significant, as every face words it: problems (tests).
SIGNIFICANT = re.compile(r"(\d+) significant problems? after Holm \((\d+) tests?\)")


def _verdict(text: str) -> tuple[str, int, int, int, int, int]:
    """(PASSED/FAILED, failed rules, rules, warnings, significant problems, tests) of a face."""
    found = VERDICT.search(text)
    assert found, text[:2000]
    word, first, n_rules, warnings = found.groups()
    failed = int(first) if word == "FAILED" else 0
    sig = SIGNIFICANT.search(text)
    problems, tests = (int(sig.group(1)), int(sig.group(2))) if sig else (0, 0)
    return word, failed, int(n_rules), int(warnings or 0), problems, tests


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> dict:
    """The sample analysis (its met-scale systematic covers the planted met scale; nothing
    covers the planted isolation correlation), judged with rules/default.yaml, every face
    written."""
    folder = tmp_path_factory.mktemp("faces")
    up, down = load_sample_generator().met_scale_variations(
        pl.read_parquet(SAMPLE_DIR / "sim.parquet"))
    up.write_parquet(folder / "up.parquet")
    down.write_parquet(folder / "down.parquet")
    db = folder / "v.duckdb"
    args = ["run", "--quiet", "--config", str(SAMPLE_DIR / "analysis.yaml"),
            "--syst-file", f"met_scale={folder / 'up.parquet'}:{folder / 'down.parquet'}",
            "--features", "met,m_ll,lep1_iso,lep2_iso,n_btag", "--syst-toys", "100",
            "--db", str(db), "--rules", str(RULES), "--junit", str(folder / "gate.xml"),
            "--report", str(folder / "run-report.md")]
    return {"folder": folder, "db": db, "args": args}


@pytest.mark.slow
def test_every_face_gives_the_same_verdict_and_counts(sample_run, capsys, monkeypatch):
    folder, db = sample_run["folder"], sample_run["db"]
    code = main(sample_run["args"])
    run_out = capsys.readouterr().out
    assert main(["show", "--db", str(db)]) == 0
    show_out = capsys.readouterr().out
    assert main(["report", "--db", str(db), "--out", str(folder / "report")]) == 0
    capsys.readouterr()
    gate_line = next(line for line in run_out.splitlines() if line.startswith("gate "))
    faces = {
        "gate": gate_line + "\n" + run_out,
        "show": show_out,
        "run --report": (folder / "run-report.md").read_text(),
        "report.md": (folder / "report" / "report.md").read_text(),
        "report.html": re.sub(r"<[^>]+>", "", (folder / "report" / "report.html").read_text()),
    }
    verdicts = {name: _verdict(text) for name, text in faces.items()}
    assert len(set(verdicts.values())) == 1, verdicts
    word, failed, n_rules, warnings, problems, tests = verdicts["gate"]
    assert code == 1 and word == "FAILED" and failed >= 1 and problems >= 1

    suites = {s.name: s for s in JUnitXml.fromfile(str(folder / "gate.xml"))}
    junit_failed = sum(any(isinstance(r, Failure) for r in c.result) for c in suites["rules"])
    junit_warned = sum(any(isinstance(r, Skipped) for r in c.result) for c in suites["rules"])
    assert (junit_failed, junit_warned, len(list(suites["rules"]))) == (failed, warnings,
                                                                         n_rules)

    reading = read_run(load_run_tables(db))
    assert (len(reading.verdict.failed), len(reading.verdict.warnings)) == (failed, warnings)
    assert (len(reading.significant), reading.counts.n_significant) == (problems, tests)

    # the systematics decide: met (covered by the met scale) fails no rule; the isolation
    # correlation (covered by nothing) does
    failing = [line for line in run_out.splitlines() if line.startswith("FAIL ")]
    assert failing and all("met" not in re.sub(r"m_ll|met_scale", "", line) for line in
                           failing), failing
    assert any("lep1_iso × lep2_iso" in line for line in failing), failing
    met = next(p for p in reading.problems if p.key == ("all", "met", None))
    assert met.what == "covered" and set(met.stat_only) >= {"chi2_uw", "saturated"}
    assert "covered by the systematics" in run_out and "met" in show_out

    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from validator.dashboard import APP

    monkeypatch.setenv("VALIDATOR_DB", str(db))
    app = AppTest.from_file(str(APP), default_timeout=180)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    shown = "\n".join(str(e.value) for kind in ("error", "success", "subheader", "metric")
                      for e in getattr(app, kind) if hasattr(e, "value"))
    word_d, failed_d, n_rules_d, warnings_d, problems_d, _ = _verdict(shown)
    assert (word_d, failed_d, n_rules_d, warnings_d, problems_d) == (
        word, failed, n_rules, warnings, problems)


def test_one_p_value_formatter():
    assert format_p(0.04231) == "0.042"
    assert format_p(3.14e-7) == "3.1e-07"
    assert format_p(0.0) == "< 1e-300"  # an underflow is a bound, never 0
    assert format_p(2e-4, bound=True) == "< 2.0e-04"
    assert format_p(1 / 2000, floor=1 / 2000) == "< 5.0e-04"
    assert format_p(None) == format_p(float("nan")) == "–"


def _tilted(n: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """n draws of x from N(0, 1) reweighted by (1 + slope x), clipped at 0 (accept-reject)."""
    out: list[np.ndarray] = []
    while sum(len(o) for o in out) < n:
        x = rng.standard_normal(4 * n)
        keep = rng.random(4 * n) * (1 + abs(slope) * 5) < np.clip(1 + slope * x, 0, None)
        out.append(x[keep])
    return np.concatenate(out)[:n]


@pytest.mark.parametrize("sigmas, passes", [(1, True), (5, False)])
def test_a_shift_within_the_systematic_passes_and_beyond_it_fails(tmp_path, capsys, sigmas,
                                                                   passes):
    """Data drawn from the simulation tilted by 1 sigma of its weight systematic (a 5 %
    slope in x) pass rules/default.yaml; the same tilt at 5 sigma fails it, naming x."""
    rng = np.random.default_rng(29 + sigmas)
    slope = 0.05
    n_sim, n_data = 60_000, 30_000
    x = rng.standard_normal(n_sim)
    sim = pl.DataFrame({"x": x, "y": rng.standard_normal(n_sim),
                        "z": rng.exponential(1.0, n_sim), "weight": np.ones(n_sim),
                        "w_up": 1 + slope * x, "w_down": 1 - slope * x})
    data = pl.DataFrame({"x": _tilted(n_data, sigmas * slope, rng),
                         "y": rng.standard_normal(n_data), "z": rng.exponential(1.0, n_data)})
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    code = main(["run", "--quiet", "--sim", str(tmp_path / "sim.parquet"), "--data",
                 str(tmp_path / "data.parquet"), "--weight", "weight", "--features", "x,y,z",
                 "--syst", "tilt=w_up:w_down", "--syst-toys", "200", "--db",
                 str(tmp_path / "v.duckdb"), "--rules", str(RULES)])
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.startswith("FAIL ")]
    if passes:
        assert code == 0, out
        # the stat-only tests see the tilt; the systematic covers it
        tests = query(tmp_path / "v.duckdb", "SELECT method, p_holm FROM tests WHERE "
                                             "feature_x = 'x' AND feature_y IS NULL")
        stat = tests[tests["method"].isin(["chi2_uw", "saturated"])]
        assert (stat["p_holm"] < 0.05).any(), tests
    else:
        assert code == 1, out
        assert any(re.search(r": x \([^)]*saturated_syst", line) for line in failing), failing


@pytest.mark.slow
def test_a_multivariate_finding_is_named_in_every_face(tmp_path, capsys):
    """The three-track sign correlation is exact in every 1D and 2D marginal: only c2st
    finds it, and the terminal, show and the report name it as significant, with the
    tracks that drive it."""
    sim, data = load_sample_generator().make_multivariate_case()
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    db = tmp_path / "v.duckdb"
    tracks = ["trk1_d0sig", "trk2_d0sig", "trk3_d0sig"]
    code = main(["run", "--quiet", "--sim", str(tmp_path / "sim.parquet"), "--data",
                 str(tmp_path / "data.parquet"), "--weight", "weight", "--features",
                 ",".join([*tracks, "m_ll"]), "--multivariate", "c2st", "--db", str(db),
                 "--rules", str(RULES), "--report", str(tmp_path / "r.md")])
    out = capsys.readouterr().out
    assert code == 1, out  # the per-test rule fails on the multivariate finding
    assert main(["show", "--db", str(db)]) == 0
    show = capsys.readouterr().out
    report = (tmp_path / "r.md").read_text()
    for face in (out, show, report):
        assert "1 significant problem after Holm (1 test)" in face, face[:3000]
        assert "every input at once" in face
        assert "c2st" in face and any(t in face for t in tracks)
    assert "mismodelled over every input at once" in out
    assert re.search(r"multivariate tests \(every input at once\): c2st p \d", out)
    config = json.loads(query(db, "SELECT config_json FROM runs").iloc[0, 0])
    assert config["multivariate"] == ["c2st"]


def test_a_damaged_database_is_named_by_every_face(tmp_path, capsys, monkeypatch):
    import duckdb
    from conftest import make_frames

    sim, data = make_frames(n_sim=3_000, n_data=1_500)
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    db = tmp_path / "v.duckdb"
    assert main(["run", "--quiet", "--sim", str(tmp_path / "sim.parquet"), "--data",
                 str(tmp_path / "data.parquet"), "--weight", "weight", "--features", "a,b",
                 "--db", str(db)]) == 0
    for damage, named in (("DROP TABLE histograms", "table 'histograms' is missing"),
                          ("ALTER TABLE tests DROP COLUMN p_holm",
                           "table 'tests' has no column 'p_holm'"),
                          ("ALTER TABLE tests ALTER COLUMN pvalue TYPE VARCHAR",
                           "column tests.pvalue is VARCHAR, not DOUBLE")):
        broken = tmp_path / f"broken-{len(named)}.duckdb"
        broken.write_bytes(db.read_bytes())
        con = duckdb.connect(str(broken))
        con.execute(damage)
        con.close()
        capsys.readouterr()
        commands = [["show", "--db", str(broken)],
                    ["report", "--db", str(broken), "--out", str(tmp_path / "rep")],
                    ["gate", "--db", str(broken), "--rules", str(RULES)]]
        before = broken.read_bytes()
        commands.append(["run", "--quiet", "--sim", str(tmp_path / "sim.parquet"), "--data",
                         str(tmp_path / "data.parquet"), "--weight", "weight", "--features",
                         "a,b", "--db", str(broken)])
        for command in commands:
            assert main(command) == 2, command
            err = capsys.readouterr().err
            assert named in err and err.count("\n") == 1, (command, err)
        assert broken.read_bytes() == before  # nothing written into a damaged database
        from validator.dashboard import database_problem

        assert named in (database_problem(broken) or "")
    assert Path(db).exists()
