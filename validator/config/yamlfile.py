"""YAML files validated with pydantic, problems named by key path and line.

The rules file of the gate (:mod:`validator.gate.rules`) and the run configuration file
(:mod:`validator.config.file`) are read here: an unknown key, a wrong type or a key given
twice is an :class:`~validator.errors.InputError` (CLI exit 2) whose one line names the file,
the key path and the line it is on, e.g. ``analysis.yaml: line 7: syst.pileup.upp: unknown
key``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from validator.errors import InputError

Model = TypeVar("Model", bound=BaseModel)


def _key_lines(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int],
               source: str) -> None:
    """Map every key path of a composed YAML tree to its 1-based line; refuse duplicate keys."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise InputError(f"{source}: line {key_node.start_mark.line + 1}: "
                                 f"{_dotted((*path, key))}: key given twice")
            seen.add(key)
            _key_lines(value_node, (*path, key), lines, source)
            lines[(*path, key)] = key_node.start_mark.line + 1  # the key's line, not the value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _key_lines(item, (*path, i), lines, source)


def _dotted(path: Sequence[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _data_path(data: Any, loc: Sequence[Any]) -> tuple[Any, ...]:
    """Drop from a pydantic error location the parts that are not in the data (the tag of a
    discriminated union, e.g. ``rules.0.per_test.threshold`` -> ``rules.0.threshold``)."""
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and node.get("kind") == part:
            continue  # the union's tag
        elif _is_union_member(part):
            continue  # which member of a union (``dict[str,WeightSyst]``): not in the data
        else:
            path.append(part)  # a key that is missing or unknown: named, not walked into
            node = None
    return tuple(path)


#: Names pydantic gives the members of a plain union in an error's location.
_SIMPLE_TYPES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_union_member(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in _SIMPLE_TYPES)


def _relevant(errors: list[Any]) -> list[Any]:
    """The errors worth naming: of a value checked against a union (``{name: {up, down}}`` or
    ``['name=up:down']``), the members its YAML type does not even match say nothing."""
    def mismatch(error: Any) -> bool:
        return error["type"].endswith("_type") and any(
            _is_union_member(p) for p in error["loc"])
    kept = [e for e in errors if not mismatch(e)]
    return kept or errors


def _line_of(path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    while path not in lines and path:
        path = path[:-1]
    return lines.get(path, 1)


#: Upgrades a file of an earlier format: the data in today's format, and a function giving,
#: for a key path of the upgraded data, the path it had in the file (for messages).
Upgrade = Callable[[dict[str, Any]], tuple[dict[str, Any], Callable[[tuple[Any, ...]],
                                                                   tuple[Any, ...]]]]


def _same_path(path: tuple[Any, ...]) -> tuple[Any, ...]:
    return path


def _message(error: Any, data: Any, lines: dict[tuple[Any, ...], int], source: str,
             in_file: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None) -> str:
    path = (in_file or _same_path)(_data_path(data, error["loc"]))
    line = _line_of(path, lines)
    what = error["msg"]
    if error["type"] == "extra_forbidden":
        what = "unknown key"
    elif error["type"] == "union_tag_invalid":
        what = (f"unknown rule kind '{error['input'].get('kind')}' (expected one of "
                f"{error['ctx']['expected_tags']})")
    elif error["type"] == "union_tag_not_found":
        what = "the rule has no 'kind'"
    elif error["type"] != "missing" and "input" in error and not isinstance(
            error["input"], dict | list):
        what += f" (got {error['input']!r})"
    return f"{source}: line {line}: {_dotted(path)}: {what}"


def parse_yaml_model(text: str, model: type[Model], source: str, what: str,
                     shape_hint: str, upgrade: Upgrade | None = None) -> Model:
    """Validate YAML ``text`` against ``model``; every problem is one :class:`InputError`
    line naming ``source``, the key path and its line. ``what`` names the file in messages
    ("rules file"); ``shape_hint`` says what its top level must be; ``upgrade`` turns a file
    of an earlier format into today's (its messages still name the file's own keys)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{source}: {where}not valid YAML ({problem})") from exc
    if root is None or data is None:
        raise InputError(f"{source}: the {what} is empty")
    if not isinstance(data, dict):
        raise InputError(f"{source}: line 1: {shape_hint}")
    lines: dict[tuple[Any, ...], int] = {}
    _key_lines(root, (), lines, source)
    in_file = _same_path
    if upgrade is not None:
        try:
            data, in_file = upgrade(data)
        except ValueError as exc:
            raise InputError(f"{source}: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # a misspelt key explains the missing one it was meant to be: name it first
        errors = sorted(_relevant(exc.errors()), key=lambda e: e["type"] != "extra_forbidden")
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise InputError(_message(errors[0], data, lines, source, in_file) + more) from None


def read_text(path: Path, option: str, what: str) -> tuple[bytes, str]:
    """The bytes and UTF-8 text of a YAML file named by ``option`` (``--rules``); a folder, a
    missing or unreadable file, or bytes that are not UTF-8 are one :class:`InputError`."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; {option} needs a YAML file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: the {what} is not UTF-8 text") from None
