"""Tests of the toy sample generator ``sample_data/generate.py`` and the shipped samples.

The planted effects are checked with references independent of validator: scipy's
``ks_2samp`` and ``spearmanr``, weighted means, and a textbook chi² for weighted histograms.
"""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import load_sample_generator
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "sample_data"

#: Small sizes for tests that generate samples (about a second each).
SMALL = {"n_sim": 20_000, "n_data": 10_000, "seed": 11}
#: Tiny sizes for the determinism tests.
TINY = {"n_sim": 3_000, "n_data": 1_500, "seed": 5}
#: Size of the unweighted resample of the small simulation (diboson, 1 % of the simulated
#: events but 6 % of the yield, limits it to 0.01 * 20_000 / 0.06 = 3_333).
RESAMPLE = 3_000




gen = load_sample_generator()


@pytest.fixture(scope="module")
def planted() -> tuple[pl.DataFrame, pl.DataFrame]:
    return gen.make_samples(**SMALL)


@pytest.fixture(scope="module")
def null() -> tuple[pl.DataFrame, pl.DataFrame]:
    return gen.make_samples(**SMALL, planted=False)


@pytest.fixture(scope="module")
def shipped() -> tuple[pl.DataFrame, pl.DataFrame]:
    return (
        pl.read_parquet(SAMPLE_DIR / "sim.parquet"),
        pl.read_parquet(SAMPLE_DIR / "data.parquet"),
    )


# --------------------------------------------------------------------------------------------
# Independent references.
# --------------------------------------------------------------------------------------------


def _weighted_mean(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted mean and its standard error, sqrt(sum w² (x - mean)²) / sum w."""
    mean = float(np.sum(w * x) / np.sum(w))
    return mean, float(np.sqrt(np.sum(w * w * (x - mean) ** 2)) / np.sum(w))


def _mean_ratio(sim: pl.DataFrame, data: pl.DataFrame, col: str) -> tuple[float, float]:
    """Ratio of the data mean to the weighted simulation mean of ``col``, with its error."""
    x_d = data[col].to_numpy().astype(np.float64)
    m_s, e_s = _weighted_mean(sim[col].to_numpy().astype(np.float64), sim["weight"].to_numpy())
    m_d, e_d = float(x_d.mean()), float(x_d.std(ddof=1) / np.sqrt(x_d.size))
    ratio = m_d / m_s
    return ratio, ratio * float(np.hypot(e_d / m_d, e_s / m_s))


def _resample(sim: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """An unweighted sample of ``n`` distinct positive-weight simulated events.

    Within a process every event has the same |weight| and negative events follow the positive
    ones' distribution, so taking round(n * Y_p / Y) positive events of each process at random
    (Y_p: its net sum of weights) gives an unweighted sample of the weighted distribution.
    """
    rng = np.random.default_rng(seed)
    total = float(sim["weight"].sum())
    parts = []
    for name in sorted(sim["process"].unique().to_list()):
        proc = sim.filter(pl.col("process") == name)
        k = round(n * float(proc["weight"].sum()) / total)
        positive = proc.filter(pl.col("weight") > 0)
        assert k <= positive.height, f"{name}: too few positive events to resample {n}"
        parts.append(positive[np.sort(rng.choice(positive.height, k, replace=False))])
    return pl.concat(parts)


def _chi2_weighted(x_data: np.ndarray, x_sim: np.ndarray, w: np.ndarray, nbins: int) -> float:
    """p-value of the chi² of unweighted data against weighted simulation, data-quantile bins.

    Gagunashvili's statistic (N. D. Gagunashvili, Comput. Phys. Commun. 183 (2012) 193, eq. 11;
    ROOT ``TH1::Chi2Test`` option "UW") with ``nbins - 1`` degrees of freedom.
    """
    edges = np.unique(np.quantile(x_data, np.linspace(0.0, 1.0, nbins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    n, _ = np.histogram(x_data, edges)
    sw, _ = np.histogram(x_sim, edges, weights=w)
    sw2, _ = np.histogram(x_sim, edges, weights=w * w)
    n_tot, w_tot = n.sum(), sw.sum()
    a = w_tot * sw - n_tot * sw2
    p = (a + np.sqrt(a * a + 4.0 * w_tot**2 * sw2 * n)) / (2.0 * w_tot**2)
    chi2 = np.sum((n - n_tot * p) ** 2 / (n_tot * p) + (sw - w_tot * p) ** 2 / sw2)
    return float(stats.chi2.sf(chi2, len(n) - 1))


def _spearman_interval(rs: float, n: int, nsigma: float = 5.0) -> tuple[float, float]:
    """Interval around a Spearman correlation from its Fisher transform, var = 1.06 / (n - 3).

    Fieller, Hartley & Pearson, Biometrika 44 (1957) 470.
    """
    half = nsigma * np.sqrt(1.06 / (n - 3))
    return float(np.tanh(np.arctanh(rs) - half)), float(np.tanh(np.arctanh(rs) + half))


# --------------------------------------------------------------------------------------------
# Determinism and schema.
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_frames() -> None:
    sim, data = gen.make_samples(**TINY)
    sim2, data2 = gen.make_samples(**TINY)
    assert sim.equals(sim2) and data.equals(data2)
    other_sim, other_data = gen.make_samples(**{**TINY, "seed": TINY["seed"] + 1})
    assert not other_sim.equals(sim) and not other_data.equals(data)


def test_same_seed_gives_bit_identical_files(tmp_path: Path) -> None:
    first = gen.write_samples(*gen.make_samples(**TINY), tmp_path / "a")
    second = gen.write_samples(*gen.make_samples(**TINY), tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--n-sim", "3000", "--n-data", "1500", "--seed", "3", "--null"]
    assert gen.main(args) == 0
    sim = pl.read_parquet(tmp_path / "sim.parquet")
    data = pl.read_parquet(tmp_path / "data.parquet")
    expected = gen.make_samples(n_sim=3_000, n_data=1_500, seed=3, planted=False)
    assert sim.equals(expected[0]) and data.equals(expected[1])
    assert "sim.parquet" in capsys.readouterr().out


def test_schema(planted: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    sim, data = planted
    features = list(gen.FEATURES)
    assert 15 <= len(features) <= 25
    assert sim.columns == [*features, "weight", "process", "event"]
    assert data.columns == [*features, "run", "event"]
    for frame in (sim, data):
        for name in features:
            expected = pl.Int32 if name in gen.INTEGER_FEATURES else pl.Float32
            assert frame.schema[name] == expected, name
        assert frame.schema["event"] == pl.Int64
        assert frame["event"].n_unique() == frame.height
        assert frame.select(features).null_count().sum_horizontal().item() == 0
        assert frame.select(pl.col(pl.Float32).is_nan().any()).sum_horizontal().item() == 0
    assert sim.schema["weight"] == pl.Float64
    assert sim.schema["process"] == pl.String
    assert data.schema["run"] == pl.Int32
    assert "weight" not in data.columns and "process" not in data.columns
    assert sim.height == SMALL["n_sim"] and data.height == SMALL["n_data"]
    assert set(sim["process"].unique()) == {p.name for p in gen.PROCESSES}
    assert set(data["run"].unique()) <= {run for run, _ in gen.RUNS}


def test_physical_ranges(planted: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    for frame in planted:
        assert (frame["lep1_pt"] >= frame["lep2_pt"]).all()
        assert (frame["jet1_pt"] >= frame["jet2_pt"]).all()
        assert frame["lep2_pt"].min() >= 20.0 and frame["jet2_pt"].min() >= 30.0
        assert frame["n_jets"].min() >= 2
        assert set(frame["n_btag"].unique()) <= {0, 1, 2, 3}
        assert (frame["ht"] >= (frame["jet1_pt"] + frame["jet2_pt"]) * (1.0 - 2.0**-10)).all()
        # Stored values keep 10 mantissa bits, so bounds hold up to a relative 2^-11.
        assert frame["lep_delta_phi"].min() >= 0.0 and frame["lep_delta_phi"].max() <= 3.15
        for col in ("lep1_iso", "lep2_iso"):
            assert frame[col].min() >= 0.0 and frame[col].max() <= gen.ISO_MAX * 1.001
        assert frame["met"].min() >= 0.0 and frame["m_ll"].min() >= 20.0


def test_processes_differ_physically(planted: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    sim = planted[0]
    by = sim.group_by("process").agg(
        ((pl.col("m_ll") - gen.M_Z).abs() < 10.0).mean().alias("z_window"),
        pl.col("n_btag").mean(),
        pl.col("met").median(),
    )
    row = {r["process"]: r for r in by.iter_rows(named=True)}
    assert row["drell_yan"]["z_window"] > 0.7 > 0.2 > row["ttbar"]["z_window"]
    assert row["ttbar"]["n_btag"] > 1.0 > 0.2 > row["drell_yan"]["n_btag"]
    assert row["ttbar"]["met"] > 2.0 * row["drell_yan"]["met"]


# --------------------------------------------------------------------------------------------
# Weights.
# --------------------------------------------------------------------------------------------


def test_negative_weights(planted: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    sim = planted[0]
    w = sim["weight"].to_numpy()
    assert 0.02 <= np.mean(w < 0) <= 0.05
    magnitudes = gen.process_weights(SMALL["n_sim"], SMALL["n_data"])
    assert 0.2 <= min(magnitudes.values()) < max(magnitudes.values()) <= 3.0
    for proc in gen.PROCESSES:
        sel = sim.filter(pl.col("process") == proc.name)
        np.testing.assert_allclose(sel["weight"].abs().to_numpy(), magnitudes[proc.name])
        frac = float((sel["weight"] < 0).mean())
        err = np.sqrt(proc.negative_fraction * (1 - proc.negative_fraction) / sel.height)
        assert abs(frac - proc.negative_fraction) <= 5.0 * err + 1e-12, proc.name
        assert float(sel["weight"].sum()) > 0.0
    # Negative events follow the positive ones' distribution.
    dy = sim.filter(pl.col("process") == "drell_yan")
    for col in ("m_ll", "pt_ll", "met"):
        neg = dy.filter(pl.col("weight") < 0)[col].to_numpy()
        pos = dy.filter(pl.col("weight") > 0)[col].to_numpy()
        assert stats.ks_2samp(neg, pos).pvalue > 0.001, col


def test_normalisation(
    planted: tuple[pl.DataFrame, pl.DataFrame], shipped: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    for sim, data in (planted, shipped):
        assert sim["weight"].sum() == pytest.approx(data.height, rel=0.02)


# --------------------------------------------------------------------------------------------
# The planted effects.
# --------------------------------------------------------------------------------------------


def test_null_and_planted_differ_only_where_planted(
    planted: tuple[pl.DataFrame, pl.DataFrame], null: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    assert planted[0].equals(null[0])
    data_p, data_n = planted[1], null[1]
    assert data_p.drop("met", "lep2_iso").equals(data_n.drop("met", "lep2_iso"))
    ratio = data_p["met"].to_numpy() / data_n["met"].to_numpy()
    np.testing.assert_allclose(ratio, gen.MET_SCALE, rtol=2.0**-10)
    assert not np.array_equal(data_p["lep2_iso"].to_numpy(), data_n["lep2_iso"].to_numpy())


def test_met_scale_is_planted(planted: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    ratio, err = _mean_ratio(*planted, "met")
    assert abs(ratio - gen.MET_SCALE) < 4.0 * err
    assert 1.0 < gen.MET_SCALE <= 1.06


def test_met_scale_absent_in_null(null: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    ratio, err = _mean_ratio(*null, "met")
    assert abs(ratio - 1.0) < 4.0 * err


@pytest.mark.parametrize("sample", ["planted", "null"])
def test_iso_copula_correlation(sample: str, request: pytest.FixtureRequest) -> None:
    sim, data = request.getfixturevalue(sample)
    rho_data = gen.ISO_RHO_DATA if sample == "planted" else gen.ISO_RHO_SIM
    for frame, rho in ((sim, gen.ISO_RHO_SIM), (data, rho_data)):
        rs = stats.spearmanr(frame["lep1_iso"], frame["lep2_iso"]).statistic
        low, high = _spearman_interval(rs, frame.height)
        expected = 6.0 / np.pi * np.arcsin(rho / 2.0)
        assert expected == pytest.approx(gen.copula_spearman(rho))
        assert low < expected < high, (sample, rs, expected)


@pytest.mark.parametrize("sample", ["planted", "null"])
def test_other_marginals_agree(sample: str, request: pytest.FixtureRequest) -> None:
    """Every 1D distribution but the planted ``met`` agrees (the isolations included).

    20 tests per sample, so each at 0.001; ``test_shipped_iso_marginals_agree`` tests the
    isolations at 1 % on the larger shipped samples.
    """
    sim, data = request.getfixturevalue(sample)
    resampled = _resample(sim, RESAMPLE)
    for col in gen.FEATURES:
        if col == "met" and sample == "planted":
            continue
        assert stats.ks_2samp(data[col], resampled[col]).pvalue > 0.001, col


# --------------------------------------------------------------------------------------------
# The shipped default samples.
# --------------------------------------------------------------------------------------------


def test_shipped_files_are_the_generator_defaults(
    shipped: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    sim, data = gen.make_samples()
    assert sim.equals(shipped[0]), "regenerate: python sample_data/generate.py"
    assert data.equals(shipped[1]), "regenerate: python sample_data/generate.py"
    assert sim.height == gen.DEFAULT_N_SIM and data.height == gen.DEFAULT_N_DATA
    size = sum((SAMPLE_DIR / f"{n}.parquet").stat().st_size for n in ("sim", "data"))
    assert size < 10e6


def test_shipped_1d_only_met_is_mismodelled(shipped: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    sim, data = shipped
    w = sim["weight"].to_numpy()
    resampled = _resample(sim, 20_000)

    def pvalue(col: str) -> float:
        return _chi2_weighted(data[col].to_numpy(), sim[col].to_numpy(), w, 10)

    assert pvalue("met") < 1e-20
    assert stats.ks_2samp(data["met"], resampled["met"]).pvalue < 1e-6
    ratio, err = _mean_ratio(sim, data, "met")
    assert abs(ratio - gen.MET_SCALE) < 4.0 * err and ratio - 1.0 > 5.0 * err
    continuous = [c for c in gen.FEATURES if c not in gen.INTEGER_FEATURES and c != "met"]
    for col in continuous:
        assert pvalue(col) > 0.001, col
        assert stats.ks_2samp(data[col], resampled[col]).pvalue > 0.001, col


def test_shipped_iso_correlation_is_mismodelled(
    shipped: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    sim, data = shipped
    rs_sim = stats.spearmanr(sim["lep1_iso"], sim["lep2_iso"]).statistic
    rs_data = stats.spearmanr(data["lep1_iso"], data["lep2_iso"]).statistic
    low, high = _spearman_interval(rs_sim, sim.height)
    assert low < gen.copula_spearman(gen.ISO_RHO_SIM) < high
    low, high = _spearman_interval(rs_data, data.height)
    assert low < gen.copula_spearman(gen.ISO_RHO_DATA) < high
    assert rs_data - rs_sim > 0.2


def _sign_product(frame: pl.DataFrame, *cols: str) -> np.ndarray:
    return np.prod([np.sign(frame[c].to_numpy()) for c in cols], axis=0)


TRACKS = ("trk1_d0sig", "trk2_d0sig", "trk3_d0sig")


def test_multivariate_case_planted_in_three_only(
    planted: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    """make_multivariate_case: the samples of make_samples plus three track columns where
    sign(d1 d2 d3) has mean TRK_PARITY_FRACTION in data, 0 in simulation; every pair of signs
    is uncorrelated in both; each d0sig follows the same law."""
    sim, data = gen.make_multivariate_case(**SMALL)
    assert gen.TRACK_FEATURES == TRACKS
    assert sim.drop(TRACKS).equals(planted[0]) and data.drop(TRACKS).equals(planted[1])
    null_sim, null_data = gen.make_multivariate_case(**SMALL, planted=False)
    assert null_sim.equals(sim)
    assert abs(_sign_product(null_data, *TRACKS).mean()) < 5 / np.sqrt(null_data.height)
    n = data.height
    assert abs(_sign_product(data, *TRACKS).mean() - gen.TRK_PARITY_FRACTION) < 5 / np.sqrt(n)
    assert abs(_sign_product(sim, *TRACKS).mean()) < 5 / np.sqrt(sim.height)
    resampled = _resample(sim, RESAMPLE)
    for i, a in enumerate(TRACKS):
        for b in TRACKS[i + 1:]:
            for frame in (sim, data):
                assert abs(_sign_product(frame, a, b).mean()) < 5 / np.sqrt(frame.height)
        assert stats.ks_2samp(data[a], resampled[a]).pvalue > 0.01, a
    # the pairs' joint laws: the 2x2 sign tables agree between data and the simulation
    for i, a in enumerate(TRACKS):
        for b in TRACKS[i + 1:]:
            table = np.histogram2d(np.sign(data[a]), np.sign(data[b]), bins=2)[0]
            assert stats.chi2_contingency(table).pvalue > 0.001, (a, b)


def test_shipped_iso_marginals_agree(shipped: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    sim, data = shipped
    resampled = _resample(sim, 20_000)
    for col in ("lep1_iso", "lep2_iso"):
        assert stats.ks_2samp(data[col], resampled[col]).pvalue > 0.01, col
