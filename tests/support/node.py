"""Node.js tools of ``tools/`` (pinned by their package-lock.json), installed once per checkout.

``npm ci`` runs the first time (a few seconds; npm's cache makes a re-install work offline).
Without Node.js and npm a test that needs them **fails** saying how to get them: a silently
skipped foreign-client check is no check.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.commands import run

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600


def node_and_npm() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "this test needs Node.js (>= 18) and npm on PATH "
            f"(node: {node or 'missing'}, npm: {npm or 'missing'}); install them, e.g. "
            "`apt-get install nodejs npm`, then rerun",
            pytrace=False,
        )
    return node, npm


def _installed(tool: Path) -> bool:
    """Every dependency of package.json is installed at the version the lock file pins."""
    lock = json.loads((tool / "package-lock.json").read_text(encoding="utf-8"))
    wanted = json.loads((tool / "package.json").read_text(encoding="utf-8"))["dependencies"]
    for name in wanted:
        manifest = tool / "node_modules" / name / "package.json"
        if not manifest.is_file():
            return False
        pinned = lock["packages"][f"node_modules/{name}"]["version"]
        if json.loads(manifest.read_text(encoding="utf-8"))["version"] != pinned:
            return False
    return True


def install_tool(name: str) -> tuple[str, Path]:
    """``npm ci`` in ``tools/NAME`` unless already installed; returns (node, tool folder)."""
    node, npm = node_and_npm()
    tool = ROOT / "tools" / name
    # Several test runs may share this checkout: one npm ci at a time.
    digest = hashlib.sha256(str(tool).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"amqp-bus-npm-{digest}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(tool):
            # --ignore-scripts: none of these packages needs an install script.
            result = run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"],
                cwd=tool,
                timeout=INSTALL_TIMEOUT,
            )
            if result.returncode != 0:
                pytest.fail(
                    f"npm ci in {tool} failed ({result.returncode}):\n{result.stderr[-3000:]}",
                    pytrace=False,
                )
    assert _installed(tool)
    return node, tool


def run_node(node: str, script: Path, *args: str, stdin: str = "", timeout: float = 120) -> str:
    """Run a Node script; its stdout, or the test fails with its stderr."""
    result = run([node, script, *args], stdin=stdin, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{script.name} failed ({result.returncode}): {result.stderr[-3000:]}")
    return result.stdout
