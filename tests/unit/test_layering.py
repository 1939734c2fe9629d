"""The layers import downward only (README, Layout).

Top: the CLI (``bus.cli``, with ``bus.__main__`` that starts it) and ``bus.demo``. Middle:
``producers`` and ``consumers``. Bottom: the rest of ``bus``. Every import of every module is
read with ``ast`` (those inside functions and ``TYPE_CHECKING`` blocks too: a lazy import is
still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bus", "producers", "consumers")
TOP = ("bus.cli", "bus.demo", "bus.__main__")
MIDDLE = ("producers", "consumers")



def _within(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> Iterator[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # "from bus import cli" imports bus.cli.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _layer(name: str) -> int:
    if _within(name, TOP):
        return 2
    if _within(name, MIDDLE):
        return 1
    return 0


def _upward(module: str, targets: Iterator[str]) -> set[tuple[str, str]]:
    """(module, the upper part it imports) for each import above ``module``'s layer."""
    return {
        (module, next(upper for upper in (*TOP, *MIDDLE) if _within(target, (upper,))))
        for target in targets
        if _within(target, PACKAGES) and _layer(target) > _layer(module)
    }


def _upward_imports() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = _module_name(path)
            found |= _upward(module, _imports(path, module))
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = _upward_imports()
    assert not upward, "\n".join(f"{module} imports {target}" for module, target in sorted(upward))


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("bus.routing", "import producers.sync", {("bus.routing", "producers")}),
        ("bus.routing", "from bus import cli", {("bus.routing", "bus.cli")}),
        ("producers.sync", "from bus.demo import run_demo", {("producers.sync", "bus.demo")}),
        ("consumers.x", "def f():\n    from bus.cli.app import main", {("consumers.x", "bus.cli")}),
        ("bus.cli.app", "import consumers", set()),
        ("bus.demo", "from producers import Publisher", set()),
        ("producers.sync", "from bus.topology import load_topology", set()),
    ],
)
def test_the_check_sees_an_upward_import(
    tmp_path: Path, module: str, source: str, expected: set[tuple[str, str]]
) -> None:
    path = tmp_path / "module.py"
    path.write_text(source, encoding="utf-8")
    assert _upward(module, _imports(path, module)) == expected
