"""ROOT RNTuples read like TTrees: kinds, chunking, booleans, strings and jagged elements.

The RNTuples are written on the fly (uproot >= 5.7 writes RNTuple by default) from the real
files in ../shared/data, and every value is checked against what uproot and awkward read from
the original TTree directly. Skipped cleanly when ../shared/data is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from validator.errors import InputError
from validator.inputs.sources import iter_chunks, open_sample, root_kind

uproot = pytest.importorskip("uproot", minversion="5.7")
ak = pytest.importorskip("awkward")

NANO = "nanoAOD_2015_CMS_Open_Data_ttbar.root"
#: NanoAOD branches copied into the RNTuple: uint32, uint64, int32, uint8, float, bool, and
#: jagged float, int32, uint8 and bool.
NANO_BRANCHES = ["nJet", "run", "event", "luminosityBlock", "PV_npvs", "LHE_Njets", "MET_pt",
                 "genWeight", "HLT_PFJet40", "Flag_goodVertices", "Jet_pt", "Jet_puId",
                 "Jet_nConstituents", "Muon_isGlobal"]


def _write_rntuple(path: Path, name: str, arrays: dict) -> Path:
    """Write ``arrays`` as an RNTuple called ``name`` and check that it is one."""
    with uproot.recreate(path) as out:
        out[name] = arrays
    assert uproot.open(path).classnames() == {f"{name};1": "ROOT::RNTuple"}
    return path


def _read(sample, columns, chunk_rows):
    chunks = list(iter_chunks(sample, columns, chunk_rows=chunk_rows))
    return chunks, {c: np.concatenate([ch[c] for ch in chunks]) for c in columns}


def _element(jagged, index: int) -> np.ndarray:
    """Element ``index`` of each event's list, straight from awkward (NaN where too short)."""
    counts = ak.to_numpy(ak.num(jagged))
    ok = counts > index if index >= 0 else counts >= -index
    out = np.full(len(jagged), np.nan)
    out[ok] = ak.to_numpy(jagged[ok][:, index]).astype(np.float64)
    return out


@pytest.fixture
def nano(shared_data, tmp_path):
    """The NanoAOD TTree's arrays, and an RNTuple file holding the same branches."""
    tree = uproot.open(shared_data / NANO)["Events"]
    arrays = tree.arrays(NANO_BRANCHES)
    path = _write_rntuple(tmp_path / "nano_rntuple.root", "Events",
                          {b: arrays[b] for b in NANO_BRANCHES})
    return arrays, path


def test_nanoaod_rntuple_kinds_match_the_ttree(nano, shared_data):
    _, path = nano
    ntuple = uproot.open(path)["Events"]
    typenames = ntuple.typenames()
    assert typenames["nJet"] == "std::uint32_t" and typenames["event"] == "std::uint64_t"
    assert typenames["PV_npvs"] == "std::int32_t" and typenames["LHE_Njets"] == "std::uint8_t"
    assert typenames["Jet_pt"] == "std::vector<float>"
    assert typenames["Muon_isGlobal"] == "std::vector<bool>"
    rnt = open_sample("sim", [f"{path}:Events"], "genWeight")
    ttree = open_sample("sim", [f"{shared_data / NANO}:Events"], "genWeight")
    assert rnt.n_rows == ttree.n_rows == 200
    assert rnt.columns == {b: ttree.columns[b] for b in NANO_BRANCHES}
    assert rnt.columns["nJet"] == "int" and rnt.columns["event"] == "int"
    assert rnt.columns["MET_pt"] == "float" and rnt.columns["HLT_PFJet40"] == "bool"
    assert rnt.columns["Jet_pt"] == rnt.columns["Muon_isGlobal"] == "jagged"
    # the only RNTuple in the file is found without naming it
    assert open_sample("sim", [str(path)]).columns == rnt.columns


def test_nanoaod_rntuple_values_in_chunks(nano, shared_data):
    arrays, path = nano
    rnt = open_sample("sim", [f"{path}:Events"], "genWeight")
    ttree = open_sample("sim", [f"{shared_data / NANO}:Events"], "genWeight")
    columns = ["nJet", "event", "run", "PV_npvs", "LHE_Njets", "MET_pt", "genWeight",
               "HLT_PFJet40",
               "Flag_goodVertices", "Jet_pt[0]", "Jet_pt[1]", "Jet_pt[-1]", "Jet_puId[0]",
               "Jet_nConstituents[2]", "Muon_isGlobal[0]"]
    chunks, got = _read(rnt, columns, chunk_rows=64)
    assert [len(c["nJet"]) for c in chunks] == [64, 64, 64, 8]  # the chunk size is honoured
    _, from_tree = _read(ttree, columns, chunk_rows=64)
    for name in ("nJet", "event", "run", "PV_npvs", "LHE_Njets", "MET_pt", "genWeight"):
        expected = ak.to_numpy(arrays[name]).astype(np.float64)
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    # booleans read as 0/1
    for name in ("HLT_PFJet40", "Flag_goodVertices"):
        np.testing.assert_array_equal(got[name], ak.to_numpy(arrays[name]).astype(np.float64))
        assert set(np.unique(got[name])) <= {0.0, 1.0}
    # jagged elements, NaN exactly where the event has too few objects
    njet = ak.to_numpy(arrays["nJet"])
    for index in (0, 1, -1):
        np.testing.assert_array_equal(got[f"Jet_pt[{index}]"], _element(arrays["Jet_pt"], index))
    assert np.array_equal(np.isnan(got["Jet_pt[1]"]), njet < 2) and (njet < 2).any()
    np.testing.assert_array_equal(got["Jet_pt[-1]"][njet == 1], got["Jet_pt[0]"][njet == 1])
    np.testing.assert_array_equal(got["Jet_puId[0]"], _element(arrays["Jet_puId"], 0))
    np.testing.assert_array_equal(got["Jet_nConstituents[2]"],
                                  _element(arrays["Jet_nConstituents"], 2))
    np.testing.assert_array_equal(got["Muon_isGlobal[0]"], _element(arrays["Muon_isGlobal"], 0))
    # and the same numbers as the original TTree through the same reader
    for name in columns:
        np.testing.assert_array_equal(got[name], from_tree[name], err_msg=name)


def test_hzz_rntuple_jagged_elements(shared_data, tmp_path):
    tree = uproot.open(shared_data / "uproot-HZZ.root")["events"]
    names = ["NJet", "NMuon", "Jet_Px", "Jet_ID", "Muon_Px", "Muon_Charge", "MET_px",
             "NPrimaryVertices", "triggerIsoMu24", "EventWeight"]
    arrays = tree.arrays(names)
    path = _write_rntuple(tmp_path / "hzz.root", "events", {n: arrays[n] for n in names})
    sample = open_sample("sim", [f"{path}:events"], "EventWeight")
    assert sample.columns["Jet_Px"] == sample.columns["Jet_ID"] == "jagged"
    assert sample.columns["triggerIsoMu24"] == "bool" and sample.columns["NJet"] == "int"
    columns = ["NJet", "Jet_Px[0]", "Jet_Px[1]", "Jet_Px[-1]", "Jet_Px[-2]", "Jet_ID[0]",
               "Muon_Px[0]", "Muon_Charge[-1]", "MET_px", "triggerIsoMu24"]
    chunks, got = _read(sample, columns, chunk_rows=1000)
    assert [len(c["NJet"]) for c in chunks] == [1000, 1000, 421]
    njet = ak.to_numpy(arrays["NJet"])
    for index in (0, 1, -1, -2):
        np.testing.assert_array_equal(got[f"Jet_Px[{index}]"], _element(arrays["Jet_Px"], index))
    assert np.array_equal(np.isnan(got["Jet_Px[0]"]), njet == 0)
    assert np.array_equal(np.isnan(got["Jet_Px[-2]"]), njet < 2)
    np.testing.assert_array_equal(got["Jet_ID[0]"], _element(arrays["Jet_ID"], 0))
    np.testing.assert_array_equal(got["Muon_Px[0]"], _element(arrays["Muon_Px"], 0))
    np.testing.assert_array_equal(got["Muon_Charge[-1]"], _element(arrays["Muon_Charge"], -1))
    np.testing.assert_array_equal(got["MET_px"], ak.to_numpy(arrays["MET_px"]))
    np.testing.assert_array_equal(got["triggerIsoMu24"],
                                  ak.to_numpy(arrays["triggerIsoMu24"]).astype(float))
    w = np.concatenate([c["EventWeight"] for c in chunks])
    np.testing.assert_array_equal(w, ak.to_numpy(arrays["EventWeight"]))
    with pytest.raises(InputError, match="jagged"):
        open_sample("sim", [str(path)], "Jet_Px")
    with pytest.raises(InputError, match="name an element"):
        list(iter_chunks(sample, ["Jet_Px"]))


def test_zmumu_rntuple_strings(shared_data, tmp_path):
    tree = uproot.open(shared_data / "uproot-Zmumu.root")["events"]
    arrays = tree.arrays(["Type", "Run", "Event", "M", "Q1"])
    path = _write_rntuple(tmp_path / "zmumu.root", "events",
                          {n: arrays[n] for n in arrays.fields})
    assert uproot.open(path)["events"].typenames()["Type"] == "std::string"
    sample = open_sample("data", [str(path)])
    assert sample.columns == {"Type": "string", "Run": "int", "Event": "int", "M": "float",
                              "Q1": "int"}
    chunks, got = _read(sample, ["Type", "M", "Event"], chunk_rows=500)
    assert [len(c["M"]) for c in chunks] == [500, 500, 500, 500, 304]
    assert got["Type"].dtype == object
    assert list(got["Type"]) == ak.to_list(arrays["Type"])
    np.testing.assert_array_equal(got["M"], ak.to_numpy(arrays["M"]))
    np.testing.assert_array_equal(got["Event"], ak.to_numpy(arrays["Event"]))


def test_every_writable_field_type(tmp_path):
    """Each field type uproot can write as an RNTuple, with its kind and its values.

    uproot 5.7 cannot write ``std::float16_t`` (float16 arrays raise KeyError 'float16'), so
    that type name is covered by ``test_root_kind_names`` only.
    """
    ints = {f"{sign}int{bits}": np.array([0, 1, 2, 100], dtype=f"{sign}int{bits}")
            for sign in ("", "u") for bits in (8, 16, 32, 64)}
    data = {
        **ints,
        "f32": np.array([0.5, -1.25, 3.0, 1e30], dtype=np.float32),
        "f64": np.array([0.1, -2.0, np.pi, 1e300]),
        "flag": np.array([True, False, True, True]),
        "text": ak.Array(["a", "bb", "", "ccc"]),
        "vec": ak.Array([[1.5, 2.5], [], [3.5], [4.5, 5.5, 6.5]]),
        "vbool": ak.Array([[True], [False, True], [], [True]]),
        "arr": np.arange(8, dtype=np.float32).reshape(4, 2),
        "opt": ak.Array([1.0, None, 3.0, None]),
    }
    path = _write_rntuple(tmp_path / "types.root", "T", data)
    typenames = uproot.open(path)["T"].typenames()
    assert typenames["uint64"] == "std::uint64_t" and typenames["int8"] == "std::int8_t"
    assert typenames["arr"] == "std::array<float,2>"
    assert typenames["opt"] == "std::optional<double>"
    sample = open_sample("sim", [str(path)])
    assert sample.columns == {**dict.fromkeys(ints, "int"), "f32": "float", "f64": "float",
                              "flag": "bool", "text": "string", "vec": "jagged",
                              "vbool": "jagged", "arr": "jagged", "opt": "float"}
    columns = [*ints, "f32", "f64", "flag", "text", "vec[0]", "vec[-1]", "vbool[1]",
               "arr[1]", "arr[-2]", "opt"]
    (chunk,) = iter_chunks(sample, columns)
    for name, values in ints.items():
        assert chunk[name].dtype == np.float64
        np.testing.assert_array_equal(chunk[name], values.astype(np.float64))
    np.testing.assert_array_equal(chunk["f32"], data["f32"].astype(np.float64))
    np.testing.assert_array_equal(chunk["f64"], data["f64"])
    np.testing.assert_array_equal(chunk["flag"], [1.0, 0.0, 1.0, 1.0])
    assert list(chunk["text"]) == ["a", "bb", "", "ccc"]
    np.testing.assert_array_equal(chunk["vec[0]"], [1.5, np.nan, 3.5, 4.5])
    np.testing.assert_array_equal(chunk["vec[-1]"], [2.5, np.nan, 3.5, 6.5])
    np.testing.assert_array_equal(chunk["vbool[1]"], [np.nan, 1.0, np.nan, np.nan])
    np.testing.assert_array_equal(chunk["arr[1]"], [1.0, 3.0, 5.0, 7.0])
    np.testing.assert_array_equal(chunk["arr[-2]"], [0.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(chunk["opt"], [1.0, np.nan, 3.0, np.nan])


@pytest.mark.parametrize("typename, kind", [
    ("std::int8_t", "int"), ("std::uint8_t", "int"), ("std::int16_t", "int"),
    ("std::uint16_t", "int"), ("std::int32_t", "int"), ("std::uint32_t", "int"),
    ("std::int64_t", "int"), ("std::uint64_t", "int"), ("char", "int"), ("std::byte", "int"),
    ("unsigned long long", "int"), ("Long64_t", "int"), ("uint8_t", "int"),
    ("ROOT::RNTupleCardinality<std::uint64_t>", "int"),
    ("float", "float"), ("double", "float"), ("std::float16_t", "float"),
    ("Float16_t", "float"), ("Double32_t", "float"),
    ("bool", "bool"), ("Bool_t", "bool"),
    ("std::string", "string"), ("char*", "string"), ("TString", "string"),
    ("std::vector<float>", "jagged"), ("std::vector<std::int32_t>", "jagged"),
    ("ROOT::RVec<float>", "jagged"), ("ROOT::VecOps::RVec<int>", "jagged"),
    ("std::array<float,3>", "jagged"), ("float[]", "jagged"), ("int32_t[3]", "jagged"),
    ("std::vector<bool>", "jagged"), ("vector<double>", "jagged"),
    ("std::optional<double>", "float"), ("std::optional<std::int32_t>", "int"),
    ("std::atomic<bool>", "bool"), ("std::optional<std::string>", "other"),
    ("std::map<int,float>", "other"), ("MyStruct", "other"), ("", "other"),
])
def test_root_kind_names(typename, kind):
    assert root_kind(typename) == kind


def test_several_clusters_and_a_chunk_across_them(tmp_path):
    """Chunks of a fixed size across RNTuple cluster boundaries (each extend is a cluster)."""
    path = tmp_path / "clusters.root"
    x = np.arange(250, dtype=np.float64)
    jets = ak.Array([[float(i)] * (i % 3) for i in range(250)])
    with uproot.recreate(path) as out:
        out["T"] = {"x": x[:100], "jet": jets[:100]}
        out["T"].extend({"x": x[100:170], "jet": jets[100:170]})
        out["T"].extend({"x": x[170:], "jet": jets[170:]})
    sample = open_sample("sim", [str(path)])
    assert sample.n_rows == 250
    chunks, got = _read(sample, ["x", "jet[1]"], chunk_rows=60)
    assert [len(c["x"]) for c in chunks] == [60, 60, 60, 60, 10]
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["jet[1]"], np.where(x % 3 == 2, x, np.nan))


def test_trees_and_rntuples_listed_and_chosen(tmp_path):
    path = tmp_path / "both.root"
    with uproot.recreate(path) as out:
        out.mktree("tree", {"a": np.float64}, )
        out["tree"].extend({"a": np.array([1.0, 2.0])})
        out["Events"] = {"b": np.array([3, 4, 5], dtype=np.int32)}
        out["hist"] = np.histogram([1.0, 2.0], bins=2)
    kinds = {k.split(";")[0]: v for k, v in uproot.open(path).classnames().items()}
    assert kinds["tree"] == "TTree" and kinds["Events"] == "ROOT::RNTuple"
    with pytest.raises(InputError, match=r"several trees \(TTrees: tree; RNTuples: Events\)"):
        open_sample("sim", [str(path)])
    with pytest.raises(InputError, match=r"no tree 'events' \(TTrees: tree; RNTuples: Events\)"
                                         r"; did you mean 'Events'\?"):
        open_sample("sim", [f"{path}:events"])
    with pytest.raises(InputError, match="'hist' is a TH1D, not a TTree or RNTuple"):
        open_sample("sim", [f"{path}:hist"])
    tree = open_sample("sim", [f"{path}:tree"])
    ntuple = open_sample("sim", [f"{path}:Events"])
    assert tree.columns == {"a": "float"} and ntuple.columns == {"b": "int"}
    np.testing.assert_array_equal(next(iter_chunks(tree, ["a"]))["a"], [1.0, 2.0])
    np.testing.assert_array_equal(next(iter_chunks(ntuple, ["b"]))["b"], [3.0, 4.0, 5.0])
    # one TTree and one RNTuple file in the same sample
    both = open_sample("sim", [f"{path}:Events", f"{path}:Events"])
    assert both.n_rows == 6


def test_cli_runs_on_rntuple_halves(shared_data, tmp_path, capsys):
    """End to end: simulation and data from the NanoAOD's even and odd entries, as RNTuples."""
    from validator.cli import main

    tree = uproot.open(shared_data / NANO)["Events"]
    arrays = tree.arrays(NANO_BRANCHES)
    files = {}
    for part, start in (("even", 0), ("odd", 1)):
        files[part] = _write_rntuple(tmp_path / f"{part}.root", "Events",
                                     {b: arrays[b][start::2] for b in NANO_BRANCHES})
    code = main(["run", "--quiet", "--sim", f"{files['even']}:Events",
                 "--data", f"{files['odd']}:Events", "--weight", "genWeight",
                 "--features", "nJet,Jet_pt[0],MET_pt,PV_npvs", "--no-db"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "100 simulated and 100 data events" in out
