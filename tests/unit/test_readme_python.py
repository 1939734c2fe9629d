"""The README's and docs' Python examples match the code: every name they import exists, and
every call of an imported function or class (or of an attribute of one, ``Publisher.connect``)
binds to its signature: no missing required argument, no keyword that does not exist.

The examples are read, not run (most need a service around them); the Tracing example is run
by tests/integration/test_tracing_readme.py. A ``load_topology()`` left in the README after
``load_topology(path)`` began to require its path is the drift this catches.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _examples() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for document in DOCUMENTS:
        blocks = re.findall(r"```python\n(.*?)```", document.read_text(encoding="utf-8"), re.S)
        found += [(f"{document.name}#{number}", block) for number, block in enumerate(blocks)]
    return found


EXAMPLES = _examples()


def _imported(tree: ast.AST) -> tuple[dict[str, Any], list[str]]:
    names: dict[str, Any] = {}
    missing: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
                else:
                    missing.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
    return names, missing


def _callee(func: ast.expr, names: dict[str, Any]) -> Any:
    if isinstance(func, ast.Name):
        return names.get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        owner = names.get(func.value.id)
        if owner is not None:
            return getattr(owner, func.attr, AttributeError(f"{func.value.id}.{func.attr}"))
    return None


def _unbindable_calls(tree: ast.AST, names: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = _callee(node.func, names)
        if isinstance(callee, AttributeError):
            problems.append(f"no attribute {callee}")
            continue
        if callee is None or not callable(callee):
            continue
        if any(isinstance(arg, ast.Starred) for arg in node.args) or any(
            keyword.arg is None for keyword in node.keywords
        ):
            continue  # *args / **kwargs: nothing to count
        try:
            signature = inspect.signature(callee)
        except (TypeError, ValueError):
            continue  # a builtin without a signature
        try:
            signature.bind(*node.args, **{keyword.arg: None for keyword in node.keywords})
        except TypeError as exc:
            problems.append(f"{ast.unparse(node)}: {exc}")
    return problems


def test_there_are_examples_to_check() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize(("where", "source"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_an_example_imports_what_exists_and_calls_what_binds(where: str, source: str) -> None:
    tree = compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST)
    names, missing = _imported(tree)
    assert not missing, f"{where} imports names that do not exist: {missing}"
    assert not _unbindable_calls(tree, names), where


def test_the_check_catches_a_missing_required_argument() -> None:
    source = "from bus.topology import load_topology\nload_topology()\n"
    tree = ast.parse(source)
    names, _ = _imported(tree)
    (problem,) = _unbindable_calls(tree, names)
    assert "missing a required argument: 'path'" in problem
