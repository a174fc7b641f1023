"""Command line: a thin face over :func:`validator.run_validation` and the store.

Exit codes: 0 success (all rules pass), 1 a rule fails, 2 the input or the command is unusable
(one line on stderr names the file, column or rule), 3 an internal error (one line, then the
traceback, on stderr).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from validator.gate import Verdict
    from validator.rules import RulesFile

EXIT_OK, EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
#: Most equal-population bins per feature: beyond it the bins hold too few events for the
#: binned tests' asymptotics and the pair histograms grow as its square.
MAX_BINS = 200

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
    from validator.multivariate import MULTIVARIATE_EVENTS
    from validator.pipeline import DEFAULT_DB_WAIT_S, DEFAULT_SEED

    parser = _Parser(prog="validator", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"validator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="compare simulation with data and store the results",
                         description="Compare weighted simulation with data in every feature "
                                     "and pair; store the run in DuckDB.",
                         epilog=RUN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", metavar="YAML",
                     help="a run configuration file holding any of these options (the "
                          "command line overrides it); see validator config-schema")
    run.add_argument("--sim", nargs="+", metavar="PATH",
                     help="simulation files: .parquet, .csv or .root[:TREE] (required, here "
                          "or in --config)")
    run.add_argument("--data", nargs="+", metavar="PATH", help="data files (required)")
    run.add_argument("--weight", metavar="COL", help="event-weight column of the simulation")
    run.add_argument("--unweighted", action="store_true",
                     help="compare the simulation unweighted although it has a weight column")
    run.add_argument("--features", metavar="COL,...",
                     help="features to test (default: every shared numeric column); "
                          "NAME[k] takes element k of a jagged branch")
    run.add_argument("--exclude", metavar="COL,...",
                     help="columns to leave out of the default feature set")
    run.add_argument("--category", metavar="COL", help="also run everything per value of COL")
    run.add_argument("--sim-selection", metavar="EXPR",
                     help="SQL condition selecting simulated events, e.g. \"n_jets >= 2\"; "
                          "_entry is the row number in the file")
    run.add_argument("--data-selection", metavar="EXPR", help="likewise for data")
    run.add_argument("--define", action="append", default=[], metavar="NAME=EXPR",
                     help="a derived column (SQL expression), tested like any feature, "
                          "e.g. \"ht=jet1_pt + jet2_pt\" (repeatable)")
    run.add_argument("--model", metavar="PATH",
                     help="the audited network (TorchScript, torch.export .pt2 or ONNX; never a "
                          "pickle): its outputs are tested like inputs, and may be blinded")
    run.add_argument("--model-inputs", metavar="COL,...",
                     help="the network's inputs in order (default: the names stored in the "
                          "model)")
    run.add_argument("--model-scaler", metavar="JSON",
                     help="per-input offset and scale for a network exported without them")
    run.add_argument("--model-kind", choices=("binary", "multiclass", "regression"),
                     help="what the network outputs (default: inferred)")
    run.add_argument("--model-param", action="append", default=[], metavar="NAME=V1,V2",
                     help="a parametric network's parameter and the values to audit it at "
                          "(repeatable)")
    run.add_argument("--syst", action="append", default=[], metavar="NAME=UP[:DOWN]",
                     help="a weight systematic: columns of the simulation with the varied event "
                          "weight, e.g. pileup=weight_pu_up:weight_pu_down (one-sided: "
                          "mirrored); repeatable")
    run.add_argument("--syst-file", action="append", default=[], metavar="NAME=UP[:DOWN]",
                     help="a shape systematic: alternative simulation files (comma-separated "
                          "per side), e.g. jes=sim_jes_up.parquet:sim_jes_down.parquet; "
                          "repeatable")
    run.add_argument("--norm-unc", action="append", default=[], metavar="[PROCESS=]REL",
                     help="log-normal normalisation uncertainty: 0.05 for every process, or "
                          "drell_yan=0.05,ttbar=0.06 (needs --process-column)")
    run.add_argument("--process-column", metavar="COL",
                     help="the simulation's process column: per-process histograms (stacked "
                          "in plots) and per-process normalisation uncertainties")
    run.add_argument("--syst-toys", type=_positive_int, default=300,
                     help="toys of the saturated_syst p-values (default: 300)")
    run.add_argument("--blind", metavar="EXPR",
                     help="SQL condition of the blinded region: its events are removed from "
                          "data and simulation before anything is computed")
    run.add_argument("--db", default="validation.duckdb", metavar="PATH",
                     help="DuckDB file to append the run to (default: %(default)s)")
    run.add_argument("--no-db", action="store_true", help="do not store the run")
    run.add_argument("--alpha", type=float, default=0.05, help="test size (default: 0.05)")
    run.add_argument("--bins", type=_int_between(2, MAX_BINS), default=10,
                     help="equal-population bins per feature (default: 10, at most "
                          f"{MAX_BINS})")
    run.add_argument("--max-pairs", type=_int_at_least(0), default=1000,
                     help="most pairs tested in 2D (default: 1000)")
    run.add_argument("--toys", type=_positive_int, default=300,
                     help="toys for the dependence test's p-value (default: 300)")
    run.add_argument("--chunk-rows", type=_positive_int, default=250_000,
                     help="rows read at a time (bounds the memory)")
    run.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                     help="processes filling the histograms and running the tests (default: "
                          "every core); the results do not depend on it")
    run.add_argument("--engine", choices=("local", "dask"), default="local",
                     help="fill on this machine (local) or on a Dask cluster (dask): each file "
                          "or row group on a worker; the results are the same")
    run.add_argument("--scheduler", metavar="ADDR",
                     help="with --engine dask: the Dask scheduler's address (tcp://host:8786, "
                          "tls://...; 'current' for a notebook's client); default: a local "
                          "cluster of 2 processes")
    run.add_argument("--seed", type=int, default=DEFAULT_SEED,
                     help="seed of the reservoirs and of every test's toys (default: "
                          "%(default)s)")
    run.add_argument("--db-wait", type=float, default=DEFAULT_DB_WAIT_S, metavar="SECONDS",
                     help="how long a finished run waits for a busy database before it is "
                          "written to a side file (default: %(default)s)")
    run.add_argument("--rules", metavar="YAML",
                     help="judge the stored run with this rules file (checked before any event "
                          "is read); exit 1 when a rule fails")
    run.add_argument("--junit", metavar="XML", help="write the rules' verdict as JUnit XML "
                                                    "(needs --rules)")
    run.add_argument("--report", metavar="FILE.md",
                     help="write the Markdown report (verdict, failing rules, worst problems) "
                          "once the run is stored and judged")
    run.add_argument("--multivariate", metavar="c2st,nplm",
                     help="learned tests over all inputs at once: the classifier two-sample "
                          "test (c2st) and the New Physics Learning Machine (nplm; with --syst "
                          "weight variations, the nuisances are profiled)")
    run.add_argument("--multivariate-events", type=_positive_int, default=MULTIVARIATE_EVENTS,
                     metavar="N", help="data events in the multivariate subsample, the "
                                       "simulation's 5x as many (default: %(default)s)")
    run.add_argument("--multivariate-toys", type=_positive_int, default=None, metavar="N",
                     help="permutations (c2st) and toys (nplm) per test (default: 49 each, "
                          "p-values resolved to 1/50)")
    run.add_argument("--multivariate-time", type=float, default=None, metavar="SECONDS",
                     help="time budget of each multivariate test: no permutation or toy starts "
                          "after it (default: 180)")
    run.add_argument("--evidently-report", metavar="FILE.html",
                     help="write evidently's data-drift report (DataDriftPreset) on the "
                          "multivariate subsample; its per-column results are stored as tests "
                          "kind 'evidently', outside the multiple-testing family")
    run.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                     help="a label stored with the run, e.g. era=2018B (repeatable): the "
                          "dashboard's history groups runs by tag")
    run.add_argument("--top", type=_positive_int, default=15, metavar="N",
                     help="features and pairs listed in the summary (default: 15)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

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
    gate.add_argument("--db", default="validation.duckdb", metavar="PATH",
                      help="DuckDB file holding the run (default: %(default)s)")
    gate.add_argument("--run", default="latest", metavar="ID",
                      help="run id (or a unique prefix), or 'latest' (default)")
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
    return parser


def _console():
    """A rich console; wide enough for the tables when the output is a file or a pipe."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=130)


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pathlib import Path

    if args.jobs != 1 and args.engine != "dask":
        from validator.worker_server import start_early

        start_early()  # the workers' server imports beside this process's imports
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from validator.compare import CompareOptions
    from validator.multivariate import check_methods
    from validator.pipeline import RunConfig, run_validation
    from validator.plan import PlanConfig
    from validator.report import render
    from validator.systematics import Systematics

    if args.config:
        _apply_config(args, argv)
    for option in ("sim", "data"):
        if not getattr(args, option):
            raise _usage(f"--{option} is required (on the command line or in --config)")
    if not 0 < args.alpha < 1:
        raise _usage("--alpha must be between 0 and 1")
    features = None
    if args.features is not None:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
        if not features:
            raise _usage("--features names no column")
    if args.db_wait < 0:
        raise _usage("--db-wait must be >= 0")
    rules = _gate_rules(args)  # a bad rules file is exit 2 before any event is read
    _check_report_path(args.report)
    try:
        multivariate = check_methods((args.multivariate or "").split(","))
    except ValueError as exc:
        raise _usage(f"--multivariate: {exc}") from None
    if args.evidently_report and Path(args.evidently_report).is_dir():
        raise _usage(f"--evidently-report {args.evidently_report}: is a folder; give a file "
                     "name (e.g. drift.html)")
    model_params = {}
    for text in args.model_param:
        name, sep, values = text.partition("=")
        try:
            model_params[name.strip()] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            sep = ""
        if not sep or not name.strip() or not model_params.get(name.strip()):
            raise _usage(f"--model-param: '{text}' is not NAME=V1,V2,...")
    if args.scheduler and args.engine != "dask":
        raise _usage("--scheduler: needs --engine dask")
    config = RunConfig(
        sim=args.sim, data=args.data, weight=args.weight, features=features,
        category=args.category, db=None if args.no_db else args.db, alpha=args.alpha,
        chunk_rows=args.chunk_rows, seed=args.seed, jobs=args.jobs, engine=args.engine,
        scheduler=args.scheduler,
        sim_selection=args.sim_selection, data_selection=args.data_selection,
        exclude=[c.strip() for c in (args.exclude or "").split(",") if c.strip()],
        defines=args.define, blind=args.blind, unweighted=args.unweighted,
        model=args.model, model_scaler=args.model_scaler, model_kind=args.model_kind,
        model_inputs=[c.strip() for c in args.model_inputs.split(",") if c.strip()]
        if args.model_inputs else None, model_params=model_params or None,
        db_wait_s=args.db_wait, tags=_tags(args.tag), multivariate=multivariate,
        multivariate_events=args.multivariate_events,
        multivariate_time_s=args.multivariate_time, evidently_report=args.evidently_report,
        multivariate_toys=args.multivariate_toys,
        systematics=Systematics.parse(args.syst, args.syst_file, args.norm_unc,
                                      args.process_column)
        if args.syst or args.syst_file or args.norm_unc or args.process_column else None,
        plan=PlanConfig(n_bins=args.bins, max_pairs=args.max_pairs),
        compare=CompareOptions(dependence_toys=args.toys, syst_toys=args.syst_toys),
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
    render(outcome, console, args.top)
    if outcome.side_file:
        print(f"validator: warning: {config.db} stayed busy; the run is in {outcome.side_file}: "
              f"add it with 'validator merge --db {config.db} {outcome.side_file}'",
              file=sys.stderr)
    status = _gate_after_run(rules, outcome, args.junit) if rules is not None else EXIT_OK
    _write_reports(args, outcome, rules)  # after the gate: the report shows its verdict
    return status


def _check_report_path(path: str | None) -> None:
    """Refuse, before any event is read, a --report path that cannot be written."""
    from pathlib import Path

    if path is None:
        return
    if Path(path).is_dir():
        raise _usage(f"--report {path}: is a folder; give a file name (e.g. report.md)")
    if not Path(path).resolve().parent.is_dir():
        raise _usage(f"--report {path}: the folder {Path(path).parent} does not exist")


def _write_reports(args: argparse.Namespace, outcome: Any, rules: Any = None) -> None:
    """Write ``run --report FILE.md`` from the stored run (database or side file), with the
    verdict the gate stored; a --no-db run is reported from memory (and judged again there,
    the verdict being stored nowhere)."""
    if not getattr(args, "report", None):
        return
    from validator.reports import load_report_tables, write_markdown

    where = outcome.db or outcome.side_file
    if where:
        tables = load_report_tables(where, outcome.run_id, histograms=False)
    else:
        import pandas as pd

        from validator.report import outcome_tables

        tables = outcome_tables(outcome)
        if rules is not None:
            from validator.gate import judge, stamp, verdict_rows
            from validator.gate import outcome_tables as gate_tables

            tables["gate_results"] = pd.DataFrame(
                verdict_rows(stamp(judge(gate_tables(outcome), rules))))
    print(f"report written to {write_markdown(args.report, tables)}")


def _gate_rules(args: argparse.Namespace) -> RulesFile | None:
    """The run's rules (validated) and a writable --junit path, or None without --rules."""
    from validator.junit import check_output_path
    from validator.rules import load_rules

    if args.junit and not args.rules:
        raise _usage("--junit needs --rules (the JUnit file holds the rules' verdict)")
    if not args.rules:
        return None
    rules = load_rules(args.rules)
    if args.junit:
        check_output_path(args.junit)
    return rules


def _print_verdict(verdict: Verdict, junit: str | None) -> int:
    from validator.gate import verdict_lines
    from validator.junit import write_junit

    for line in verdict_lines(verdict):
        print(line)
    if junit:
        print(f"JUnit written to {write_junit(verdict, junit)}")
    return EXIT_OK if verdict.passed else EXIT_FAIL


def _gate_after_run(rules: RulesFile, outcome: Any, junit: str | None) -> int:
    """Judge a run just finished: stored (in the database or its side file) or in memory."""
    from validator.gate import judge, judge_stored, outcome_tables, stamp

    where = outcome.db or outcome.side_file
    if where:
        verdict = judge_stored(where, outcome.run_id, rules)
    else:  # --no-db: judged, not stored
        verdict = stamp(judge(outcome_tables(outcome), rules))
    return _print_verdict(verdict, junit)


def _cmd_gate(args: argparse.Namespace) -> int:
    from validator.gate import judge_stored
    from validator.junit import check_output_path
    from validator.rules import load_rules

    rules = load_rules(args.rules)
    if args.junit:
        check_output_path(args.junit)
    verdict = judge_stored(args.db, args.run, rules)
    status = _print_verdict(verdict, args.junit)
    print(f"verdict {verdict.verdict_id} added to {args.db} (table gate_results)")
    return status


def _cmd_rules_schema() -> int:
    from validator.rules import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


def _apply_config(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Fill the options not given on the command line from ``--config``."""
    from validator.runfile import load_run_file

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

    from validator.runfile import config_json_schema

    print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _tags(items: Sequence[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` options as a dict (a key given twice is a usage error)."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise _usage(f"--tag: '{item}' is not KEY=VALUE")
        if key in tags:
            raise _usage(f"--tag: '{key}' is given twice")
        tags[key] = value
    return tags


def _short_paths(paths) -> str:
    from pathlib import PurePath

    names = [PurePath(str(p).split(".root:")[0]).name + (
        ":" + str(p).split(".root:")[1] if ".root:" in str(p) else "") for p in paths]
    return ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")


def _cmd_runs(args: argparse.Namespace) -> int:
    import json

    import pandas as pd
    from rich.table import Table

    from validator.store import list_runs

    frame = list_runs(args.db)
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
    from validator.report import render_run
    from validator.store import load_run

    tables = load_run(args.db, args.run_option or args.run)
    console = _console()
    render_run(tables, console, args.top)
    run = tables["runs"].iloc[0]
    if run.get("command"):
        console.print(f"command: {run['command']}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from validator.reports import write_report

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
        raise _usage("the dashboard needs streamlit: pip install 'validator[dashboard]'")
    from validator.dashboard import APP, check_database

    db = Path(args.db).resolve()
    check_database(db)
    command = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.address", args.host, "--server.port", str(args.port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--", "--db", str(db)]
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


def _cmd_merge(args: argparse.Namespace) -> int:
    from validator.store import merge_side_file

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
                "dashboard": lambda: _cmd_dashboard(args)}
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


def console() -> NoReturn:
    """The ``validator`` command: :func:`main`, then :func:`exit_now`."""
    exit_now(main())


if __name__ == "__main__":  # pragma: no cover
    console()
