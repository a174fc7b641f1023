"""Readers: parquet, CSV and ROOT; chunking; one clear error per bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import make_frames

from validator.cli import main
from validator.errors import InputError
from validator.inputs.sources import Selection, iter_chunks, open_sample, parse_source
from validator.results.store import query


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
        # exactly the rows asked for, the last chunk shorter (CSV blocks are sized in bytes)
        assert [len(c["a"]) for c in chunks] == [3_000] * 6 + [2_000], path
        assert all(len(c["nj"]) == len(c["a"]) == len(c["weight"]) for c in chunks)
        np.testing.assert_array_equal(np.concatenate([c["nj"] for c in chunks]),
                                      frame["nj"].to_numpy())
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


@pytest.mark.parametrize("suffix, chunk_rows, lengths", [
    (".csv", 7, [7, 7, 7, 7, 2]),
    (".tsv", 10, [10, 10, 10]),
    (".csv", 30, [30]),
    (".csv", 100, [30]),
    (".parquet", 7, [7, 7, 7, 7, 2]),
])
def test_chunks_have_exactly_the_rows_asked(tmp_path, suffix, chunk_rows, lengths):
    frame = pl.DataFrame({"x": np.arange(30) * 0.5, "n": np.arange(30) % 4,
                          "s": [f"v{i}" for i in range(30)]})
    path = tmp_path / f"f{suffix}"
    if suffix == ".parquet":
        frame.write_parquet(path, row_group_size=11)  # batches cut at row groups, re-joined
    else:
        frame.write_csv(path, separator="\t" if suffix == ".tsv" else ",")
    chunks = list(iter_chunks(open_sample("sim", [str(path)]), ["x", "n", "s", "_entry"],
                              chunk_rows=chunk_rows))
    assert [len(c["x"]) for c in chunks] == lengths
    np.testing.assert_array_equal(np.concatenate([c["x"] for c in chunks]), frame["x"])
    np.testing.assert_array_equal(np.concatenate([c["n"] for c in chunks]), frame["n"])
    assert list(np.concatenate([c["s"] for c in chunks])) == frame["s"].to_list()
    np.testing.assert_array_equal(np.concatenate([c["_entry"] for c in chunks]), np.arange(30))


def test_csv_chunks_span_pyarrow_blocks(tmp_path):
    """A CSV of several pyarrow blocks (>= 1 MiB each) cut into chunks across block edges."""
    n = 120_000
    x = np.arange(n, dtype=np.float64) / 7
    path = tmp_path / "big.csv"
    pl.DataFrame({"x": x, "pad": ["p" * 12] * n}).write_csv(path)
    assert path.stat().st_size > 2 << 20
    chunks = list(iter_chunks(open_sample("sim", [str(path)]), ["x"], chunk_rows=25_000))
    assert [len(c["x"]) for c in chunks] == [25_000] * 4 + [20_000]
    np.testing.assert_allclose(np.concatenate([c["x"] for c in chunks]), x, rtol=1e-15)


def test_negative_elements_of_list_columns(tmp_path):
    path = tmp_path / "jag.parquet"
    lists = [[50.0, 30.0, 10.0], [], [20.0], None, [5.0, 4.0]]
    pl.DataFrame({"jet_pt": lists, "x": [1.0, 2.0, 3.0, 4.0, 5.0]}).write_parquet(path)
    sample = open_sample("sim", [str(path)])
    assert sample.has("jet_pt[-1]") and not sample.has("x[-1]")
    expected = {k: [v[k] if v and -len(v) <= k < len(v) else np.nan for v in lists]
                for k in (-1, -2, -3, 2)}
    for chunk_rows in (100, 2, 1):  # sliced arrow arrays give the same elements
        chunks = list(iter_chunks(sample, ["jet_pt[-1]", "jet_pt[-2]", "jet_pt[-3]",
                                           "jet_pt[2]"], chunk_rows=chunk_rows))
        for k, values in expected.items():
            got = np.concatenate([c[f"jet_pt[{k}]"] for c in chunks])
            np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(expected[-1], [10.0, np.nan, 20.0, np.nan, 4.0])
    with pytest.raises(InputError, match="column 'x' is not jagged; use 'x'"):
        list(iter_chunks(sample, ["x[-1]"]))


def test_negative_elements_of_root_branches(shared_data):
    import awkward as ak
    import uproot

    path = shared_data / "uproot-HZZ.root"
    jets = uproot.open(path)["events"]["Jet_Px"].array()
    counts = ak.to_numpy(ak.num(jets))
    sample = open_sample("sim", [f"{path}:events"])
    got = np.concatenate([c["Jet_Px[-1]"] for c in iter_chunks(sample, ["Jet_Px[-1]"],
                                                                chunk_rows=700)])
    expected = np.full(len(jets), np.nan)
    expected[counts > 0] = ak.to_numpy(jets[counts > 0][:, -1])
    np.testing.assert_array_equal(got, expected)
    assert (counts > 1).any() and np.isnan(got).sum() == (counts == 0).sum()


def test_missing_column_names_the_file_that_lacks_it(tmp_path):
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    pl.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}).write_parquet(first)
    pl.DataFrame({"a": [5.0]}).write_parquet(second)
    sample = open_sample("sim", [str(first), str(second)])
    assert sample.partial_columns == ("b",)
    assert sample.source_columns == ({"a": "float", "b": "float"}, {"a": "float"})
    assert sample.label_lacking("b") == str(second)
    assert sample.label_lacking("b[0]") == str(second)
    assert sample.label_lacking("a") == str(first)  # everywhere: the first file
    assert sample.label_lacking("zz") == str(first)  # nowhere: the first file lacks it
    with pytest.raises(InputError) as info:
        list(iter_chunks(sample, ["a", "b"]))
    assert str(info.value) == f"{second}: column 'b' not found (it is in {first})"
    # in no file: the first file, with a suggestion
    with pytest.raises(InputError) as info:
        list(iter_chunks(sample, ["A "]))
    assert str(info.value) == f"{first}: column 'A ' not found; did you mean 'a'?"


def test_column_with_kinds_that_do_not_mix(tmp_path):
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    pl.DataFrame({"a": [1.0], "t": [1.0]}).write_parquet(first)
    pl.DataFrame({"a": [2.0], "t": ["x"]}).write_parquet(second)
    sample = open_sample("sim", [str(first), str(second)])
    assert "t" not in sample.columns and sample.label_lacking("t") == str(first)
    with pytest.raises(InputError, match=r"column 't' has kinds that cannot be read together "
                                         rf"\(float in {first}, string in {second}\)"):
        list(iter_chunks(sample, ["t"]))


def test_did_you_mean(tmp_path):
    path = tmp_path / "s.parquet"
    pl.DataFrame({"n_jets": [1], "nJet": [2], "jet_pt": [[1.0]], "MET_pt": [3.0]}
                 ).write_parquet(path)
    sample = open_sample("sim", [str(path)])
    assert sample.did_you_mean("n_jet") == "; did you mean 'n_jets'?"
    assert sample.did_you_mean("N_JETS") == "; did you mean 'n_jets'?"  # case ignored
    assert sample.did_you_mean("njet") == "; did you mean 'nJet'?"
    assert sample.did_you_mean("met_PT") == "; did you mean 'MET_pt'?"
    assert sample.did_you_mean("jet_ptt[0]") == "; did you mean 'jet_pt[0]'?"
    assert sample.did_you_mean("Jet_pt[-1]") == "; did you mean 'jet_pt[-1]'?"
    assert sample.did_you_mean("completely_else") == ""
    assert sample.did_you_mean("n_jets") == ""  # a column already
    with pytest.raises(InputError) as info:
        list(iter_chunks(sample, ["jet_ptt[0]"]))
    assert str(info.value) == f"{path}: column 'jet_ptt' not found; did you mean 'jet_pt[0]'?"
    with pytest.raises(InputError, match="weight column 'weigth' not found$"):
        open_sample("sim", [str(path)], "weigth")
    with pytest.raises(InputError, match="weight column 'met_pt' not found; did you mean "
                                         "'MET_pt'"):
        open_sample("sim", [str(path)], "met_pt")


def test_numeric_columns_of_every_width_with_nulls_and_no_pandas(tmp_path):
    """Integers, floats and booleans of every width, with nulls (NaN), in chunks that slice
    the arrow arrays; read without importing pandas (a worker would pay half a second)."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    values = [3, None, 7, 1, None, 250]
    table = pa.table({
        "i8": pa.array([None if v is None else v % 100 for v in values], pa.int8()),
        "u64": pa.array(values, pa.uint64()),
        "f32": pa.array([None if v is None else v / 4 for v in values], pa.float32()),
        "f64": pa.array([None if v is None else v / 8 for v in values], pa.float64()),
        "flag": pa.array([None if v is None else v > 5 for v in values], pa.bool_()),
    })
    path = tmp_path / "widths.parquet"
    pq.write_table(table, path)
    sample = open_sample("sim", [str(path)])
    expected = {name: np.array([np.nan if v is None else float(v) for v in
                                table[name].to_pylist()]) for name in table.column_names}
    for chunk_rows in (100, 4, 1):
        chunks = list(iter_chunks(sample, table.column_names, chunk_rows=chunk_rows))
        for name, want in expected.items():
            got = np.concatenate([c[name] for c in chunks])
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, want)
    code = ("import sys; from validator.inputs.sources import iter_chunks, open_sample; "
            f"s = open_sample('sim', [{str(path)!r}]); "
            f"list(iter_chunks(s, {table.column_names!r}, chunk_rows=4)); "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("condition", ["a > 0.5", "a < 0.5", "NOT (a > 0.5)",
                                       "a > 0.5 OR a <= 0.5"])
def test_a_nan_value_passes_no_selection_and_is_blinded(condition):
    """polars orders NaN above every number; a condition reading a NaN is instead false for a
    selection and true for the blinding (the event is dropped either way), whatever its form."""
    a = np.array([0.2, 0.9, np.nan, -1.0, np.nan])
    selection = Selection.parse(condition, "--sim-selection")
    finite = np.isfinite(a)
    expected = {"a > 0.5": a > 0.5, "a < 0.5": a < 0.5, "NOT (a > 0.5)": ~(a > 0.5),
                "a > 0.5 OR a <= 0.5": finite}[condition]
    np.testing.assert_array_equal(selection.mask({"a": a}, "sim"), expected & finite)
    np.testing.assert_array_equal(selection.mask({"a": a}, "sim", missing=True),
                                  expected | ~finite)


def test_a_selection_drops_the_events_whose_value_is_nan(tmp_path, capsys):
    """End to end: --sim-selection "a > 0.5" keeps the events numpy's a > 0.5 keeps (NaN
    events dropped, as in ROOT and numpy)."""
    sim, data = make_frames(n_sim=3_000, n_data=1_500)
    a = sim["a"].to_numpy().copy()
    a[::7] = np.nan
    sim = sim.with_columns(pl.Series("a", a))
    sim.write_parquet(tmp_path / "sim.parquet")
    data.write_parquet(tmp_path / "data.parquet")
    db = tmp_path / "nan.duckdb"
    assert main(["run", "--quiet", "--sim", str(tmp_path / "sim.parquet"), "--data",
                 str(tmp_path / "data.parquet"), "--weight", "weight", "--features", "a,b",
                 "--sim-selection", "a > 0.5", "--db", str(db)]) == 0
    capsys.readouterr()
    assert query(db, "SELECT n_sim FROM runs").iloc[0, 0] == int(np.sum(a > 0.5))
