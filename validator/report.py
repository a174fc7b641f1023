"""Terminal report of a run: the worst tests, failures vs expected, where results went.

One renderer for a run just finished and a stored one (``validator show``): both are read from
the rows of the DuckDB tables (:func:`validator.store.run_rows` / :func:`validator.store.load_run`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from validator.summary import findings
from validator.transform import INCLUSIVE


def _fmt_bound(p: float, run: Any) -> str:
    """A randomization p-value; at its floor 1/(1 + replicas) it is a bound."""
    floor = 1.0 / (1.0 + float(run["n_global_replicas"]))
    return f"< {floor * 1.0001:.1e}" if p <= floor * 1.0001 else fmt_p(p)


def _nuisances(run: Any) -> str:
    n = run.get("n_global_nuisances")
    return "" if n is None or pd.isna(n) or not n else f", {int(n)} nuisances varied"


def _pair(x: str, y: Any) -> str:
    return x if y is None or (isinstance(y, float) and np.isnan(y)) else f"{x} × {y}"


def _counts(features: pd.DataFrame, sim_col: str, data_col: str) -> list[tuple[str, int, int]]:
    rows = features[features["category"] == INCLUSIVE] if len(features) else features
    return [(r["feature"], int(r[sim_col]), int(r[data_col])) for _, r in rows.iterrows()
            if r[sim_col] or r[data_col]]


def _listing(items: list[tuple[str, int, int]]) -> str:
    return (", ".join(f"{n} (sim {a}, data {b})" for n, a, b in items[:8])
            + (f" and {len(items) - 8} more" if len(items) > 8 else ""))


def render_run(tables: Mapping[str, pd.DataFrame], console: Console | None = None,
               n_worst: int = 15) -> None:
    """Print the compact summary of one run from its table rows."""
    console = console or Console()
    run = tables["runs"].iloc[0]
    tests, features = tables["tests"], tables["features"]
    skipped = tables["skipped_columns"]
    # NULL for runs of release 0.1.0, which kept no record of the tests it could not run
    n_not_run = 0 if pd.isna(run.get("n_not_run")) else int(run["n_not_run"])
    console.print(
        f"[bold]validator[/bold] run [cyan]{run['run_id']}[/cyan]: "
        f"{int(run['n_sim']):,} simulated and {int(run['n_data']):,} data events, "
        f"{int(run['n_features'])} features, {int(run['n_pairs'])} pairs, "
        f"{int(run['n_tests']):,} tests" + (f" ({n_not_run:,} could not run)" if n_not_run else ""))
    if len(skipped):
        reasons = Counter(skipped["reason"])
        parts = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        console.print(f"skipped {len(skipped)} columns: {parts}")
    for note in run["notes"] if run["notes"] is not None else []:
        console.print(f"[yellow]note:[/yellow] {note}")
    if len(features):
        nan = _counts(features, "n_nan_sim", "n_nan_data")
        if nan:
            console.print("NaN/inf values (tested: invalid_fraction): " + _listing(nan))
        sentinels = _counts(features, "n_sentinel_sim", "n_sentinel_data")
        if sentinels:
            console.print("default values such as -999 (tested: invalid_fraction): "
                          + _listing(sentinels))

    rows = tests.replace({np.nan: None}).to_dict("records")
    found = findings(rows, float(run["alpha"]))
    critical = tables.get("criticality")
    if critical is not None and len(critical):  # named first: what matters to the network
        _render_audit(console, run, critical, found, tests)
    _render_problems(console, tables, n_worst)
    if n_not_run:
        not_run = tests[tests["pvalue"].isna() & tests["not_run_reason"].notna()]
        why = Counter(not_run["not_run_reason"]).most_common(3)
        console.print(f"[yellow]{n_not_run:,} tests could not run[/yellow] (never counted as "
                      "passed): " + "; ".join(f"{n} × {r}" for r, n in why))

    console.print(
        f"failures at alpha={run['alpha']:g}: [bold]{int(run['n_failed'])}[/bold] of "
        f"{int(run['n_reliable'])} reliable tests (expected {run['n_expected_failures']:.1f}); "
        f"significant after Holm: {int(run['n_significant_holm'])}, "
        f"after BH: {int(run['n_significant_bh'])}"
    )
    if not pd.isna(run.get("p_global_min")):
        console.print(
            f"[bold]run-level test[/bold] (keeps the correlations between tests; "
            f"{int(run['n_global_tests'])} histogram tests, {int(run['n_global_replicas'])} "
            f"sign-flip replicas{_nuisances(run)}): "
            f"P(smallest p) = {_fmt_bound(run['p_global_min'], run)}, "
            f"P(>= {int(run['n_global_failed'])} failures) = "
            f"{_fmt_bound(run['p_global_nfail'], run)}")
    console.print(
        f"[dim]indicators assuming independent tests (they are not): binomial P(>= "
        f"{int(run['n_failed'])} failures) = {fmt_p(run['p_binomial'])}, p-value uniformity "
        f"KS p = {fmt_p(run['p_uniformity'])}[/dim]")

    def where(c: str) -> str:
        return f" [{c}]" if c != INCLUSIVE else ""


    if found.features:
        console.print("[bold red]mismodelled features[/bold red] (1D, Holm < alpha): " + "; ".join(
            f"{f}{where(c)} ({', '.join(m)})" for (c, f), m in found.features.items()))
    if found.correlations:
        console.print("[bold red]mismodelled correlations[/bold red] (dependence/corr): "
                      + "; ".join(f"{_pair(x, y)}{where(c)} ({', '.join(m)})"
                                  for (c, x, y), m in found.correlations.items()))
    if found.pairs_other:
        console.print("[bold red]pairs failing in 2D[/bold red]: " + "; ".join(
            _pair(x, y) + where(c) for (c, x, y) in found.pairs_other))
    if found.pairs_from_marginals:
        n_dep = sum("dependence" in m for m in found.pairs_from_marginals.values())
        console.print(f"{len(found.pairs_from_marginals)} pairs fail in 2D through a feature "
                      f"already flagged in 1D (their correlation tests pass; {n_dep} with a "
                      "dependence residual of the 1D mismodelling within bins)")
    _render_systematics(console, rows, tables.get("syst_effects"), float(run["alpha"]))
    if not (found.features or found.correlations or found.pairs_other):
        console.print("[bold green]no significant mismodelling[/bold green] after Holm correction")


def fmt_p(p: Any, bound: bool = False) -> str:
    """A p-value as the summary prints it: 3 decimals, scientific below 10⁻³; a p-value that
    underflowed to 0 as ``< 1e-300``; ``<`` for a toy p-value no toy reached (a bound)."""
    if p is None or not np.isfinite(p):
        return "-"
    if p == 0:
        return f"< {UNDERFLOW:.0e}"
    return ("< " if bound else "") + (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")


#: Below this a double-precision p-value underflows to 0 (scipy's survival functions return
#: 0 past ~1e-308): such a p-value is shown as a bound.
UNDERFLOW = 1e-300


def _render_problems(console: Console, tables: Mapping[str, pd.DataFrame], top: int) -> None:
    """One line per problem (a feature or a pair, with the methods that flag it), worst
    first: 1D mismodellings, correlations, pairs, pairs explained by a 1D failure, the
    network's response, then the rest; at most ``top``; and the data/simulation
    normalisation."""
    from validator.reports import WHAT, normalisation, problems

    run = tables["runs"].iloc[0]
    found = problems(tables["tests"], float(run["alpha"]))
    shown = found[:top]
    significant = sum(1 for p in found if p.what)
    table = Table(title=f"worst {len(shown)} of {len(found)} features and pairs "
                        f"({significant} significant after Holm)", title_justify="left")
    for col in ("feature(s)", "what", "flagged by (Holm < alpha)", "p", "p Holm", "effect"):
        table.add_column(col, justify="right" if col in ("p", "p Holm") else "left")
    for p in shown:
        effect = "" if p.effect_size is None or not np.isfinite(p.effect_size) else \
            f"{p.effect_name} {p.effect_size:.3g}"
        table.add_row(p.name, WHAT[p.what] if p.what else "-", ", ".join(p.methods) or "-",
                      fmt_p(p.pvalue, p.bound), ("≤ " if p.bound else "") + fmt_p(p.p_holm),
                      effect)
    console.print(table)
    norm = normalisation(run)
    if np.isfinite(norm.ratio):
        console.print(f"data / simulation normalisation: {norm.n_data:,} / {norm.sumw:,.1f} = "
                      f"{norm.ratio:.4f} ± {norm.error:.4f} (the tests compare shapes)")


def _render_systematics(console: Console, tests: list[dict[str, Any]],
                        effects: pd.DataFrame | None, alpha: float) -> None:
    """What the systematics absorb (``saturated`` fails, ``saturated_syst`` passes), what
    fails beyond them, and per systematic the network output's shape change beside the
    largest input's."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for t in tests:
        if t["method"] in ("saturated", "saturated_syst") and t.get("p_holm") is not None:
            by_key.setdefault((t["category"], t["feature_x"], t["feature_y"]), {})[
                t["method"]] = t
    if not any("saturated_syst" in v for v in by_key.values()):
        return

    def bad(t: dict[str, Any] | None) -> bool:
        return t is not None and bool(t["reliable"]) and t["p_holm"] < alpha

    covered = [k for k, v in by_key.items() if bad(v.get("saturated"))
               and v.get("saturated_syst") is not None and not bad(v["saturated_syst"])]
    beyond = [k for k, v in by_key.items() if bad(v.get("saturated_syst"))]

    def name(key: tuple) -> str:
        cat, x, y = key
        return _pair(x, y) + (f" [{cat}]" if cat != INCLUSIVE else "")

    if covered:
        console.print("[bold green]covered by the systematics[/bold green] (saturated fails, "
                      f"saturated_syst passes): {_some([name(k) for k in covered])}")
    if beyond:
        console.print("[bold red]mismodelled beyond the systematics[/bold red] "
                      f"(saturated_syst, Holm < alpha): {_some([name(k) for k in beyond])}")
    if effects is not None and len(effects) and effects["is_output"].astype(bool).any():
        inclusive = effects[effects["category"] == INCLUSIVE]
        parts = []
        for systematic, group in inclusive.groupby("systematic", sort=True):
            change = group[["shape_change_up", "shape_change_down"]].max(axis=1)
            outputs, inputs = change[group["is_output"].astype(bool)], \
                change[~group["is_output"].astype(bool)]
            if not len(outputs) or not len(inputs):
                continue
            o, i = outputs.idxmax(), inputs.idxmax()
            parts.append(f"{systematic}: {group.loc[o, 'feature']} {change[o]:.1%} vs "
                         f"{group.loc[i, 'feature']} {change[i]:.1%}")
        if parts:
            console.print("shape change per systematic, network output vs largest input: "
                          + "; ".join(parts))


def _render_audit(console: Console, run: Any, critical: pd.DataFrame, found: Any,
                  tests: pd.DataFrame | None = None) -> None:
    """The network audit first: inputs and pairs both important to the network and
    mismodelled (and whether the systematics cover it), then how its Taylor coefficients
    compare between data and simulation."""
    syst: dict[tuple, float] = {}
    if tests is not None and len(tests):
        rows = tests[(tests["method"] == "saturated_syst") & (tests["category"] == INCLUSIVE)]
        syst = {(r["feature_x"], None if pd.isna(r["feature_y"]) else r["feature_y"]):
                r["p_holm"] for _, r in rows.iterrows() if not pd.isna(r["p_holm"])}
    bad = critical[critical["important"].astype(bool) & critical["mismodelled"].astype(bool)]
    n_inputs = int((critical["degree"] == 1).sum())
    multi_node = critical["node"].nunique() > 1

    def describe(r: Any) -> str:
        what = _pair(r["feature_x"], r["feature_y"])
        node = f" [{r['node']}]" if multi_node else ""
        rank = (f"importance rank {int(r['importance_rank'])} of "
                f"{int((critical['degree'] == r['degree']).sum() / critical['node'].nunique())}")
        key = (r["feature_x"], None if pd.isna(r["feature_y"]) else r["feature_y"])
        within = ""
        if key in syst:
            covered = syst[key] >= float(run["alpha"])
            within = (f"; {'within' if covered else 'beyond'} the systematics: saturated_syst "
                      f"Holm p {fmt_p(syst[key])}")
        return (f"{what}{node} ({rank}; {r['worst_method']} Holm p "
                f"{fmt_p(r['worst_p_holm'])}, {r['worst_effect_name']} "
                f"{r['worst_effect_size']:.3g}{within})")

    if len(bad):
        console.print("[bold red]critical: important to the network and mismodelled[/bold red]: "
                      + "; ".join(describe(r) for _, r in bad.iterrows()))
    else:
        console.print(f"[bold green]no input or pair important to the network is "
                      f"mismodelled[/bold green] ({n_inputs} inputs audited)")
    corr = [(name, run.get(col)) for name, col in (
        ("first-order Taylor", "taylor_rank_corr_first"),
        ("second-order Taylor", "taylor_rank_corr_second"), ("SHAP", "shap_rank_corr"))]
    corr = [f"{name} {v:.2f}" for name, v in corr if v is not None and not pd.isna(v)]
    if corr:
        console.print("importance rankings, simulation vs data (Spearman): " + ", ".join(corr))
    if found.taylor:
        listed = [_pair(x, y) + (f" [{node}]" if multi_node else "")
                  for (node, x, y) in found.taylor]
        console.print("[bold red]the network responds differently in data[/bold red] (Taylor "
                      f"coefficients, Holm < alpha): {_some(listed)}")
    if found.outputs:
        outputs = [f"{_pair(x, y)} ({', '.join(m)})" for (_, x, y), m in found.outputs.items()]
        console.print("[bold red]network outputs mismodelled[/bold red] (alone or with an "
                      f"input; they follow from the inputs'): {_some(outputs)}")


#: Items listed in one line of the terminal summary before "and N more".
MAX_LISTED = 12


def _some(items: list[str]) -> str:
    more = len(items) - MAX_LISTED
    return "; ".join(items[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")


def outcome_tables(outcome: Any) -> dict[str, pd.DataFrame]:
    """A finished run's rows as the DataFrames :func:`render_run` reads."""
    from validator.store import SCHEMA, run_rows

    rows = run_rows(outcome, with_histograms=False)
    return {t: pd.DataFrame(rows[t], columns=[c for c, _ in SCHEMA[t]])
            for t in ("runs", "features", "tests", "skipped_columns", "criticality",
                      "syst_effects")}


def render(outcome: Any, console: Console | None = None, n_worst: int = 15) -> None:
    """Print the summary of a run just finished, and where it was stored."""
    console = console or Console()
    render_run(outcome_tables(outcome), console, n_worst)
    if outcome.db:
        console.print(f"results written to [cyan]{outcome.db}[/cyan] (run_id {outcome.run_id})")
    if outcome.side_file:
        _side_file_message(console, Path(outcome.config.db), outcome.side_file)


def _side_file_message(console: Console, db: Path, side: Path) -> None:
    console.print(f"[bold yellow]{db} stayed busy[/bold yellow]: the run was written to "
                  f"[cyan]{side}[/cyan]; add it with: validator merge --db {db} {side}")
