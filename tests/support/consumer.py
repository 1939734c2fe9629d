"""Helpers shared by the consumer integration tests (no tests here).

Messages are published and read back with plain aio-pika / pika, never with the code under
test, so the tests check the runtime against what the broker itself holds.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pika

from bus.settings import TopologySettings
from bus.topology import LoadedTopology, load_topology
from consumers import ConsumerApp, Message
from producers.events import OrderCreated
from tests.support.amqp import declare_with_pika, drain

__all__ = [
    "RecordingMetrics",
    "drain",
    "load_declared",
    "must_not_consume",
    "publish",
    "queue_depth",
    "read_trace",
    "slow_app",
    "wait_until",
]


def load_declared(url: str, tmp_path: Path, text: str | None = None) -> LoadedTopology:
    """Load ``text`` (or the shipped topology.yaml) and declare it in the vhost of ``url``."""
    path = TopologySettings().topology
    if text is not None:
        path = tmp_path / "topology.yaml"
        path.write_text(text)
    loaded = load_topology(path)
    declare_with_pika(url, loaded.expanded)
    return loaded


async def publish(
    url: str,
    messages: list[dict[str, Any]],
) -> list[str]:
    """Publish with confirms; each dict holds exchange, routing_key, body and properties.

    ``mandatory`` defaults to True (an unroutable message raises); pass False for messages
    the test expects no queue to receive.

    Returns the message ids (a uuid when the dict gives none).
    """
    ids: list[str] = []
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for spec in messages:
            spec = dict(spec)
            exchange_name = spec.pop("exchange", "")
            routing_key = spec.pop("routing_key", "")
            mandatory = spec.pop("mandatory", True)
            body = spec.pop("body")
            spec.setdefault("message_id", str(uuid.uuid4()))
            spec.setdefault("delivery_mode", aio_pika.DeliveryMode.PERSISTENT)
            ids.append(spec["message_id"])
            if isinstance(body, str):
                body = body.encode()
            exchange = (
                channel.default_exchange
                if exchange_name == ""
                else await channel.get_exchange(exchange_name, ensure=False)
            )
            await exchange.publish(aio_pika.Message(body, **spec), routing_key, mandatory=mandatory)
    finally:
        await connection.close()
    return ids


def queue_depth(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) from a passive declare: exact, unlike management stats."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ok = connection.channel().queue_declare(queue, passive=True)
        return ok.method.message_count, ok.method.consumer_count
    finally:
        connection.close()


class RecordingMetrics:
    """A ConsumerMetrics that keeps plain counters (no prometheus-client needed)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds: list[float] = []

    def consumed(self, queue: str) -> None:
        self.counts[f"consumed {queue}"] += 1

    def acked(self, queue: str, count: int) -> None:
        self.counts[f"acked {queue}"] += count

    def retried(self, queue: str) -> None:
        self.counts[f"retried {queue}"] += 1

    def dead_lettered(self, queue: str, reason: str) -> None:
        self.counts[f"dead {queue} {reason}"] += 1

    def requeued(self, queue: str) -> None:
        self.counts[f"requeued {queue}"] += 1

    def dropped(self, queue: str, reason: str) -> None:
        self.counts[f"dropped {queue} {reason}"] += 1

    def duplicate(self, queue: str) -> None:
        self.counts[f"duplicate {queue}"] += 1

    def handler_seconds(self, queue: str, seconds: float) -> None:
        self.seconds.append(seconds)


def must_not_consume(app: ConsumerApp, queue: str) -> ConsumerApp:
    """``app`` with a handler of ``queue`` that fails the test should a message reach it: for
    tests whose start-up must fail before anything is consumed."""

    @app.handler(queue)
    async def handle(event: OrderCreated) -> None:
        raise AssertionError(f"{queue}: must not consume")

    return app


async def wait_until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Poll ``condition`` until true; fails the test with a TimeoutError otherwise."""
    async with asyncio.timeout(seconds):
        # Polling on purpose: most conditions read broker state, which sends no event.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


# -- an app for the subprocess tests:
#    bus consume --app tests.support.consumer:slow_app
# Each handler call appends "started <id>" and, once its sleep is over, "finished <id>" to the
# file named by $CONSUMER_TEST_LOG; the sleep is $CONSUMER_TEST_DELAY seconds.
slow_app = ConsumerApp("slow")


def _trace(line: str) -> None:
    with open(os.environ["CONSUMER_TEST_LOG"], "a", encoding="utf-8") as log:
        log.write(line + "\n")
        log.flush()


@slow_app.handler("slow.q", prefetch=50, concurrency=50)
async def slow_handler(event: OrderCreated, message: Message) -> None:
    _trace(f"started {message.message_id}")
    await asyncio.sleep(float(os.environ.get("CONSUMER_TEST_DELAY", "1")))
    _trace(f"finished {message.message_id}")


def read_trace(path: Path) -> tuple[list[str], list[str]]:
    """(started ids, finished ids) in the order written."""
    started: list[str] = []
    finished: list[str] = []
    if path.exists():
        # Only complete lines: the consumer process may be writing the last one right now.
        for line in path.read_text().split("\n")[:-1]:
            kind, _, message_id = line.partition(" ")
            {"started": started, "finished": finished}[kind].append(message_id)
    return started, finished
