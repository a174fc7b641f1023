"""Terminal summary of a run: what is mismodelled, the worst features and pairs, the counts
and the run-level test, where results went.

It renders a :class:`~validator.results.reading.RunReading` (the one interpretation of a run),
for a run just finished and for a stored one (``validator show``) alike.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from validator.results.format import format_p
from validator.results.reading import INCLUSIVE, WHAT, RunReading
from validator.results.summary import SYST_METHOD


def _pair(x: str, y: Any) -> str:
    return x if y is None or (isinstance(y, float) and np.isnan(y)) else f"{x} × {y}"


def _counts(features: pd.DataFrame, sim_col: str, data_col: str) -> list[tuple[str, int, int]]:
    rows = features[features["category"] == INCLUSIVE] if len(features) else features
    return [(r["feature"], int(r[sim_col]), int(r[data_col])) for _, r in rows.iterrows()
            if r[sim_col] or r[data_col]]


def _listing(items: list[tuple[str, int, int]]) -> str:
    return (", ".join(f"{n} (sim {a}, data {b})" for n, a, b in items[:8])
            + (f" and {len(items) - 8} more" if len(items) > 8 else ""))


def render_run(reading: RunReading, console: Console | None = None,
               n_worst: int = 15) -> None:
    """Print the compact summary of one run."""
    console = console or Console()
    run, tables = reading.run, reading.tables
    features, skipped = tables["features"], tables["skipped_columns"]
    counts = reading.counts
    console.print(
        f"[bold]validator[/bold] run [cyan]{run['run_id']}[/cyan]: "
        f"{int(run['n_sim']):,} simulated and {int(run['n_data']):,} data events, "
        f"{int(run['n_features'])} features, {int(run['n_pairs'])} pairs, "
        f"{counts.n_tests:,} tests"
        + (f" ({counts.n_not_run:,} could not run)" if counts.n_not_run else ""))
    if len(skipped):
        reasons = Counter(skipped["reason"])
        parts = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        console.print(f"skipped {len(skipped)} columns: {parts}")
    for note in run.get("notes") if run.get("notes") is not None else []:
        console.print(f"[yellow]note:[/yellow] {note}")
    if len(features):
        nan = _counts(features, "n_nan_sim", "n_nan_data")
        if nan:
            console.print("NaN/inf values (tested: invalid_fraction): " + _listing(nan))
        sentinels = _counts(features, "n_sentinel_sim", "n_sentinel_data")
        if sentinels:
            console.print("default values such as -999 (tested: invalid_fraction): "
                          + _listing(sentinels))
    critical = tables.get("criticality")
    if critical is not None and len(critical):  # named first: what matters to the network
        _render_audit(console, reading, critical)
    _render_problems(console, reading, n_worst)
    _render_multivariate(console, reading)
    if counts.n_not_run:
        tests = reading.tests
        not_run = tests[tests["pvalue"].isna() & tests["not_run_reason"].notna()]
        why = Counter(not_run["not_run_reason"]).most_common(3)
        console.print(f"[yellow]{counts.n_not_run:,} tests could not run[/yellow] (never "
                      "counted as passed): " + "; ".join(f"{n} × {r}" for r, n in why))
    for line in reading.count_lines()[1:]:
        console.print(line)
    console.print(
        f"[dim]indicators assuming independent tests (they are not): binomial P(>= "
        f"{int(run['n_failed'])} failures of all {int(run['n_reliable'])} reliable tests) = "
        f"{format_p(run['p_binomial'])}, p-value uniformity KS p = "
        f"{format_p(run['p_uniformity'])}[/dim]")
    _render_findings(console, reading)
    _render_systematics(console, reading)
    style = "bold red" if reading.significant else "bold green"
    console.print(f"[{style}]{reading.significance_line()}[/{style}]")


def _where(category: str) -> str:
    return f" [{category}]" if category != INCLUSIVE else ""


def _render_findings(console: Console, reading: RunReading) -> None:
    """The findings by class: 1D, correlations, pairs, multivariate."""
    found = reading.findings
    if found.features:
        console.print("[bold red]mismodelled features[/bold red] (1D, Holm < alpha): " + "; ".join(
            f"{f}{_where(c)} ({', '.join(m)})" for (c, f), m in found.features.items()))
    if found.correlations:
        console.print("[bold red]mismodelled correlations[/bold red] (dependence/corr): "
                      + "; ".join(f"{_pair(x, y)}{_where(c)} ({', '.join(m)})"
                                  for (c, x, y), m in found.correlations.items()))
    if found.pairs_other:
        console.print("[bold red]pairs failing in 2D[/bold red]: " + "; ".join(
            _pair(x, y) + _where(c) for (c, x, y) in found.pairs_other))
    if found.pairs_from_marginals:
        n_dep = sum("dependence" in m for m in found.pairs_from_marginals.values())
        console.print(f"{len(found.pairs_from_marginals)} pairs fail in 2D through a feature "
                      f"already flagged in 1D (their correlation tests pass; {n_dep} with a "
                      "dependence residual of the 1D mismodelling within bins)")
    multivariate = [p for p in reading.significant if p.what == "multivariate"]
    if multivariate:
        console.print("[bold red]mismodelled over every input at once[/bold red] "
                      "(multivariate, Holm < alpha): " + "; ".join(
                          f"{p.name} ({p.flagged_by})" for p in multivariate))


def _render_problems(console: Console, reading: RunReading, top: int) -> None:
    """One line per problem (a feature or a pair, with the methods that flag it), worst
    first, at most ``top``; and the data/simulation normalisation."""
    found = reading.problems
    shown = found[:top]
    table = Table(title=f"worst {len(shown)} of {len(found)} features and pairs "
                        f"({reading.significance_line()})", title_justify="left")
    for col in ("feature(s)", "what", "flagged by (Holm < alpha)", "p", "p Holm", "effect"):
        table.add_column(col, justify="right" if col in ("p", "p Holm") else "left")
    for p in shown:
        table.add_row(p.name, WHAT[p.what] if p.what else "-", p.flagged_by,
                      format_p(p.pvalue, bound=p.bound), format_p(p.p_holm, bound=p.bound),
                      p.effect if p.effect != "-" else "")
    console.print(table)
    norm = reading.normalisation
    if np.isfinite(norm.ratio):
        console.print(f"data / simulation normalisation: {norm.n_data:,} / {norm.sumw:,.1f} = "
                      f"{norm.ratio:.4f} ± {norm.error:.4f} (the tests compare shapes)")


def _render_multivariate(console: Console, reading: RunReading) -> None:
    """Every multivariate result, significant or not (a bound printed as one)."""
    tests = reading.tests
    rows = tests[tests["kind"] == "multivariate"] if len(tests) else tests
    if not len(rows):
        return
    parts = []
    for _, t in rows.iterrows():
        where = _where(t["category"])
        if pd.isna(t["pvalue"]):
            parts.append(f"{t['method']}{where} did not run ({t['not_run_reason']})")
            continue
        bound = False if pd.isna(t.get("pvalue_is_bound")) else bool(t["pvalue_is_bound"])
        flag = " [bold red]significant[/bold red]" if t["role"] == "decisive" and \
            not pd.isna(t["p_holm"]) and t["p_holm"] < reading.alpha else ""
        parts.append(f"{t['method']}{where} p {format_p(t['pvalue'], bound=bound)}, Holm p "
                     f"{format_p(t['p_holm'], bound=bound)}{flag}")
    console.print("multivariate tests (every input at once): " + "; ".join(parts))


def _render_systematics(console: Console, reading: RunReading) -> None:
    """What the systematics cover (stat-only tests significant, saturated_syst passes), what
    fails beyond them, and per systematic the network output's shape change beside the
    largest input's."""
    if not reading.systematics:
        return
    if reading.covered:
        console.print("[bold green]covered by the systematics[/bold green] (stat-only tests "
                      f"significant, {SYST_METHOD} passes; never a finding): "
                      + _some([p.name for p in reading.covered]))
    if reading.beyond:
        console.print("[bold red]mismodelled beyond the systematics[/bold red] "
                      f"({SYST_METHOD}, Holm < alpha): "
                      + _some([p.name for p in reading.beyond]))
    effects = reading.tables.get("syst_effects")
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


def _render_audit(console: Console, reading: RunReading, critical: pd.DataFrame) -> None:
    """The network audit first: inputs and pairs both important to the network and
    mismodelled (and whether the systematics cover it), then how its Taylor coefficients
    compare between data and simulation."""
    run, tests, found = reading.run, reading.tests, reading.findings
    syst: dict[tuple, float] = {}
    if len(tests):
        rows = tests[(tests["method"] == SYST_METHOD) & (tests["category"] == INCLUSIVE)]
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
                      f"Holm p {format_p(syst[key])}")
        return (f"{what}{node} ({rank}; {r['worst_method']} Holm p "
                f"{format_p(r['worst_p_holm'])}, {r['worst_effect_name']} "
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


def render(reading: RunReading, console: Console | None = None, n_worst: int = 15,
           db: str | Path | None = None, side_file: Path | None = None,
           intended_db: str | Path | None = None) -> None:
    """Print the summary of a run just finished, and where it was stored."""
    console = console or Console()
    render_run(reading, console, n_worst)
    if db:
        console.print(f"results written to [cyan]{db}[/cyan] (run_id {reading.run_id})")
    if side_file:
        console.print(f"[bold yellow]{intended_db} stayed busy[/bold yellow]: the run was "
                      f"written to [cyan]{side_file}[/cyan]; add it with: validator merge "
                      f"--db {intended_db} {side_file}")
