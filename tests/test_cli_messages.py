"""What a user meets at the command line: forgotten weights, the same sample twice, absurd
options, mixed column types, NaN/inf fractions tested, derived columns, blinding, help texts."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import make_frames
from scipy import stats

from validator.cli import main
from validator.results.store import query


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["run", "--quiet", *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _write(tmp_path, sim: pl.DataFrame, data: pl.DataFrame) -> tuple[str, str]:
    s, d = tmp_path / "s.parquet", tmp_path / "d.parquet"
    sim.write_parquet(s)
    data.write_parquet(d)
    return str(s), str(d)


def test_a_forgotten_weight_is_an_error_unless_unweighted_is_said(capsys, samples):
    sim, data = samples
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--no-db")
    assert code == 2 and err.count("\n") == 1
    assert "has a weight column 'weight' but no --weight was given" in err
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--no-db",
                        "--unweighted")
    assert code == 0, err


def test_the_same_files_on_both_sides_are_refused(capsys, samples):
    sim, _ = samples
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(sim), "--weight", "weight",
                        "--no-db")
    assert code == 2 and "same files with the same selection" in err
    # split in halves, the same file is a legitimate null test
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(sim), "--weight", "weight",
                        "--sim-selection", "event % 2 = 0", "--data-selection",
                        "event % 2 = 1", "--no-db", "--exclude", "weight")
    assert code == 0, err


def test_identical_events_under_other_names_are_said(capsys, tmp_path):
    _, data = make_frames(n_sim=2_000, n_data=3_000)
    s, d = _write(tmp_path, data, data)
    code, out, err = _run(capsys, "--sim", s, "--data", d, "--no-db")
    assert code == 0, err
    assert "simulation and data hold the same events" in out


@pytest.mark.parametrize("args, message", [
    (["--bins", "1000000"], "--bins: must be <= 200"),
    (["--bins", "1"], "--bins: must be >= 2"),
    (["--alpha", "1.5"], "argument --alpha: must be < 1, got 1.5"),
    (["--db-wait", "-1"], "argument --db-wait: must be >= 0, got -1"),
    (["--define", "ht"], "--define: 'ht' is not NAME=EXPR"),
    (["--define", "a=b+1"], "--define 'a' is already a column"),
    (["--features", "a,NJ"], "feature 'NJ' not found; did you mean 'nj'?"),
])
def test_bad_options_exit_2_with_one_line(capsys, samples, args, message):
    sim, data = samples
    code, _, err = _run(capsys, "--sim", str(sim), "--data", str(data), "--weight", "weight",
                        "--no-db", *args)
    assert code == 2 and message in err.splitlines()[-1], err


def test_int_in_one_sample_and_float_in_the_other_is_said(capsys, tmp_path):
    sim, data = make_frames(n_sim=4_000, n_data=2_000)
    s, d = _write(tmp_path, sim.with_columns(pl.col("nj").cast(pl.Float64)), data)
    code, out, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--no-db")
    assert code == 0, err
    assert "compared as numbers: nj (float in simulation, int in data)" in out


def test_an_inf_fraction_only_in_data_fails(capsys, tmp_path):
    sim, data = make_frames(n_sim=8_000, n_data=4_000)
    data = data.with_columns(c=pl.when(pl.col("event") % 10 == 0).then(float("inf"))
                             .otherwise(pl.col("c")))
    s, d = _write(tmp_path, sim, data)
    db = tmp_path / "v.duckdb"
    code, out, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--db", str(db))
    assert code == 0, err
    t = query(db, "SELECT * FROM tests WHERE method = 'invalid_fraction'")
    assert t["feature_x"].tolist() == ["c"]
    assert t["effect_size"][0] == pytest.approx(0.1)
    assert t["p_holm"][0] < 1e-10 and not t["passed"][0]
    assert "mismodelled features (1D, Holm < alpha): c (invalid_fraction)" in out


def test_invalid_fraction_is_gagunashvilis_chi2_of_valid_and_invalid(tmp_path):
    """The statistic written out from Gagunashvili (arXiv:physics/0605123, eqs. 5-6) for the
    two bins (valid, NaN/inf/sentinel), with the weighted simulation's sums from numpy."""
    from validator.pipeline import RunConfig, run_validation

    sim, data = make_frames(n_sim=8_000, n_data=4_000, seed=21)
    sim = sim.with_columns(c=pl.when(pl.col("event") % 25 == 0).then(-999.0)
                           .otherwise(pl.col("c")))
    data = data.with_columns(c=pl.when(pl.col("event") % 20 == 0).then(float("nan"))
                             .otherwise(pl.col("c")))
    s, d = _write(tmp_path, sim, data)
    out = run_validation(RunConfig(sim=[s], data=[d], weight="weight", db=None))
    (rec,) = [r for r in out.records if r.method == "invalid_fraction"]
    w = sim["weight"].to_numpy()
    bad_sim = sim["event"].to_numpy() % 25 == 0
    n = np.array([4_000 - 200, 200.0])
    wi = np.array([w[~bad_sim].sum(), w[bad_sim].sum()])
    s2 = np.array([(w[~bad_sim] ** 2).sum(), (w[bad_sim] ** 2).sum()])
    big_n, big_w = n.sum(), wi.sum()
    b = big_w * wi - big_n * s2
    p_hat = (b + np.sqrt(b * b + 4 * big_w**2 * s2 * n)) / (2 * big_w**2)
    x2 = np.sum((n - big_n * p_hat) ** 2 / (big_n * p_hat)) + np.sum(
        (wi - big_w * p_hat) ** 2 / s2)
    assert rec.result.statistic == pytest.approx(x2, rel=1e-9)
    assert rec.result.pvalue == pytest.approx(stats.chi2.sf(x2, 1), rel=1e-9)
    assert rec.result.effect_size == pytest.approx(0.05 - wi[1] / big_w, rel=1e-9)


def test_a_defined_column_is_tested_and_the_blinded_region_never_counted(capsys, tmp_path):
    sim, data = make_frames(n_sim=8_000, n_data=4_000)
    s, d = _write(tmp_path, sim, data)
    db = tmp_path / "v.duckdb"
    code, _, err = _run(capsys, "--sim", s, "--data", d, "--weight", "weight", "--db", str(db),
                          "--define", "ab=a + b", "--blind", "ab > 1.5")
    assert code == 0, err
    ab = (data["a"] + data["b"]).to_numpy()
    n_open = int((ab <= 1.5).sum())
    run = query(db, "SELECT n_data, n_features, config_json FROM runs").iloc[0]
    assert run["n_data"] == n_open and run["n_features"] == 5
    assert '"blind": "ab > 1.5"' in run["config_json"]
    h = query(db, "SELECT binning, data_counts, edges_x FROM histograms WHERE feature_x = 'ab' "
                  "AND feature_y IS NULL AND category = 'all'").set_index("binning")
    assert sum(h.loc["test", "data_counts"]) == n_open
    # nothing from the blinded region reaches any stored number: not even the plot's overflow
    plot_edges = h.loc["plot", "edges_x"]
    assert h.loc["plot", "data_counts"][-1] == ((ab > plot_edges[-1]) & (ab <= 1.5)).sum()
    assert max(h.loc["test", "edges_x"]) <= 1.5
    sim_ab = (sim["a"] + sim["b"]).to_numpy()
    feats = query(db, "SELECT mean_data, mean_sim FROM features WHERE feature = 'ab' "
                      "AND category = 'all'").iloc[0]
    assert feats["mean_data"] == pytest.approx(ab[ab <= 1.5].mean(), rel=1e-9)
    w = sim["weight"].to_numpy()
    assert feats["mean_sim"] == pytest.approx(np.average(sim_ab[sim_ab <= 1.5],
                                                         weights=w[sim_ab <= 1.5]), rel=1e-9)


def test_help_texts_speak_to_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "Input-space validation for machine learning in HEP" in top
    assert "Command line: a thin face" not in top
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    run_help = capsys.readouterr().out
    assert "n_jets >= 2" in run_help and "njets" not in run_help
    assert "exit codes: 0 done, 1 a rule fails, 2 unusable input or command, 3 internal" \
        in run_help


def test_a_bug_while_reading_is_an_internal_error_not_bad_input(samples, capsys, monkeypatch):
    """Only what a bad file raises is exit 2; a bug of ours inside the reader is exit 3 with
    its traceback (a gate must not read it as the user's fault)."""
    import validator.inputs.sources as sources

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug in the reader")
        yield  # pragma: no cover

    monkeypatch.setattr(sources, "_rebatch", broken)
    sim, data = samples
    code = main(["run", "--quiet", "--no-db", "--jobs", "1", "--sim", str(sim), "--data",
                 str(data), "--weight", "weight", "--chunk-rows", "1000"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "internal error: ZeroDivisionError" in err and "Traceback" in err
    monkeypatch.undo()
    data.write_bytes(b"PAR1" + b"\0" * 64)  # a truncated parquet file: the file's fault
    code = main(["run", "--quiet", "--no-db", "--sim", str(sim), "--data", str(data),
                 "--weight", "weight"])
    err = capsys.readouterr().err
    assert code == 2 and str(data) in err and err.count("\n") == 1, err
