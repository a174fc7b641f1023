"""Figures a review signs off (issue 33): every figure type, drawn from a run of the sample
analysis (``sample_data/analysis.yaml``: its ``display`` labels and units, its experiment
label), is checked from the saved PNG: the axes fill at least 60 % of the canvas, the title
fits (inside the plotted width, over no other text), tick labels carry at most 4 significant
digits, and the x label carries the configured unit. Also: the display settings, their
ROOT-title defaults, automatic log scales, legends that hide no data, bin-edge labels and
matrix bounds."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from validator.config.file import load_run_file
from validator.config.options import run_config
from validator.errors import InputError
from validator.output import figures
from validator.pipeline import run_validation
from validator.results.display import (
    FeatureDisplay,
    parse_display,
    run_display,
    title_label,
    with_branch_titles,
)
from validator.results.reading import read_run
from validator.results.store import query
from validator.results.tables import load_run_tables

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / "sample_data" / "analysis.yaml"
FEATURES = "met,m_ll,lep1_iso,lep2_iso,n_btag"
#: The saved PNGs' resolution here (the reports write figures.PNG_DPI).
DPI = 50
MIN_AXES_FRACTION = 0.6
MAX_DIGITS = 4


def _gallery():
    spec = importlib.util.spec_from_file_location("gallery", REPO / "docs" / "gallery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gallery"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    """The sample analysis on five inputs and the network's outputs; its systematics are the
    per-process normalisations (the met-scale files are made by ``make demo`` only)."""
    from validator.cli import build_parser

    db = tmp_path_factory.mktemp("figures") / "sample.duckdb"
    values = vars(build_parser().parse_args(["run"]))
    options, _ = load_run_file(ANALYSIS)
    values.update(options)
    values.update(syst_file=[], features=FEATURES, db=str(db), toys=60, syst_toys=30,
                  jobs=1)
    config = replace(run_config(values), shap_events=50, second_order_events=5_000)
    run_validation(config)
    return db


# ------------------------------------------------------------------ the saved figure


def _significant_digits(text: str) -> int | None:
    """Significant digits of a numeric tick label (None: not a number, e.g. a name)."""
    t = text.replace("−", "-").replace("$", "").replace("\\mathdefault", "").strip("{} ")
    if re.fullmatch(r"-?10\^\{?-?\d+\}?", t.replace("{", "").replace("}", "")):
        return 1  # a power of ten on a log axis
    if not re.fullmatch(r"[<>≥]?-?\d*\.?\d+(e[+-]?\d+)?", t):
        return None
    mantissa = re.sub(r"e[+-]?\d+$", "", t.lstrip("<>≥-"))
    digits = mantissa.replace(".", "").lstrip("0")
    if "." not in mantissa:
        digits = digits.rstrip("0")
    return max(len(digits), 1)


def _check_saved(fig, path: Path) -> dict:
    """Save ``fig`` as the reports do (tight box) and measure it against the PNG."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    width_px, height_px = Image.open(path).size
    renderer = fig.canvas.get_renderer()
    scale = DPI / fig.dpi  # figure pixels -> saved pixels
    plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    area = sum(ax.get_window_extent(renderer).width * ax.get_window_extent(renderer).height
               for ax in fig.axes) * scale ** 2  # the colour bar is part of a map
    # the axes with their tick labels, not their own titles (which the check is about)
    right = max(ax.get_tightbbox(renderer, for_layout_only=True).x1 for ax in fig.axes)
    left = min(ax.get_window_extent(renderer).x0 for ax in fig.axes)
    titles = [t for ax in plots for t in (ax.title, ax._left_title, ax._right_title)
              if t.get_text()]
    others = [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and a.get_visible())
              if t.get_text() and all(t is not title for title in titles)]
    for title in titles:
        box = title.get_window_extent(renderer)
        assert box.x0 >= left - 2 and box.x1 <= right + 2, \
            f"{path.name}: title {title.get_text()!r} runs beyond the plotted width"
        overlap = [o.get_text() for o in others
                   if o.get_window_extent(renderer).overlaps(box)
                   and o.get_window_extent(renderer).width > 0]
        assert not overlap, f"{path.name}: title {title.get_text()!r} overlaps {overlap}"
    for ax in fig.axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(lim)
            for tick, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels(),
                                   strict=False):
                if not label.get_visible() or not lo - 1e-9 <= tick <= hi + 1e-9:
                    continue
                digits = _significant_digits(label.get_text())
                assert digits is None or digits <= MAX_DIGITS, \
                    f"{path.name}: tick label {label.get_text()!r}"
    fraction = area / (width_px * height_px)
    assert fraction >= MIN_AXES_FRACTION, f"{path.name}: the axes fill {fraction:.0%}"
    return {"fraction": fraction, "size": (width_px, height_px)}


def test_every_figure_type_of_the_sample_data_fits_its_canvas(sample_run, tmp_path):
    made = _gallery().gallery_figures(sample_run)
    stems = {g.stem for g in made}
    assert {"report_feature", "report_pull", "report_pvalue", "pvalue_hist", "taylor1",
            "taylor2", "nuisance_pulls", "history_worst_p"} <= stems, stems
    for item in made:
        fig = item.make()
        try:
            measured = _check_saved(fig, tmp_path / f"{item.stem}.png")
        finally:
            figures.close_figure(fig)
        print(f"{item.stem}: axes {measured['fraction']:.0%} of {measured['size']}")


def test_feature_figures_carry_the_configured_labels_and_units(sample_run, tmp_path):
    from validator.output.documents import iter_figures

    reading = read_run(load_run_tables(sample_run, histograms="report"))
    display = reading.display
    assert display.of("met") == FeatureDisplay(label="$p_T^{miss}$", unit="GeV", logy=True)
    assert display.experiment is not None and display.experiment.text == "Private Work"
    units = 0
    for item, fig in iter_figures(reading, top=20):
        try:
            _, x, y = item.key
            if item.stem.startswith("feature"):
                xlabel = fig.axes[1].get_xlabel()
                assert xlabel == display.axis_label(x)
                unit = display.of(x).unit
                if unit:
                    assert xlabel.endswith(f"[{unit}]")
                    units += 1
                texts = [t.get_text() for t in fig.axes[0].texts]
                assert any("Private Work" in t for t in texts), texts  # the experiment label
                if x == "met":
                    assert fig.axes[0].get_yscale() == "log"  # logy: true in the config
            elif item.stem.startswith("pull"):
                ax = fig.axes[0]
                assert ax.get_xlabel().startswith(display.axis_label(x))
                assert "equal-population" in ax.get_xlabel()
                assert ax.get_ylabel().startswith(display.axis_label(y or ""))
                caption = [t for t in ax.texts if t.get_gid() == "caption"]
                assert caption and all(m in caption[0].get_text()
                                       for m in ("chi2_uw", "dependence", "corr_pearson"))
        finally:
            figures.close_figure(fig)
    assert units >= 2  # met and m_ll: GeV


# ------------------------------------------------------------------ the pieces


def test_display_settings_parse_and_refuse():
    assert parse_display(["met:label=$p_T$", "met:unit=GeV", "met:logy=yes",
                          "m:range=0,300"]) == {"met": {"label": "$p_T$", "unit": "GeV",
                                                        "logy": True},
                                                "m": {"range": [0.0, 300.0]}}
    for bad in ("met", "met:colour=red", "met:logy=maybe", "m:range=3,1", "m:range=1"):
        with pytest.raises(InputError):
            parse_display([bad])
    shown = run_display(json.dumps({"display": {"met": {"label": "$p_T$", "unit": "GeV"}},
                                    "experiment_label": {"text": "Preliminary", "com": 13}}))
    assert shown.axis_label("met") == "$p_T$ [GeV]" and shown.axis_label("x") == "x"
    assert shown.experiment.experiment == "CMS" and shown.experiment.com == 13
    assert run_display(None).features == {} and run_display("not json").experiment is None


def test_root_branch_titles_are_default_labels(shared_data):
    from validator.inputs.sources import column_titles, open_sample

    assert title_label("met", "met/D") == {}  # ROOT's default title: the leaf list
    assert title_label("MET_pt", "pt") == {}  # says less than the name
    assert title_label("x", "p_{T}^{miss} [GeV]") == {"label": "$p_{T}^{miss}$", "unit": "GeV"}
    assert title_label("eta", "#eta (rad)") == {"label": r"$\eta$", "unit": "rad"}
    assert with_branch_titles({"x": {"label": "mine"}}, {"x": "p_{T} [GeV]", "y": "H_T"}) == {
        "x": {"label": "mine"}, "y": {"label": "H_T"}}
    titles = column_titles(open_sample("sim", [str(shared_data /
                                                    "nanoAOD_2015_CMS_Open_Data_ttbar.root")]),
                           ["ChsMET_pt", "MET_pt"])
    assert titles["ChsMET_pt"] == "raw chs PF MET pt"
    assert set(titles) <= {"ChsMET_pt", "MET_pt"}  # the columns asked for, nothing else
    assert with_branch_titles({}, titles)["ChsMET_pt"] == {"label": "raw chs PF MET pt"}
    assert "MET_pt" not in with_branch_titles({}, titles)


def test_a_root_run_stores_branch_titles_as_labels(shared_data, tmp_path):
    from validator.pipeline import RunConfig

    path = str(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    db = tmp_path / "nano.duckdb"
    run_validation(RunConfig(sim=[path], data=[path], weight="genWeight",
                             features=["ChsMET_pt", "MET_pt"], db=db,
                             sim_selection="event % 2 = 0", data_selection="event % 2 = 1",
                             display={"MET_pt": {"unit": "GeV"}}))
    config = json.loads(query(db, "SELECT config_json FROM runs")["config_json"].iloc[0])
    assert config["display"]["ChsMET_pt"] == {"label": "raw chs PF MET pt"}
    assert config["display"]["MET_pt"] == {"unit": "GeV"}


def test_automatic_log_scale_and_a_legend_over_no_data():
    edges = np.linspace(0, 1, 21)
    falling = np.concatenate([[0], 1e5 * np.exp(-12 * edges[:-1]), [0]])  # 5 decades
    flat = np.concatenate([[0], np.full(20, 500.0), [0]])
    for counts, log in ((falling, True), (flat, False)):
        sim = figures.Hist1D(edges, counts, counts)
        fig = figures.plot_feature(sim, np.round(counts), "x", pvalues={"chi2_uw": 0.5,
                                                                          "ks": 0.2})
        ax = fig.axes[0]
        assert (ax.get_yscale() == "log") == log
        renderer = fig.canvas.get_renderer()
        legend = ax.get_legend().get_window_extent(renderer)
        points = ax.transData.transform(np.column_stack(
            [0.5 * (edges[1:] + edges[:-1]), np.clip(counts[1:-1], 1e-3, None)]))
        inside = [(x, y) for x, y in points if legend.x0 <= x <= legend.x1]
        assert all(y < legend.y0 for _, y in inside), "the legend hides data"
        figures.close_figure(fig)


def test_edge_labels_have_three_significant_digits():
    assert figures.edge_labels(np.array([4.62e-07, 0.00259, 0.0055, 5.0])) == [
        "0", "0.00259", "0.0055", "5"]
    assert figures.edge_labels(np.array([0.0, 1234.5, 13100.0])) == ["0", "1230", "13100"]
    assert figures.edge_labels(np.array([1e5, 3.14159e6])) == ["1.00e+05", "3.14e+06"]


def test_matrix_writes_bounds_as_bounds():
    tests = [{"category": "all", "kind": "2d", "method": "dependence", "feature_x": "a",
              "feature_y": "b", "p_holm": 0.003, "reliable": True, "pvalue_is_bound": True},
             {"category": "all", "kind": "2d", "method": "chi2_uw", "feature_x": "a",
              "feature_y": "b", "p_holm": 0.0, "reliable": True, "pvalue_is_bound": False}]
    p, bound = figures.matrix_cells(tests, ["a", "b"])
    assert bound[0, 1] and not bound[1, 0] and p[0, 1] == 0.003
    fig = figures.plot_pvalue_matrix(tests, ["a", "b"])
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {">2.5", "≥300"} <= texts, texts
    figures.close_figure(fig)
