"""The fault scenarios, shared by pytest (small N) and ``python -m tests.faults.report``.

Every scenario runs our own code (``producers.Publisher`` / ``SyncPublisher``,
``consumers.ConsumerApp`` in-process or as a ``bus consume`` process, a ``bus worker`` Celery
worker) against a throwaway node (:class:`Lab`, never the shared broker), in a fresh vhost
with :data:`tests.faults.app.TOPOLOGY` applied by ``bus apply``'s code. Each message carries a
unique ``message_id``; a :class:`~tests.faults.checker.TotalQueue` records every publish as
sent, then confirmed or failed (raised), and every delivery a handler finished. Pass = nothing
confirmed is lost, nothing unexpected arrives, every publish call confirmed or raised;
duplicates are counted. Scenario-specific guarantees are asserted inside the scenario (an
``AssertionError`` makes its row FAIL in the report).

A scenario is ``async def scenario(lab, n, outcome) -> None`` filling ``outcome``;
:data:`SCENARIOS` lists them in the order the report runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pika

from bus.broker.apply import apply
from bus.broker.management import ManagementClient
from bus.errors import (
    BusError,
    MessageTooLargeError,
    PublishTimeoutError,
    UnroutableError,
)
from bus.node import LocalNode
from bus.settings import BusSettings, with_vhost
from bus.topology import LoadedTopology, load_topology
from consumers import ConsumerApp, Message
from producers import Outgoing, Publisher, SyncPublisher
from tests.faults.app import TOPOLOGY, Probe
from tests.faults.checker import TotalQueue
from tests.faults.proxy import FaultProxy
from tests.faults.worker import BIN, REPO, BusWorker
from tests.support.amqp import drain
from tests.support.consumer import queue_depth

__all__ = ["NODE_CONFIG", "SCENARIOS", "Lab", "Outcome", "default_n", "run_scenario"]

log = logging.getLogger("tests.faults")


# Node-wide settings only a throwaway node may have (never the shared broker).
MAX_MESSAGE_SIZE = 1024 * 1024
NODE_CONFIG = f"max_message_size = {MAX_MESSAGE_SIZE}\n"

# aio-pika reconnects every 5 s by default; 1 s keeps the suite short and changes nothing else.
RECONNECT = 1.0
# A publish deadline long enough to ride out one reconnect.
DEADLINE = 10.0
# Any wait longer than this is a hang: the scenario fails instead of blocking the run.
HANG = 120.0
# A stream of N publishes is paced to last about this long, so that faults hit it mid-way.
STREAM_SECONDS = 8.0
EVENT = "faults.probe"


def default_n() -> int:
    """N for pytest: ``$BUS_FAULTS_N``, else 500 (the report defaults to 10,000)."""
    return int(os.environ.get("BUS_FAULTS_N", "500"))


# -- outcome -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    scenario: str
    check: TotalQueue = field(default_factory=TotalQueue)
    facts: dict[str, object] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def row(self) -> dict[str, object]:
        row = self.check.row(self.scenario)
        if self.error is not None:
            row["result"] = "FAIL"
        row["seconds"] = round(self.seconds, 1)
        return row


# -- the lab: one throwaway node, fresh vhosts ---------------------------------------------------
class Lab:
    """A throwaway node with the management plugin, handing out vhosts with the topology."""

    def __init__(self, node: LocalNode, workdir: Path) -> None:
        self.node = node
        self.workdir = workdir
        self.topology_file = workdir / "topology.yaml"
        self.topology_file.write_text(TOPOLOGY)
        self.topology: LoadedTopology = load_topology(self.topology_file)
        self.management = ManagementClient(node.management_url, "guest", "guest")

    @classmethod
    @contextlib.contextmanager
    def running(cls, workdir: Path) -> Iterator[Lab]:
        node = LocalNode(prefix="bus-faults", config=NODE_CONFIG, management=True)
        try:
            node.start()
            lab = cls(node, workdir)
            try:
                yield lab
            finally:
                lab.management.close()
        finally:
            node.stop()

    def url(self, vhost: str) -> str:
        return with_vhost(self.node.amqp_url, vhost)

    def settings(self, url: str, **options: Any) -> BusSettings:
        return BusSettings(
            amqp_url=url,
            management_url=self.node.management_url,
            topology=self.topology_file,
            **options,
        )

    @contextlib.contextmanager
    def vhost(self) -> Iterator[str]:
        name = f"faults-{uuid.uuid4().hex[:10]}"
        self.management.create_vhost(name, description="amqp-bus fault scenario")
        self.management.set_permissions(name, "guest")
        try:
            apply(self.topology, self.settings(self.url(name)), vhost=name)
            yield name
        finally:
            with contextlib.suppress(BusError):
                self.management.delete_vhost(name)

    @contextlib.contextmanager
    def proxied(self) -> Iterator[tuple[str, FaultProxy, str, str]]:
        """A vhost of its own and a fault proxy to the node: ``(vhost, proxy, direct, url)``,
        ``direct`` the vhost's URL past the proxy, ``url`` through it (robust)."""
        with self.vhost() as vhost, FaultProxy("127.0.0.1", self.node.amqp_port) as proxy:
            yield vhost, proxy, self.url(vhost), robust(proxy.url(vhost=vhost))

    def ctl(self, *args: str) -> str:
        return self.node.ctl(*args)


def robust(url: str) -> str:
    """The URL with aio-pika's reconnect interval set to :data:`RECONNECT`."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}reconnect_interval={RECONNECT:g}"


# -- broker state, read with plain pika (not the code under test) -------------------------------


def queue_exists(url: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    finally:
        if connection.is_open:
            connection.close()


async def wait_until(
    condition: Callable[[], bool], what: str, seconds: float = HANG, poll: float = 0.05
) -> float:
    """Poll ``condition``; returns the seconds it took, raises AssertionError past ``seconds``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > seconds:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        await asyncio.sleep(poll)
    return loop.time() - start


async def wait_broker(
    condition: Callable[[], bool], what: str, seconds: float = HANG, poll: float = 0.2
) -> float:
    """:func:`wait_until` for a condition that reads the broker (run in a thread)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await asyncio.to_thread(condition):
        if loop.time() - start > seconds:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        await asyncio.sleep(poll)
    return loop.time() - start


class LogWatch(logging.Handler):
    """Collects log lines of the clients and our runtime during a scenario."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name}: {record.getMessage()}")
        except Exception:  # a client's own log call whose argument repr raises
            self.lines.append(f"{record.name}: {record.msg}")

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    @classmethod
    @contextlib.contextmanager
    def installed(cls) -> Iterator[LogWatch]:
        watch = cls()
        loggers = [logging.getLogger(name) for name in ("consumers", "aio_pika", "aiormq")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(watch)
            if lg.getEffectiveLevel() > logging.INFO:
                lg.setLevel(logging.INFO)
        try:
            yield watch
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.removeHandler(watch)
                lg.setLevel(level)

    def assert_no_stale_acks(self) -> None:
        stale = [line for line in self.lines if "unknown delivery tag" in line]
        assert not stale, f"a stale ack reached a new channel: {stale[:3]}"


# -- publishing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One probe to publish, identified by its ``message_id``."""

    message_id: str
    routing_key: str
    body: Probe | bytes
    exchange: str = "faults"
    persistent: bool = True
    event_type: str | None = EVENT

    def outgoing(self) -> Outgoing:
        """The probe as :meth:`Publisher.publish_many` takes it."""
        return Outgoing(
            self.exchange, self.routing_key, self.body,
            event_type=self.event_type, message_id=self.message_id, persistent=self.persistent,
        )  # fmt: skip


def probes(
    n: int, keys: Sequence[str] = ("quorum",), prefix: str = "m", exchange: str = "faults"
) -> list[Item]:
    """``n`` uniquely identified probes, spread round-robin over ``keys``."""
    return [
        Item(f"{prefix}-{i}", keys[i % len(keys)], Probe(n=i, run=prefix), exchange)
        for i in range(n)
    ]


@dataclass
class Stream:
    """Publishes ``items`` with ``window`` concurrent :meth:`Publisher.publish` calls.

    Paced to about ``rate`` messages per second (by default enough to last
    ``STREAM_SECONDS``) so that a fault lands mid-stream; records every call in ``check``
    (sent before the call; confirmed or failed after it) and the type of every error.
    :meth:`at` gives an event set once ``count`` messages were sent.
    """

    publisher: Publisher
    check: TotalQueue
    items: Sequence[Item]
    _: KW_ONLY
    window: int = 100
    rate: float | None = None
    deadline: float = DEADLINE
    errors: Counter[str] = field(default_factory=Counter, init=False)
    slowest: float = field(default=0.0, init=False)
    _next: int = field(default=0, init=False)
    _marks: list[tuple[int, asyncio.Event]] = field(default_factory=list, init=False)

    @property
    def pace(self) -> float:
        """Messages per second."""
        return self.rate if self.rate is not None else max(100.0, len(self.items) / STREAM_SECONDS)

    def at(self, count: int) -> asyncio.Event:
        event = asyncio.Event()
        if self._next >= count:
            event.set()
        else:
            self._marks.append((count, event))
        return event

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def worker() -> None:
            while self._next < len(self.items):
                index = self._next
                self._next += 1
                slot = start + index / self.pace
                if slot > loop.time():
                    await asyncio.sleep(slot - loop.time())
                item = self.items[index]
                self.check.on_sent(item.message_id)
                for mark in [m for m in self._marks if m[0] <= index + 1]:
                    mark[1].set()
                    self._marks.remove(mark)
                began = loop.time()
                try:
                    await self.publisher.publish(
                        item.exchange, item.routing_key, item.body, confirm_timeout=self.deadline,
                        event_type=item.event_type, message_id=item.message_id,
                        persistent=item.persistent,
                    )  # fmt: skip
                except Exception as exc:
                    self.errors[type(exc).__name__] += 1
                    self.check.on_failed(item.message_id)
                    if not isinstance(exc, BusError):
                        raise AssertionError(
                            f"publish raised {type(exc).__name__}, not a BusError: {exc}"
                        ) from exc
                else:
                    self.check.on_confirmed(item.message_id)
                self.slowest = max(self.slowest, loop.time() - began)

        async with asyncio.timeout(HANG + len(self.items) / self.pace):
            async with asyncio.TaskGroup() as group:
                for _ in range(self.window):
                    group.create_task(worker())
        for _, event in self._marks:
            event.set()
        # A call past its deadline by more than scheduling slack means it hung.
        assert self.slowest <= self.deadline + 5, (
            f"a publish took {self.slowest:.1f}s, past its {self.deadline:g}s deadline"
        )


async def publish_all(
    publisher: Publisher,
    check: TotalQueue,
    items: Sequence[Item],
    *,
    deadline: float = DEADLINE,
    window: int | None = None,
) -> Counter[str]:
    """:meth:`Publisher.publish_many` over ``items``; returns the error types seen."""
    for item in items:
        check.on_sent(item.message_id)
    outgoing = [item.outgoing() for item in items]
    async with asyncio.timeout(HANG + deadline * (1 + len(items) / (window or 1000))):
        results = await publisher.publish_many(outgoing, window=window, confirm_timeout=deadline)
    errors: Counter[str] = Counter()
    for item, result in zip(items, results, strict=True):
        assert result.message_id == item.message_id
        if result.ok:
            check.on_confirmed(item.message_id)
        else:
            errors[type(result.error).__name__] += 1
            check.on_failed(item.message_id)
            assert isinstance(result.error, BusError), repr(result.error)
    return errors


# -- consuming ----------------------------------------------------------------------------------
@dataclass
class Collector:
    """A ConsumerApp whose handlers record each finished delivery in ``check``."""

    check: TotalQueue
    queues: Sequence[str]
    name: str = "faults"
    prefetch: int = 50
    concurrency: int = 4
    delay: float = 0.0
    redelivered: int = 0
    on_message: Callable[[Probe, Message], None] | None = None
    app: ConsumerApp = field(init=False)

    def __post_init__(self) -> None:
        self.app = ConsumerApp(self.name, grace=10)
        for queue in self.queues:
            self.app.handler(queue, prefetch=self.prefetch, concurrency=self.concurrency)(
                self._handle
            )

    async def _handle(self, event: Probe, message: Message) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.on_message is not None:
            self.on_message(event, message)
        if message.redelivered:
            self.redelivered += 1
        self.check.on_consumed(message.message_id or "")

    @contextlib.asynccontextmanager
    async def serve(self, lab: Lab, url: str, **options: Any) -> AsyncIterator[Any]:
        async with self.app.serve(
            lab.settings(url, **options), topology=lab.topology.expanded, queues=self.queues
        ) as runtime:
            yield runtime
            # Every handler worker still running: none died of an exception on the way.
            dead = [t for c in runtime.consumers for t in c.workers if t.done()]
            assert not dead, f"{len(dead)} consumer worker(s) ended during the scenario"
        assert runtime.fatal is None, f"consumer stopped: {runtime.fatal}"


async def settle(check: TotalQueue, url: str, queues: Sequence[str], seconds: float = HANG) -> None:
    """Wait until every confirmed message was consumed and the queues hold nothing ready."""
    with contextlib.suppress(AssertionError):
        # On a time-out the check reports the lost messages; no need to fail here.
        await wait_until(
            lambda: check.confirmed <= check.consumed.keys(), "every confirmed id consumed", seconds
        )

    def empty() -> bool:
        return all(queue_depth(url, q)[0] == 0 for q in queues)

    await wait_broker(empty, f"{', '.join(queues)} empty", seconds)
    # Late deliveries of failed publishes (written, never confirmed) may still be in flight.
    await asyncio.sleep(0.5)


async def collect_dead_letters(check: TotalQueue, url: str, dlq: str) -> None:
    """Drain ``dlq`` into ``check`` until every confirmed id of ``check`` arrived there."""

    def collect() -> bool:
        for _, props, _ in drain(url, dlq):
            check.on_consumed(props.message_id)
        return check.confirmed <= check.consumed.keys()

    with contextlib.suppress(AssertionError):
        # On a time-out the check reports what never arrived.
        await wait_broker(collect, f"every dead letter in {dlq}")


async def consumer_counts(url: str, queues: Sequence[str]) -> list[int]:
    return [(await asyncio.to_thread(queue_depth, url, q))[1] for q in queues]


async def wait_consumers(url: str, queues: Sequence[str], expected: int, seconds: float) -> float:
    async def ok() -> bool:
        return all(count == expected for count in await consumer_counts(url, queues))

    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await ok():
        if loop.time() - start > seconds:
            counts = await consumer_counts(url, queues)
            raise AssertionError(
                f"consumer count {counts} on {list(queues)} not back to {expected} "
                f"within {seconds:g}s"
            )
        await asyncio.sleep(0.1)
    return loop.time() - start


# -- 1. connection cut x3 ------------------------------------------------------------------------
QUEUES = ("faults.quorum", "faults.classic")
KEYS = ("quorum", "classic")


async def connection_cut(lab: Lab, n: int, out: Outcome) -> None:
    """The proxy closes every socket 3x while publishing and consuming (quorum + classic)."""
    check = out.check
    with LogWatch.installed() as logs, lab.proxied() as (_, proxy, direct, url):
        collector = Collector(check, QUEUES, delay=0.001)
        async with (
            collector.serve(lab, url),
            Publisher.connect(lab.settings(url), confirm_timeout=DEADLINE) as publisher,
        ):
            stream = Stream(publisher, check, probes(n, KEYS))
            running = asyncio.create_task(stream.run())
            recovery: list[float] = []
            pairs: list[int] = []
            try:
                for k in (1, 2, 3):
                    await stream.at(n * k // 4).wait()
                    before = proxy.connections
                    pairs.append(proxy.cut())
                    # Both clients (publisher, consumer) come back through the proxy, and the
                    # broker counts one consumer per queue again within 2 reconnect intervals.
                    await wait_until(lambda b=before: proxy.connections >= b + 2, "reconnects")
                    recovery.append(await wait_consumers(direct, QUEUES, 1, 2 * RECONNECT + 10))
            finally:
                await running
            await settle(check, direct, QUEUES)
        out.facts["publish_errors"] = dict(stream.errors)
        out.facts["cut_pairs"] = pairs
        out.facts["consumer_recovery_s"] = [round(s, 1) for s in recovery]
        out.facts["redelivered"] = collector.redelivered
        logs.assert_no_stale_acks()


# -- 2. broker closes all connections x5 ----------------------------------------------------------
async def close_all_connections(lab: Lab, n: int, out: Outcome) -> None:
    """``rabbitmqctl close_all_connections`` 5x; 2 consumer apps x 2 queues + a publisher."""
    check = out.check
    with LogWatch.installed() as logs, lab.vhost() as vhost:
        url = robust(lab.url(vhost))
        direct = lab.url(vhost)
        # A queue deleted before the faults must not come back (nothing of ours declares).
        lab.management.delete_queue(vhost, "faults.gone")
        first = Collector(check, QUEUES, name="faults-a", delay=0.001)
        second = Collector(check, QUEUES, name="faults-b", delay=0.001)
        async with (
            first.serve(lab, url),
            second.serve(lab, url),
            Publisher.connect(lab.settings(url), confirm_timeout=DEADLINE) as publisher,
        ):
            stream = Stream(publisher, check, probes(n, KEYS))
            running = asyncio.create_task(stream.run())
            try:
                for k in range(1, 6):
                    await stream.at(n * k // 6).wait()
                    # Without --global (or -p) the command only covers the vhost "/".
                    await asyncio.to_thread(lab.ctl, "close_all_connections", "--global", "fault")
                    # Every consumer (2 apps x 2 queues) re-registered after each fault.
                    await wait_until(
                        lambda k=k: logs.count("resumed after reconnect") >= 4 * k,
                        f"4 consumers resumed after fault {k}",
                    )
                    await wait_consumers(direct, QUEUES, 2, 2 * RECONNECT + 10)
            finally:
                await running
            await settle(check, direct, QUEUES)
        out.facts["publish_errors"] = dict(stream.errors)
        out.facts["resumed"] = logs.count("resumed after reconnect")
        assert not await asyncio.to_thread(queue_exists, direct, "faults.gone"), (
            "a queue deleted before the faults was resurrected"
        )
        logs.assert_no_stale_acks()


# -- 3. broker restart -------------------------------------------------------------------------
async def _restart(lab: Lab, n: int, out: Outcome, queue_type: str) -> None:
    check = out.check
    queue = f"faults.{queue_type}"
    transient = TotalQueue()
    with lab.vhost() as vhost:
        url = robust(lab.url(vhost))
        direct = lab.url(vhost)
        async with Publisher.connect(lab.settings(url), confirm_timeout=DEADLINE) as publisher:
            # Transient messages (persistent=False) before the restart: the guide says a
            # durable classic queue loses them; a quorum queue keeps every message.
            t_items = [
                Item(f"t-{i}", queue_type, Probe(n=i, run="t"), persistent=False)
                for i in range(max(10, n // 100))
            ]
            await publish_all(publisher, transient, t_items)
            stream = Stream(publisher, check, probes(n, [queue_type]))
            running = asyncio.create_task(stream.run())
            try:
                await stream.at(n // 2).wait()
                await asyncio.to_thread(lab.ctl, "stop_app")
                await asyncio.sleep(1)
                await asyncio.to_thread(lab.ctl, "start_app")
            finally:
                await running
        out.facts["publish_errors"] = dict(stream.errors)

        def route(event: Probe, message: Message) -> None:
            if event.run == "t":
                transient.on_consumed(message.message_id or "")

        collector = Collector(TotalQueue(), [queue], on_message=route)
        async with collector.serve(lab, url):
            await settle(collector.check, direct, [queue])
        for message_id, count in collector.check.consumed.items():
            if not message_id.startswith("t-"):
                check.consumed[message_id] += count
        kept = len(transient.consumed)
        out.facts["transient_kept"] = f"{kept}/{len(t_items)}"
        if queue_type == "classic":
            assert kept == 0, f"{kept} transient messages survived a restart (classic queue)"
        else:
            assert kept == len(t_items), "a quorum queue lost a transient message on restart"


async def restart_quorum(lab: Lab, n: int, out: Outcome) -> None:
    """``stop_app`` / ``start_app`` mid-publish, quorum queue."""
    await _restart(lab, n, out, "quorum")


async def restart_classic(lab: Lab, n: int, out: Outcome) -> None:
    """``stop_app`` / ``start_app`` mid-publish, durable classic queue."""
    await _restart(lab, n, out, "classic")


# -- 4. half-open connection -----------------------------------------------------------------------
HEARTBEAT = 2


def _always_fail(event: Probe, message: Message) -> None:
    raise RuntimeError(f"poison {message.message_id}")


async def half_open(lab: Lab, n: int, out: Outcome) -> None:
    """The proxy forwards nothing (sockets open) for longer than aiormq's heartbeat grace.

    A third client, a consumer whose handler always fails, is republishing to the retry and
    dead-letter queues when the link goes dead: its republishes must fail like any publish
    (its deliveries are then redelivered), never end the worker.
    """
    check = out.check
    # aiormq declares a link dead after (heartbeat + 1) * 3 s without a frame; it checks every
    # heartbeat / 2 s. The black hole lasts past that, plus a reconnect attempt.
    grace = (HEARTBEAT + 1) * 3 + HEARTBEAT
    poison_items = probes(40, keys=["poison"], prefix="poison")
    with LogWatch.installed() as logs, lab.proxied() as (vhost, proxy, direct, url):
        options = {"heartbeat": HEARTBEAT, "connect_timeout": 3.0}
        collector = Collector(check, QUEUES, delay=0.001)
        failing = Collector(
            TotalQueue(), ["faults.poison"], name="faults-failing", concurrency=1, delay=0.2,
            on_message=_always_fail,
        )  # fmt: skip
        async with (
            collector.serve(lab, url, **options),
            failing.serve(lab, url, **options),
            Publisher.connect(lab.settings(url, **options), confirm_timeout=5.0) as publisher,
        ):
            poison_check = TotalQueue()
            await publish_all(publisher, poison_check, poison_items)
            stream = Stream(publisher, check, probes(n, KEYS), deadline=5.0)
            running = asyncio.create_task(stream.run())
            try:
                await stream.at(n // 3).wait()
                before = proxy.connections
                loop = asyncio.get_running_loop()
                started = loop.time()
                proxy.blackhole()
                # Each client notices the dead link on its own and dials again (the proxy
                # accepts; the handshake then stalls in the black hole).
                detected = await wait_until(
                    lambda: proxy.connections >= before + 3, "all 3 clients redial", grace + 10
                )
                await asyncio.sleep(max(0.0, started + grace + 2 - loop.time()))
                proxy.heal()
                await wait_consumers(direct, QUEUES, 1, 3 * RECONNECT + 20)
            finally:
                proxy.heal()
                await running
            await settle(check, direct, QUEUES)
            await collect_dead_letters(poison_check, direct, "faults.poison.dlq")
            # No zombie: the broker dropped the dead connections (its own heartbeat check),
            # leaving the three live ones.
            await wait_broker(
                lambda: _connections(lab, vhost) == 3, "exactly 3 live connections", 60
            )
        check.merge(poison_check)
        out.facts["redial_after_s"] = round(detected, 1)
        out.facts["stuck_logged"] = logs.count("was stuck")
        out.facts["publish_errors"] = dict(stream.errors)
        logs.assert_no_stale_acks()


def _connections(lab: Lab, vhost: str) -> int:
    lines = lab.ctl("list_connections", "vhost", "--no-table-headers", "--quiet").splitlines()
    return sum(line.strip() == vhost for line in lines)


# -- 5. consumer process SIGKILL ----------------------------------------------------------------
class ConsumerProcess:
    """``bus consume --app tests.faults.app:app faults.work`` in its own process group."""

    def __init__(self, lab: Lab, url: str, trace: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
        env.update(
            BUS_AMQP_URL=url,
            BUS_MANAGEMENT_URL=lab.node.management_url,
            PYTHONPATH=str(REPO),
            FAULTS_TRACE=str(trace),
            FAULTS_DELAY="0.005",
        )
        argv = [str(BIN / "bus"), "consume", "--app", "tests.faults.app:app"]
        argv += ["-f", str(lab.topology_file), "faults.work"]
        self.log = trace.with_suffix(f".{uuid.uuid4().hex[:6]}.log")
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"consumer exited early ({self.process.returncode}):\n{self.output}"
            )
        return True

    def signal(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(30)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def read_trace(path: Path) -> list[tuple[str, bool]]:
    """(message_id, redelivered) per finished delivery; only complete lines."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [(line.split(" ")[0], line.split(" ")[1] == "1") for line in lines]


async def consumer_sigkill(lab: Lab, n: int, out: Outcome) -> None:
    """SIGKILL a ``bus consume`` process (prefetch 50) mid-batch; a second one finishes."""
    check = out.check
    queue = "faults.work"
    trace = lab.workdir / f"trace-{uuid.uuid4().hex[:8]}.txt"
    with lab.vhost() as vhost:
        direct = lab.url(vhost)
        async with Publisher.connect(lab.settings(direct)) as publisher:
            await publish_all(publisher, check, probes(n, ["work"]))
        processes: list[ConsumerProcess] = []
        try:
            first = ConsumerProcess(lab, direct, trace)
            processes.append(first)
            await wait_until(
                lambda: first.alive() and len(read_trace(trace)) >= n // 3,
                f"a third handled by the first consumer; output:\n{first.output}",
            )
            # Freeze it (no more acks), read the queue, then kill: the broker requeues
            # exactly what the process held unacked.
            first.signal(signal.SIGSTOP)
            ready_before, _ = await asyncio.to_thread(queue_depth, direct, queue)
            first.signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait)
            await wait_broker(lambda: queue_depth(direct, queue)[1] == 0, "consumer gone")
            ready_after, _ = await asyncio.to_thread(queue_depth, direct, queue)
            requeued = ready_after - ready_before
            handled_first = len(read_trace(trace))
            assert 1 <= requeued <= 50, f"{requeued} requeued; prefetch is 50"
            second = ConsumerProcess(lab, direct, trace)
            processes.append(second)
            await wait_until(
                lambda: second.alive() and check.confirmed <= {m for m, _ in read_trace(trace)},
                f"every message handled; output:\n{second.output}",
            )
            await wait_broker(lambda: queue_depth(direct, queue)[0] == 0, "queue empty")
            await asyncio.sleep(0.5)
            second.signal(signal.SIGTERM)
            code = await asyncio.to_thread(second.wait)
            assert code == 0, f"second consumer exited {code}:\n{second.output}"
        finally:
            for process in processes:
                process.stop()
        records = read_trace(trace)
        for message_id, _ in records:
            check.on_consumed(message_id)
        redelivered = sum(flag for _, flag in records[handled_first:])
        out.facts["requeued_at_kill"] = requeued
        out.facts["redelivered_to_second"] = redelivered
        assert not any(flag for _, flag in records[:handled_first]), "first delivery redelivered"
        assert redelivered == requeued, (
            f"{requeued} requeued at the kill but {redelivered} redelivered deliveries handled"
        )
        assert check.duplicates <= requeued


# -- 6. memory alarm -----------------------------------------------------------------------------
ALARM_DEADLINE = 2.0


async def memory_alarm(lab: Lab, n: int, out: Outcome) -> None:
    """Memory alarm: publishes fail within their deadline, consumers keep draining."""
    check = out.check
    backlog = n // 2
    blocked = probes(max(10, min(100, n // 20)), prefix="blocked")
    rest = probes(n - backlog, prefix="after")
    with lab.vhost() as vhost:
        direct = lab.url(vhost)
        url = robust(direct)
        collector = Collector(check, ["faults.quorum"])
        async with Publisher.connect(lab.settings(url), confirm_timeout=DEADLINE) as publisher:
            await publish_all(publisher, check, probes(backlog, prefix="backlog"))
            try:
                await asyncio.to_thread(_raise_alarm, lab)
                loop = asyncio.get_running_loop()
                # The consumer (its own connection) starts and drains during the alarm.
                async with collector.serve(lab, url):
                    started = loop.time()
                    errors = await publish_all(
                        publisher, check, blocked, deadline=ALARM_DEADLINE, window=len(blocked)
                    )
                    took = loop.time() - started
                    single = probes(1, prefix="single")
                    check.on_sent(single[0].message_id)
                    started = loop.time()
                    try:
                        await publisher.publish(
                            "faults", "quorum", single[0].body, event_type=EVENT,
                            message_id=single[0].message_id, confirm_timeout=ALARM_DEADLINE,
                        )  # fmt: skip
                    except PublishTimeoutError:
                        check.on_failed(single[0].message_id)
                    else:
                        raise AssertionError("a publish was confirmed during the memory alarm")
                    took_single = loop.time() - started
                    states = await asyncio.to_thread(lab.ctl, "list_connections", "state")
                    drained = await wait_until(
                        lambda: len(check.consumed) >= backlog, "backlog drained during the alarm"
                    )
                    assert "memory" in await asyncio.to_thread(_alarms, lab), "alarm gone early"
                    await asyncio.to_thread(_clear_alarm, lab)
                    errors += await publish_all(publisher, check, rest)
                    await settle(check, direct, ["faults.quorum"])
            finally:
                await asyncio.to_thread(_clear_alarm, lab)
        out.facts["blocked_publish_errors"] = dict(errors)
        out.facts["blocked_state_seen"] = "blocked" in states
        out.facts["drained_during_alarm_s"] = round(drained, 1)
        assert errors == Counter({"PublishTimeoutError": len(blocked)}), errors
        # Never hangs: each call ends at its deadline (the batch ran with a window of all).
        assert took <= ALARM_DEADLINE + 5, f"blocked batch took {took:.1f}s"
        assert took_single <= ALARM_DEADLINE + 5, f"blocked publish took {took_single:.1f}s"


def _alarms(lab: Lab) -> str:
    return lab.ctl("eval", "rabbit_alarm:get_alarms().")


def _raise_alarm(lab: Lab) -> None:
    lab.ctl("set_vm_memory_high_watermark", "0")
    deadline = time.monotonic() + 60
    while "memory" not in _alarms(lab):
        if time.monotonic() > deadline:
            raise AssertionError("the memory alarm never went up")
        time.sleep(0.2)


def _clear_alarm(lab: Lab) -> None:
    lab.ctl("set_vm_memory_high_watermark", "0.4")
    deadline = time.monotonic() + 60
    while "memory" in _alarms(lab):
        if time.monotonic() > deadline:
            raise AssertionError("the memory alarm never cleared")
        time.sleep(0.2)


# -- 7. broker down -------------------------------------------------------------------------------
DOWN_SECONDS = 5.0
DOWN_DEADLINE = 2.0


async def broker_down(lab: Lab, n: int, out: Outcome) -> None:
    """Publish while the broker refuses connections, then let it back: confirmed or raised."""
    check = out.check
    third = n // 3
    with lab.proxied() as (vhost, proxy, direct, url):
        collector = Collector(check, ["faults.quorum"])
        async with (
            collector.serve(lab, robust(direct)),
            Publisher.connect(lab.settings(url), confirm_timeout=DEADLINE) as publisher,
        ):
            errors = await publish_all(publisher, check, probes(third, prefix="up"))
            proxy.refuse()
            loop = asyncio.get_running_loop()
            down_at = loop.time()
            sync_errors = await asyncio.to_thread(_sync_while_down, lab, proxy, vhost, check, n)

            async def come_back() -> None:
                await asyncio.sleep(max(0.0, down_at + DOWN_SECONDS - loop.time()))
                proxy.accept()

            back = asyncio.create_task(come_back())
            # Paced over twice the outage: the first half waits for a broker that is not
            # there (each call raises at its deadline), the rest goes out once it is back.
            stream = Stream(
                publisher, check, probes(third, prefix="down"), window=500,
                rate=max(1.0, third / (2 * DOWN_SECONDS)), deadline=DOWN_DEADLINE,
            )  # fmt: skip
            await stream.run()
            errors += stream.errors
            await back
            errors += await publish_all(publisher, check, probes(n - 2 * third, prefix="back"))
            await settle(check, direct, ["faults.quorum"])
        out.facts["publish_errors"] = dict(errors)
        out.facts["sync_errors"] = dict(sync_errors)
        down = [m for m in check.sent if m.startswith("down-")]
        out.facts["down_confirmed"] = len([m for m in down if m in check.confirmed])
        assert sync_errors, "no sync publish raised while the broker was down"


def _sync_while_down(
    lab: Lab, proxy: FaultProxy, vhost: str, check: TotalQueue, n: int
) -> Counter[str]:
    """SyncPublisher calls while connections are refused: each one raises at once."""
    errors: Counter[str] = Counter()
    settings = lab.settings(proxy.url(vhost=vhost), connect_timeout=DOWN_DEADLINE)
    publisher = SyncPublisher(settings, confirm_timeout=DOWN_DEADLINE)
    try:
        for item in probes(max(5, min(20, n // 100)), prefix="sync"):
            check.on_sent(item.message_id)
            started = time.monotonic()
            try:
                publisher.publish(
                    "faults", "quorum", item.body, event_type=EVENT, message_id=item.message_id
                )
            except BusError as exc:
                errors[type(exc).__name__] += 1
                check.on_failed(item.message_id)
            else:
                check.on_confirmed(item.message_id)
            took = time.monotonic() - started
            assert took <= DOWN_DEADLINE * 2 + 5, f"sync publish took {took:.1f}s while down"
    finally:
        publisher.close()
    return errors


# -- 8. unroutable --------------------------------------------------------------------------------
async def unroutable(lab: Lab, n: int, out: Outcome) -> None:
    """No binding for the key: every publish raises UnroutableError; an AE catches the rest."""
    check = out.check
    items: list[Item] = []
    for i in range(n):
        if i % 4 == 0:
            items.append(Item(f"ok-{i}", "quorum", Probe(n=i)))
        elif i % 4 == 1:
            # An exchange with an alternate exchange: routed there, confirmed, consumed.
            items.append(Item(f"ae-{i}", f"nowhere.{i}", Probe(n=i), exchange="faults.ae"))
        else:
            items.append(Item(f"no-{i}", f"nowhere.{i}", Probe(n=i)))
    with lab.vhost() as vhost:
        direct = lab.url(vhost)
        queues = ["faults.quorum", "faults.unrouted.q"]
        collector = Collector(check, queues)
        async with (
            collector.serve(lab, direct),
            Publisher.connect(lab.settings(direct)) as publisher,
        ):
            errors = await publish_all(publisher, check, items[: n // 2])
            # The single-call path as well as publish_many.
            for item in items[n // 2 :]:
                check.on_sent(item.message_id)
                try:
                    await publisher.publish(
                        item.exchange, item.routing_key, item.body,
                        event_type=EVENT, message_id=item.message_id,
                    )  # fmt: skip
                except UnroutableError:
                    errors["UnroutableError"] += 1
                    check.on_failed(item.message_id)
                else:
                    check.on_confirmed(item.message_id)
            twins = await _twins(publisher, check, max(10, n // 100))
            await settle(check, direct, queues)
        out.facts["twins_misattributed"] = twins
        assert twins == 0, f"{twins} unroutable twin(s) reported confirmed (or routed ones raised)"
        unroutable_ids = {i.message_id for i in items if i.message_id.startswith("no-")}
        in_ae = {m for m in check.consumed if m.startswith("ae-")}
        out.facts["raised"] = errors["UnroutableError"]
        out.facts["in_alternate_exchange"] = len(in_ae)
        assert errors == Counter({"UnroutableError": len(unroutable_ids)}), errors
        assert check.failed == unroutable_ids, "an unroutable publish was confirmed"
        assert not unroutable_ids & check.consumed.keys()
        assert len(in_ae) + errors["UnroutableError"] == n - len(items[::4])


async def _twins(publisher: Publisher, check: TotalQueue, pairs: int) -> int:
    """Two publishes in flight with one ``message_id`` (a caller retrying with the same id):
    one has no route, one does. Returns how many pairs got the wrong outcome.

    The client matches a returned message to its publish by ``message_id`` alone; were both
    in flight at once, the return could land on the routed twin (raised) and the ack on the
    unroutable one (confirmed and gone).
    """
    wrong = 0
    for k in range(pairs):
        message_id = f"twin-{k}"
        check.on_sent(message_id)  # the routed twin; the unroutable one must raise
        lost, routed = await asyncio.gather(
            publisher.publish(
                "faults", "nowhere", Probe(n=k), event_type=EVENT, message_id=message_id
            ),
            publisher.publish(
                "faults", "quorum", Probe(n=k), event_type=EVENT, message_id=message_id
            ),
            return_exceptions=True,
        )
        if isinstance(routed, BaseException):
            check.on_failed(message_id)
        else:
            check.on_confirmed(message_id)
        if not isinstance(lost, UnroutableError) or isinstance(routed, BaseException):
            wrong += 1
    return wrong


# -- 9. poison and invalid payloads ----------------------------------------------------------------
async def poison(lab: Lab, n: int, out: Outcome) -> None:
    """Bad JSON, schema mismatch, wrong content type, junk, unknown type, a failing handler:
    each dead-lettered exactly once, the consumer alive; oversize refused with a clear error."""
    check = out.check
    queue = "faults.poison"
    kinds = {
        "json": (b'{"n": 1,', "application/json", EVENT),
        "schema": (b'{"n": "not a number"}', "application/json", EVENT),
        "content-type": (b'{"n": 1}', "text/plain", EVENT),
        # Binary junk that claims to be JSON: fails to parse.
        "junk": (bytes(range(256)) * 4, "application/json", EVENT),
        "unknown-type": (b'{"n": 1}', "application/json", "faults.nope"),
        "handler": (
            Probe(n=-1, run="poison").model_dump_json().encode(),
            "application/json",
            EVENT,
        ),
    }
    expected: dict[str, str] = {}  # invalid message_id -> x-failure-reason
    plan: list[tuple[str, str | None]] = []  # (message_id, kind or None for valid)
    for i in range(n):
        kind = list(kinds)[i // 5 % len(kinds)] if i % 5 == 4 else None
        message_id = f"{kind or 'ok'}-{i}"
        plan.append((message_id, kind))
        if kind is not None:
            expected[message_id] = "json" if kind == "junk" else kind

    def fail_poison(event: Probe, message: Message) -> None:
        assert message.message_id not in expected or event.run == "poison"
        if event.run == "poison":
            raise RuntimeError("poison message")

    with lab.vhost() as vhost:
        direct = lab.url(vhost)
        collector = Collector(TotalQueue(), [queue], on_message=fail_poison)
        async with (
            collector.serve(lab, direct) as runtime,
            Publisher.connect(lab.settings(direct), max_message_size=4 * MAX_MESSAGE_SIZE) as pub,
        ):
            connection = await aio_pika.connect(direct)
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                exchange = await channel.get_exchange("faults", ensure=False)
                for message_id, kind in plan:
                    check.on_sent(message_id)
                    if kind is None:
                        await pub.publish(
                            "faults", "poison", Probe(n=0, run="ok"),
                            event_type=EVENT, message_id=message_id,
                        )  # fmt: skip
                    else:
                        body, content_type, event_type = kinds[kind]
                        # Raw aio-pika: our publisher always says application/json.
                        await exchange.publish(
                            aio_pika.Message(
                                body, content_type=content_type, type=event_type,
                                message_id=message_id,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            ),
                            "poison",
                        )  # fmt: skip
                    check.on_confirmed(message_id)
            finally:
                await connection.close()
            # Oversize: the broker's max_message_size (1 MiB here) closes the channel with a
            # 406; the publisher raises MessageTooLargeError and the next publish goes on.
            oversize = "oversize-0"
            check.on_sent(oversize)
            try:
                await pub.publish(
                    "faults", "poison", b"x" * (MAX_MESSAGE_SIZE + 1), event_type=EVENT,
                    message_id=oversize,
                )  # fmt: skip
            except MessageTooLargeError as exc:
                out.facts["oversize"] = "refused by broker: " + str(exc).split(": ", 2)[-1][:70]
                check.on_failed(oversize)
            else:
                raise AssertionError("an oversized message was confirmed")
            # The publisher's own pre-check refuses before sending anything.
            async with Publisher.connect(lab.settings(direct)) as small:
                small.resolver.max_message_size = MAX_MESSAGE_SIZE
                try:
                    await small.publish("faults", "poison", b"x" * (MAX_MESSAGE_SIZE + 1))
                except MessageTooLargeError:
                    pass
                else:
                    raise AssertionError("the publisher's size limit let a message through")
            # The consumer is alive: valid messages after all of that are still handled.
            after = probes(max(10, n // 10), keys=["poison"], prefix="after")
            await publish_all(pub, check, after)
            dlq = f"{queue}.dlq"
            await wait_until(
                lambda: {i.message_id for i in after} <= collector.check.consumed.keys(),
                "the messages after the poison handled",
            )
            await wait_broker(
                lambda: queue_depth(direct, dlq)[0] >= len(expected), "every invalid one in DLQ"
            )
            await settle(collector.check, direct, [queue])
            assert runtime.fatal is None
        dead = drain(direct, dlq)
        reasons = {p.message_id: (p.headers or {}).get("x-failure-reason") for _, p, _ in dead}
        per_id = Counter(p.message_id for _, p, _ in dead)
        for message_id, count in collector.check.consumed.items():
            check.consumed[message_id] += count
        for message_id in per_id.elements():
            check.on_consumed(message_id)
        assert set(per_id) == set(expected), "DLQ holds other messages than the invalid ones"
        assert all(count == 1 for count in per_id.values()), "dead-lettered more than once"
        assert reasons == expected, {k: v for k, v in reasons.items() if expected.get(k) != v}
        out.facts["dead_lettered"] = dict(Counter(m.rsplit("-", 1)[0] for m in expected))


# -- 10. Celery worker SIGKILL ---------------------------------------------------------------------
def worker_process(lab: Lab, url: str, log: Path) -> BusWorker:
    """``bus worker -Q faults.tasks --pool prefork`` in its own process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUS_", "CELERY_"))}
    env.update(
        BUS_AMQP_URL=url,
        BUS_MANAGEMENT_URL=lab.node.management_url,
        BUS_TOPOLOGY=str(lab.topology_file),
        PYTHONPATH=str(REPO),
        PYTHONWARNINGS="ignore:You're running the worker with superuser privileges",
    )
    args = ["-A", "tests.faults.tasks:app", "-Q", "faults.tasks", "--pool", "prefork", "-c", "2"]
    return BusWorker(args, env, log)


def task_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line]


async def celery_sigkill(lab: Lab, n: int, out: Outcome) -> None:
    """SIGKILL a Celery worker (acks_late, reject_on_worker_lost) mid-task: it runs again."""
    check = out.check
    records = lab.workdir / f"tasks-{uuid.uuid4().hex[:8]}.jsonl"
    long_index = n // 3
    with lab.vhost() as vhost:
        direct = lab.url(vhost)
        async with Publisher.connect(lab.settings(direct), lab.topology) as publisher:
            ids = [f"task-{i}" for i in range(n)]
            source = iter(enumerate(ids))

            async def sender() -> None:
                for i, task_id in source:
                    # One long task to kill the worker in the middle of it.
                    seconds = 5.0 if i == long_index else 0.0
                    check.on_sent(task_id)
                    try:
                        await publisher.send_task(
                            "faults.tasks", "tests.faults.tasks.work",
                            (str(records), seconds), task_id=task_id,
                        )  # fmt: skip
                    except BusError:
                        check.on_failed(task_id)
                    else:
                        check.on_confirmed(task_id)

            async with asyncio.timeout(HANG):
                async with asyncio.TaskGroup() as group:
                    for _ in range(100):
                        group.create_task(sender())
        workers: list[BusWorker] = []
        try:
            first = worker_process(lab, direct, lab.workdir / f"w1-{uuid.uuid4().hex[:6]}.log")
            workers.append(first)
            long_id = ids[long_index]
            await wait_until(
                lambda: any(
                    r["task_id"] == long_id and r["event"] == "start" for r in task_records(records)
                ),
                "the long task started",
                HANG,
                poll=0.2,
            )
            await asyncio.to_thread(first.kill)
            before = task_records(records)
            assert not any(r["task_id"] == long_id and r["event"] == "done" for r in before)
            second = worker_process(lab, direct, lab.workdir / f"w2-{uuid.uuid4().hex[:6]}.log")
            workers.append(second)

            def done() -> set[str]:
                return {r["task_id"] for r in task_records(records) if r["event"] == "done"}

            await wait_until(
                lambda: second.ready() and check.confirmed <= done(),
                "every task done",
                HANG + n / 20,
                poll=0.5,
            )
        finally:
            for worker in workers:
                await asyncio.to_thread(worker.stop, 30)
        final = task_records(records)
        for r in final:
            if r["event"] == "done":
                check.on_consumed(r["task_id"])
        runs = [r["event"] for r in final if r["task_id"] == long_id]
        out.facts["killed_task_runs"] = runs
        out.facts["done_before_kill"] = sum(r["event"] == "done" for r in before)
        assert runs == ["start", "start", "done"], runs


# -- registry --------------------------------------------------------------------------------------
Scenario = Callable[[Lab, int, Outcome], Awaitable[None]]

# name -> (label in the table, scenario), in the order the report runs them.
SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "connection_cut": ("1 connection cut x3", connection_cut),
    "close_all_connections": ("2 close_all_connections x5", close_all_connections),
    "restart_quorum": ("3a broker restart, quorum", restart_quorum),
    "restart_classic": ("3b broker restart, classic", restart_classic),
    "half_open": ("4 half-open link (heartbeat)", half_open),
    "consumer_sigkill": ("5 consumer SIGKILL, prefetch 50", consumer_sigkill),
    "memory_alarm": ("6 memory alarm", memory_alarm),
    "broker_down": ("7 publish while broker down", broker_down),
    "unroutable": ("8 unroutable publishes", unroutable),
    "poison": ("9 poison / invalid payloads", poison),
    "celery_sigkill": ("10 Celery worker SIGKILL", celery_sigkill),
}


async def run_scenario(name: str, lab: Lab, n: int) -> Outcome:
    """Run one scenario; an exception is kept as the outcome's ``error`` (row result FAIL)."""
    label, scenario = SCENARIOS[name]
    outcome = Outcome(label)
    started = time.monotonic()
    try:
        await scenario(lab, n, outcome)
    except Exception as exc:
        log.exception("scenario %s failed", name)
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.monotonic() - started
    return outcome
