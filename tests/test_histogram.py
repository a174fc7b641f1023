"""Histograms as scikit-hep values: a stored or in-memory histogram becomes a ``hist.Hist``
with its axes and Σw, Σw² storage, which ``mplhep.histplot`` draws and ``hist`` refills."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_frames

from validator.cli import main
from validator.results.tables import load_run_tables
from validator.stats.histogram import Hist, from_stored

hist = pytest.importorskip("hist")


def test_to_hist_keeps_axes_values_and_variances_and_adds_like_hist():
    rng = np.random.default_rng(3)
    edges = np.array([0.0, 1.0, 2.5, 4.0])
    w = rng.normal(1.0, 0.5, (2, 3))
    a = Hist((edges,), w[:1], (w**2)[:1])
    b = Hist((edges,), w[1:], (w**2)[1:])
    ha, hb, hab = a.to_hist(names=("met",)), b.to_hist(names=("met",)), (a + b).to_hist(
        names=("met",))
    np.testing.assert_array_equal(ha.axes[0].edges, edges)
    assert ha.axes[0].name == "met"
    np.testing.assert_allclose(ha.values(), w[0])
    np.testing.assert_allclose(ha.variances(), w[0] ** 2)
    np.testing.assert_allclose((ha + hb).values(), hab.values())
    np.testing.assert_allclose((ha + hb).variances(), hab.variances())
    # refilled with hist: the same weighted fill as the arrays give
    x = rng.uniform(0, 4, 100)
    wt = rng.normal(1, 0.3, 100)
    ref = hist.Hist(hist.axis.Variable(edges, name="met"), storage=hist.storage.Weight())
    ref.fill(met=x, weight=wt)
    idx = np.searchsorted(edges, x, side="right") - 1
    mine = Hist((edges,), np.bincount(idx, wt, 3)[None], np.bincount(idx, wt**2, 3)[None])
    np.testing.assert_allclose(mine.to_hist(names=("met",)).values(), ref.values())
    np.testing.assert_allclose(mine.to_hist(names=("met",)).variances(), ref.variances())


def test_stored_histograms_come_back_as_hist_and_draw_with_mplhep(tmp_path, capsys):
    mplhep = pytest.importorskip("mplhep")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim, data = make_frames(n_sim=4_000, n_data=2_000)
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    db = tmp_path / "v.duckdb"
    assert main(["run", "--quiet", "--sim", str(tmp_path / "sim.parquet"), "--data",
                 str(tmp_path / "data.parquet"), "--weight", "weight", "--features", "a,b",
                 "--db", str(db)]) == 0
    capsys.readouterr()
    rows = load_run_tables(db, tables=("runs",), histograms="all")["histograms"]
    plot = rows[(rows["binning"] == "plot") & (rows["feature_x"] == "a")
                & rows["variation"].isna() & (rows["category"] == "all")].iloc[0].to_dict()
    sim_h, data_h = from_stored(plot, "sim").to_hist(names=("a",)), \
        from_stored(plot, "data").to_hist(names=("a",))
    # every simulated event is in a bin, the flow bins included
    assert sim_h.sum(flow=True).value == pytest.approx(float(sim["weight"].sum()), rel=1e-9)
    assert data_h.sum(flow=True).value == len(data)
    np.testing.assert_allclose(data_h.variances(flow=True), data_h.values(flow=True))
    pair = rows[(rows["binning"] == "test") & (rows["feature_x"] == "a")
                & (rows["feature_y"] == "b") & rows["variation"].isna()
                & (rows["category"] == "all")].iloc[0].to_dict()
    h2 = from_stored(pair, "data").to_hist(names=("a", "b"))
    assert h2.ndim == 2 and h2.sum().value == len(data)
    fig, ax = plt.subplots()
    mplhep.histplot(sim_h, ax=ax, label="simulation")
    mplhep.histplot(data_h, ax=ax, histtype="errorbar", label="data")
    assert len(ax.get_lines()) + len(ax.patches) + len(ax.collections) > 0
    plt.close(fig)
