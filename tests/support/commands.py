"""Running commands as a user would in a terminal: ``python -m bus``, ``git``, any program.

:func:`run_bus`'s environment drops ``BUS_*`` (the command reads its own settings, not the test
session's) and ``GIT_*`` (the scratch repository is the one git works on, not the checkout's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["bus_argv", "git", "run", "run_bus"]


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``argv`` to its end (at most ``timeout`` s), its output captured as text; the exit code
    is left to the caller."""
    command = [str(arg) for arg in argv]
    return subprocess.run(
        command, env=env, cwd=cwd, input=stdin, timeout=timeout,
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def bus_argv(*args: str) -> list[str]:
    """``python -m bus ARGS`` with the test session's interpreter."""
    return [sys.executable, "-m", "bus", *args]


def run_bus(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bus ARGS`` in ``cwd``; output captured, the exit code left to the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUS_", "GIT_"))}
    return run(bus_argv(*args), cwd=cwd, env=env)


def git(cwd: Path, *args: str) -> None:
    """``git ARGS`` in ``cwd``; a failure raises."""
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)
