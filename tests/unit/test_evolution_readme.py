"""README "Evolving an event": its commands run, in a git clone of the demo's contracts.

Each ```shell block of the section runs in order, after the edit its prose describes; a trailing
``# exit N`` comment states the expected exit code (0 otherwise). The ```text block is the real
output of the first failing check.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from bus.cli.contracts import compare_contracts
from bus.contract_history import current_snapshots, frozen_history
from bus.topology import load_topology
from tests.support.commands import git, run_bus

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Evolving an event\n", 1)[1].split("\n## ", 1)[0]


def _edit(file: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / file
        text = path.read_text(encoding="utf-8")
        assert old in text, (file, old)
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return apply


CURRENCY = '    currency: str = Field(default="EUR", min_length=3, max_length=3)\n'
# The edits the prose before each block describes, in order.
EDITS: list[list[Callable[[Path], None]]] = [
    [],
    [_edit("producers/events.py", "    currency: str", "    currency_code: str")],
    [
        _edit("producers/events.py", "    currency_code: str", "    currency: str"),
        _edit("producers/events.py", CURRENCY, CURRENCY + '    note: str = ""\n'),
    ],
    [
        _edit(
            "topology.yaml",
            "    model: producers.events:OrderCreated\n",
            "    model: producers.events:OrderCreated\n    version: 2\n",
        )
    ],
]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", SECTION, flags=re.DOTALL)


def _clone(tmp: Path) -> Path:
    root = tmp / "shop"
    root.mkdir()
    shutil.copy(REPO / "topology.yaml", root / "topology.yaml")
    shutil.copytree(REPO / "producers", root / "producers", ignore=shutil.ignore_patterns("__py*"))
    shutil.copytree(REPO / "contracts", root / "contracts")
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.email=dev@example.com", "-c", "user.name=dev", "commit", "-q", "-m", "v1"],
    ):
        git(root, *args)
    return root


def test_the_readme_commands_run_in_order(tmp_path: Path) -> None:
    blocks = _blocks("shell")
    assert len(blocks) == len(EDITS)
    root = _clone(tmp_path)
    outputs: list[str] = []
    for block, edits in zip(blocks, EDITS, strict=True):
        for edit in edits:
            edit(root)
        for line in filter(str.strip, block.splitlines()):
            argv = shlex.split(line, comments=True)
            assert argv[:2] == ["bus", "contracts"] or argv[:2] == ["bus", "asyncapi"], line
            expected = re.search(r"# exit (\d+)", line)
            done = run_bus(root, *argv[1:])
            output = done.stdout + done.stderr
            assert done.returncode == (int(expected.group(1)) if expected else 0), (line, output)
            assert "Traceback" not in output
            outputs.append(output)
    assert (root / "contracts" / "order.created" / "2.json").is_file()
    # The sample output is the first failing check's, line for line.
    failing = next(o for o in outputs if "error:" in o)
    for sample_line in _blocks("text")[0].splitlines():
        assert sample_line in failing.splitlines(), sample_line


def test_the_frozen_contracts_are_the_shipped_topologys() -> None:
    """contracts/ holds exactly the events of topology.yaml, unchanged: freeze after a change."""
    current = current_snapshots(load_topology(REPO / "topology.yaml"))
    history = frozen_history(REPO / "contracts")
    assert sorted(history) == sorted(current)
    for name, versions in history.items():
        assert versions[-1].version == (current[name].version or 1)
        assert compare_contracts(versions[-1], current[name]) == [], name
