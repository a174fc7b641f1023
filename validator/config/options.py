"""Every ``validator run`` option, declared once.

Each :class:`Option` says its name, its value's type and bounds, its default, its help, its
command-line flag, its key in a run configuration file and where it goes in
:class:`~validator.config.run.RunConfig`. From this one table are built:

- the ``run`` subcommand's argparse arguments (:func:`add_run_arguments`),
- the configuration file's pydantic model and its JSON schema (:mod:`validator.config.file`),
- the :class:`~validator.config.run.RunConfig` of a run (:func:`run_config`).

A configuration key is the flag's name with ``_`` for ``-`` (``--syst-toys`` -> ``syst_toys``),
except the repeatable flags that read as mappings in YAML (``--tag`` -> ``tags``,
``--model-param`` -> ``model_params``). The file's values take the natural YAML form (a list
for ``features``, a mapping for ``define``); :attr:`Option.from_file` turns them into the
command-line form, so both routes reach :func:`run_config` as the same values.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from validator.config.defaults import (
    DEFAULT_DB_WAIT_S,
    DEFAULT_SEED,
    MAX_BINS,
    MULTIVARIATE_EVENTS,
)
from validator.errors import InputError
from validator.inputs.sources import DEFAULT_CHUNK_ROWS
from validator.results.display import (
    ExperimentLabelSpec,
    FeatureDisplaySpec,
    display_texts,
    experiment_label_texts,
    parse_display,
    parse_experiment_label,
)
from validator.stages.correct import APPLY_HALVES

#: The models' kinds (what the network outputs).
MODEL_KINDS = ("binary", "multiclass", "regression")
ENGINES = ("local", "dask")

Paths = str | list[str]
Names = list[str] | str  # a YAML list, or the command line's comma-separated form


class UsageError(InputError):
    """A run option with an unusable value (exit 2, one line)."""


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt key must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class WeightSyst(StrictModel):
    up: str = Field(description="column of the varied event weight (up)")
    down: str | None = Field(None, description="column of the down variation (absent: "
                                               "one-sided, mirrored)")


class FileSyst(StrictModel):
    up: Paths = Field(description="alternative simulation file(s), up")
    down: Paths | None = Field(None, description="file(s) down (absent: one-sided)")


@dataclass(frozen=True)
class Option:
    """One ``validator run`` option.

    ``kind``: ``str``, ``path`` (relative to a configuration file's folder), ``paths``,
    ``names`` (comma-separated on the command line, a list in a file), ``int``, ``float``,
    ``flag`` (a switch), ``choice``, or ``repeat`` (a repeatable flag; its file form is
    ``file_type``, turned into the flag's texts by ``from_file``).
    ``minimum``/``maximum`` bound numbers (``above``: strictly above ``minimum``).
    ``target``: the :class:`~validator.config.run.RunConfig` field it sets (dotted for a nested
    one, e.g. ``plan.n_bins``); None for the options of the command itself (``--quiet``).
    """

    dest: str
    help: str
    kind: str = "str"
    default: Any = None
    metavar: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    choices: tuple[str, ...] = ()
    key: str | None = None
    file_type: Any = None
    from_file: Callable[[Any, Path], Any] | None = None
    target: str | None = None
    in_file: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def config_key(self) -> str:
        return self.key or self.dest


def _join(value: Names, _base: Path) -> str:
    return value if isinstance(value, str) else ",".join(value)


def _path(value: str, base: Path) -> str:
    # absolute paths as they are; a ROOT tree suffix (file.root:Events) is kept
    return value if Path(value).is_absolute() else str(base / value)


def _paths(value: Paths, base: Path) -> list[str]:
    return [_path(v, base) for v in ([value] if isinstance(value, str) else value)]


def _defines(value: dict[str, str] | list[str], _base: Path) -> list[str]:
    return list(value) if isinstance(value, list) else [f"{n}={e}" for n, e in value.items()]


def _weight_systs(value: dict[str, WeightSyst] | list[str], _base: Path) -> list[str]:
    if isinstance(value, list):
        return list(value)
    return [f"{name}={v.up}" + (f":{v.down}" if v.down else "") for name, v in value.items()]


def _file_systs(value: dict[str, FileSyst] | list[str], base: Path) -> list[str]:
    if isinstance(value, list):
        out = []
        for text in value:
            name, sep, files = text.partition("=")
            up, colon, down = files.partition(":")
            sides = [",".join(_paths([f for f in side.split(",") if f], base))
                     for side in (up, down)]
            out.append(f"{name}{sep}{sides[0]}" + (f":{sides[1]}" if colon else ""))
        return out
    return [f"{name}={','.join(_paths(v.up, base))}"
            + (f":{','.join(_paths(v.down, base))}" if v.down else "")
            for name, v in value.items()]


def _norms(value: float | dict[str, float], _base: Path) -> list[str]:
    if isinstance(value, dict):
        return [",".join(f"{p}={u:g}" for p, u in value.items())]
    return [f"{value:g}"]


def _model_params(value: dict[str, list[float]], _base: Path) -> list[str]:
    return [f"{name}={','.join(f'{v:g}' for v in values)}" for name, values in value.items()]


def _tags(value: dict[str, str], _base: Path) -> list[str]:
    return [f"{k}={v}" for k, v in value.items()]


@cache
def run_options() -> tuple[Option, ...]:
    """The table of ``validator run`` options, in the order ``--help`` lists them."""
    return (
        Option("config", kind="path", metavar="YAML", in_file=False,
               help="a run configuration file holding any of these options (the command line "
                    "overrides it); see validator config-schema"),
        Option("sim", kind="paths", metavar="PATH", target="sim",
               help="simulation files: .parquet, .csv or .root[:TREE] (required, here or in "
                    "--config)"),
        Option("data", kind="paths", metavar="PATH", target="data",
               help="data files (required)"),
        Option("weight", metavar="COL", target="weight",
               help="event-weight column of the simulation"),
        Option("unweighted", kind="flag", target="unweighted",
               help="compare the simulation unweighted although it has a weight column"),
        Option("features", kind="names", metavar="COL,...", target="features",
               help="features to test (default: every shared numeric column); NAME[k] takes "
                    "element k of a jagged branch"),
        Option("exclude", kind="names", metavar="COL,...", target="exclude",
               help="columns to leave out of the default feature set"),
        Option("category", metavar="COL", target="category",
               help="also run everything per value of COL"),
        Option("sim_selection", metavar="EXPR", target="sim_selection",
               help="SQL condition selecting simulated events, e.g. \"n_jets >= 2\"; _entry "
                    "is the row number in the file"),
        Option("data_selection", metavar="EXPR", target="data_selection",
               help="likewise for data"),
        Option("define", kind="repeat", metavar="NAME=EXPR", target="defines",
               file_type=dict[str, str] | list[str], from_file=_defines,
               help="a derived column (SQL expression), tested like any feature and usable as "
                    "a weight, systematic, category, process column or in --blind, e.g. "
                    "\"ht=jet1_pt + jet2_pt\" (repeatable; in a file {name: expression})"),
        Option("model", kind="path", metavar="PATH", target="model",
               help="the audited network (TorchScript, torch.export .pt2 or ONNX; never a "
                    "pickle): its outputs are tested like inputs, and may be blinded"),
        Option("model_inputs", kind="names", metavar="COL,...", target="model_inputs",
               help="the network's inputs in order (default: the names stored in the model)"),
        Option("model_scaler", kind="path", metavar="JSON", target="model_scaler",
               help="per-input offset and scale for a network exported without them"),
        Option("model_kind", kind="choice", choices=MODEL_KINDS, target="model_kind",
               help="what the network outputs (default: inferred)"),
        Option("model_param", kind="repeat", metavar="NAME=V1,V2", key="model_params",
               file_type=dict[str, list[float]], from_file=_model_params,
               target="model_params",
               help="a parametric network's parameter and the values to audit it at "
                    "(repeatable; in a file {mass: [300, 500]})"),
        Option("syst", kind="repeat", metavar="NAME=UP[:DOWN]", target="systematics",
               file_type=dict[str, WeightSyst] | list[str], from_file=_weight_systs,
               help="a weight systematic: columns of the simulation with the varied event "
                    "weight, e.g. pileup=weight_pu_up:weight_pu_down (one-sided: mirrored); "
                    "repeatable; in a file {pileup: {up: COL, down: COL}}"),
        Option("syst_file", kind="repeat", metavar="NAME=UP[:DOWN]", target="systematics",
               file_type=dict[str, FileSyst] | list[str], from_file=_file_systs,
               help="a shape systematic: alternative simulation files (comma-separated per "
                    "side), e.g. jes=sim_jes_up.parquet:sim_jes_down.parquet; repeatable; in a "
                    "file {jes: {up: FILE, down: FILE}}"),
        Option("norm_unc", kind="repeat", metavar="[PROCESS=]REL", target="systematics",
               file_type=float | dict[str, float], from_file=_norms,
               help="log-normal normalisation uncertainty: 0.05 for every process, or "
                    "drell_yan=0.05,ttbar=0.06 (needs --process-column)"),
        Option("process_column", metavar="COL", target="systematics",
               help="the simulation's process column: per-process histograms (stacked in "
                    "plots) and per-process normalisation uncertainties"),
        Option("syst_toys", kind="int", minimum=1, default=300, target="compare.syst_toys",
               help="toys of the saturated_syst p-values (default: %(default)s)"),
        Option("blind", metavar="EXPR", target="blind",
               help="SQL condition of the blinded region: its events are removed from data "
                    "and simulation before anything is computed"),
        Option("db", kind="path", default="validation.duckdb", metavar="PATH", target="db",
               help="DuckDB file to append the run to (default: %(default)s)"),
        Option("no_db", kind="flag", target="db", help="do not store the run"),
        Option("alpha", kind="float", default=0.05, minimum=0.0, maximum=1.0, above=True,
               target="alpha", help="test size (default: %(default)s)"),
        Option("bins", kind="int", default=10, minimum=2, maximum=MAX_BINS,
               target="plan.n_bins",
               help=f"equal-population bins per feature (default: %(default)s, at most "
                    f"{MAX_BINS})"),
        Option("max_pairs", kind="int", default=1000, minimum=0, target="plan.max_pairs",
               help="most pairs tested in 2D (default: %(default)s)"),
        Option("toys", kind="int", default=300, minimum=1, target="compare.dependence_toys",
               help="toys for the dependence test's p-value (default: %(default)s)"),
        Option("chunk_rows", kind="int", default=DEFAULT_CHUNK_ROWS, minimum=1,
               target="chunk_rows", help="rows read at a time (bounds the memory)"),
        Option("jobs", kind="int", minimum=1, metavar="N", target="jobs",
               help="processes filling the histograms and running the tests (default: every "
                    "core); the results do not depend on it"),
        Option("engine", kind="choice", choices=ENGINES, default="local", target="engine",
               help="fill on this machine (local) or on a Dask cluster (dask): each file or "
                    "row group on a worker; the results are the same"),
        Option("scheduler", metavar="ADDR", target="scheduler",
               help="with --engine dask: the Dask scheduler's address (tcp://host:8786, "
                    "tls://...; 'current' for a notebook's client); default: a local cluster "
                    "of 2 processes"),
        Option("seed", kind="int", default=DEFAULT_SEED, target="seed",
               help="seed of the reservoirs and of every test's toys (default: %(default)s)"),
        Option("db_wait", kind="float", default=DEFAULT_DB_WAIT_S, minimum=0.0,
               metavar="SECONDS", target="db_wait_s",
               help="how long a finished run waits for a busy database before it is written "
                    "to a side file (default: %(default)s)"),
        Option("rules", kind="path", metavar="YAML",
               help="judge the stored run with this rules file (checked before any event is "
                    "read); exit 1 when a rule fails"),
        Option("junit", kind="path", metavar="XML",
               help="write the rules' verdict as JUnit XML (needs --rules)"),
        Option("report", kind="path", metavar="FILE.md",
               help="write the Markdown report (verdict, failing rules, worst problems) once "
                    "the run is stored and judged (its folder is made when missing)"),
        Option("multivariate", kind="names", metavar="c2st,nplm", target="multivariate",
               help="learned tests over all inputs at once: the classifier two-sample test "
                    "(c2st) and the New Physics Learning Machine (nplm; with --syst weight "
                    "variations, the nuisances are profiled)"),
        Option("multivariate_events", kind="int", minimum=1, default=MULTIVARIATE_EVENTS,
               metavar="N", target="multivariate_events",
               help="data events in the multivariate subsample, the simulation's 5x as many "
                    "(default: %(default)s)"),
        Option("multivariate_toys", kind="int", minimum=1, metavar="N",
               target="multivariate_toys",
               help="toys of nplm (default: 49, p-values resolved to 1/50) and permutations "
                    "of c2st, a cross-check of its held-out rank test (default: none)"),
        Option("multivariate_time", kind="float", minimum=0.0, above=True, metavar="SECONDS",
               target="multivariate_time_s",
               help="time budget of each multivariate test: no permutation or toy starts "
                    "after it (default: 180)"),
        Option("evidently_report", kind="path", metavar="FILE.html", target="evidently_report",
               help="write evidently's data-drift report (DataDriftPreset) on the "
                    "multivariate subsample; its per-column results are stored as tests kind "
                    "'evidently', outside the multiple-testing family"),
        Option("apply", kind="path", metavar="JSON", target="apply",
               help="a closure run: multiply the simulation's weights by the corrections of "
                    "validator correct (its up/down variations are weight systematics "
                    "corr_NAME), on the held-out half of the events by default"),
        Option("apply_half", kind="choice", choices=APPLY_HALVES, default="held-out",
               target="apply_half",
               help="with --apply: the events the closure run keeps: held-out (default: the "
                    "half the correction was not derived on), training (to see overfitting "
                    "beside it) or all"),
        Option("tag", kind="repeat", metavar="KEY=VALUE", key="tags",
               file_type=dict[str, str | int | float],
               from_file=_tags, target="tags",
               help="a label stored with the run, e.g. era=2018B (repeatable; in a file "
                    "{era: 2018B}): the dashboard's history groups runs by tag"),
        Option("display", kind="repeat", metavar="FEATURE:KEY=VALUE", target="display",
               file_type=dict[str, FeatureDisplaySpec] | list[str], from_file=display_texts,
               help="how a feature is drawn: label (mathtext), unit, logx, logy, range, e.g. "
                    "met:label='$p_T^{miss}$' met:unit=GeV met:logy=true m_ll:range=50,130 "
                    "(repeatable; in a file {met: {label: ..., unit: GeV}}); a ROOT branch's "
                    "title is the default label; stored with the run"),
        Option("experiment_label", kind="repeat", metavar="KEY=VALUE",
               target="experiment_label", file_type=ExperimentLabelSpec | list[str],
               from_file=experiment_label_texts,
               help="the experiment label of every figure (mplhep): experiment, text, data, "
                    "lumi (fb^-1), com (TeV), year, e.g. text='Private Work' com=13.6 "
                    "(repeatable; in a file {experiment: CMS, text: Private Work})"),
        Option("top", kind="int", minimum=1, default=15, metavar="N",
               help="features and pairs listed in the summary (default: %(default)s)"),
        Option("quiet", kind="flag", help="no progress bar"),
    )


# ---------------------------------------------------------------------------------------------
# the command line


def _number_parser(option: Option) -> Callable[[str], Any]:
    kind = int if option.kind == "int" else float

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as exc:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"not {what}: {text}") from exc
        problem = bound_problem(option, value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    return parse


def bound_problem(option: Option, value: float) -> str | None:
    """What is wrong with a number outside the option's bounds (None: fine)."""
    low, high = option.minimum, option.maximum
    if low is not None and (value <= low if option.above else value < low):
        return f"must be {'>' if option.above else '>='} {low:g}"
    if high is not None and (value >= high if option.above else value > high):
        return f"must be {'<' if option.above else '<='} {high:g}"
    return None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of the table to the ``run`` subcommand's parser."""
    for option in run_options():
        kwargs: dict[str, Any] = {"help": option.help}
        if option.kind == "flag":
            kwargs["action"] = "store_true"
        elif option.kind == "repeat":
            kwargs.update(action="append", default=[], metavar=option.metavar)
        elif option.kind == "choice":
            kwargs.update(choices=option.choices, default=option.default)
        else:
            kwargs.update(default=option.default, metavar=option.metavar)
            if option.kind == "paths":
                kwargs["nargs"] = "+"
            elif option.kind in ("int", "float"):
                kwargs["type"] = _number_parser(option)
        parser.add_argument(option.flag, dest=option.dest, **kwargs)


# ---------------------------------------------------------------------------------------------
# the configuration file


def file_annotation(option: Option) -> Any:
    """The type of the option's value in a configuration file (pydantic annotation)."""
    if option.file_type is not None:
        return option.file_type
    if option.kind in ("str", "path"):
        return str
    if option.kind == "paths":
        return Paths
    if option.kind == "names":
        return Names
    if option.kind == "flag":
        return bool
    if option.kind == "choice":
        return Literal[option.choices]
    bounds: dict[str, float] = {}
    if option.minimum is not None:
        bounds["gt" if option.above else "ge"] = option.minimum
    if option.maximum is not None:
        bounds["lt" if option.above else "le"] = option.maximum
    number = int if option.kind == "int" else float
    return Annotated[number, Field(**bounds)] if bounds else number


def from_file(option: Option, value: Any, base: Path) -> Any:
    """A configuration file's (validated) value in the command line's form."""
    if option.from_file is not None:
        return option.from_file(value, base)
    if option.kind == "path":
        return _path(value, base)
    if option.kind == "paths":
        return _paths(value, base)
    if option.kind == "names":
        return _join(value, base)
    return value


def file_options() -> dict[str, Option]:
    """The options a configuration file takes, by key."""
    return {o.config_key: o for o in run_options() if o.in_file}


# ---------------------------------------------------------------------------------------------
# RunConfig


def _names(text: str | None, flag: str, *, required: bool = False) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if required and not names:
        raise UsageError(f"{flag} names no column")
    return names


def _parse_model_params(texts: Sequence[str]) -> dict[str, list[float]] | None:
    params: dict[str, list[float]] = {}
    for text in texts:
        name, sep, values = text.partition("=")
        try:
            params[name.strip()] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            sep = ""
        if not sep or not name.strip() or not params.get(name.strip()):
            raise UsageError(f"--model-param: '{text}' is not NAME=V1,V2,...")
    return params or None


def parse_tags(items: Sequence[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` options as a dict (a key given twice is a usage error)."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"--tag: '{item}' is not KEY=VALUE")
        if key in tags:
            raise UsageError(f"--tag: '{key}' is given twice")
        tags[key] = value
    return tags


def _multivariate(text: str | None) -> tuple[str, ...]:
    from validator.stages.multivariate import check_methods

    try:
        return check_methods((text or "").split(","))
    except ValueError as exc:
        raise UsageError(f"--multivariate: {exc}") from None


def _converters() -> dict[str, Callable[[Any], Any]]:
    """How an option's command-line value becomes its RunConfig value, where it is not
    taken as it is."""
    return {
        "features": lambda v: _names(v, "--features", required=True),
        "exclude": lambda v: _names(v, "--exclude") or [],
        "model_inputs": lambda v: _names(v, "--model-inputs"),
        "model_param": _parse_model_params,
        "tag": parse_tags,
        "multivariate": _multivariate,
        "display": parse_display,
        "experiment_label": parse_experiment_label,
    }


def run_config(values: dict[str, Any], argv: Sequence[str] = ()) -> Any:
    """The :class:`~validator.config.run.RunConfig` of the options' values (argparse
    destinations, command-line forms), checked: a wrong value is a :class:`UsageError`."""
    from dataclasses import replace

    from validator.config.run import RunConfig
    from validator.stages.compare import CompareOptions
    from validator.stages.plan import PlanConfig
    from validator.stages.systematics import Systematics

    for required in ("sim", "data"):
        if not values.get(required):
            raise UsageError(f"--{required} is required (on the command line or in --config)")
    if values.get("scheduler") and values.get("engine") != "dask":
        raise UsageError("--scheduler: needs --engine dask")
    if values.get("apply_half") not in (None, "held-out") and not values.get("apply"):
        raise UsageError("--apply-half: needs --apply")
    converters = _converters()
    fields: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {"plan": {}, "compare": {}}
    for option in run_options():
        if option.target is None or option.target in ("systematics", "db"):
            continue  # the command's own options; the composites below
        value = values.get(option.dest, option.default)
        if option.dest in converters:
            value = converters[option.dest](value)
        if "." in option.target:
            group, name = option.target.split(".")
            nested[group][name] = value
        else:
            fields[option.target] = value
    syst_given = any(values.get(d) for d in ("syst", "syst_file", "norm_unc", "process_column"))
    fields["systematics"] = Systematics.parse(
        values.get("syst") or [], values.get("syst_file") or [], values.get("norm_unc") or [],
        values.get("process_column")) if syst_given else None
    fields["db"] = None if values.get("no_db") else values.get("db", "validation.duckdb")
    fields["plan"] = replace(PlanConfig(), **nested["plan"])
    fields["compare"] = replace(CompareOptions(), **nested["compare"])
    fields["command"] = "validator " + " ".join(shlex.quote(a) for a in argv) if argv else None
    return RunConfig(**fields)

