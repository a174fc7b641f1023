"""Real CMS Open Data ROOT files (../shared/data), split in two halves that follow one law.

Skipped cleanly when ../shared/data is absent (a user's fresh clone).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from validator.cli import main
from validator.results.store import query

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _halves(capsys, tmp_path, path: str, key: str, *extra: str, name: str = "real",
            ) -> tuple[str, object]:
    db = tmp_path / f"{name}.duckdb"
    code = main(["run", "--quiet", "--sim", path, "--data", path,
                 "--sim-selection", f"{key} % 2 = 0", "--data-selection", f"{key} % 2 = 1",
                 "--db", str(db), *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, db


def _in_line_with_the_null(db) -> None:
    """Failures at 1% in line with the number of tests, and no confident discovery."""
    tests = query(db, "SELECT pvalue, p_holm, reliable, not_run_reason FROM tests")
    reliable = tests[tests["reliable"]]
    n = len(reliable)
    n_fail = int((reliable["pvalue"] < 0.01).sum())
    # tests of one histogram are correlated: allow twice the binomial 99.9% quantile
    assert n_fail <= 2 * stats.binom.ppf(0.999, n, 0.01) + 2, (n_fail, n)
    assert not (reliable["p_holm"] < 0.01).any()
    # a test either ran (a p-value) or says why it could not
    ran = tests["not_run_reason"].isna()
    assert np.isfinite(tests.loc[ran, "pvalue"]).all()
    assert tests.loc[~ran, "pvalue"].isna().all()


def test_zmumu_data_halves_by_event_with_muon_type_categories(capsys, tmp_path, shared_data):
    path = str(shared_data / "uproot-Zmumu.root")
    out, db = _halves(capsys, tmp_path, path, "Event", "--category", "Type")
    runs = query(db, "SELECT * FROM runs").iloc[0]
    assert runs["n_sim"] + runs["n_data"] == 2304
    cats = set(query(db, "SELECT DISTINCT category FROM tests")["category"])
    assert cats == {"all", "GG", "GT", "TT"}
    feats = set(query(db, "SELECT feature FROM features")["feature"])
    assert {"M", "pt1", "eta2", "Q1"} <= feats and not {"Run", "Event", "Type"} & feats
    # 2304 rows from 500 events, each seen as several muon-type combinations: the rows are
    # not independent (the halves rightly differ more than independent events would), and
    # the run says so
    assert "distinct (Run, Event): rows of one event are not independent" in out
    # one row per event: the GG candidates (516 rows, 500 events after the event split)
    db_gg = tmp_path / "gg.duckdb"
    assert main(["run", "--quiet", "--sim", path, "--data", path, "--db", str(db_gg),
                 "--sim-selection", "Event % 2 = 0 AND Type = 'GG'",
                 "--data-selection", "Event % 2 = 1 AND Type = 'GG'"]) == 0
    capsys.readouterr()
    _in_line_with_the_null(db_gg)


def test_hzz_jagged_branches_skipped_or_reduced(capsys, tmp_path, shared_data):
    path = str(shared_data / "uproot-HZZ.root:events")
    out, db = _halves(capsys, tmp_path, path, "_entry", "--unweighted")
    assert "jagged" in out
    skipped = query(db, "SELECT * FROM skipped_columns").set_index("column_name")["reason"]
    assert skipped["Jet_Px"].startswith("jagged") and skipped["EventWeight"] == "weight-like"
    _in_line_with_the_null(db)

    out, db2 = _halves(capsys, tmp_path, path, "_entry", "--features",
                       "NJet,Jet_Px[0],Muon_Px[0],MET_px", "--weight", "EventWeight",
                       name="reduced")
    feats = query(db2, "SELECT feature, n_nan_sim, n_nan_data FROM features").set_index("feature")
    # a missing leading jet is counted like a NaN: exactly the events with NJet == 0
    import uproot

    njet = uproot.open(path.split(":")[0])["events"]["NJet"].array(library="np")
    assert feats.loc["Jet_Px[0]", "n_nan_sim"] + feats.loc["Jet_Px[0]", "n_nan_data"] == \
        int((njet == 0).sum())


def test_nanoaod_halves_without_features(capsys, tmp_path, shared_data):
    path = str(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    out, db = _halves(capsys, tmp_path, path, "event", "--weight", "genWeight")
    assert "344 jagged" in out
    assert "constant in both samples" in out
    assert "max-pairs" in out  # the pair cap is said, not silent
    run = query(db, "SELECT * FROM runs").iloc[0]
    assert run["n_sim"] + run["n_data"] == 200
    assert run["n_pairs"] <= 1000
    skipped = query(db, "SELECT * FROM skipped_columns").set_index("column_name")["reason"]
    assert skipped["event"] == "identifier" and skipped["run"] == "identifier"
    assert skipped["Jet_pt"].startswith("jagged")
    kinds = query(db, "SELECT feature, kind, edges FROM features").set_index("feature")
    assert kinds.loc["HLT_PFJet40", "kind"] == "discrete"  # a boolean branch: two bins
    assert list(kinds.loc["HLT_PFJet40", "edges"]) == [-0.5, 0.5, 1.5]
    # with ~100 events a half, the low-statistics tests take toy p-values or say so
    methods = query(db, "SELECT pvalue_method, count(*) AS n FROM tests GROUP BY ALL")
    assert "toys" in set(methods["pvalue_method"])
    _in_line_with_the_null(db)


def test_real_file_errors(capsys, shared_data):
    path = str(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    split = ["--sim-selection", "event % 2 = 0", "--data-selection", "event % 2 = 1"]
    for args, message in [
        (["--sim", path + ":Nope", "--data", path], "no tree 'Nope'"),
        (["--sim", path, "--data", path, "--weight", "Jet_pt"], "is jagged"),
        (["--sim", path, "--data", path, *split, "--weight", "genWeight",
          "--features", "Jet_ptt[0]"], "not found"),
        (["--sim", path, "--data", path, *split, "--weight", "genWeight",
          "--features", "Jet_pt"], "name an element"),
    ]:
        assert main(["run", "--quiet", "--no-db", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_nanoaod_last_jet_counts_missing_like_nan(capsys, tmp_path, shared_data):
    """``Jet_pt[-1]``: the last jet of each event, NaN exactly for the events without jets."""
    import uproot

    path = str(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    _, db = _halves(capsys, tmp_path, path, "event", "--weight", "genWeight", "--features",
                    "nJet,Jet_pt[-1],MET_pt", name="last")
    feats = query(db, "SELECT feature, n_nan_sim, n_nan_data FROM features").set_index("feature")
    njet = uproot.open(path)["Events"]["nJet"].array(library="np")
    assert (njet == 0).sum() > 0
    assert feats.loc["Jet_pt[-1]", "n_nan_sim"] + feats.loc["Jet_pt[-1]", "n_nan_data"] == \
        int((njet == 0).sum())


def test_real_file_suggestions(shared_data):
    """Misspelt trees, weights and columns of a real file name the closest real one."""
    from validator.errors import InputError
    from validator.inputs.sources import iter_chunks, open_sample

    path = shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
    with pytest.raises(InputError) as info:
        open_sample("sim", [f"{path}:events"])
    assert str(info.value) == f"{path}: no tree 'events' (TTrees: Events); did you mean 'Events'?"
    with pytest.raises(InputError, match="weight column 'genweight' not found; did you mean "
                                         "'genWeight'"):
        open_sample("sim", [str(path)], "genweight")
    sample = open_sample("sim", [str(path)], "genWeight")
    with pytest.raises(InputError) as info:
        list(iter_chunks(sample, ["Jet_ptt[0]"]))
    assert str(info.value) == f"{path}: column 'Jet_ptt' not found; did you mean 'Jet_pt[0]'?"
    with pytest.raises(InputError, match="column 'met_PT' not found; did you mean 'MET_pt'"):
        list(iter_chunks(sample, ["met_PT"]))
