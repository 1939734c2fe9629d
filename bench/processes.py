"""The process curve: consume and publish with 1, 2 and 4 processes (``--only processes``).

One Python process uses at most one core; these cases show how far more processes go, what
each message costs as they are added, and how busy the broker gets on the way (its ceiling).

``consume xN``
    ``messages`` pre-filled persistent 256-byte ``order.created`` messages (as the consume
    group) drained by ``bus consume --processes N`` (the command itself: N workers, one
    connection each, prefetch 100, a handler typed with the pydantic model). Every worker's
    handler waits at a gate until all N consumers are attached, so the clock starts with every
    worker ready; it stops at the last handler completion (each worker reports its count, last
    completion time and CPU through a file in a scratch folder). Then the command gets SIGTERM
    and must exit 0, and the queue must be empty.
``publish xN``
    N processes, each with one ``producers.Publisher`` (window 1000, confirms, mandatory),
    publish to one durable classic queue for ``seconds`` from a common start; the clock stops
    at the last confirm of the slowest.

Figures: ``msg_s`` (all processes together), ``cpu_per_10k`` (CPU seconds of the client
processes per 10,000 messages: what one message costs as processes are added) and, when the
broker runs on this host (a ``beam.smp`` process is visible), ``broker_cores`` (its CPU
seconds per second over the timed window: at the machine's core count minus the clients' it is
the ceiling). Ratios xN/x1 are paired per round.

    .venv/bin/python -m bench --only processes [--process-counts 1,2,4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._harness import BODY, cpu_seconds, prepare_queue, queue_depth, until
from producers.events import OrderCreated

QUEUE = "bench.consume"  # the consume group's queue, filled by bench.consume.fill
PUBLISH_QUEUE = "bench.processes"
STATUS_DIR = "BENCH_PROCESSES_DIR"
_TICK = 0.02


def group(opts: argparse.Namespace) -> Any:
    from bench.suite import Group

    counts = opts.process_counts
    return Group(
        "processes",
        f"process curve, msg/s of all processes together ({opts.messages:,} messages consumed "
        f"by bus consume --processes N, prefetch 100, pydantic validation; publish: N "
        f"processes with one Publisher each, window 1000, {opts.seconds:g} s); cpu_per_10k: "
        "client CPU s per 10,000 messages; broker_cores: the local broker's CPU",
        "msg_s",
        "msg/s",
        columns=("msg_s", "cpu_per_10k", "broker_cores"),
        ratios=tuple((f"x{n}", f"x{counts[0]}") for n in counts[1:]),
        digits=2,
    )


def cases(opts: argparse.Namespace) -> list[Any]:
    from bench.suite import Case

    out = []
    for n in opts.process_counts:
        out.append(Case("processes", "consume", f"x{n}", "bench.processes:consume",
                        {"messages": opts.messages, "processes": n}))  # fmt: skip
    for n in opts.process_counts:
        out.append(Case("processes", "publish", f"x{n}", "bench.processes:publish",
                        {"seconds": opts.seconds, "processes": n}))  # fmt: skip
    return out


# -- the broker's CPU, when it runs here ------------------------------------------------------
def _broker_pid(url: str) -> int | None:
    """The pid of the ``beam.smp`` on this host that listens on the URL's port, if any."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        return None
    port = f"{parts.port or 5672:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[1].endswith(":" + port) and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if (
                entry.name.isdigit()
                and (entry / "comm").read_text().strip() == "beam.smp"
                and any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir())
            ):
                return int(entry.name)
    return None


def _cpu_of(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _figures(count: int, elapsed: float, cpu: float, broker: tuple[float | None, float | None]
             ) -> dict[str, Any]:  # fmt: skip
    result = {"messages": count, "seconds": elapsed, "msg_s": count / elapsed,
              "cpu_per_10k": cpu / count * 10_000}  # fmt: skip
    if broker[0] is not None and broker[1] is not None:
        result["broker_cores"] = (broker[1] - broker[0]) / elapsed
    return result


# -- consume ----------------------------------------------------------------------------------
def _app() -> Any:
    """The app ``bus consume --processes N --app bench.processes:app`` runs in each worker."""
    import asyncio

    from consumers import ConsumerApp

    app = ConsumerApp("bench-processes", grace=5)
    folder = Path(os.environ.get(STATUS_DIR, "."))
    state = {"count": 0, "last": 0.0, "cpu_go": 0.0}
    gate: list[asyncio.Task[None]] = []

    async def report() -> None:
        path = folder / f"{os.getpid()}.json"
        while True:
            status = dict(state, cpu=cpu_seconds())
            path.with_suffix(".tmp").write_text(json.dumps(status))
            path.with_suffix(".tmp").replace(path)
            await asyncio.sleep(_TICK)

    async def opened() -> None:
        # Polling on purpose: the go signal is a file the bench writes from another process.
        while not (folder / "go").exists():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        state["cpu_go"] = cpu_seconds()
        asyncio.get_running_loop().create_task(report())

    @app.handler(QUEUE, prefetch=100)
    async def handle(event: OrderCreated) -> None:
        if not gate:
            gate.append(asyncio.get_running_loop().create_task(opened()))
        if not gate[0].done():
            await gate[0]
        state["count"] += 1
        state["last"] = time.monotonic()

    return app


def _handled(folder: Path) -> int:
    return int(sum(status["count"] for status in _statuses(folder)))


def _statuses(folder: Path) -> list[dict[str, float]]:
    out = []
    for path in folder.glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # being replaced right now: read it next time
            continue
    return out


def consume(url: str, messages: int, processes: int) -> dict[str, Any]:
    from bench.consume import fill

    fill(url, messages)
    with tempfile.TemporaryDirectory() as scratch, _command(url, Path(scratch), processes) as run:
        folder = Path(scratch)
        run.wait_until(lambda: _consumers(url) >= processes, 120, "the workers did not attach")
        broker = _broker_pid(url)
        broker_start = _cpu_of(broker)
        started = time.monotonic()
        (folder / "go").write_text("")
        run.wait_until(lambda: _handled(folder) >= messages, 600, "consuming stopped")
        broker_end = _cpu_of(broker)
        time.sleep(3 * _TICK)  # one more report from every worker, after its last message
        statuses = _statuses(folder)
        run.stop()
    if queue_depth(url, QUEUE):
        raise RuntimeError("messages left in the queue after the run")
    elapsed = max(s["last"] for s in statuses) - started
    cpu = sum(s["cpu"] - s["cpu_go"] for s in statuses)
    return _figures(messages, elapsed, cpu, (broker_start, broker_end))


class _Command:
    """``bus consume --processes N`` running the bench app, in the background."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def wait_until(self, condition: Any, seconds: float, failure: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{failure}: {self.process.communicate()[1][-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as a process manager stops it: it must exit 0."""
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=60)
        if self.process.returncode != 0:
            raise RuntimeError(f"bus consume exited {self.process.returncode}: {stderr[-2000:]}")


@contextlib.contextmanager
def _command(url: str, folder: Path, processes: int) -> Iterator[_Command]:
    from bench.consume import TOPOLOGY

    topology = folder / "topology.yaml"
    topology.write_text(TOPOLOGY)
    env = {**os.environ, "BUS_AMQP_URL": url, STATUS_DIR: str(folder)}
    command = [sys.executable, "-m", "bus", "consume", "--processes", str(processes),
               "--app", "bench.processes:app", "-f", str(topology), QUEUE]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        yield _Command(process)
    finally:
        if process.poll() is None:  # the run failed: no worker may outlive it
            process.kill()
        process.communicate()


def _consumers(url: str) -> int:
    import pika

    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        ok = connection.channel().queue_declare(QUEUE, passive=True)
    count: int = ok.method.consumer_count
    return count


# -- publish ----------------------------------------------------------------------------------
def _publisher(url: str, seconds: float, ready: Any, results: Any) -> None:
    """One publisher process: connect and warm up, wait for the others, publish, report."""
    import asyncio

    from bus.settings import BusSettings
    from producers import Outgoing, Publisher

    async def run() -> None:
        message = Outgoing("", PUBLISH_QUEUE, BODY)
        async with Publisher.connect(BusSettings(amqp_url=url), window=1000) as publisher:
            warm = await publisher.publish_many([message] * 300)
            assert all(r.ok for r in warm)
            await asyncio.to_thread(ready.wait)
            cpu = cpu_seconds()
            start = time.monotonic()
            deadline = time.perf_counter() + seconds
            sent = await publisher.publish_many(message for _ in until(deadline))
            end = time.monotonic()
            failed = sum(not r.ok for r in sent)
            results.put((len(sent), failed, start, end, cpu_seconds() - cpu))

    asyncio.run(run())


def publish(url: str, seconds: float, processes: int) -> dict[str, Any]:
    prepare_queue(url, PUBLISH_QUEUE)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)
    results = context.Queue()
    workers = [
        context.Process(target=_publisher, args=(url, seconds, ready, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        ready.wait(timeout=120)  # every publisher connected and warmed up
        broker = _broker_pid(url)
        broker_start = _cpu_of(broker)
        runs = [results.get(timeout=seconds + 120) for _ in workers]
        broker_end = _cpu_of(broker)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    prepare_queue(url, PUBLISH_QUEUE)
    failed = sum(run[1] for run in runs)
    if failed:
        raise RuntimeError(f"{failed} publishes failed")
    count = sum(run[0] for run in runs)
    elapsed = max(run[3] for run in runs) - min(run[2] for run in runs)
    return _figures(count, elapsed, sum(run[4] for run in runs), (broker_start, broker_end))


def __getattr__(name: str) -> Any:
    # ``bench.processes:app`` is built on first use, so that the suite's own process (which
    # imports this module for its cases) never imports the consumer runtime.
    if name == "app":
        value = globals()["app"] = _app()
        return value
    raise AttributeError(name)


if __name__ == "__main__":
    from bench.suite import main

    sys.exit(main(["--only", "processes", *sys.argv[1:]]))
