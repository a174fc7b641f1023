"""Command line: a thin face over :func:`validator.run_validation` and the store.

Exit codes: 0 success (all rules pass), 1 a rule fails, 2 the input or the command is unusable
(one line on stderr names the file, column or rule).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep it to one line
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"validator: error: {message}\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a whole number: {text}") from exc
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


_positive_int = _int_at_least(1)


def build_parser() -> argparse.ArgumentParser:
    from validator import __version__

    parser = _Parser(prog="validator", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"validator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="compare simulation with data and store the results")
    run.add_argument("--sim", nargs="+", required=True, metavar="PATH",
                     help="simulation files: .parquet, .csv or .root[:TREE]")
    run.add_argument("--data", nargs="+", required=True, metavar="PATH", help="data files")
    run.add_argument("--weight", metavar="COL", help="event-weight column of the simulation")
    run.add_argument("--features", metavar="COL,...",
                     help="features to test (default: every shared numeric column); "
                          "NAME[k] takes element k of a jagged branch")
    run.add_argument("--exclude", metavar="COL,...",
                     help="columns to leave out of the default feature set")
    run.add_argument("--category", metavar="COL", help="also run everything per value of COL")
    run.add_argument("--sim-selection", metavar="EXPR",
                     help="SQL condition selecting simulated events, e.g. \"njets >= 2\"; "
                          "_entry is the row number in the file")
    run.add_argument("--data-selection", metavar="EXPR", help="likewise for data")
    run.add_argument("--db", default="validation.duckdb", metavar="PATH",
                     help="DuckDB file to append the run to (default: %(default)s)")
    run.add_argument("--no-db", action="store_true", help="do not store the run")
    run.add_argument("--alpha", type=float, default=0.05, help="test size (default: 0.05)")
    run.add_argument("--bins", type=_int_at_least(2), default=10,
                     help="equal-population bins per feature (default: 10)")
    run.add_argument("--max-pairs", type=_int_at_least(0), default=1000,
                     help="most pairs tested in 2D (default: 1000)")
    run.add_argument("--toys", type=_positive_int, default=300,
                     help="toys for the dependence test's p-value (default: 300)")
    run.add_argument("--chunk-rows", type=_positive_int, default=250_000,
                     help="rows read at a time (bounds the memory)")
    run.add_argument("--seed", type=int, default=20261123, help="seed for reservoirs and toys")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    runs = sub.add_parser("runs", help="list the runs stored in a database")
    runs.add_argument("--db", default="validation.duckdb", metavar="PATH")
    return parser


def _console():
    """A rich console; wide enough for the tables when the output is a file or a pipe."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=130)


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from validator.compare import CompareOptions
    from validator.pipeline import RunConfig, run_validation
    from validator.plan import PlanConfig
    from validator.report import render

    if not 0 < args.alpha < 1:
        raise _usage("--alpha must be between 0 and 1")
    features = None
    if args.features is not None:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
        if not features:
            raise _usage("--features names no column")
    config = RunConfig(
        sim=args.sim, data=args.data, weight=args.weight, features=features,
        category=args.category, db=None if args.no_db else args.db, alpha=args.alpha,
        chunk_rows=args.chunk_rows, seed=args.seed,
        sim_selection=args.sim_selection, data_selection=args.data_selection,
        exclude=[c.strip() for c in (args.exclude or "").split(",") if c.strip()],
        plan=PlanConfig(n_bins=args.bins, max_pairs=args.max_pairs),
        compare=CompareOptions(dependence_toys=args.toys, seed=args.seed),
        command="validator " + " ".join(shlex.quote(a) for a in argv),
    )
    console = _console()
    if args.quiet or not console.is_terminal:
        outcome = run_validation(config)
    else:
        with Progress(TextColumn("{task.description:<10}"), BarColumn(),
                      TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            outcome = run_validation(config, progress)
    render(outcome, console)
    return EXIT_OK


def _cmd_runs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from validator.store import list_runs

    frame = list_runs(args.db)
    table = Table(title=f"runs in {args.db}", title_justify="left")
    for col in ("run_id", "started (UTC)", "sim", "data", "features", "tests",
                "failed (expected)", "Holm-significant"):
        table.add_column(col, justify="left" if col in ("run_id", "started (UTC)") else "right")
    for row in frame.itertuples(index=False):
        table.add_row(row.run_id, f"{row.started_at:%Y-%m-%d %H:%M}", f"{row.n_sim:,}",
                      f"{row.n_data:,}", str(row.n_features), f"{row.n_tests:,}",
                      f"{row.n_failed} ({row.n_expected_failures:.1f})",
                      str(row.n_significant_holm))
    _console().print(table)
    return EXIT_OK


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``validator`` command."""
    from validator.errors import InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args, argv)
        if args.command == "runs":
            return _cmd_runs(args)
    except (InputError, _UsageError) as exc:
        print(f"validator: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("validator: interrupted; nothing was written", file=sys.stderr)
        return 130
    return EXIT_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
