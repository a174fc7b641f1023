"""The run configuration file: every ``validator run`` option, in one YAML file.

``validator run --config analysis.yaml`` reads it; options given on the command line override
the file's. Its keys are the options of :mod:`validator.config.options` (the flag's name with
``_`` for ``-``), so the file takes exactly what the command line takes. Validated with
pydantic: an unknown key, a wrong type or a key given twice is exit 2 with one line naming the
file, the key path and its line (:mod:`validator.config.yamlfile`). ``validator config-schema``
prints the JSON schema (editors complete the file with it); ``sample_data/analysis.yaml`` is a
commented example.

Relative paths in the file (inputs, model, systematics files, database, rules, reports) are
relative to the file's folder, so a configuration kept beside an analysis works from anywhere.

Format 1 grouped the systematics under ``systematics:`` (``weights``, ``files``, ``norm``,
``process_column``) and the toys under ``toys:`` (``dependence``, ``syst``); such a file is
still read (:func:`upgrade_v1`), its messages naming its own keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, create_model

from validator.config.options import StrictModel, file_annotation, file_options, from_file
from validator.config.yamlfile import parse_yaml_model, read_text

#: The version of the configuration format this release writes; it reads 1 and 2.
CONFIG_VERSION = 2

#: Format 1's grouped keys and the option each became in format 2.
V1_KEYS = {("systematics", "weights"): "syst", ("systematics", "files"): "syst_file",
           ("systematics", "norm"): "norm_unc",
           ("systematics", "process_column"): "process_column",
           ("toys", "dependence"): "toys", ("toys", "syst"): "syst_toys"}


@cache
def run_file_model() -> type[StrictModel]:
    """The pydantic model of a configuration file, one field per option of the table."""
    fields: dict[str, Any] = {
        "config_version": (Literal[1, 2], Field(CONFIG_VERSION, description="format version"))}
    for key, option in file_options().items():
        fields[key] = (file_annotation(option) | None,
                       Field(None, description=option.help.replace("%(default)s",
                                                                   str(option.default))))
    return create_model("RunFile", __base__=StrictModel,
                        __doc__="A run configuration file (the command line's options as keys).",
                        **fields)


def _is_v1(data: dict[str, Any]) -> bool:
    version = data.get("config_version")
    return version == 1 or (version is None and (
        isinstance(data.get("systematics"), dict) or isinstance(data.get("toys"), dict)))


def upgrade_v1(data: dict[str, Any]) -> tuple[dict[str, Any],
                                               Callable[[tuple[Any, ...]], tuple[Any, ...]]]:
    """A format-1 file's data in format 2, and the map from a format-2 key path back to the
    file's own (for messages)."""
    if not _is_v1(data):
        return data, lambda path: path
    out = {k: v for k, v in data.items() if k not in ("systematics", "toys")}
    back: dict[str, tuple[Any, ...]] = {}
    for section in ("systematics", "toys"):
        value = data.get(section)
        if not isinstance(value, dict):
            if section in data:
                out[section] = value  # not a section: validated (and refused) as it is
            continue
        for name, item in value.items():
            key = V1_KEYS.get((section, name), f"{section}.{name}")  # unknown: refused
            if key in out:
                raise ValueError(f"{section}.{name}: the same setting as {key}, given twice")
            out[key] = item
            back[key] = (section, name)
    out["config_version"] = 2

    def in_file(path: tuple[Any, ...]) -> tuple[Any, ...]:
        if path and path[0] in back:
            return (*back[path[0]], *path[1:])
        if path and isinstance(path[0], str) and path[0].count(".") == 1:
            return (*path[0].split("."), *path[1:])
        return path

    return out, in_file


def load_run_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The file's settings as ``validator run`` option values (argparse destinations and
    command-line forms), and the sha256 of the file."""
    path = Path(path)
    raw, text = read_text(path, "--config", "configuration file")
    parsed = parse_yaml_model(text, run_file_model(), str(path), "configuration file",
                              "a configuration file is a mapping of options (sim, data, ...)",
                              upgrade=upgrade_v1)
    base = path.resolve().parent
    options: dict[str, Any] = {}
    for key, option in file_options().items():
        value = getattr(parsed, key)
        if value is not None:
            options[option.dest] = from_file(option, value, base)
    return options, hashlib.sha256(raw).hexdigest()


def config_json_schema() -> dict[str, Any]:
    """The JSON schema of a run configuration file (``validator config-schema``)."""
    schema = run_file_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "validator run configuration"
    return schema
