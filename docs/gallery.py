"""The figure gallery (``make gallery``): each figure type validator draws, once, from a run of
the sample analysis (``sample_data/analysis.yaml``: its labels, units and experiment label),
written to ``docs/gallery/*.png`` with ``docs/gallery.md`` listing them.

    python docs/gallery.py                     # runs the sample analysis first (~2 minutes)
    python docs/gallery.py --db demo.duckdb    # a stored run of it (make demo's)

The figures are those of the reports (``validator report``) and the PNG/PDF downloads of
the dashboard, drawn by the same functions from the stored tables;
:func:`gallery_figures` lists them (``tests/test_figures.py`` checks every one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "gallery"
MARKDOWN = REPO / "docs" / "gallery.md"
#: PNG resolution of the gallery: modest, the whole gallery stays near 1 MB (the reports
#: write 110 dpi).
GALLERY_DPI = 60


@dataclass(frozen=True)
class GalleryFigure:
    """One figure type: file stem, title, what it shows, where it appears, and its maker."""

    stem: str
    title: str
    caption: str
    where: str
    make: Callable[[], Any]


def gallery_figures(db: str | Path, run: str = "latest") -> list[GalleryFigure]:
    """Every figure type, drawn from a stored run (with a model and systematics, as the
    sample analysis has them)."""
    from validator.dashboard import inputs, model, static
    from validator.dashboard.history import worst_points
    from validator.output.documents import iter_figures
    from validator.results.reading import read_run
    from validator.results.tables import load_run_tables, model_runs, run_table

    reading = read_run(load_run_tables(db, run, histograms="report"))
    run_id = reading.run_id
    out: list[GalleryFigure] = []
    for item, fig in iter_figures(reading, top=1):  # one figure of each kind
        kind = item.stem.split("_")[0]
        what = {"feature": "1D: the worst feature", "pull": "2D: the worst pair's pull map",
                "pvalue": "the p-value matrix of all pairs"}[kind]
        out.append(GalleryFigure(f"report_{kind}", what, item.caption,
                                 "report (`validator report`), dashboard downloads",
                                 lambda fig=fig: fig))
    tests = reading.tests
    pv = [float(p) for p in tests[(tests["reliable"] == True)  # noqa: E712
                                  & tests["pvalue"].notna()
                                  & (tests["kind"] != "taylor")]["pvalue"]]
    out.append(GalleryFigure("pvalue_hist", "p-values vs uniform",
                             "every reliable test's p-value against the uniform expectation "
                             "and its binomial ±1σ band", "dashboard: Overview",
                             lambda: static.pvalue_hist(pv, title=f"run {run_id}")))
    imp = run_table(db, run_id, "importances")
    imp = imp[imp["node"].astype(str).str.startswith("all")] if len(imp) else imp
    if len(imp):
        fo = model.first_order(imp, "taylor", scaled=True)
        names = list(fo["input"])
        out.append(GalleryFigure(
            "taylor1", "Taylor coefficients, first order",
            "⟨|t_i|⟩·σ_i of the audited network in simulation and data",
            "dashboard: Model", lambda: static.bars(
                names, {"simulation": (fo["simulation"], fo["± simulation"]),
                        "data": (fo["data"], fo["± data"])}, "⟨|t_i|⟩·σ_i",
                "first-order Taylor, node all")))
        second = model.second_order(imp, "sim", names)
        out.append(GalleryFigure(
            "taylor2", "Taylor coefficients, second order",
            "⟨|t_ij|⟩·σ_i·σ_j in simulation", "dashboard: Model",
            lambda: static.matrix(second, names, title="second-order Taylor, simulation",
                                  label="⟨|t_ij|⟩·σ_i·σ_j")))
    worst = reading.problems[0].feature_x if reading.problems else None
    one_d = tests[(tests["feature_x"] == worst) & tests["feature_y"].isna()]
    pulls = inputs.nuisance_pulls(one_d)
    if pulls:
        out.append(GalleryFigure(
            "nuisance_pulls", "post-fit nuisance pulls",
            f"the saturated_syst fit of {worst}: each nuisance's pull and post-fit error "
            "against its ±1σ and ±2σ prior", "dashboard: Inputs (1D)",
            lambda: static.pulls([str(p["nuisance"]) for p in pulls],
                                 [float(p["pull"]) for p in pulls],
                                 [float(p["error"]) for p in pulls],
                                 f"saturated_syst fit: {worst}")))
    runs = model_runs(db, reading.run.get("model_id"))
    labels = [f"{str(r)[:16]}" for r in runs["started_at"]]
    series, marks = {}, {}
    for name, column, flag in (("smallest p", "min_p", "min_p_is_bound"),
                               ("smallest p (Holm)", "min_p_holm", "min_p_holm_is_bound")):
        series[name], marks[name] = worst_points(list(runs[column]), list(runs[flag]))
    out.append(GalleryFigure(
        "history_worst_p", "worst p-values over runs",
        "−log10 of each run's smallest p; an underflowed p (< 1e-300) is a labelled ▲ at "
        "the cap, not a point on a line", "dashboard: History",
        lambda: static.lines(labels, series, "−log10 p", "worst p-values", bounds=marks)))
    return out


def write_gallery(db: str | Path, out: Path = OUT, markdown: Path = MARKDOWN,
                  dpi: int = GALLERY_DPI) -> list[Path]:
    """Draw every figure to ``out/*.png`` and write the Markdown page listing them."""
    from validator.output.figures import close_figure

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    lines = ["# Figure gallery", "",
             "Each figure type validator draws, once, from a run of the sample analysis "
             "(`sample_data/analysis.yaml`: its `display` labels and units and its "
             "`experiment_label`). Generated by `make gallery` (`docs/gallery.py`); do not "
             "edit by hand.", ""]
    paths = []
    for item in gallery_figures(db):
        fig = item.make()
        path = out / f"{item.stem}.png"
        try:
            fig.savefig(path, dpi=dpi, bbox_inches="tight")
        finally:
            close_figure(fig)
        paths.append(path)
        lines += [f"## {item.title}", "", f"*{item.where}*: {item.caption}", "",
                  f"![{item.title}](gallery/{path.name})", ""]
    markdown.write_text("\n".join(lines), encoding="utf-8")
    return paths


def run_sample_analysis(folder: Path) -> Path:
    """Run ``sample_data/analysis.yaml`` into a database in ``folder``."""
    from validator.cli import main

    db = folder / "gallery.duckdb"
    code = main(["run", "--config", str(REPO / "sample_data" / "analysis.yaml"), "--db",
                 str(db), "--quiet"])
    if code not in (0, 1):
        raise SystemExit(f"the sample analysis failed (exit {code})")
    return db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a stored run of the sample analysis (default: run it)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else run_sample_analysis(Path(tmp))
        paths = write_gallery(db)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {MARKDOWN.relative_to(REPO)} and {len(paths)} figures in "
          f"{OUT.relative_to(REPO)} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
