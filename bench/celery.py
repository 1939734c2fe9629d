"""Celery worker throughput: our topology app vs plain Celery (cases of ``python -m bench``).

    .venv/bin/python -m bench.celery [suite options]   # = python -m bench --only celery

Each case: fill the queue with N ``noop`` tasks (raw protocol-2 messages, persistent), start a
worker with 2 processes (``--without-gossip --without-mingle --without-heartbeat``), and time
first to last task completion; every completion appends a timestamp to a file (the same cost
in both cases). Both apps use ``task_acks_late`` (as the baseline in
docs/performance-baseline.md does);
ours adds everything of :mod:`bus.celery_app` (pre-flight check, confirmed publishing, no
delayed delivery) on a classic topology queue with a DLX, once with the topology's default
prefetch multiplier (4, as Celery's: ``ours``) and once with 1 (``ours_p1``, what a queue of
long tasks sets), which shows the cost of that choice apart from the cost of the layer. Plain
Celery keeps its defaults on an equivalent classic queue that it declares itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pika
from celery import Celery

from bus.celery_app import build_app, worker_argv
from bus.celery_message import build_task_message, celery_route
from bus.settings import BusSettings
from bus.topology import ExpandedTopology, parse_topology

TOPOLOGY = """
version: 1
exchanges:
  tasks: {type: topic}
queues:
  bench.ours:
    dead_letter: true
    celery: true
    bindings: [{exchange: tasks, routing_key: bench.ours}]
"""
PLAIN_QUEUE = "bench.plain"
TASK = "bench.celery.noop"
CASES = ("ours", "ours_p1", "plain")


def _out_fd() -> int | None:
    path = os.environ.get("BENCH_CELERY_OUT")
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if path else None


def _ours(prefetch_multiplier: int | None) -> Celery:
    url = os.environ.get("BENCH_CELERY_URL", "amqp://guest:guest@localhost:5672/")
    return build_app(
        parse_topology(TOPOLOGY, "bench-celery.yaml"),
        settings=BusSettings(amqp_url=url),
        prefetch_multiplier=prefetch_multiplier,
    )


def _plain() -> Celery:
    app = Celery("plain")
    app.conf.update(
        broker_url=os.environ.get("BENCH_CELERY_URL", "amqp://guest:guest@localhost:5672/"),
        task_default_queue=PLAIN_QUEUE,
        task_acks_late=True,
    )
    return app


# The worker processes import this module: ``celery -A bench.celery:ours_app worker``.
ours_app = _ours(None)  # the topology's default
ours_p1_app = _ours(1)
plain_app = _plain()
_fd: list[int | None] = []


def _noop() -> None:
    if not _fd:
        _fd.append(_out_fd())
    fd = _fd[0]
    if fd is not None:
        os.write(fd, f"{time.time():.6f}\n".encode())


for _app in (ours_app, ours_p1_app, plain_app):
    _app.task(name=TASK)(_noop)


def _declare(url: str, topology: ExpandedTopology) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for x in topology.exchanges.values():
            channel.exchange_declare(x.name, x.type, durable=x.durable, arguments=x.arguments)
        for q in topology.queues.values():
            channel.queue_declare(q.name, durable=q.durable, arguments=q.arguments)
        for b in topology.bindings:
            channel.queue_bind(b.destination, b.source, b.routing_key, b.arguments or None)
        # What plain Celery declares for its default queue, so it can be filled beforehand.
        channel.exchange_declare(PLAIN_QUEUE, "direct", durable=True)
        channel.queue_declare(PLAIN_QUEUE, durable=True)
        channel.queue_bind(PLAIN_QUEUE, PLAIN_QUEUE, PLAIN_QUEUE)
    finally:
        connection.close()


def _fill(url: str, exchange: str, key: str, queue: str, n: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_purge(queue)
        for _ in range(n):
            msg = build_task_message(TASK)
            channel.basic_publish(exchange, key, msg.body, msg.pika_properties())
        while channel.queue_declare(queue, passive=True).method.message_count < n:
            time.sleep(0.05)
    finally:
        connection.close()


def _run_case(case: str, url: str, n: int, pool: str, out: Path, ours_key: str) -> float:
    if case.startswith("ours"):
        _fill(url, "tasks", ours_key, "bench.ours", n)
        queue = "bench.ours"
    else:
        _fill(url, PLAIN_QUEUE, PLAIN_QUEUE, PLAIN_QUEUE, n)
        queue = PLAIN_QUEUE
    out.write_text("")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        f"bench.celery:{case}_app",
        *worker_argv([queue], concurrency=2, pool=pool, loglevel="WARNING"),
    ]
    env = dict(os.environ, BENCH_CELERY_URL=url, BENCH_CELERY_OUT=str(out))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{case} worker exited: {proc.stderr and proc.stderr.read()!r}")
            if out.stat().st_size and out.read_text().count("\n") >= n:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{case}: not all {n} tasks ran within 120 s")
    finally:
        proc.terminate()
        proc.wait(60)
        if proc.stderr is not None:
            proc.stderr.close()
    stamps = sorted(float(line) for line in out.read_text().split())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def worker(url: str, case: str, tasks: int, pool: str) -> dict[str, Any]:
    """One case: fill the queue, start a worker with 2 processes, time first to last task."""
    topology = parse_topology(TOPOLOGY, "bench-celery.yaml").expanded
    _declare(url, topology)
    ours_key = celery_route(topology, "bench.ours").routing_key
    out = Path(f"/tmp/bus-bench-celery-{uuid.uuid4().hex[:8]}.stamps")
    try:
        rate = _run_case(case, url, tasks, pool, out, ours_key)
    finally:
        out.unlink(missing_ok=True)
    return {"tasks": tasks, "tasks_s": rate}


if __name__ == "__main__":
    from bench.suite import main

    sys.exit(main(["--only", "celery", *sys.argv[1:]]))
