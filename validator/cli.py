"""Command line: a thin face over :func:`validator.run_validation` and the store.

Exit codes: 0 success (all rules pass), 1 a rule fails, 2 the input or the command is unusable
(one line on stderr names the file, column or rule), 3 an internal error (one line, then the
traceback, on stderr).
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from validator.gate.judge import Verdict
    from validator.gate.rules import RulesFile

EXIT_OK, EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

DESCRIPTION = (
    "Input-space validation for machine learning in HEP: does the simulation a network was\n"
    "trained on describe the data in every input, alone and in pairs? 'validator run' tests\n"
    "weighted simulation against data and stores the results in DuckDB.")

RUN_EXAMPLE = """example:
  validator run --sim sample_data/sim.parquet --data sample_data/data.parquet \\
      --weight weight --sim-selection "n_jets >= 2" --data-selection "n_jets >= 2"

exit codes: 0 done, 1 a rule fails, 2 unusable input or command, 3 internal error"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep it to one line
        self.exit(EXIT_INPUT, f"validator: error: {message} (see {self.prog} --help)\n")


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


def _stored_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--db`` and ``--run``: which stored run a command reads."""
    parser.add_argument("--db", default="validation.duckdb", metavar="PATH",
                        help="DuckDB file holding the run (default: %(default)s)")
    parser.add_argument("--run", default="latest", metavar="ID",
                        help="run id (or a unique prefix), or 'latest' (default)")


def _int_between(minimum: int, maximum: int):
    at_least = _int_at_least(minimum)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from validator import __version__
    from validator.config.options import add_run_arguments

    parser = _Parser(prog="validator", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"validator {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the log, library warnings included (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="compare simulation with data and store the results",
                         description="Compare weighted simulation with data in every feature "
                                     "and pair; store the run in DuckDB.",
                         epilog=RUN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(run)

    runs = sub.add_parser("runs", help="list the runs stored in a database")
    runs.add_argument("--db", default="validation.duckdb", metavar="PATH")

    show = sub.add_parser("show", help="print the summary of a stored run")
    show.add_argument("run", nargs="?", default="latest",
                      help="run id (or a unique prefix), or 'latest' (default)")
    show.add_argument("--db", default="validation.duckdb", metavar="PATH")
    show.add_argument("--run", dest="run_option", metavar="ID", help="same as the positional RUN")
    show.add_argument("--top", type=_positive_int, default=15, metavar="N",
                      help="features and pairs listed (default: 15)")

    merge = sub.add_parser("merge", help="add a run written to a side file (database was busy)")
    merge.add_argument("side_files", nargs="+", metavar="SIDE_FILE")
    merge.add_argument("--db", default="validation.duckdb", metavar="PATH")

    report = sub.add_parser("report", help="write report.md, report.html and figures of a "
                                           "stored run",
                            description="Write the Markdown report, one self-contained HTML "
                                        "file and the PNG/PDF figures of a stored run, from "
                                        "the database alone.")
    report.add_argument("--db", default="validation.duckdb", metavar="PATH")
    report.add_argument("--run", default="latest", metavar="ID",
                        help="run id (or a unique prefix), or 'latest' (default)")
    report.add_argument("--out", required=True, metavar="DIR",
                        help="folder for report.md, report.html and figures/")
    report.add_argument("--top", type=_positive_int, default=10, metavar="N",
                        help="problems listed and figures drawn per kind (default: 10)")

    gate = sub.add_parser("gate", help="judge a stored run with a rules file (the CI gate)",
                          description="Judge a stored run against a rules file; the verdict is "
                                      "added to the gate_results table. Nothing is recomputed.",
                          epilog="exit codes: 0 every rule passes, 1 a rule fails, 2 unusable "
                                 "rules, database or run, 3 internal error",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _stored_run_arguments(gate)
    gate.add_argument("--rules", required=True, metavar="YAML",
                      help="rules file, e.g. rules/default.yaml")
    gate.add_argument("--junit", metavar="XML", help="also write the verdict as JUnit XML")

    sub.add_parser("rules-schema", help="print the JSON schema of rules files")

    dash = sub.add_parser("dashboard", help="serve the Streamlit dashboard of a database",
                          description="Serve the Streamlit dashboard of a validator database "
                                      "(read-only: a validator run may write meanwhile).")
    dash.add_argument("--db", default="validation.duckdb", metavar="PATH",
                      help="DuckDB file to show (default: %(default)s)")
    dash.add_argument("--port", type=_int_between(1, 65535), default=8501,
                      help="port (default: %(default)s)")
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default: %(default)s, this machine only)")
    sub.add_parser("config-schema", help="print the JSON schema of run configuration files")

    corr = sub.add_parser(
        "correct", help="derive reweighting corrections of a failing run (correctionlib)",
        description="Derive corrections of the simulation for the inputs a stored run finds "
                    "mismodelled, on the training half of its events, and write them as a "
                    "correctionlib CorrectionSet; close them with 'validator run ... --apply "
                    "FILE' (the held-out half).",
        epilog="exit codes: 0 written, 2 unusable database, run, inputs or output, 3 internal "
               "error", formatter_class=argparse.RawDescriptionHelpFormatter)
    _stored_run_arguments(corr)
    corr.add_argument("--out", required=True, metavar="JSON",
                      help="the correctionlib file to write, e.g. corrections.json")
    corr.add_argument("--method", choices=("binned", "classifier"), default="binned",
                      help="binned 1D/2D ratios of the failing inputs (default), or a "
                           "classifier's density ratio over every input")
    corr.add_argument("--features", metavar="COL,...",
                      help="also correct these features (binned), failing or not")
    corr.add_argument("--seed", type=int, metavar="N",
                      help="seed of the classifier (default: the run's)")
    return parser


def _console():
    """A rich console; wide enough for the tables when the output is a file or a pipe."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=130)


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pathlib import Path

    if args.jobs != 1 and args.engine != "dask":
        from validator.engine.worker_server import start_early

        # the workers' server imports beside this process's imports
        start_early(network=bool(args.model))
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from validator.config.options import run_config
    from validator.output.terminal import render
    from validator.pipeline import run_validation

    if args.config:
        _apply_config(args, argv)
    rules = _gate_rules(args)  # a bad rules file is exit 2 before any event is read
    _check_report_path(args.report)
    _check_output_file("--evidently-report", args.evidently_report, "drift.html")
    config = run_config(vars(args), argv)
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
    verdict = _judge_after_run(rules, outcome) if rules is not None else None
    reading = _reading_after_run(outcome, verdict)
    render(reading, console, args.top, db=outcome.db, side_file=outcome.side_file,
           intended_db=config.db)
    if outcome.side_file:
        print(f"validator: warning: {config.db} stayed busy; the run is in {outcome.side_file}: "
              f"add it with 'validator merge --db {config.db} {outcome.side_file}'",
              file=sys.stderr)
    status = _print_verdict(verdict, args.junit) if verdict is not None else EXIT_OK
    if args.report:  # after the gate: the report shows its verdict
        from validator.output.documents import write_markdown

        Path(args.report).resolve().parent.mkdir(parents=True, exist_ok=True)
        print(f"report written to {write_markdown(args.report, reading)}")
    return status


def _check_report_path(path: str | None) -> None:
    """Refuse, before any event is read, a --report path that cannot be written."""
    _check_output_file("--report", path, "report.md")


def _check_output_file(option: str, path: str | None, example: str) -> None:
    """Refuse, before any event is read, an output file that cannot be written."""
    from validator.errors import output_file_problem

    problem = output_file_problem(path, example) if path is not None else None
    if problem:
        raise _usage(f"{option} {path}: {problem}")


def _judge_after_run(rules: RulesFile, outcome: Any) -> Verdict:
    """Judge a run just finished: stored (in the database or its side file, where the
    verdict is added) or in memory (--no-db: judged, not stored)."""
    from validator.gate.judge import judge, judge_stored, stamp
    from validator.results.tables import outcome_tables

    where = outcome.db or outcome.side_file
    if where:
        return judge_stored(where, outcome.run_id, rules)
    return stamp(judge(outcome_tables(outcome), rules))


def _reading_after_run(outcome: Any, verdict: Verdict | None) -> Any:
    """The reading of a run just finished: from where it was stored, else from memory."""
    from validator.gate.judge import verdict_rows
    from validator.results.reading import read_run
    from validator.results.tables import load_run_tables, outcome_tables

    where = outcome.db or outcome.side_file
    if where:
        return read_run(load_run_tables(where, outcome.run_id))
    rows = verdict_rows(verdict) if verdict is not None else ()
    return read_run(outcome_tables(outcome, verdict_rows=rows))


def _gate_rules(args: argparse.Namespace) -> RulesFile | None:
    """The run's rules (validated) and a writable --junit path, or None without --rules."""
    from validator.gate.junit import check_output_path
    from validator.gate.rules import load_rules

    if args.junit and not args.rules:
        raise _usage("--junit needs --rules (the JUnit file holds the rules' verdict)")
    if not args.rules:
        return None
    rules = load_rules(args.rules)
    if args.junit:
        check_output_path(args.junit)
    return rules


def _print_verdict(verdict: Verdict, junit: str | None) -> int:
    from validator.gate.judge import verdict_lines
    from validator.gate.junit import write_junit

    for line in verdict_lines(verdict):
        print(line)
    if junit:
        print(f"JUnit written to {write_junit(verdict, junit)}")
    return EXIT_OK if verdict.passed else EXIT_FAIL


def _cmd_gate(args: argparse.Namespace) -> int:
    from validator.gate.judge import judge_stored
    from validator.gate.junit import check_output_path
    from validator.gate.rules import load_rules

    rules = load_rules(args.rules)
    if args.junit:
        check_output_path(args.junit)
    verdict = judge_stored(args.db, args.run, rules)
    status = _print_verdict(verdict, args.junit)
    print(f"verdict {verdict.verdict_id} added to {args.db} (table gate_results)")
    return status


def _cmd_rules_schema() -> int:
    from validator.gate.rules import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


def _apply_config(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Fill the options not given on the command line from ``--config``."""
    from validator.config.file import load_run_file

    options, _ = load_run_file(args.config)
    given = _explicit_options(argv)
    for dest, value in options.items():
        if dest not in given:
            setattr(args, dest, value)


def _explicit_options(argv: Sequence[str]) -> set[str]:
    """The ``run`` options present on the command line (argparse destinations)."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_action in action.choices["run"]._actions:
                sub_action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(list(argv))))


def _cmd_config_schema() -> int:
    import json

    from validator.config.file import config_json_schema

    print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _short_paths(paths) -> str:
    from pathlib import PurePath

    names = [PurePath(str(p).split(".root:")[0]).name + (
        ":" + str(p).split(".root:")[1] if ".root:" in str(p) else "") for p in paths]
    return ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")


def _cmd_runs(args: argparse.Namespace) -> int:
    import json

    import pandas as pd
    from rich.table import Table

    from validator.results.tables import run_list

    frame = run_list(args.db)
    table = Table(title=f"runs in {args.db}", title_justify="left")
    for col in ("run_id", "started (UTC)", "simulation → data", "options", "events sim/data",
                "tests", "failed (exp.)", "Holm", "not run"):
        left = col in ("run_id", "started (UTC)", "simulation → data", "options")
        table.add_column(col, justify="left" if left else "right",
                         no_wrap=col in ("run_id", "started (UTC)"))
    for row in frame.itertuples(index=False):
        config = {} if pd.isna(row.config_json) else json.loads(row.config_json)
        options = [f"{k.replace('_', '-')}: {config[k]}"
                   for k in ("sim_selection", "data_selection", "blind") if config.get(k)]
        options += [f"--{k} {getattr(row, k + '_column')}" for k in ("weight", "category")
                    if isinstance(getattr(row, k + "_column"), str)]
        table.add_row(row.run_id, f"{row.started_at:%Y-%m-%d %H:%M}",
                      f"{_short_paths(row.sim_paths)} → {_short_paths(row.data_paths)}",
                      "; ".join(options), f"{row.n_sim:,}/{row.n_data:,}", f"{row.n_tests:,}",
                      f"{row.n_failed} ({row.n_expected_failures:.1f})",
                      str(row.n_significant_holm),
                      "-" if pd.isna(row.n_not_run) else str(int(row.n_not_run)))
    _console().print(table)
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from validator.output.terminal import render_run
    from validator.results.reading import read_run
    from validator.results.tables import load_run_tables

    reading = read_run(load_run_tables(args.db, args.run_option or args.run))
    console = _console()
    render_run(reading, console, args.top)
    console.print(reading.verdict.headline() if reading.verdict.judged
                  else "not judged: no rules file has judged this run (validator gate)")
    if reading.run.get("command"):
        console.print(f"command: {reading.run['command']}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from validator.output.documents import write_report

    files = write_report(args.db, args.run, args.out, top=args.top)
    print(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figure files in "
          f"{files.markdown.parent / 'figures'}")
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """Run ``streamlit run`` on the dashboard app (read-only on ``--db``) until interrupted."""
    import importlib.util
    import signal
    import subprocess
    from pathlib import Path

    if importlib.util.find_spec("streamlit") is None:
        raise _usage("the dashboard needs streamlit: pip install 'hep-validator[dashboard]'")
    from validator.dashboard import APP, check_database

    db = Path(args.db).resolve()
    check_database(db)
    command = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.address", args.host, "--server.port", str(args.port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
               "--", "--db", str(db)]
    print(f"validator dashboard: {db} on http://{args.host}:{args.port} (Ctrl-C stops it)",
          flush=True)
    server = subprocess.Popen(command, env={**os.environ, "VALIDATOR_DB": str(db)})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return server.wait()
    finally:  # stopped (Ctrl-C, SIGTERM): the server goes with it
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def _cmd_correct(args: argparse.Namespace) -> int:
    from validator.errors import output_file_problem
    from validator.results.store import check_database
    from validator.stages.correct import correct

    problem = output_file_problem(args.out, "corrections.json")
    if problem:
        raise _usage(f"--out {args.out}: {problem}")
    check_database(args.db)
    features = [f.strip() for f in (args.features or "").split(",") if f.strip()]
    result = correct(args.db, args.run, args.out, args.method, features=features,
                     seed=args.seed)
    for line in result.summary_lines():
        print(line)
    if result.files:
        print(f"recorded in {args.db} (table corrections)")
    return EXIT_OK


def _cmd_merge(args: argparse.Namespace) -> int:
    from validator.results.store import merge_side_file

    for side in args.side_files:
        added = merge_side_file(args.db, side)
        what = ", ".join(added) if added else "no new run (already there)"
        print(f"{side}: merged into {args.db}: {what}")
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
    commands = {"run": lambda: _cmd_run(args, argv), "runs": lambda: _cmd_runs(args),
                "show": lambda: _cmd_show(args), "merge": lambda: _cmd_merge(args),
                "gate": lambda: _cmd_gate(args), "rules-schema": _cmd_rules_schema,
                "config-schema": _cmd_config_schema,
                "report": lambda: _cmd_report(args),
                "dashboard": lambda: _cmd_dashboard(args),
                "correct": lambda: _cmd_correct(args)}
    try:
        return commands[args.command]()
    except (InputError, _UsageError) as exc:
        print(f"validator: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("validator: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: never exit 0 or 1, which a gate would read as a verdict
        print(f"validator: internal error: {type(exc).__name__}: {exc} (a bug; please report "
              "it with the traceback below)", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return EXIT_INTERNAL


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once the streams are flushed and the exit handlers have
    run (temporary files, worker pools), skipping only Python's teardown of its modules.

    That teardown (numba's compiled code and LLVM, scipy, pyarrow, duckdb) takes about a second
    after a run (measured after a 1M-event run), which a CI gate would wait for every time;
    every file a command writes is closed before it returns."""
    _flush()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # pragma: no cover - not CPython
        sys.exit(code)
    run_exit_handlers()
    _flush()
    os._exit(code)


def _flush() -> None:
    """Flush stdout and stderr; a reader that went away (``validator runs | head``) is not an
    error of the command."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def route_library_warnings(verbose: bool) -> None:
    """Library warnings (a torch deprecation, a numpy runtime note) say nothing a user of the
    command can act on: they go to the log, which ``-v`` prints, never to the terminal
    otherwise; the worker processes started later inherit the choice."""
    import logging

    logging.captureWarnings(True)
    log = logging.getLogger("py.warnings")
    if verbose:
        logging.basicConfig(level=logging.WARNING,
                            format="validator: log: %(name)s: %(message)s")
        logging.getLogger("validator").setLevel(logging.INFO)
        return
    log.addHandler(logging.NullHandler())
    log.propagate = False
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


def console() -> NoReturn:
    """The ``validator`` command: :func:`main`, then :func:`exit_now`."""
    argv = sys.argv[1:]
    verbose = any(a in ("-v", "--verbose") for a in argv)
    route_library_warnings(verbose)
    exit_now(main([a for a in argv if a not in ("-v", "--verbose")]))


if __name__ == "__main__":  # pragma: no cover
    console()
