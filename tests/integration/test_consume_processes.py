"""``bus consume --processes 2`` on the real broker: two workers, one queue, nothing lost.

- Both workers consume (two consumers at the broker, two child processes); every message is
  handled at least once; SIGTERM to the command stops both and it exits 0.
- SIGTERM with handlers running in both workers: the command exits 0, every message is either
  acked after its handler finished or still in the queue, and the running ones finished.
- A worker killed with SIGKILL: the command names it on one ``error:`` line, stops the other
  one gracefully and exits 1; the killed worker's deliveries go back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.test_consumer_shutdown import TOPOLOGY, batch
from tests.support.consumer import drain, load_declared, publish, queue_depth, read_trace
from tests.support.consumer import wait_until as until

REPO = Path(__file__).parents[2]


@dataclass
class Command:
    """``bus consume --processes 2`` running slow_app (tests.support.consumer) on slow.q."""

    url: str
    trace: Path
    process: subprocess.Popen[str]
    workers: list[int] = field(default_factory=list)
    stderr: str = ""

    async def busy(self) -> set[str]:
        """Once both workers run handlers (each runs 50 at a time, so 80 started means both):
        the ids whose handler is running."""
        await until(lambda: len(read_trace(self.trace)[0]) >= 80, seconds=30)
        started, finished = read_trace(self.trace)
        return set(started) - set(finished)

    async def stop(self, sig: signal.Signals | None = signal.SIGTERM) -> None:
        if sig is not None:
            self.process.send_signal(sig)
        _, self.stderr = await asyncio.to_thread(self.process.communicate, timeout=90)

    def settled(self, total: int) -> tuple[set[str], list[str], list[str]]:
        """(acked ids, ids still in the queue, ids whose handler finished); fails if any is
        lost: every message is acked after its handler finished or is still in the queue."""
        _, finished = read_trace(self.trace)
        remaining = [props.message_id or "" for _, props, _ in drain(self.url, "slow.q")]
        all_ids = {str(i) for i in range(total)}
        assert set(remaining) | set(finished) == all_ids, "lost messages"
        assert len(remaining) == len(set(remaining)), "a message is in the queue twice"
        acked = all_ids - set(remaining)
        assert acked <= set(finished), "acked without its handler finishing"
        return acked, remaining, finished


def _read(path: str) -> str:
    return Path(path).read_text()


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@contextlib.asynccontextmanager
async def running(
    url: str, tmp_path: Path, total: int, delay: float, grace: float
) -> AsyncIterator[Command]:
    """Publish ``total`` messages, start the command, wait until both workers consume."""
    load_declared(url, tmp_path, TOPOLOGY)
    await publish(url, batch(total))
    trace = tmp_path / "trace.log"
    env = {**os.environ, "BUS_AMQP_URL": url, "CONSUMER_TEST_LOG": str(trace),
           "CONSUMER_TEST_DELAY": str(delay)}  # fmt: skip
    argv = [
        sys.executable, "-c", "from bus.cli import run; run()", "consume", "--processes", "2",
        "--app", "tests.support.consumer:slow_app", "-f", str(tmp_path / "topology.yaml"),
        "--grace", str(grace), "slow.q",
    ]  # fmt: skip
    # A real process, so that signals arrive the way a supervisor sends them.
    process = subprocess.Popen(  # noqa: ASYNC220
        argv, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    command = Command(url, trace, process)
    children = f"/proc/{process.pid}/task/{process.pid}/children"
    try:
        await until(lambda: queue_depth(url, "slow.q")[1] == 2, seconds=30)
        command.workers = [int(pid) for pid in (await asyncio.to_thread(_read, children)).split()]
        assert len(command.workers) == 2
        yield command
    finally:
        for pid in command.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.communicate()


async def test_two_workers_consume_every_message_and_sigterm_stops_both(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    total = 600
    all_ids = {str(i) for i in range(total)}
    async with running(bus_vhost_url, tmp_path, total, delay=0.05, grace=10) as command:
        await until(lambda: set(read_trace(command.trace)[1]) == all_ids, seconds=120)
        await until(lambda: queue_depth(bus_vhost_url, "slow.q") == (0, 2), seconds=30)
        await command.stop()
    assert command.process.returncode == 0, command.stderr
    assert "error" not in command.stderr.lower(), command.stderr
    assert "[worker 1/2]" in command.stderr
    assert "[worker 2/2]" in command.stderr
    assert not any(alive(pid) for pid in command.workers), "a worker outlived the command"
    assert queue_depth(bus_vhost_url, "slow.q") == (0, 0)
    assert drain(bus_vhost_url, "slow.q.dlq") == []


async def test_sigterm_with_handlers_running_in_both_workers_loses_nothing(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    async with running(bus_vhost_url, tmp_path, 300, delay=1.0, grace=20) as command:
        in_flight = await command.busy()
        assert len(in_flight) > 50
        await command.stop()
    assert command.process.returncode == 0, command.stderr
    acked, _, finished = command.settled(300)
    assert in_flight <= set(finished), "a running handler did not finish within the grace"
    assert in_flight <= acked
    assert drain(bus_vhost_url, "slow.q.dlq") == []


async def test_a_killed_worker_stops_the_command_with_one_error_line(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    async with running(bus_vhost_url, tmp_path, 300, delay=0.5, grace=20) as command:
        await command.busy()
        killed, other = command.workers
        os.kill(killed, signal.SIGKILL)
        await command.stop(None)
    assert command.process.returncode == 1, command.stderr
    errors = [line for line in command.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: consumer worker 1 (pid {killed}) was killed by SIGKILL (of 2) without a stop "
        "being asked; the other workers were stopped"
    ], command.stderr
    assert not alive(other)
    command.settled(300)
