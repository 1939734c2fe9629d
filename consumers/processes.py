"""Worker processes for ``bus consume --processes N``: start, forward signals, fail fast.

One Python process consumes up to one core. :class:`Supervisor` runs ``N`` copies of a worker
command, each consuming on a connection of its own (so the broker spreads a queue's deliveries
over them), and stays in the foreground in their place:

- Start: each worker gets its job as bytes on its standard input (:func:`write_job` /
  :func:`read_job`; the parent reads settings and topology once and passes them down, so the
  workers never read the environment). The pipe then stays open: a worker whose parent dies
  sees it close and stops itself gracefully (:func:`stop_when_parent_exits`).
- Stop: SIGTERM or SIGINT to the parent is forwarded to every worker, which shuts down as one
  ``bus consume`` does (running handlers finish within the grace period and are acked, nothing
  unstarted is lost); a second signal is forwarded too and ends their grace period. Workers run
  in their own process group, so a Ctrl-C in a terminal reaches them once, through the parent.
  A worker still running ``stop_timeout`` seconds after the first signal is killed (its unacked
  deliveries are redelivered by the broker).
- Failure: a worker that exits while no stop was asked (it crashed, was killed, or stopped
  because consuming cannot go on) is reported on one line naming it, its pid and its exit
  status; the others are then stopped gracefully, and :meth:`Supervisor.run` raises
  :class:`WorkerExitedError` (``bus consume`` exits non-zero). Workers are not restarted: a
  worker that fails at start-up would fail again at once, and a process manager (systemd,
  Kubernetes) that restarts the whole command sees the failure and applies its own back-off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from bus.errors import BusError

__all__ = [
    "STOP_MARGIN",
    "Supervisor",
    "WorkerExitedError",
    "read_job",
    "stop_when_parent_exits",
    "write_job",
]

log = logging.getLogger("consumers.processes")

STOP_MARGIN = 30.0
"""Seconds a worker may take beyond its grace period to exit after a stop, before it is killed."""

_LENGTH = struct.Struct(">Q")
_POLL = 0.05


class WorkerExitedError(BusError):
    """A worker process exited without being asked to, or failed while stopping."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def write_job(stream: IO[bytes], job: bytes) -> None:
    stream.write(_LENGTH.pack(len(job)) + job)
    stream.flush()


def _read_exactly(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    while size:
        part = os.read(fd, size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def read_job(fd: int = 0) -> bytes:
    """The job the parent wrote on this worker's standard input (unbuffered: the rest of the
    pipe is left to :func:`stop_when_parent_exits`)."""
    head = _read_exactly(fd, _LENGTH.size)
    if len(head) != _LENGTH.size:
        raise BusError("no job on standard input: workers are started by bus consume --processes")
    (length,) = _LENGTH.unpack(head)
    job = _read_exactly(fd, length)
    if len(job) != length:
        raise BusError("the job on standard input was cut short")
    return job


def stop_when_parent_exits(fd: int = 0) -> None:
    """SIGTERM this process (a graceful stop) when the parent's end of pipe ``fd`` closes.

    A daemon thread blocks in ``os.read`` (not in a buffered reader, whose lock would stop
    the interpreter from exiting while the thread waits).
    """

    def wait() -> None:
        while os.read(fd, 65536):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="parent watch", daemon=True).start()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen[bytes]
    reported: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.number} (pid {self.process.pid})"


@dataclass
class Supervisor:
    """Runs one worker process per job until a signal or a failure (see the module docstring)."""

    command: Sequence[str]
    jobs: Sequence[bytes]
    stop_timeout: float
    workers: list[_Worker] = field(default_factory=list)
    stopping_since: float | None = None
    failure: str | None = None

    def run(self) -> None:
        """Start the workers and supervise them; returns after a clean stop by signal."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._start()
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._reap()
        self._verdict()

    def _start(self) -> None:
        for number, job in enumerate(self.jobs, 1):
            if self.stopping_since is not None:
                break
            process = subprocess.Popen(  # a new process group: Ctrl-C reaches it via us only
                list(self.command), stdin=subprocess.PIPE, process_group=0
            )
            self.workers.append(_Worker(number, process))
            if process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):  # it died at once: reported below
                    write_job(process.stdin, job)
        log.info(
            "started %d consumer worker processes: pids %s",
            len(self.workers), ", ".join(str(w.process.pid) for w in self.workers),
        )  # fmt: skip

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stopping_since is None:
            log.info("%s: stopping %d worker(s) gracefully", name, len(self._running()))
            self.stopping_since = time.monotonic()
        else:
            log.warning("%s again: the workers end their grace period now", name)
        self._signal_all(signum)

    def _running(self) -> list[_Worker]:
        return [w for w in self.workers if w.process.poll() is None]

    def _signal_all(self, signum: int) -> None:
        for worker in self._running():
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                worker.process.send_signal(signum)

    def _supervise(self) -> None:
        while True:
            for worker in self.workers:
                code = worker.process.poll()
                if code is None or worker.reported:
                    continue
                worker.reported = True
                if self.stopping_since is None:
                    self.failure = f"{worker.name} {describe_exit(code)}"
                    log.error("%s; stopping the other workers", self.failure)
                    self.stopping_since = time.monotonic()
                    self._signal_all(signal.SIGTERM)
                elif code != 0:
                    log.error("%s %s while stopping", worker.name, describe_exit(code))
            if not self._running():
                return
            if (
                self.stopping_since is not None
                and time.monotonic() - self.stopping_since > self.stop_timeout
            ):
                for worker in self._running():
                    log.error("%s did not stop within %.0f s: killed", worker.name,
                              self.stop_timeout)  # fmt: skip
                    worker.process.kill()
            time.sleep(_POLL)

    def _reap(self) -> None:
        """Wait for every worker; kill those still running (only after an error in the parent
        itself): no worker outlives the command."""
        for worker in self._running():
            worker.process.kill()
        for worker in self.workers:
            worker.process.wait()
            if worker.process.stdin is not None:
                worker.process.stdin.close()

    def _verdict(self) -> None:
        total = len(self.jobs)
        if self.failure is not None:
            raise WorkerExitedError(
                f"consumer {self.failure} (of {total}) without a stop being asked; "
                "the other workers were stopped"
            )
        failed = [w for w in self.workers if w.process.returncode != 0]
        if failed:
            raise WorkerExitedError(
                "; ".join(f"{w.name} {describe_exit(w.process.returncode)}" for w in failed)
                + f" while stopping (of {total} workers)"
            )

