"""The Streamlit dashboard (``validator dashboard``), on a database made by real runs.

Two runs of the sample data with the shipped 3-class network are stored once for the module:
``era=A`` on half of the data, then ``era=B`` on all of it with systematics (a one-sided weight
variation and per-process normalisations), judged with ``rules/default.yaml``. The planted
``met`` scale shift is the worst problem of the latest run; the ``lep1_iso``-``lep2_iso``
correlation is mismodelled in both.

Every page is rendered with ``streamlit.testing`` (AppTest) and checked for content; the real
server is started with ``validator dashboard`` and loaded in headless Chromium (skipped when
``chromium`` is absent); the dashboard changes no byte of the file and never blocks a writer; a
database of 20 runs × 1,000 tests opens at once. ``VALIDATOR_UPDATE_SCREENSHOT=1`` refreshes
``docs/dashboard.png`` from the end-to-end test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest
from conftest import load_sample_generator

from validator.cli import main
from validator.dashboard.common import PAGE_FILES
from validator.gate.judge import judge_stored
from validator.pipeline import RunConfig, run_validation
from validator.results.reading import read_run
from validator.results.store import query, write_run
from validator.results.tables import load_run_tables
from validator.stages.compare import CompareOptions
from validator.stages.systematics import Systematics

st = pytest.importorskip("streamlit")
pytest.importorskip("plotly")
from browser import CHROMIUM, Browser  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

#: Minutes of calibration, real files or browsers: `make test` runs them, `make test-fast` not.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "validator" / "dashboard" / "app.py"
MODEL = REPO / "sample_data" / "classifier.onnx"
FEATURES = ["met", "lep1_iso", "lep2_iso", "m_ll", "n_btag"]
PAGES = ["overview", "inputs", "pairs", "model", "history", "models"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> dict[str, Any]:
    """Two real runs of one model (tags era=A, era=B), the latest judged; the database."""
    folder = tmp_path_factory.mktemp("dashboard")
    sim, data = load_sample_generator().make_samples(n_sim=20_000, n_data=20_000, seed=11,
                                                     planted=True)
    # a one-sided weight systematic that tilts the leading lepton (a pile-up-like variation):
    # it does not cover the planted met scale, which stays mismodelled beyond the systematics
    sim = sim.with_columns((pl.col("weight") * (1 + 0.1 * (pl.col("lep1_pt") / 100).clip(0, 1)))
                           .alias("w_pu_up"))
    sim.write_parquet(folder / "sim.parquet")
    data.write_parquet(folder / "data.parquet")
    db = folder / "validation.duckdb"
    common = {"sim": [str(folder / "sim.parquet")], "data": [str(folder / "data.parquet")],
              "weight": "weight", "features": FEATURES, "db": db, "model": str(MODEL),
              "shap_events": 50, "second_order_events": 5_000}
    run_a = run_validation(RunConfig(
        **common, data_selection="_entry % 2 = 0", tags={"era": "A"},
        compare=CompareOptions(dependence_toys=60))).run_id
    run_b = run_validation(RunConfig(
        **common, tags={"era": "B"},
        systematics=Systematics.parse(["pu=w_pu_up"], [], ["drell_yan=0.05,ttbar=0.06"],
                                      "process"),
        compare=CompareOptions(dependence_toys=60, syst_toys=30))).run_id
    judge_stored(db, run_b, REPO / "rules" / "default.yaml")
    return {"db": db, "a": run_a, "b": run_b, "folder": folder}


def _copy(stored: dict[str, Any], tmp_path: Path) -> Path:
    target = tmp_path / "copy.duckdb"
    shutil.copy(stored["db"], target)
    return target


def _app(db: Path, monkeypatch: pytest.MonkeyPatch, **params: str) -> AppTest:
    monkeypatch.setenv("VALIDATOR_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.query_params.update(params)
    return at


def _clean(at: AppTest) -> None:
    """No exception and no page failure (a failed gate is an error box: that is content)."""
    assert not at.exception, [e.value for e in at.exception]
    failed = [e.value for e in at.error if "this page failed" in e.value]
    assert not failed, failed


def _page(at: AppTest, page: str) -> AppTest:
    at.switch_page(PAGE_FILES[page]).run()
    _clean(at)
    return at


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success",
                                  "subheader", "title")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def _frame(at: AppTest, column: str) -> Any:
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with a {column} column"
    return found[0]


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


# ------------------------------------------------------------------ pages (AppTest)


def test_overview_names_met_first_and_the_verdict(stored, monkeypatch):
    at = _app(stored["db"], monkeypatch)
    at.run()
    _clean(at)
    assert at.sidebar.selectbox[0].value == stored["b"]  # the latest run by default
    links = [link.label for link in at.get("page_link")]
    # the systematics decide: the isolation correlation is beyond them, and met (its planted
    # scale within the pile-up and normalisation nuisances at these statistics) is covered
    assert links[0] == "1. lep1_iso × lep2_iso", links[:3]
    assert any(label.endswith(". met") for label in links[:3]), links[:3]
    text = _texts(at)
    assert "covered by the systematics" in text
    assert "(rules default)" in text and ("gate FAILED" in text or "gate PASSED" in text)
    assert "p-values vs uniform" in text
    assert len(_frame(at, "feature / pair")) >= 2


def test_inputs_page_plots_met_with_its_tests_and_pulls(stored, monkeypatch):
    at = _app(stored["db"], monkeypatch)
    at.run()
    _page(at, "inputs")
    worst = next(p.feature_x for p in read_run(load_run_tables(stored["db"])).problems
                 if p.feature_y is None and p.node is None)
    assert at.selectbox(key="in-feature").value == worst  # worst first, as every face
    at = _app(stored["db"], monkeypatch, feature="met", category="all")
    at.run()
    _page(at, "inputs")
    assert at.selectbox(key="in-feature").value == "met"
    tests = _frame(at, "method")
    assert {"chi2_uw", "saturated", "ks", "ad", "saturated_syst"} <= set(tests["method"])
    text = _texts(at)
    assert "Post-fit nuisance pulls" in text
    assert "stacked by process" in text and "systematic (pu" in text
    pulls = _frame(at, "nuisance")
    assert {"pu", "drell_yan", "ttbar"} <= set(pulls["nuisance"])


def test_inputs_page_follows_a_link_and_has_no_pulls_without_systematics(stored, monkeypatch):
    at = _app(stored["db"], monkeypatch, run=stored["a"], feature="lep2_iso", category="all")
    at.run()
    _page(at, "inputs")
    assert at.sidebar.selectbox[0].value == stored["a"]
    assert at.selectbox(key="in-feature").value == "lep2_iso"
    assert "Post-fit nuisance pulls" not in _texts(at)


def test_pairs_page_shows_the_mismodelled_correlation(stored, monkeypatch):
    at = _app(stored["db"], monkeypatch)
    at.run()
    _page(at, "pairs")
    assert at.selectbox(key="pa-pair").value == "lep1_iso × lep2_iso"  # smallest p first
    corr = _frame(at, "estimator")
    assert set(corr["estimator"]) == {"pearson", "spearman"}
    assert corr[["simulation", "± sim", "data", "± data"]].notna().all().all()
    assert (corr["data"] - corr["simulation"]).abs().min() > 0.1  # the planted correlation
    assert "pairs important to the network boxed" in _texts(at)
    at.selectbox(key="pa-values").set_value("effect size").run()
    _clean(at)


def test_model_page_shows_taylor_shap_outputs_and_criticality(stored, monkeypatch):
    at = _app(stored["db"], monkeypatch, run=stored["a"])  # the run without systematics
    at.run()
    _page(at, "model")
    text = _texts(at)
    for heading in ("Taylor coefficients, first order", "Taylor coefficients, second order",
                    "SHAP", "Output distributions", "Criticality"):
        assert heading in text
    crit = _frame(at, "criticality_rank")
    flags = crit["mismodelled"].astype(bool).tolist()
    assert any(flags) and flags == sorted(flags, reverse=True)  # the mismodelled come first
    at.radio(key="mo-t2-sample").set_value("data − simulation").run()
    _clean(at)


def test_history_page_shows_both_runs_and_what_changed(stored, monkeypatch):
    at = _app(stored["db"], monkeypatch)
    at.run()
    _page(at, "history")
    runs = _frame(at, "smallest p (Holm)")
    assert list(runs["run_id"]) == [stored["a"], stored["b"]]  # by tag era: A, then B
    assert list(runs["tags"]) == ["era=A", "era=B"]
    changed = _frame(at, "change")
    assert "met" in set(changed[changed["change"] == "newly fails"]["feature_x"])
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["newly fails"]) >= 1


def test_models_page_lists_the_model_with_its_runs(stored, monkeypatch):
    at = _app(stored["db"], monkeypatch)
    at.run()
    _page(at, "models")
    models = _frame(at, "sha256")
    model_id = query(stored["db"], "SELECT model_id FROM runs WHERE run_id = ?",
                     [stored["b"]])["model_id"].iloc[0]
    assert list(models["sha256"]) == [model_id]
    assert int(models["n_runs"].iloc[0]) == 2 and int(models["n_inputs"].iloc[0]) == 14


def test_every_figure_downloads_as_png_and_pdf(stored):
    """The PNG/PDF twins of the interactive figures, drawn from the stored rows (what the
    download buttons serve when clicked)."""
    from validator.dashboard import common, data, inputs, model, static
    from validator.output import figures

    db, run = stored["db"], stored["b"]
    tests = data.tests(db, run)
    nominal, variations = data.hist_plot(db, run, "all", "met")
    assert nominal is not None and any(v["variation"] == "pu_up" for v in variations)
    imp = data.importances(db, run)
    imp = imp[imp["node"] == "all"]
    fo = model.first_order(imp, "taylor", scaled=True)
    assert fo.iloc[0]["input"] == "met"  # the most important input
    names = list(fo["input"])
    pulls = inputs.nuisance_pulls(tests[(tests["feature_x"] == "met")
                                        & tests["feature_y"].isna()])
    pair = figures.hist2d_from_row(data.hist_pair(db, run, "all", "lep1_iso", "lep2_iso"))
    rows = data.records(tests)
    makers = {
        "feature": lambda: inputs.static_feature(nominal, variations, "met", "all", {}),
        "pvalues": lambda: static.pvalue_hist(list(tests["pvalue"].dropna())),
        "taylor1": lambda: static.bars(names, {"simulation": (fo["simulation"],
                                                              fo["± simulation"]),
                                               "data": (fo["data"], fo["± data"])}, "t"),
        "taylor2": lambda: static.matrix(model.second_order(imp, "sim", names), names),
        "pulls": lambda: static.pulls([p["nuisance"] for p in pulls],
                                      [p["pull"] for p in pulls], [p["error"] for p in pulls]),
        "history": lambda: static.lines(["A", "B"], {"failed": [3, 5]}, "tests"),
        "matrix": lambda: figures.plot_pvalue_matrix(rows, FEATURES),
        "pull map": lambda: figures.plot_pull_map(pair, "lep1_iso", "lep2_iso"),
    }
    for name, make in makers.items():
        assert common.figure_bytes(make, "png")[:8] == b"\x89PNG\r\n\x1a\n", name
        assert common.figure_bytes(make, "pdf")[:5] == b"%PDF-", name


# ------------------------------------------------------------------ what a run lacks


def _synthetic_rows(n_runs: int, n_tests: int, seed: int = 1, start: int = 0,
                    ) -> dict[str, list[dict[str, Any]]]:
    """Runs without a model: 40 features, ``n_tests`` tests each (1D and 2D, uniform
    p-values), for size and for what the pages say when a run lacks something."""
    rng = np.random.default_rng(seed)
    feats = [f"f{i:02d}" for i in range(40)]
    pairs = [(a, b) for i, a in enumerate(feats) for b in feats[i + 1:]]
    t0 = datetime(2026, 1, 1)
    rows: dict[str, list[dict[str, Any]]] = {"runs": [], "tests": [], "features": []}
    for r in range(start, start + n_runs):
        run_id = (t0 + timedelta(hours=r)).strftime("%Y%m%d-%H%M%S") + f"-{r:06x}"
        p = rng.uniform(size=n_tests)
        rows["runs"].append({
            "run_id": run_id, "started_at": t0 + timedelta(hours=r),
            "finished_at": t0 + timedelta(hours=r, minutes=5), "tool_version": "0.1.0",
            "sim_paths": ["sim.parquet"], "data_paths": ["data.parquet"], "n_sim": 10_000,
            "n_data": 10_000, "sumw_sim": 10_000.0, "sumw2_sim": 12_000.0, "n_features": 40,
            "n_pairs": len(pairs), "alpha": 0.05, "n_tests": n_tests, "n_reliable": n_tests,
            "n_failed": int(np.sum(p < 0.05)), "n_expected_failures": 0.05 * n_tests,
            "p_binomial": 0.5, "p_uniformity": 0.5, "n_significant_holm": 0,
            "n_significant_bh": 0, "seed": 1, "n_not_run": 0, "notes": [],
            "tags": [f"era={chr(65 + r % 4)}"]})
        for k in range(n_tests):
            if k < 160:
                x, y, kind, method = feats[k // 4], None, "1d", ("chi2_uw", "saturated",
                                                                 "ks", "ad")[k % 4]
            else:
                (x, y), kind, method = pairs[(k - 160) % len(pairs)], "2d", "chi2_uw"
            rows["tests"].append({
                "run_id": run_id, "test_id": k, "category": "all", "kind": kind,
                "method": method, "feature_x": x, "feature_y": y, "statistic": 1.0,
                "ndf": 9.0, "pvalue": float(p[k]), "pvalue_method": "asymptotic",
                "effect_size": float(rng.uniform(0, 0.1)), "effect_name": "max_abs_ratio_dev",
                "reliable": True, "p_holm": float(min(1.0, p[k] * n_tests)),
                "p_bh": float(min(1.0, p[k] * 2)), "passed": bool(p[k] >= 0.05),
                "details": "{}", "pvalue_is_bound": False})
        for f in feats:
            rows["features"].append({"run_id": run_id, "category": "all", "feature": f,
                                     "kind": "continuous", "edges": [0.0, 1.0]})
    return rows


@pytest.fixture(scope="module")
def large_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("large") / "large.duckdb"
    write_run(db, _synthetic_rows(20, 1000))
    return db


def test_pages_say_what_a_run_lacks(large_db, monkeypatch):
    at = _app(large_db, monkeypatch)
    at.run()
    _clean(at)
    assert "not judged" in _texts(at)
    _page(at, "model")
    assert "no model audited in this run: pass --model" in _texts(at)
    _page(at, "inputs")
    assert "no plotting histogram stored" in _texts(at)
    _page(at, "models")
    assert "no model audited in this database" in _texts(at)
    for page in ("pairs", "history"):
        _page(at, page)


def test_a_database_of_20_runs_of_1000_tests_opens_at_once(large_db, monkeypatch):
    at = _app(large_db, monkeypatch)
    st.cache_data.clear()  # a cold start: nothing cached by the tests before
    start = time.perf_counter()
    at.run()
    first = time.perf_counter() - start
    _clean(at)
    start = time.perf_counter()
    at.run()
    again = time.perf_counter() - start
    _page(at, "history")
    assert len(_frame(at, "smallest p (Holm)")) == 20
    print(f"\noverview of 20 runs x 1,000 tests: first render {first:.2f} s, "
          f"rerun (cached) {again:.2f} s")
    assert first < 60 and again < 30  # a sanity bound only


# ------------------------------------------------------------------ read-only, never blocking


def test_the_dashboard_changes_nothing_and_blocks_no_writer(stored, tmp_path, monkeypatch):
    db = _copy(stored, tmp_path)
    before = _digest(db)
    for run in (stored["a"], stored["b"]):
        at = _app(db, monkeypatch, run=run)
        at.run()
        _clean(at)
        for page in PAGES[1:]:
            _page(at, page)
    assert _digest(db) == before
    assert not Path(f"{db}.wal").exists()
    # the app is alive and has queried: a writer gets the file at once
    write_run(db, _synthetic_rows(1, 200, start=50), wait_s=5)
    _page(at, "overview")
    assert len(at.sidebar.selectbox[0].options) == 3  # the new run is seen (cache by state)


def test_a_release_0_1_0_file_is_shown_and_left_alone(tmp_path, monkeypatch):
    db = tmp_path / "old.duckdb"
    shutil.copy(REPO / "tests" / "data" / "release_0_1_0.duckdb", db)
    before = _digest(db)
    at = _app(db, monkeypatch)
    at.run()
    _clean(at)
    for page in PAGES[1:]:
        _page(at, page)
    assert "no model audited in this database" in _texts(at)
    assert _digest(db) == before


# ------------------------------------------------------------------ the command


def test_dashboard_refuses_what_is_not_a_validator_database(tmp_path, capsys):
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n")
    for path, why in ((tmp_path / "missing.duckdb", "database not found"),
                      (other, "not a validator database"), (text, "not a DuckDB database")):
        assert main(["dashboard", "--db", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "validator dashboard exited"
        try:
            with urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:g} s")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser)")
def test_end_to_end_server_in_headless_chromium(stored, tmp_path):
    pytest.importorskip("websockets")
    db = _copy(stored, tmp_path)
    before = _digest(db)
    with _dashboard_server(db, tmp_path) as url, \
            Browser(tmp_path / "profile", width=1440, height=1250) as browser:
        text = browser.load(url, ["Worst problems", "1. lep1_iso × lep2_iso",
                                  "gate FAILED", "p-values vs uniform"], timeout=150)
        assert "covered by the systematics" in text
        time.sleep(2)  # let the plotly figures finish drawing
        shot = browser.screenshot(tmp_path / "dashboard.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("VALIDATOR_UPDATE_SCREENSHOT"):
            shutil.copy(shot, REPO / "docs" / "dashboard.png")
        text = browser.load(url + "model", ["Criticality", "first-order Taylor"],
                            timeout=120)
        assert "sample_data/classifier.onnx" in text or "classifier.onnx" in text
        browser.load(url + "history", ["Two runs side by side", "newly fails"],
                     timeout=120)
        assert _digest(db) == before  # served and queried: not a byte changed
        # a writer gets the file while the server runs
        write_run(db, _synthetic_rows(1, 200, start=60), wait_s=5)
        browser.load(url, ["run (3 in the database"], timeout=120)
    # the repository's entry serves the same pages, and says when a link names no run
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = (tmp_path / "server2.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run",
                               str(REPO / "dashboard" / "app.py"), "--server.port", str(port),
                               "--server.headless", "true", "--browser.gatherUsageStats",
                               "false", "--server.fileWatcherType", "none", "--", "--db",
                               str(db)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        _wait_healthy(url, server)
        with Browser(tmp_path / "profile2", width=1440, height=1250) as browser:
            browser.load(url + "?run=nonexistent", ["is not in this database", "Worst problems",
                                                    "gate FAILED"], timeout=150)
    finally:
        _stop(server)
        log.close()


#: What the History page's plotly figures hold, read in the browser: each trace's name,
#: mode and y values (the graph divs' ``data``), and the legend and point labels drawn.
PLOTLY_TRACES = """JSON.stringify({
  traces: Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(
    g => (g.data || []).map(t => ({name: t.name, mode: t.mode, y: Array.from(t.y || [])}))),
  texts: Array.from(document.querySelectorAll('.legendtext, .textpoint')).map(
    e => e.textContent)})"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser)")
def test_history_draws_p_zero_as_capped_markers_not_a_flat_line(tmp_path):
    """Two runs whose smallest p-values underflowed (p = 0): the History page's worst
    p-values are labelled ▲ markers at the cap, and no line runs along -log10 p = 300."""
    pytest.importorskip("websockets")
    import json

    rows = _synthetic_rows(2, 200, start=80)
    for t in rows["tests"]:
        if t["test_id"] < 3:
            t.update(pvalue=0.0, p_holm=0.0, p_bh=0.0, passed=False)
    db = tmp_path / "zeros.duckdb"
    write_run(db, rows)
    with _dashboard_server(db, tmp_path) as url, \
            Browser(tmp_path / "profile", width=1440, height=1400) as browser:
        text = browser.load(url + "history", ["worst p-values", "drawn at the cap"],
                            timeout=150)
        assert "< 1e-300" in text  # the table's smallest p, by the one formatter
        time.sleep(2)  # let plotly draw
        found = json.loads(browser.call("Runtime.evaluate", expression=PLOTLY_TRACES,
                                        returnByValue=True)["result"]["value"])
    worst = {t["name"]: t for t in found["traces"] if str(t["name"]).startswith("smallest p")}
    assert worst, found
    for name in ("smallest p", "smallest p (Holm)"):
        line = worst[name]
        assert all(y is None for y in line["y"]), line  # no point on the line at the cap
        capped = worst[f"{name}: bound ▲"]
        assert "markers" in capped["mode"] and capped["y"] == [300.0, 300.0], capped
    assert sum("< 1e-300" in t for t in found["texts"]) >= 2, found["texts"]


@contextlib.contextmanager
def _dashboard_server(db: Path, tmp_path: Path):
    """``validator dashboard --db DB`` on a free port, healthy; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with (tmp_path / f"server-{port}.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "validator.cli", "dashboard", "--db",
                                   str(db), "--port", str(port)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_healthy(url, server)
            yield url
        finally:
            _stop(server)


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
