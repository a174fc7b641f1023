"""Terminal report of a run: the worst tests, failures vs expected, where results went."""

from __future__ import annotations

from collections import Counter

import numpy as np
from rich.console import Console
from rich.table import Table

from validator.pipeline import RunOutcome
from validator.summary import findings


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "-"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _pair(x: str, y: str | None) -> str:
    return x if y is None else f"{x} × {y}"


def render(outcome: RunOutcome, console: Console | None = None, n_worst: int = 15) -> None:
    """Print the compact summary of a run."""
    console = console or Console()
    plan, s = outcome.plan, outcome.summary
    reasons = Counter(plan.skipped.values())
    console.print(
        f"[bold]validator[/bold] run [cyan]{outcome.run_id}[/cyan]: "
        f"{outcome.n_sim:,} simulated and {outcome.n_data:,} data events, "
        f"{len(plan.features)} features, {len(plan.pairs)} pairs, {s.n_tests:,} tests"
    )
    if plan.skipped:
        parts = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        console.print(f"skipped {len(plan.skipped)} columns: {parts}")
    for note in outcome.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    nan = [(f.name, int(outcome.sim["all"].n_nonfinite[k]), int(outcome.data["all"].n_nonfinite[k]))
           for k, f in enumerate(plan.features)] if "all" in outcome.sim else []
    nan = [t for t in nan if t[1] or t[2]]
    if nan:
        console.print("NaN/inf values (counted, not tested): "
                      + ", ".join(f"{n} (sim {a}, data {b})" for n, a, b in nan[:8])
                      + (f" and {len(nan) - 8} more" if len(nan) > 8 else ""))
    sentinels = [(f.name, f.n_sentinel_sim, f.n_sentinel_data) for f in plan.features
                 if f.n_sentinel_sim or f.n_sentinel_data]
    if sentinels:
        console.print("default values such as -999 (counted, not tested): "
                      + ", ".join(f"{n} (sim {a}, data {b})" for n, a, b in sentinels[:8])
                      + (f" and {len(sentinels) - 8} more" if len(sentinels) > 8 else ""))

    # reliable tests first, then by p-value: a low-statistics p-value is no confident failure
    pvals = np.nan_to_num(np.array([r.result.pvalue for r in outcome.records]), nan=2.0)
    unreliable = np.array([not r.result.reliable for r in outcome.records])
    order = np.lexsort((pvals, unreliable))
    categories = {rec.category for rec in outcome.records}
    table = Table(title=f"worst {min(n_worst, len(order))} tests", title_justify="left")
    columns = (["category"] if len(categories) > 1 else []) + [
        "test", "feature(s)", "stat/ndf", "p", "p Holm", "effect", "effect size"]
    for col in columns:
        table.add_column(col, justify="right" if col in ("p", "p Holm", "stat/ndf",
                                                          "effect") else "left")
    for t in order[:n_worst]:
        rec = outcome.records[t]
        r = rec.result
        stat = f"{r.statistic:.1f}/{r.ndf:g}" if r.ndf else f"{r.statistic:.3g}"
        effect = f"{r.effect_size:.3g}" if r.effect_size is not None else ""
        method = r.method + ("" if r.reliable else " (low stats)")
        if r.pvalue_method == "toys":
            method += f" ({r.n_toys} toys)"
        row = [method, _pair(rec.feature_x, rec.feature_y), stat, _fmt_p(r.pvalue),
               _fmt_p(outcome.p_holm[t]), effect, r.effect_name or ""]
        table.add_row(*([rec.category] if len(categories) > 1 else []), *row)
    console.print(table)

    console.print(
        f"failures at alpha={s.alpha:g}: [bold]{s.n_failed}[/bold] of {s.n_reliable} reliable tests"
        f" (expected {s.n_expected:.1f}; P(>= observed) = {_fmt_p(s.p_binomial)}); "
        f"p-value uniformity KS p = {_fmt_p(s.p_uniformity)}; "
        f"significant after Holm: {s.n_significant_holm}, after BH: {s.n_significant_bh}"
    )
    found = findings(outcome.records, outcome.p_holm, s.alpha)
    if found.features:
        console.print("[bold red]mismodelled features[/bold red] (1D, Holm < alpha): " + "; ".join(
            f"{f}" + (f" [{c}]" if c != "all" else "") + f" ({', '.join(m)})"
            for (c, f), m in found.features.items()))
    if found.correlations:
        console.print("[bold red]mismodelled correlations[/bold red] (dependence/corr): "
                      + "; ".join(f"{_pair(x, y)}" + (f" [{c}]" if c != "all" else "")
                                  + f" ({', '.join(m)})"
                                  for (c, x, y), m in found.correlations.items()))
    if found.pairs_other:
        console.print("[bold red]pairs failing in 2D[/bold red]: " + "; ".join(
            _pair(x, y) + (f" [{c}]" if c != "all" else "")
            for (c, x, y) in found.pairs_other))
    if found.pairs_from_marginals:
        n_dep = sum("dependence" in m for m in found.pairs_from_marginals.values())
        console.print(f"{len(found.pairs_from_marginals)} pairs fail in 2D through a feature "
                      f"already flagged in 1D (their correlation tests pass; {n_dep} with a "
                      "dependence residual of the 1D mismodelling within bins)")
    if not (found.features or found.correlations or found.pairs_other):
        console.print("[bold green]no significant mismodelling[/bold green] after Holm correction")
    if outcome.db:
        console.print(f"results written to [cyan]{outcome.db}[/cyan] (run_id {outcome.run_id})")
