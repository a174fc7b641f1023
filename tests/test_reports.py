"""Reports (Markdown, self-contained HTML, PNG/PDF figures) rebuilt from a stored run alone.

One small validation of the sample data (``met`` planted 5 % too large in data, the
``lep1_iso``-``lep2_iso`` correlation mismodelled) is stored in a temporary DuckDB file; the
input files are deleted before any report is written, so every report comes from the database.
The figures' contents are checked against the stored histograms recomputed here.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import load_sample_generator
from matplotlib.collections import QuadMesh
from matplotlib.patches import Rectangle, StepPatch
from PIL import Image

from validator.cli import main
from validator.output import figures
from validator.output.documents import markdown_report, write_report
from validator.pipeline import RunConfig, run_validation
from validator.results.reading import read_run
from validator.results.store import query, save_verdict
from validator.results.tables import load_run_tables
from validator.stages.compare import CompareOptions

REPO = Path(__file__).resolve().parents[1]
FEATURES = ["met", "lep1_iso", "lep2_iso", "m_ll", "n_btag"]
PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF-"




@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    sim, data = load_sample_generator().make_samples(n_sim=40_000, n_data=20_000, seed=11,
                                                     planted=True)
    sim.write_parquet(folder / "sim.parquet")
    data.write_parquet(folder / "data.parquet")
    return folder / "sim.parquet", folder / "data.parquet"


@pytest.fixture(scope="module")
def stored(tmp_path_factory, inputs) -> Path:
    """A stored run whose input files are gone: only the database is left."""
    folder = tmp_path_factory.mktemp("stored")
    sim, data = folder / "sim.parquet", folder / "data.parquet"
    shutil.copy(inputs[0], sim)
    shutil.copy(inputs[1], data)
    db = folder / "v.duckdb"
    run_validation(RunConfig(sim=[str(sim)], data=[str(data)], weight="weight",
                             features=FEATURES, db=db,
                             compare=CompareOptions(dependence_toys=60)))
    sim.unlink()
    data.unlink()
    return db


@pytest.fixture(scope="module")
def report(tmp_path_factory, stored):
    out = tmp_path_factory.mktemp("report") / "out"
    return write_report(stored, "latest", out, top=3)


def _hist(db: Path, binning: str, x: str, y: str | None = None) -> dict:
    sql = "SELECT * FROM histograms WHERE binning = ? AND feature_x = ? AND category = 'all' AND "
    sql += "feature_y IS NULL" if y is None else "feature_y = ?"
    rows = query(db, sql, [binning, x] + ([y] if y else [])).to_dict("records")
    assert len(rows) == 1
    return rows[0]


def test_report_files_are_valid_images(report):
    assert report.markdown.is_file() and report.html.is_file()
    pngs = [p for p in report.figures if p.suffix == ".png"]
    pdfs = [p for p in report.figures if p.suffix == ".pdf"]
    # 3 worst features, 3 worst pairs, the p-value matrix; each as PNG and PDF
    assert len(pngs) == len(pdfs) == 7
    assert {p.stem for p in pngs} == {p.stem for p in pdfs}
    assert "pvalue_matrix" in {p.stem for p in pngs}
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.size[0] > 300 and image.size[1] > 300
    for pdf in pdfs:
        assert pdf.read_bytes()[:5] == PDF_MAGIC


def test_markdown_names_the_planted_problems_first(report, stored):
    text = report.markdown.read_text()
    assert text.startswith("## validator run `")
    assert "not judged" in text.splitlines()[0]
    rows = [line for line in text.splitlines() if line.startswith("| 1D") or
            line.startswith("| correlation")]
    assert any("`met`" in r for r in rows), text
    assert any("`lep1_iso × lep2_iso`" in r for r in rows), text
    # every 1D row flags met only: lep1_iso and lep2_iso are exact in 1D
    assert all("`met`" in r for r in rows if r.startswith("| 1D"))
    assert "figures/feature_met.png" in text
    assert "**Normalisation**" in text and "**Counts**" in text
    assert len(text) < 10_000  # a merge-request comment
    # the same text from the tables again: the report is a function of the database
    reading = read_run(load_run_tables(stored, "latest"))
    assert markdown_report(reading, top=3).split("\n")[0] == text.split("\n")[0]


def test_problems_group_tests_per_feature(stored):
    found = read_run(load_run_tables(stored, "latest")).problems
    keys = [(p.feature_x, p.feature_y) for p in found]
    assert len(keys) == len(set(keys)) == len(FEATURES) + len(FEATURES) * (len(FEATURES) - 1) // 2
    met = next(p for p in found if p.key == ("all", "met", None))
    assert met.what == "feature" and met.methods and met.p_holm < 0.05
    assert found[0] is met  # 1D mismodellings first
    iso = next(p for p in found if p.key == ("all", "lep1_iso", "lep2_iso"))
    assert iso.what == "correlation"
    # pairs with met fail through the 1D failure of met, not as correlations
    assert all(p.what in ("from_marginals", "") for p in found
               if p.feature_y is not None and "met" in (p.feature_x, p.feature_y))


def test_markdown_shows_the_latest_verdict_first(stored, tmp_path):
    db = tmp_path / "judged.duckdb"
    shutil.copy(stored, db)
    run_id = query(db, "SELECT run_id FROM runs")["run_id"].iloc[0]
    rows = [{"run_id": run_id, "verdict_id": "v1", "judged_at": datetime(2026, 1, 1),
             "rules_name": "unblinding", "rules_sha256": "ab" * 32, "rule": "no-1d-failure",
             "rule_kind": "per_test", "passed": False,
             "reason": "met: ks p_holm 1e-5 < 0.01 and effect 0.03 >= 0.01", "details": "{}"},
            {"run_id": run_id, "verdict_id": "v1", "judged_at": datetime(2026, 1, 1),
             "rules_name": "unblinding", "rules_sha256": "ab" * 32, "rule": "coverage",
             "rule_kind": "coverage", "passed": True, "reason": "all tested", "details": "{}"}]
    save_verdict(db, run_id, rows, passed=False, rules_name="unblinding",
                 rules_sha256="ab" * 32)
    text = markdown_report(read_run(load_run_tables(db, "latest")))
    first = text.splitlines()[0]
    assert "gate FAILED: 1 of 2 rules fail (rules unblinding)" in first
    assert "`no-1d-failure` (per_test): met: ks p_holm 1e-5" in text
    assert text.index("Failing rules") < text.index("Worst problems")
    # a later verdict that passes replaces it in the report
    later = [{**r, "verdict_id": "v2", "judged_at": datetime(2026, 1, 2),
              "rules_name": "default", "passed": True} for r in rows]
    save_verdict(db, run_id, later, passed=True, rules_name="default", rules_sha256="cd" * 32)
    text = markdown_report(read_run(load_run_tables(db, "latest")))
    assert "gate PASSED: 2 of 2 rules pass (rules default)" in text.splitlines()[0]
    assert "Failing rules" not in text


def test_html_is_self_contained_with_the_figures(report):
    page = report.html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len([p for p in report.figures if p.suffix == ".png"])
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    assert 'alt="met"' in page and 'alt="p-value matrix of all pairs"' in page
    assert "not judged" in page


def test_feature_figure_draws_the_stored_plot_histogram(stored):
    row = _hist(stored, "plot", "met")
    sim, data = figures.hist1d_from_row(row)
    fig = figures.plot_feature(sim, data, "met", pvalues={"ks": 1e-6})
    ax = fig.axes[0]
    (points,) = [line for line in ax.get_lines() if line.get_gid() == "data"]
    edges = np.asarray(row["edges_x"])
    stored_data = np.asarray(row["data_counts"])
    np.testing.assert_array_equal(points.get_ydata(), stored_data[1:-1])
    np.testing.assert_allclose(points.get_xdata(), 0.5 * (edges[1:] + edges[:-1]))
    # the simulation is the stored Σw scaled to the data count (flows included)
    sumw = np.asarray(row["sim_sumw"])
    k = stored_data.sum() / sumw.sum()
    filled = [p for p in ax.patches if isinstance(p, StepPatch) and p.get_label()
              .startswith("Simulation")]
    assert len(filled) == 1
    np.testing.assert_allclose(filled[0].get_data().values, k * sumw[1:-1], rtol=1e-12)
    legend = ax.get_legend()
    assert "p (Holm)" in legend.get_title().get_text()
    # under/overflow in the caption under the figure (never over the data)
    (caption,) = [t for t in fig.axes[1].texts if t.get_gid() == "caption"]
    assert f"underflow: data {stored_data[0]:.0f}, sim {k * sumw[0]:.1f}" in caption.get_text()
    figures.close_figure(fig)


def test_pull_map_is_recomputed_from_the_stored_arrays(stored):
    row = _hist(stored, "test", "lep1_iso", "lep2_iso")
    fig = figures.plot_pull_map(figures.hist2d_from_row(row), "lep1_iso", "lep2_iso")
    (mesh,) = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    nx, ny = len(row["edges_x"]) - 1, len(row["edges_y"]) - 1
    d = np.asarray(row["data_counts"]).reshape(nx, ny)  # row-major: (ix, iy)
    s = np.asarray(row["sim_sumw"]).reshape(nx, ny)
    s2 = np.asarray(row["sim_sumw2"]).reshape(nx, ny)
    k = d.sum() / s.sum()
    expected = (d - k * s) / np.sqrt(d + k**2 * s2)
    drawn = np.ma.filled(mesh.get_array().astype(float), np.nan).reshape(ny, nx).T
    np.testing.assert_allclose(drawn, expected, rtol=1e-12)
    assert np.nanmax(np.abs(expected)) > 5  # the planted correlation shows
    norm = mesh.norm
    assert norm.vcenter == 0 and norm.vmin == -norm.vmax
    figures.close_figure(fig)


def test_negative_weights_and_stacked_processes():
    edges = np.linspace(0, 5, 6)
    a = figures.Hist1D(edges, np.array([1.0, 10, 8, 6, 4, 2, 0]),
                       np.array([1.0, 10, 8, 6, 4, 2, 0]))
    b = figures.Hist1D(edges, np.array([0.0, 5, -9, 3, 2, 1, 0]),
                       np.array([0.0, 5, 9, 3, 2, 1, 0]))
    data = np.array([1.0, 15, 0, 9, 7, 3, 0])
    fig = figures.plot_feature({"ttbar": a, "dy": b}, data, "x", normalise=False)
    ax, rax = fig.axes[:2]
    stacks = [p for p in ax.patches if isinstance(p, StepPatch) and p.get_label() in
              ("ttbar", "dy")]
    np.testing.assert_allclose(stacks[-1].get_data().values, (a.sumw + b.sumw)[1:-1])
    assert any("1 bins with Σw < 0" in t.get_text() for t in fig.axes[1].texts
               if t.get_gid() == "caption")  # the caption under the figure
    (ratio,) = [line for line in rax.get_lines() if line.get_gid() == "ratio"]
    assert np.isnan(ratio.get_ydata()[1])  # no ratio where the simulation is negative
    assert ax.get_ylim()[0] < 0
    figures.close_figure(fig)


def test_pvalue_matrix_colours_and_important_pairs(stored):
    tests = query(stored, "SELECT * FROM tests").replace({np.nan: None}).to_dict("records")
    matrix = figures.pvalue_matrix(tests, FEATURES)
    i, j = FEATURES.index("lep1_iso"), FEATURES.index("lep2_iso")
    assert matrix[j, i] < figures.P_RED  # plain 2D chi2 (lower triangle)
    assert matrix[i, j] < figures.P_RED  # dependence (upper triangle)
    assert matrix[0, 0] < figures.P_GREEN  # met, flagged in 1D, on the diagonal
    assert figures.P_RED < figures.P_GREEN
    fig = figures.plot_pvalue_matrix(tests, FEATURES, important=[("lep2_iso", "lep1_iso")])
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)
             and p.get_edgecolor()[:3] == (0, 0, 0) and not p.get_fill()]
    assert {(int(b.get_x()), int(b.get_y())) for b in boxes} == {(i, j), (j, i)}
    figures.close_figure(fig)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser)")
def test_html_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600"]
    url = report.html.resolve().as_uri()
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], check=True,
                   capture_output=True, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert (pixels < 250).any(axis=2).mean() > 0.02  # not blank: text and figures drawn
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # figures' colours
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == len([p for p in report.figures if p.suffix == ".png"])
    assert all('src="data:image/png;base64,' in img for img in images)


# ------------------------------------------------------------------ command line


def test_cli_report(capsys, stored, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", "--db", str(stored), "--run", "latest", "--out", str(out),
                 "--top", "1"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert (out / "figures" / "feature_met.pdf").is_file()


@pytest.mark.parametrize("case", ["missing", "empty", "no-run", "not-a-folder"])
def test_cli_report_unusable_database_exits_2(capsys, stored, tmp_path, case):
    import duckdb

    db, run, out = tmp_path / "db.duckdb", "latest", tmp_path / "out"
    if case == "empty":
        duckdb.connect(str(db)).close()
    elif case == "no-run":
        db, run = stored, "19990101"
    elif case == "not-a-folder":
        db = stored
        out.write_text("a file")
    code = main(["report", "--db", str(db), "--run", run, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("validator: error:")


def test_cli_run_writes_the_markdown_report(capsys, inputs, tmp_path):
    sim, data = inputs
    md = tmp_path / "gate.md"
    args = ["run", "--quiet", "--sim", str(sim), "--data", str(data), "--weight", "weight",
            "--features", "met,n_btag", "--toys", "20", "--db", str(tmp_path / "v.duckdb")]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([*args, "--report", str(blocker / "gate.md")]) == 2
    assert "--report" in capsys.readouterr().err
    assert not (tmp_path / "v.duckdb").exists()  # refused before any work
    assert main([*args, "--report", str(md)]) == 0
    text = md.read_text()
    run_id = query(tmp_path / "v.duckdb", "SELECT run_id FROM runs")["run_id"].iloc[0]
    assert text.startswith(f"## validator run `{run_id}`: not judged")
    assert "| 1D | `met` |" in text
    # --no-db: the report comes from memory
    md2 = tmp_path / "nodb.md"
    assert main([*args[:-2], "--no-db", "--report", str(md2)]) == 0
    assert "| 1D | `met` |" in md2.read_text()
