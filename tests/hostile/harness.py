"""The demo consumers on a throwaway node, and what a hostile-input test checks around them.

A forged ``x-death`` can break a node's dead-letter worker for good, so these tests never run
on the shared broker: one :class:`~bus.node.LocalNode` per session, a fresh vhost per test with
the shipped topology applied.

:class:`DemoRun` runs ``consumers.demo:app`` in-process on every demo queue and answers:

- ``alive()``: every consumer still registered at the broker, on the session (channel) it
  started with: the connection never dropped;
- ``totals()``: messages ready in every queue of the topology; taken once the consumers
  stopped (unacked deliveries are back then), the total-queue count that proves nothing was
  lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pika

from bus.broker.apply import apply
from bus.broker.management import ManagementClient
from bus.node import LocalNode
from bus.settings import BusSettings, with_vhost
from bus.testing import make_vhost
from bus.topology import LoadedTopology, load_topology
from consumers.demo import DEMO_QUEUES, app, recorder
from consumers.runtime import Runtime
from consumers.settle import ChannelSession

__all__ = [
    "DemoRun", "demo_run", "demo_vhost", "publish", "queue_counts", "wait_until",
]  # fmt: skip


@contextmanager
def demo_vhost(node: LocalNode) -> Iterator[tuple[str, ManagementClient, LoadedTopology]]:
    """A fresh vhost on ``node`` with the shipped topology applied: (url, management, topology)."""
    management = ManagementClient(node.management_url, "guest", "guest")
    name = make_vhost(management, "guest", prefix="hostile")
    topology = load_topology("topology.yaml")
    try:
        apply(topology, BusSettings(amqp_url=node.amqp_url, management_url=node.management_url),
              vhost=name)  # fmt: skip
        yield with_vhost(node.amqp_url, name), management, topology
    finally:
        management.delete_vhost(name)
        management.close()


def publish(url: str, items: list[tuple[str, str | bytes, bytes, Any]]) -> None:
    """Publish ``(exchange, routing_key, body, properties)`` with confirms (pika)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for exchange, key, body, properties in items:
            channel.basic_publish(exchange, key, body, properties)  # type: ignore[arg-type]
    finally:
        connection.close()


def queue_counts(url: str, names: Iterable[str]) -> dict[str, int]:
    """Ready messages per queue (``queue.declare(passive=True)``: exact, no stats delay)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        return {n: channel.queue_declare(n, passive=True).method.message_count for n in names}
    finally:
        connection.close()


async def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {seconds:.0f} s: {what}")
        await asyncio.sleep(0.2)


class DemoRun:
    """``consumers.demo:app`` consuming every demo queue of one vhost, in this process."""

    def __init__(
        self, runtime: Runtime, url: str, management: ManagementClient, vhost: str
    ) -> None:
        self.runtime = runtime
        self.url = url
        self.management = management
        self.vhost = vhost
        self.sessions: dict[str, ChannelSession | None] = {
            c.queue: c.session for c in runtime.consumers
        }

    def alive(self) -> list[str]:
        """What is wrong with the consumers (empty when all are attached, never reconnected)."""
        problems = []
        for consumer in self.runtime.consumers:
            if consumer.session is not self.sessions[consumer.queue]:
                problems.append(f"{consumer.queue}: channel reopened (connection dropped)")
            elif consumer.session is None or not consumer.session.alive:
                problems.append(f"{consumer.queue}: channel closed")
        queues = {q["name"]: q for q in self.management.queues(self.vhost)}
        for name in DEMO_QUEUES:
            if queues.get(name, {}).get("consumers", 0) < 1:
                problems.append(f"{name}: no consumer at the broker")
        return problems

    def totals(self) -> dict[str, int]:
        """Messages ready in every queue of the topology (passive declares, exact)."""
        return queue_counts(self.url, self.runtime.topology.queues)

    def settled(self) -> bool:
        """Nothing ready or unacked in the consumed queues (management stats, 0.5 s old)."""
        queues = {q["name"]: q for q in self.management.queues(self.vhost)}
        return all(
            int(queues.get(name, {}).get("messages_ready", 1) or 0) == 0
            and int(queues.get(name, {}).get("messages_unacknowledged", 1) or 0) == 0
            for name in DEMO_QUEUES
        )


@asynccontextmanager
async def demo_run(url: str, management: ManagementClient, topology: LoadedTopology,
                   vhost: str) -> AsyncIterator[DemoRun]:  # fmt: skip
    recorder.clear()
    settings = BusSettings(amqp_url=url)
    async with app.serve(settings, topology=topology, queues=DEMO_QUEUES, grace=5) as runtime:
        yield DemoRun(runtime, url, management, vhost)
