"""The network audit through a run: importances, Taylor tests, criticality, SHAP, parametric
networks, and blinding that no blinded event can influence."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from conftest import REPO, make_frames
from scipy import stats
from test_model import PNN, save_ts

from validator.cli import main
from validator.pipeline import RunConfig, run_validation
from validator.results.store import query
from validator.results.tables import load_run_tables
from validator.stages.audit import IMPORTANT_FRACTION

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


class Planted(torch.nn.Module):
    """f = tanh(a) + 0.05·b·c: ``a`` dominates, (b, c) is the only pair that interacts."""

    def forward(self, x):
        return torch.tanh(x[:, 0]) + 0.05 * x[:, 1] * x[:, 2]


class Bilinear(torch.nn.Module):
    """f = a·b + c: t_a = b, t_b = a, t_c = 1, t_ab = 1."""

    def forward(self, x):
        return x[:, 0] * x[:, 1] + x[:, 2]


def _files(tmp_path, shift=0.1, n_sim=20_000, n_data=10_000, weighted=True):
    sim, data = make_frames(n_sim=n_sim, n_data=n_data, shift=shift)
    if not weighted:
        sim = sim.drop("weight")
    s, d = tmp_path / "sim.parquet", tmp_path / "data.parquet"
    sim.write_parquet(s)
    data.write_parquet(d)
    return sim, data, s, d


def _config(s, d, model, **kw):
    base = dict(sim=[str(s)], data=[str(d)], weight="weight", features=["a", "b", "c"],
                model=str(model), db=None, shap_events=60)
    base.update(kw)
    return RunConfig(**base)


def test_importances_are_the_weighted_means_and_the_tests_welch(tmp_path):
    """Stored ⟨|t|⟩ equal numpy's weighted means of the analytic coefficients; the Taylor
    test's z equals Welch's t (unweighted samples, n large) from scipy."""
    model = save_ts(Bilinear(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    sim, data, s, d = _files(tmp_path, shift=0.1)
    out = run_validation(_config(s, d, model))
    imp = {(r["sample"], r["method"], r["degree"], r["feature_x"], r["feature_y"]): r
           for r in out.audit.importances}
    w = sim["weight"].to_numpy()
    a_s, b_s = sim["a"].to_numpy(), sim["b"].to_numpy()
    assert imp["sim", "taylor", 1, "a", None]["value"] == pytest.approx(
        np.sum(w * np.abs(b_s)) / w.sum(), rel=1e-6)
    assert imp["sim", "taylor", 1, "b", None]["value"] == pytest.approx(
        np.sum(w * np.abs(a_s)) / w.sum(), rel=1e-6)
    assert imp["data", "taylor", 1, "b", None]["value"] == pytest.approx(
        np.abs(data["a"].to_numpy()).mean(), rel=1e-6)
    assert imp["sim", "taylor", 2, "a", "b"]["value"] == pytest.approx(1.0)
    assert imp["sim", "taylor", 2, "a", "a"]["value"] == pytest.approx(0.0, abs=1e-9)
    mean = np.sum(w * a_s) / w.sum()
    sigma_a = np.sqrt(np.sum(w * (a_s - mean) ** 2) / w.sum())
    assert imp["sim", "taylor", 1, "b", None]["scaled_value"] == pytest.approx(
        imp["sim", "taylor", 1, "b", None]["value"] * np.sqrt(
            np.sum(w * (b_s - np.sum(w * b_s) / w.sum()) ** 2) / w.sum()), rel=1e-6)
    assert imp["sim", "taylor", 2, "a", "b"]["scaled_value"] == pytest.approx(
        sigma_a * np.sqrt(np.sum(w * (b_s - np.sum(w * b_s) / w.sum()) ** 2) / w.sum()),
        rel=1e-6)
    taylor = [r for r in out.records if r.kind == "taylor"]
    assert len(taylor) == 3 + 6 and {r.node for r in taylor} == {"output"}
    by = {(r.method, r.feature_x, r.feature_y): r for r in taylor}
    # data 'a' is 10% wider: the network's slope in b (= a) is larger in data; its slope in
    # a (= b, unchanged) and in c (constant) are not
    assert by["taylor1", "b", None].pvalue < 1e-10
    assert by["taylor1", "b", None].result.effect_size == pytest.approx(0.1, abs=0.03)
    assert by["taylor1", "a", None].pvalue > 1e-3
    assert by["taylor1", "c", None].pvalue > 0.999  # t_c = 1 on both sides (to rounding)

    # z against Welch's t (scipy) on unweighted samples
    unweighted = tmp_path / "unweighted"
    unweighted.mkdir()
    sim_u, data_u, s2, d2 = _files(unweighted, weighted=False)
    out_u = run_validation(_config(s2, d2, model, weight=None))
    rec = {(r.method, r.feature_x): r for r in out_u.records if r.kind == "taylor"}
    welch = stats.ttest_ind(np.abs(data_u["a"].to_numpy()), np.abs(sim_u["a"].to_numpy()),
                            equal_var=False)
    assert rec["taylor1", "b"].result.statistic == pytest.approx(welch.statistic, rel=2e-4)
    assert rec["taylor1", "b"].pvalue == pytest.approx(welch.pvalue, rel=1e-2)


class RootOfA(torch.nn.Module):
    """f = sqrt(a) + c: NaN (output and derivative) where a < 0, t_a = 1/(2 sqrt(a))."""

    def forward(self, x):
        return torch.sqrt(x[:, 0]) + x[:, 2]


def test_events_where_the_network_is_not_finite_are_left_out_and_counted(tmp_path):
    """A network that is NaN on part of its finite inputs (sqrt of a normal variable) once made
    every Taylor and SHAP mean NaN. The events where it is not finite are left out, counted and
    noted; the means are those of the other events (the analytic t_a = 1/(2 sqrt a))."""
    model = save_ts(RootOfA(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    sim, data, s, d = _files(tmp_path, shift=0.0)
    out = run_validation(_config(s, d, model))
    imp = {(r["sample"], r["method"], r["degree"], r["feature_x"], r["feature_y"]): r
           for r in out.audit.importances}
    for sample, frame in (("sim", sim), ("data", data)):
        a = frame["a"].to_numpy()
        w = frame["weight"].to_numpy() if sample == "sim" else np.ones(len(a))
        inside = a > 0
        row = imp[sample, "taylor", 1, "a", None]
        assert row["value"] == pytest.approx(
            np.sum(w[inside] / (2 * np.sqrt(a[inside]))) / w[inside].sum(), rel=1e-5)
        assert row["n_events"] == inside.sum()
        details = json.loads(row["details"])
        assert details["n_nonfinite"] == (~inside).sum() > 0
        assert details["n_nonfinite_second"] == (~inside).sum()  # every event: 50,000 > n
        assert imp[sample, "taylor", 1, "c", None]["value"] == pytest.approx(1.0, rel=1e-6)
        shap = imp[sample, "shap", 1, "a", None]
        assert np.isfinite(shap["value"]) and json.loads(shap["details"])["n_nonfinite"] > 0
    assert all(r.result is not None for r in out.records if r.kind == "taylor"
               and r.feature_x == "a" and r.feature_y is None)
    assert any("not finite at events whose inputs are" in n for n in out.notes)


def test_criticality_ranks_the_planted_input_first_and_is_stored(tmp_path, capsys):
    model = save_ts(Planted(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    _, _, s, d = _files(tmp_path, shift=0.15)
    db = tmp_path / "v.duckdb"
    code = main(["run", "--quiet", "--sim", str(s), "--data", str(d), "--weight", "weight",
                 "--features", "a,b,c", "--model", str(model), "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 0, err
    crit = query(db, "SELECT * FROM criticality ORDER BY criticality_rank")
    top = crit.iloc[0]
    assert (top["feature_x"], top["degree"]) == ("a", 1)
    assert bool(top["important"]) and bool(top["mismodelled"]) and top["importance_rank"] == 1
    assert top["worst_p_holm"] < 1e-6 and top["worst_method"] in ("chi2_uw", "saturated", "ks",
                                                                 "ad")
    pairs = crit[crit["degree"] == 2].set_index(["feature_x", "feature_y"])
    assert pairs.loc[("b", "c"), "importance_rank"] == 1
    assert not bool(pairs.loc[("b", "c"), "mismodelled"])
    # the KIT 10% rule on the stored importances
    imp = query(db, "SELECT * FROM importances WHERE sample = 'sim' AND method = 'taylor' "
                    "AND degree = 2")
    top2 = imp["scaled_value"].max()
    bc = imp[(imp["feature_x"] == "b") & (imp["feature_y"] == "c")]["scaled_value"].iloc[0]
    assert bool(pairs.loc[("b", "c"), "important"]) == (bc >= IMPORTANT_FRACTION * top2)
    assert set(imp["node"]) == {"output"} and imp["param_label"].isna().all()
    assert "critical: important to the network and mismodelled: a" in out.replace("\n", " ")
    run = query(db, "SELECT * FROM runs").iloc[0]
    assert run["taylor_rank_corr_first"] == pytest.approx(1.0)
    # SHAP: both samples, exactly additive (kernel explainer), same ranking
    shap = query(db, "SELECT * FROM importances WHERE method = 'shap'")
    assert set(shap["sample"]) == {"sim", "data"} and len(shap) == 6
    details = json.loads(shap["details"].iloc[0])
    # a background drawn by |w| carries the signs of negative weights, which shap's
    # explainers cannot take: then the exact enumeration (the same numbers)
    assert details["explainer"] in ("KernelExplainer", "validator.exact")
    assert details["additivity_error"] < 1e-5
    assert shap.set_index(["sample", "feature_x"])["value"].idxmax()[1] == "a"
    # show prints the same from DuckDB
    assert main(["show", "--db", str(db)]) == 0
    shown = capsys.readouterr().out.replace("\n", " ")
    assert "critical: important to the network and mismodelled: a" in shown


def test_parametric_network_results_per_value(tmp_path):
    path = save_ts(PNN(), tmp_path / "pnn.pt", {"inputs": ["a", "b", "mass"]})
    sim, _, s, d = _files(tmp_path, shift=0.0)
    db = tmp_path / "v.duckdb"
    out = run_validation(_config(s, d, path, model_params={"mass": [100.0, 300.0]}, db=db,
                                 shap_events=0))
    imp = query(db, "SELECT * FROM importances WHERE sample = 'sim' AND degree = 1 "
                    "AND feature_x = 'a'").set_index("param_label")
    assert set(imp.index) == {"mass=100", "mass=300"}
    w = sim["weight"].to_numpy()
    for mass in (100, 300):
        u = sim["a"].to_numpy() * mass / 100 + sim["b"].to_numpy()
        sig = 1 / (1 + np.exp(-u))
        ref = np.sum(w * np.abs(sig * (1 - sig) * mass / 100)) / w.sum()
        assert imp.loc[f"mass={mass}", "value"] == pytest.approx(ref, rel=1e-5)
        assert imp.loc[f"mass={mass}", "param_value"] == mass
        assert imp.loc[f"mass={mass}", "node"] == f"output_mass{mass}"
    nodes = {r.node for r in out.records if r.kind == "taylor"}
    assert nodes == {"output_mass100", "output_mass300"}
    crit = query(db, "SELECT DISTINCT param_label, node FROM criticality ORDER BY node")
    assert list(crit["node"]) == ["output_mass100", "output_mass300"]
    outputs = query(db, "SELECT DISTINCT feature_x FROM tests WHERE kind = 'output' "
                        "AND feature_y IS NULL")
    assert set(outputs["feature_x"]) == {"output_mass100", "output_mass300"}


def _stored(db):
    tables = load_run_tables(db)
    keys = {"tests": ["test_id"], "features": ["category", "feature"],
            "importances": ["sample", "method", "degree", "node", "feature_x", "feature_y"],
            "criticality": ["criticality_rank", "node"]}
    keep = {}
    for name, by in keys.items():
        frame = tables[name].drop(columns=["run_id"])
        keep[name] = frame.sort_values(by).reset_index(drop=True)
    keep["histograms"] = query(db, "SELECT * EXCLUDE (run_id) FROM histograms ORDER BY "
                                   "binning, category, feature_x, feature_y")
    run = tables["runs"].iloc[0]
    keep["runs"] = run[["n_sim", "n_data", "sumw_sim", "plan_json", "p_global_min",
                        "taylor_rank_corr_first", "shap_rank_corr"]]
    return keep


def test_blinded_events_change_nothing_stored(tmp_path):
    """The stored results with and without extra events in the blinded region are identical:
    no blinded event reaches the bin edges, a histogram, a test, a subsample or DuckDB."""
    model = save_ts(Planted(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    sim, data, s, d = _files(tmp_path, shift=0.1)
    rng = np.random.default_rng(5)

    def inject(frame: pl.DataFrame, n: int) -> pl.DataFrame:
        extra = frame.sample(n, seed=1).with_columns(
            pl.Series("a", rng.uniform(2.6, 9.0, n)), pl.Series("c", rng.uniform(0, 40, n)))
        return pl.concat([frame, extra])

    s2, d2 = tmp_path / "sim2.parquet", tmp_path / "data2.parquet"
    inject(sim, 3000).write_parquet(s2)
    inject(data, 2000).write_parquet(d2)
    blind = "a > 2.5 OR output > 0.999"
    runs = []
    for k, (si, di) in enumerate(((s, d), (s2, d2))):
        db = tmp_path / f"b{k}.duckdb"
        cfg = _config(si, di, model, db=db, blind=blind, chunk_rows=7000)
        run_validation(cfg)
        runs.append(_stored(db))
    for name in ("tests", "features", "importances", "criticality", "histograms"):
        a, b = runs[0][name], runs[1][name]
        assert a.shape == b.shape and len(a) > 0, name
        assert a.equals(b), name
    assert runs[0]["runs"].equals(runs[1]["runs"])


@pytest.mark.slow
def test_chunking_changes_no_audit_result(tmp_path):
    model = save_ts(Planted(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    _, _, s, d = _files(tmp_path, shift=0.1)
    whole = run_validation(_config(s, d, model))
    chunked = run_validation(_config(s, d, model, chunk_rows=3000))
    a = {(r["sample"], r["method"], r["degree"], r["feature_x"], r["feature_y"]): r
         for r in whole.audit.importances}
    b = {(r["sample"], r["method"], r["degree"], r["feature_x"], r["feature_y"]): r
         for r in chunked.audit.importances}
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["n_events"] == b[key]["n_events"], key
        assert a[key]["value"] == pytest.approx(b[key]["value"], rel=1e-9, abs=1e-12), key


def test_shap_reservoir_keeps_the_smallest_keys_in_stable_order() -> None:
    """The reservoir's selection (a partition, then a sort of the candidates) is numpy's
    stable argsort cut at k, ties at the cut included in position order."""
    from validator.stages.plan import smallest_keys

    rng = np.random.default_rng(0)
    for n, k in [(0, 5), (3, 5), (32_768, 200), (1_000, 1_000), (1_001, 1_000)]:
        keys = rng.random(n)
        np.testing.assert_array_equal(smallest_keys(keys, k),
                                      np.argsort(keys, kind="stable")[:k])
    tied = np.repeat(rng.random(50), 20)
    for k in (1, 7, 20, 21, 333, 999, 1_000):
        np.testing.assert_array_equal(smallest_keys(tied, k),
                                      np.argsort(tied, kind="stable")[:k])


class ThreeClass(torch.nn.Module):
    """A softmax over three nodes of different functions of (a, b, c), with ties at none."""

    def forward(self, x):
        logits = torch.stack([torch.tanh(x[:, 0]) * 2.0, x[:, 1] * x[:, 2],
                              0.3 * x[:, 0] - x[:, 2]], dim=1)
        return torch.softmax(logits, dim=1)


@pytest.mark.parametrize("network", ["binary", "multiclass"])
def test_the_scans_first_order_is_the_fills(tmp_path, network):
    """The scan's one pass over the network (:class:`OutputsWithFirstOrder`) gives the
    outputs of ``evaluate`` bit for bit, and :class:`FirstOrderTaylor`'s sums over the
    events a selection keeps equal ``taylor_sums``' first order over the same events (the
    same per-event coefficients; sums in another order), NaN inputs skipped and counted."""
    from validator.inputs.sources import ENTRY, FILE
    from validator.model import load_model
    from validator.model.taylor import shares_forward, taylor_sums
    from validator.stages.audit import FirstOrderTaylor, OutputsWithFirstOrder

    module, meta = (Planted(), {"inputs": ["a", "b", "c"], "kind": "regression"}) \
        if network == "binary" else (ThreeClass(), {"inputs": ["a", "b", "c"]})
    meta["scaler"] = {"a": {"offset": 0.5, "scale": 2.0}, "b": {"offset": -1, "scale": 0.5},
                      "c": {"offset": 0.0, "scale": 3.0}}
    model = load_model(save_ts(module, tmp_path / "m.pt", meta))
    assert shares_forward(model)
    rng = np.random.default_rng(11)
    n = 20_000
    chunk = {c: rng.normal(0, 2, n).astype(np.float32).astype(float) for c in "abc"}
    chunk["b"][[5, 77, 19_000]] = np.nan
    chunk[ENTRY], chunk[FILE] = np.arange(n), np.zeros(n, np.int64)
    w = rng.normal(1.0, 0.7, n)
    derived = OutputsWithFirstOrder(model)
    values = derived(chunk, "sim")
    out = model.evaluate(chunk)
    for k, name in enumerate(model.names):
        np.testing.assert_array_equal(values[name], out[:, k])
    keep = np.flatnonzero(rng.random(n) < 0.7)  # a selection after the network
    kept = {c: v[keep] for c, v in {**chunk, **values}.items()}
    collector = FirstOrderTaylor([model])
    for part in (slice(0, 5000), slice(5000, len(keep))):
        collector.absorb(collector.collect({c: v[part] for c, v in kept.items()},
                                           w[keep][part]))
    (scan,) = collector.sums
    fill = taylor_sums(model, {c: chunk[c][keep] for c in "abc"}, w[keep], order=1)
    assert scan.n_skipped == fill.n_skipped == 3 - int(np.isin([5, 77, 19_000], keep,
                                                                invert=True).sum())
    for field in ("n", "sw", "sww", "a", "b", "c"):
        np.testing.assert_allclose(getattr(scan.first, field), getattr(fill.first, field),
                                   rtol=1e-12, atol=0)
    assert scan.second.n.sum() == 0  # the second order is the fill's


@pytest.mark.parametrize("path", ["classifier.pt", "classifier.onnx"])
def test_a_chunk_without_a_finite_event_gives_nan_outputs_and_no_derivative(path):
    """Every event of a chunk has a NaN input: the outputs are NaN, the derivatives NaN, and
    the scan's sums skip and count them (the ONNX network's outputs come from its own session,
    whose backend returns (0, 0) for no row)."""
    from validator.inputs.sources import ENTRY, FILE
    from validator.model import load_model
    from validator.stages.audit import FirstOrderTaylor, OutputsWithFirstOrder

    model = load_model(str(REPO / "sample_data" / path))
    n = 50
    chunk = {c: np.full(n, np.nan) for c in model.inputs}
    chunk[ENTRY], chunk[FILE] = np.arange(n), np.zeros(n, np.int64)
    assert np.isnan(model.evaluate(chunk)).all() and model.evaluate(chunk).shape == (n, 3)
    values = OutputsWithFirstOrder(model)(chunk, "data")
    assert all(np.isnan(values[name]).all() for name in model.names)
    collector = FirstOrderTaylor([model])
    collector.absorb(collector.collect({**chunk, **values}, np.ones(n)))
    (sums,) = collector.sums
    assert sums.n_skipped == n and sums.first.n.sum() == 0


def test_a_define_named_like_the_network_output_is_refused(tmp_path, capsys):
    """A --define with the name of a network output would be silently replaced by the
    network's value (in the tests and in --blind): refused, naming the option."""
    model = save_ts(Planted(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    _, _, s, d = _files(tmp_path, n_sim=2_000, n_data=1_000)
    code = main(["run", "--quiet", "--no-db", "--sim", str(s), "--data", str(d), "--weight",
                 "weight", "--model", str(model), "--define", "output=a * 0",
                 "--blind", "output > 0.9"])
    err = capsys.readouterr().err
    assert code == 2 and "--define output: the audited network's output has this name" in err
    assert err.count("\n") == 1


def test_a_defined_column_can_be_a_network_input(tmp_path):
    """--define columns are made before the network runs: one can feed it (here b, copied),
    with the importances of the run that reads b itself."""
    model = save_ts(Bilinear(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    _, _, s, d = _files(tmp_path, n_sim=4_000, n_data=2_000)
    plain = run_validation(_config(s, d, model))
    defined = run_validation(_config(s, d, model, defines=["bx=b * 1.0"],
                                     model_inputs=["a", "bx", "c"]))

    def taylor(out, name_of_b):
        def named(x):
            return name_of_b if x == "b" else x

        return {(r["sample"], r["degree"], named(r["feature_x"]), named(r["feature_y"])):
                r["value"] for r in out.audit.importances if r["method"] == "taylor"}

    assert taylor(defined, "b") == pytest.approx(taylor(plain, "bx"), rel=1e-12)


def test_a_blind_on_an_output_the_network_lacks_lists_its_outputs(capsys):
    """The sample network has three outputs (output_<process>): --blind "output > 0.9" names
    them instead of saying that a file lacks the column 'output'."""
    sample = REPO / "sample_data"
    code = main(["run", "--quiet", "--no-db", "--sim", str(sample / "sim.parquet"),
                 "--data", str(sample / "data.parquet"), "--weight", "weight",
                 "--model", str(sample / "classifier.pt"), "--blind", "output > 0.9"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--blind: 'output' is not an output of the network (its outputs: output_" in err


def test_an_input_without_a_finite_value_is_named_not_the_output(tmp_path, capsys):
    """Data whose network input c is all NaN: the output is NaN everywhere too; the message
    names the input, the cause."""
    model = save_ts(Bilinear(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    _, data, s, d = _files(tmp_path, n_sim=2_000, n_data=1_000)
    data.with_columns(pl.lit(float("nan")).alias("c")).write_parquet(d)
    code = main(["run", "--quiet", "--no-db", "--sim", str(s), "--data", str(d), "--weight",
                 "weight", "--model", str(model)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "data: the network's input 'c' has no finite value" in err, err


def test_a_define_that_reads_the_network_output_says_so(tmp_path, capsys):
    """A --define is made before the network: reading its output is refused with a message
    naming the option and the output, not "data lacks" the column."""
    model = save_ts(Planted(), tmp_path / "m.pt", {"inputs": ["a", "b", "c"]})
    _, _, s, d = _files(tmp_path, n_sim=2_000, n_data=1_000)
    code = main(["run", "--quiet", "--no-db", "--sim", str(s), "--data", str(d), "--weight",
                 "weight", "--model", str(model), "--define", "tight=output > 0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "--define tight reads 'output', the network's output" in err
    assert err.count("\n") == 1
