"""Running ``python -m bus`` and ``git`` in a scratch folder, as a user would in a terminal.

The environment drops ``BUS_*`` (the command reads its own settings, not the test session's)
and ``GIT_*`` (the scratch repository is the one git works on, not the checkout's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["git", "run_bus"]


def run_bus(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bus ARGS`` in ``cwd``; output captured, the exit code left to the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUS_", "GIT_"))}
    return subprocess.run(
        [sys.executable, "-m", "bus", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def git(cwd: Path, *args: str) -> None:
    """``git ARGS`` in ``cwd``; a failure raises."""
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)
