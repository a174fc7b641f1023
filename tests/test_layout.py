"""The house: the layout README shows is today's, no import circle, ``stats`` imports
nothing above it, and no module imports another's private names."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "validator"


def _layout_module():
    spec = importlib.util.spec_from_file_location("layout", REPO / "docs" / "layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_shows_todays_layout():
    layout = _layout_module()
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert layout.readme_with_layout(text) == text, "run make layout"


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of every import of validator in the file (name None: a module)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("validator"):
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names
                    if alias.name.startswith("validator")]
    return out


def test_no_private_name_is_imported_across_modules():
    found = [f"{path.relative_to(REPO)}: from {module} import {name}"
             for path in PACKAGE.rglob("*.py") for module, name in _imports(path)
             if name and name.startswith("_") and not name.startswith("__")]
    assert not found, found


def test_tests_use_public_names_only():
    """A test reads the package as a user does: no ``from validator... import _name``, no
    ``module._name`` of a validator module imported by the test."""
    found = []
    for path in (REPO / "tests").glob("*.py"):
        tree = ast.parse(path.read_text())
        aliases = {alias.asname or alias.name for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                       "validator") for alias in node.names}
        found += [f"{path.name}: from {m} import {n}" for m, n in _imports(path)
                  if n and n.startswith("_") and not n.startswith("__")]
        found += [f"{path.name}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in aliases and node.attr.startswith("_")
                  and not node.attr.startswith("__")]
    assert not found, found


def test_stats_imports_nothing_above_it():
    above = [f"{path.relative_to(REPO)}: {module}" for path in (PACKAGE / "stats").rglob("*.py")
             for module, _ in _imports(path)
             if not module.startswith(("validator.stats", "validator.errors"))]
    assert not above, above


def test_no_import_circle():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for module, imported in _imports(path):
            full = f"{module}.{imported}" if imported else module
            target = full if full in modules else module
            if target in modules and target != name and target != "validator":
                targets.add(target)
        graph[name] = targets
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
