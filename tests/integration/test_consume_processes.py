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
from pathlib import Path

import pytest

from tests.support.consumer import (
    drain,
    load_declared,
    publish,
    queue_depth,
    read_trace,
    wait_until,
)

TOPOLOGY = """\
version: 1
exchanges:
  events: {type: topic}
queues:
  slow.q:
    dead_letter: true
events:
  order.created:
    {exchange: events, routing_key: order.created, model: "producers.events:OrderCreated"}
"""
BODY = '{"order_id": "o-1", "customer_id": "c-1", "total": "3.00"}'
REPO = Path(__file__).parents[2]


def batch(n: int) -> list[dict[str, object]]:
    return [
        {"routing_key": "slow.q", "body": BODY, "content_type": "application/json",
         "type": "order.created", "message_id": str(i)}
        for i in range(n)
    ]  # fmt: skip


def start(url: str, tmp_path: Path, delay: float, grace: float) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "BUS_AMQP_URL": url,
        "CONSUMER_TEST_LOG": str(tmp_path / "trace.log"),
        "CONSUMER_TEST_DELAY": str(delay),
    }
    command = [
        sys.executable, "-c", "from bus.cli import run; run()", "consume", "--processes", "2",
        "--app", "tests.support.consumer:slow_app", "-f", str(tmp_path / "topology.yaml"),
        "--grace", str(grace), "slow.q",
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)


def children(process: subprocess.Popen[str]) -> list[int]:
    path = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


async def stopped(process: subprocess.Popen[str]) -> str:
    _, stderr = await asyncio.to_thread(process.communicate, timeout=90)
    return stderr


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def kill(process: subprocess.Popen[str], pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture
def declared(bus_vhost_url: str, tmp_path: Path) -> str:
    load_declared(bus_vhost_url, tmp_path, TOPOLOGY)
    return bus_vhost_url


async def test_two_workers_consume_every_message_and_sigterm_stops_both(
    declared: str, tmp_path: Path
) -> None:
    total = 600
    await publish(declared, batch(total))
    process = start(declared, tmp_path, delay=0.05, grace=10)
    pids: list[int] = []
    try:
        await wait_until(lambda: len(children(process)) == 2, seconds=30)
        pids = children(process)
        await wait_until(lambda: queue_depth(declared, "slow.q")[1] == 2, seconds=30)
        trace = tmp_path / "trace.log"
        all_ids = {str(i) for i in range(total)}
        await wait_until(lambda: set(read_trace(trace)[1]) == all_ids, seconds=120)
        await wait_until(lambda: queue_depth(declared, "slow.q") == (0, 2), seconds=30)
        process.send_signal(signal.SIGTERM)
        stderr = await stopped(process)
    finally:
        kill(process, pids)
    assert process.returncode == 0, stderr
    assert "error" not in stderr.lower(), stderr
    assert "[worker 1/2]" in stderr
    assert "[worker 2/2]" in stderr
    assert not any(alive(pid) for pid in pids), "a worker outlived the command"
    assert queue_depth(declared, "slow.q") == (0, 0)
    assert drain(declared, "slow.q.dlq") == []


async def test_sigterm_with_handlers_running_in_both_workers_loses_nothing(
    declared: str, tmp_path: Path
) -> None:
    total = 300
    await publish(declared, batch(total))
    process = start(declared, tmp_path, delay=1.0, grace=20)
    trace = tmp_path / "trace.log"
    pids: list[int] = []
    try:
        await wait_until(lambda: queue_depth(declared, "slow.q")[1] == 2, seconds=30)
        pids = children(process)
        # Both workers run 50 handlers at a time: more than 50 started means both are busy.
        await wait_until(lambda: len(read_trace(trace)[0]) >= 80, seconds=30)
        started_before, finished_before = read_trace(trace)
        in_flight = set(started_before) - set(finished_before)
        assert len(in_flight) > 50
        process.send_signal(signal.SIGTERM)
        stderr = await stopped(process)
    finally:
        kill(process, pids)
    assert process.returncode == 0, stderr
    _, finished = read_trace(trace)
    remaining = [props.message_id for _, props, _ in drain(declared, "slow.q")]
    all_ids = {str(i) for i in range(total)}
    acked = all_ids - set(remaining)
    assert set(remaining) | set(finished) == all_ids, "lost messages"
    assert len(remaining) == len(set(remaining)), "a message is in the queue twice"
    assert acked <= set(finished), "acked without its handler finishing"
    assert in_flight <= set(finished), "a running handler did not finish within the grace"
    assert in_flight <= acked
    assert drain(declared, "slow.q.dlq") == []


async def test_a_killed_worker_stops_the_command_with_one_error_line(
    declared: str, tmp_path: Path
) -> None:
    total = 300
    await publish(declared, batch(total))
    process = start(declared, tmp_path, delay=0.5, grace=20)
    trace = tmp_path / "trace.log"
    pids: list[int] = []
    try:
        await wait_until(lambda: queue_depth(declared, "slow.q")[1] == 2, seconds=30)
        pids = children(process)
        await wait_until(lambda: len(read_trace(trace)[0]) >= 80, seconds=30)
        os.kill(pids[0], signal.SIGKILL)
        stderr = await stopped(process)
    finally:
        kill(process, pids)
    assert process.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: consumer worker 1 (pid {pids[0]}) was killed by SIGKILL (of 2) without a stop "
        "being asked; the other workers were stopped"
    ], stderr
    assert not alive(pids[1])
    _, finished = read_trace(trace)
    remaining = [props.message_id for _, props, _ in drain(declared, "slow.q")]
    assert set(remaining) | set(finished) == {str(i) for i in range(total)}, "lost messages"
