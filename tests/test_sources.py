"""Readers: parquet, CSV and ROOT; chunking; one clear error per bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from validator.errors import InputError
from validator.sources import iter_chunks, open_sample, parse_source


def test_parquet_and_csv_read_the_same_values(tmp_path, samples):
    sim_path, _ = samples
    frame = pl.read_parquet(sim_path)
    csv_path = tmp_path / "sim.csv"
    frame.write_csv(csv_path)
    for path in (sim_path, csv_path):
        sample = open_sample("sim", [str(path)], "weight")
        assert sample.n_rows == len(frame)
        assert sample.columns["nj"] == "int" and sample.columns["a"] == "float"
        chunks = list(iter_chunks(sample, ["a", "nj"], chunk_rows=3_000))
        a = np.concatenate([c["a"] for c in chunks])
        np.testing.assert_allclose(a, frame["a"].to_numpy(), rtol=1e-12)
        assert all(len(c["a"]) <= 3_000 for c in chunks) or path.suffix == ".csv"
        w = np.concatenate([c["weight"] for c in chunks])
        assert w.sum() == pytest.approx(frame["weight"].sum())


def test_several_files_per_sample(samples):
    sim_path, _ = samples
    sample = open_sample("sim", [str(sim_path), str(sim_path)], "weight")
    assert sample.n_rows == 2 * pl.read_parquet(sim_path).height


def test_list_columns_give_elements_with_nan_for_missing(tmp_path):
    path = tmp_path / "jag.parquet"
    pl.DataFrame({"jet_pt": [[50.0, 30.0], [], [20.0]], "x": [1.0, 2.0, 3.0]}).write_parquet(path)
    sample = open_sample("sim", [str(path)])
    assert sample.columns["jet_pt"] == "jagged"
    chunk = next(iter_chunks(sample, ["jet_pt[0]", "jet_pt[1]"]))
    np.testing.assert_array_equal(chunk["jet_pt[0]"], [50.0, np.nan, 20.0])
    np.testing.assert_array_equal(chunk["jet_pt[1]"], [30.0, np.nan, np.nan])


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "file not found"),
    (lambda p: p.write_bytes(b"PAR1 this is not parquet"), "not a readable parquet file"),
])
def test_bad_files(tmp_path, make, message):
    path = tmp_path / "x.parquet"
    make(path)
    with pytest.raises(InputError, match=message) as info:
        open_sample("sim", [str(path)])
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_suffix_and_missing_weight(tmp_path, samples):
    sim_path, _data_path = samples
    with pytest.raises(InputError, match="unknown file type"):
        parse_source(str(tmp_path / "x.txt"))
    with pytest.raises(InputError, match="weight column 'wgt' not found"):
        open_sample("sim", [str(sim_path)], "wgt")


def test_empty_sample(tmp_path, samples):
    sim_path, _ = samples
    empty = tmp_path / "empty.parquet"
    pl.read_parquet(sim_path).head(0).write_parquet(empty)
    with pytest.raises(InputError, match="no events"):
        open_sample("sim", [str(empty)], "weight")


def test_root_files(shared_data):
    zmumu = open_sample("data", [str(shared_data / "uproot-Zmumu.root")])
    assert zmumu.columns["Type"] == "string" and zmumu.columns["M"] == "float"
    chunk = next(iter_chunks(zmumu, ["M", "Type"], chunk_rows=500))
    assert chunk["Type"].dtype == object and set(chunk["Type"]) <= {"GG", "GT", "TT"}
    assert len(chunk["M"]) == 500
    hzz = open_sample("sim", [str(shared_data / "uproot-HZZ.root:events")], "EventWeight")
    assert hzz.columns["Jet_Px"] == "jagged"
    first = np.concatenate([c["Jet_Px[0]"] for c in iter_chunks(hzz, ["Jet_Px[0]", "NJet"])])
    njet = np.concatenate([c["NJet"] for c in iter_chunks(hzz, ["NJet"])])
    assert np.array_equal(np.isnan(first), njet == 0)  # a missing jet reads as NaN
    with pytest.raises(InputError, match="no tree 'nope'"):
        open_sample("sim", [str(shared_data / "uproot-HZZ.root:nope")])
    with pytest.raises(InputError, match="jagged"):
        open_sample("sim", [str(shared_data / "uproot-HZZ.root")], "Jet_Px")
    with pytest.raises(InputError, match="branch|column 'Nope' not found"):
        list(iter_chunks(hzz, ["Nope"]))
