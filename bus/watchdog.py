"""Ends a throwaway broker when the process that started it dies, however it dies.

Fixtures stop their brokers on a normal exit and on SIGINT; a SIGTERM (Python's default: exit
without cleanup) or a SIGKILL of the test runner would leave the node or container running.
So every throwaway broker gets a watchdog: a small process in its own session that holds the
read end of a pipe whose write end only the starter holds. The pipe reaches end-of-file when
the starter exits for any reason; unless the starter said ``disarm`` first, the watchdog then
stops what it was told about:

- ``pid N``: SIGTERM, then SIGKILL after a grace period;
- ``pgid N``: the same for a process group;
- ``dir PATH``: a folder removed at the end; its ``node.pid`` (a RabbitMQ node's pid file,
  written after the start) is ended like ``pid``;
- ``container ID``: a Docker container, removed with its volumes.

Run as a script with ``python -I`` (standard library only, and docker-py for containers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Watchdog"]

_GRACE = 15.0


class Watchdog:
    """The starter's end: tell the watchdog what to end, then :meth:`disarm` after cleanup."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C to the runner's process group must not reach it.
            start_new_session=True,
            close_fds=True,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _send(self, line: str) -> None:
        if self._process is None or self._process.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self._process.stdin.write(line.encode() + b"\n")
            self._process.stdin.flush()

    def watch_pid(self, pid: int) -> None:
        self._send(f"pid {pid}")

    def watch_group(self, pgid: int) -> None:
        self._send(f"pgid {pgid}")

    def watch_dir(self, path: Path) -> None:
        self._send(f"dir {path}")

    def watch_container(self, container_id: str) -> None:
        self._send(f"container {container_id}")

    def disarm(self) -> None:
        """The starter cleaned up itself: the watchdog exits without touching anything."""
        if self._process is None:
            return
        self._send("disarm")
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end(pids: list[int], groups: list[int]) -> None:
    _send(signal.SIGTERM, pids, groups)
    deadline = time.monotonic() + _GRACE
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    _send(signal.SIGKILL, pids, groups)


def _send(signum: signal.Signals, pids: list[int], groups: list[int]) -> None:
    # A process or group already gone is what we want: nothing to report.
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signum)


def _remove_container(container_id: str) -> None:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().containers.get(container_id).remove(force=True, v=True)
    except Exception:  # no docker-py here: the CLI, when there is one
        if shutil.which("docker"):
            subprocess.run(
                ["docker", "rm", "-f", "-v", container_id], capture_output=True, check=False
            )


def main() -> None:
    pids: list[int] = []
    groups: list[int] = []
    dirs: list[Path] = []
    containers: list[str] = []
    # Ignore the signals a terminal or a runner's shutdown sends around: only EOF ends us.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    for raw in sys.stdin.buffer:
        kind, _, value = raw.decode(errors="replace").strip().partition(" ")
        if kind == "disarm":
            return
        if kind == "pid" and value.isdigit():
            pids.append(int(value))
        elif kind == "pgid" and value.isdigit():
            groups.append(int(value))
        elif kind == "dir" and value:
            dirs.append(Path(value))
        elif kind == "container" and value:
            containers.append(value)
    # End of file without "disarm": the starter died.
    for folder in dirs:
        with contextlib.suppress(OSError, ValueError):
            pids.append(int((folder / "node.pid").read_text().strip()))
    _end(pids, groups)
    for container_id in containers:
        _remove_container(container_id)
    for folder in dirs:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
