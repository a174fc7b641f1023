"""The run configuration file: everything ``validator run`` can be told, in one YAML file.

``validator run --config analysis.yaml`` reads it; options given on the command line override
the file's. Validated with pydantic: an unknown key, a wrong type or a key given twice is exit 2
with one line naming the file, the key path and its line (:mod:`validator.yamlfile`).
``validator config-schema`` prints the JSON schema (editors complete the file with it);
``sample_data/analysis.yaml`` is a commented example for the sample data.

Relative paths in the file (inputs, model, systematics files, database, rules, reports) are
relative to the file's folder, so a configuration kept beside an analysis works from anywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from validator.yamlfile import parse_yaml_model, read_text

#: The version of the configuration format this release reads (``config_version``).
CONFIG_VERSION = 1

Paths = str | list[str]
Positive = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class WeightSyst(_Strict):
    up: str = Field(description="column of the varied event weight (up)")
    down: str | None = Field(None, description="column of the down variation (absent: "
                                               "one-sided, mirrored)")


class FileSyst(_Strict):
    up: Paths = Field(description="alternative simulation file(s), up")
    down: Paths | None = Field(None, description="file(s) down (absent: one-sided)")


class SystematicsSection(_Strict):
    weights: dict[str, WeightSyst] = Field(default_factory=dict,
                                           description="weight systematics by name")
    files: dict[str, FileSyst] = Field(default_factory=dict,
                                       description="shape systematics by name")
    norm: float | dict[str, float] | None = Field(
        None, description="log-normal normalisation uncertainty: one for every process, or "
                          "per process (needs process_column)")
    process_column: str | None = None


class ToysSection(_Strict):
    dependence: Positive | None = Field(None, description="toys of the dependence test")
    syst: Positive | None = Field(None, description="toys of saturated_syst")


class RunFile(_Strict):
    """A run configuration file (the command line's options as keys)."""

    config_version: Literal[1] = Field(CONFIG_VERSION, description="format version")
    sim: Paths | None = Field(None, description="simulation files (.parquet, .csv, .root[:TREE])")
    data: Paths | None = Field(None, description="data files")
    weight: str | None = None
    unweighted: bool | None = None
    features: list[str] | None = None
    exclude: list[str] | None = None
    category: str | None = None
    sim_selection: str | None = None
    data_selection: str | None = None
    define: dict[str, str] | list[str] | None = Field(
        None, description="derived columns: {name: SQL expression} or ['name=expr']")
    blind: str | None = Field(None, description="SQL condition of the blinded region")
    model: str | None = None
    model_inputs: list[str] | None = None
    model_scaler: str | None = None
    model_kind: Literal["binary", "multiclass", "regression"] | None = None
    model_params: dict[str, list[float]] | None = Field(
        None, description="a parametric network's audit grid, e.g. {mass: [300, 500]}")
    systematics: SystematicsSection | None = None
    toys: ToysSection | None = None
    alpha: Annotated[float, Field(gt=0, lt=1)] | None = None
    bins: Annotated[int, Field(ge=2)] | None = None
    max_pairs: Annotated[int, Field(ge=0)] | None = None
    chunk_rows: Positive | None = None
    seed: int | None = None
    db: str | None = None
    db_wait: Annotated[float, Field(ge=0)] | None = None
    tags: dict[str, str] | None = Field(None, description="labels stored with the run")
    rules: str | None = Field(None, description="gate rules file")
    junit: str | None = None
    report: str | None = None


def _paths(value: Paths | None, base: Path) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    return [_path(v, base) for v in items]


def _path(value: str, base: Path) -> str:
    # keep a ROOT tree suffix (file.root:Events) and absolute paths as they are
    return value if Path(value).is_absolute() else str(base / value)


def load_run_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The file's settings as ``validator run`` option values (argparse destinations and
    formats), and the sha256 of the file."""
    path = Path(path)
    raw, text = read_text(path, "--config", "configuration file")
    cfg = parse_yaml_model(text, RunFile, str(path), "configuration file",
                           "a configuration file is a mapping of options (sim, data, ...)")
    return to_options(cfg, path.resolve().parent), hashlib.sha256(raw).hexdigest()


def to_options(cfg: RunFile, base: Path) -> dict[str, Any]:
    """``validator run`` option values (argparse destinations) from a parsed file."""
    out: dict[str, Any] = {}
    for key in ("weight", "unweighted", "category", "sim_selection", "data_selection", "blind",
                "model_kind", "alpha", "bins", "max_pairs", "chunk_rows", "seed", "db_wait"):
        value = getattr(cfg, key)
        if value is not None:
            out[key] = value
    for key in ("sim", "data"):
        if getattr(cfg, key) is not None:
            out[key] = _paths(getattr(cfg, key), base)
    for key in ("model", "model_scaler", "db", "rules", "junit", "report"):
        if getattr(cfg, key) is not None:
            out[key] = _path(getattr(cfg, key), base)
    for key in ("features", "exclude", "model_inputs"):
        if getattr(cfg, key) is not None:
            out[key] = ",".join(getattr(cfg, key))
    if cfg.define is not None:
        out["define"] = list(cfg.define) if isinstance(cfg.define, list) else [
            f"{name}={expr}" for name, expr in cfg.define.items()]
    if cfg.model_params is not None:
        out["model_param"] = [f"{name}={','.join(f'{v:g}' for v in values)}"
                              for name, values in cfg.model_params.items()]
    if cfg.tags is not None:
        out["tag"] = [f"{k}={v}" for k, v in cfg.tags.items()]
    if cfg.toys is not None:
        if cfg.toys.dependence is not None:
            out["toys"] = cfg.toys.dependence
        if cfg.toys.syst is not None:
            out["syst_toys"] = cfg.toys.syst
    syst = cfg.systematics
    if syst is not None:
        out["syst"] = [f"{name}={v.up}" + (f":{v.down}" if v.down else "")
                       for name, v in syst.weights.items()]
        out["syst_file"] = [
            f"{name}={','.join(_paths(v.up, base))}"
            + (f":{','.join(_paths(v.down, base))}" if v.down else "")
            for name, v in syst.files.items()]
        if isinstance(syst.norm, dict):
            out["norm_unc"] = [",".join(f"{p}={u:g}" for p, u in syst.norm.items())]
        elif syst.norm is not None:
            out["norm_unc"] = [f"{syst.norm:g}"]
        if syst.process_column:
            out["process_column"] = syst.process_column
    return out


def config_json_schema() -> dict[str, Any]:
    """The JSON schema of a run configuration file (``validator config-schema``)."""
    schema = RunFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "validator run configuration"
    return schema
