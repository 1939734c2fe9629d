"""The live-migration scenario shared by the test_migrate* tests (no tests here).

A classic queue ``orders.q`` holding N messages becomes a quorum queue with a delivery limit
and a dead-letter exchange, while a publisher sends N more at a steady rate and a consumer of
our runtime consumes. N is ``$BUS_MIGRATE_N`` (default 2000, so CI stays fast; the issue's
figure uses 20000). Messages are published with plain aio-pika, never the code under test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aio_pika

from bus.settings import BusSettings
from bus.topology import LoadedTopology, load_topology
from consumers import ConsumerApp, Message
from producers.events import OrderCreated
from tests.support.consumer import drain, load_declared, queue_depth, wait_until
from tests.support.topologies import order_topology

__all__ = ["NEW", "OLD", "Outcome", "migration_n", "run_scenario"]

OLD = order_topology(
    """
    orders.q:
      type: classic
      bindings: [{exchange: events, routing_key: "order.*"}]
    """
)

NEW = order_topology(
    """
    orders.q:
      type: quorum
      delivery_limit: 5
      dead_letter: true
      bindings: [{exchange: events, routing_key: "order.*"}]
    """
)

BODY = OrderCreated(order_id="o-1", customer_id="c-1", total=3).model_dump_json().encode()
STAMP = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def migration_n() -> int:
    return int(os.environ.get("BUS_MIGRATE_N", "2000"))


def _message(mid: str) -> aio_pika.Message:
    return aio_pika.Message(
        BODY, content_type="application/json", type="order.created", message_id=mid,
        correlation_id=f"corr-{mid}", headers={"x-test": mid, "n": 7}, timestamp=STAMP,
        app_id="migrate-test", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )  # fmt: skip


async def publish_ids(url: str, ids: list[str], rate: float | None = None) -> None:
    """Confirmed, mandatory publishes through ``events``; ``rate`` per second when given."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("events", ensure=False)
        started = time.monotonic()
        step = 50
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            await asyncio.gather(
                *(exchange.publish(_message(m), "order.created", mandatory=True) for m in chunk)
            )
            if rate is not None:
                ahead = (start + len(chunk)) / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await connection.close()


@dataclass
class Outcome:
    n: int
    seconds: float = 0.0
    lost: set[str] = field(default_factory=set)
    duplicates: int = 0
    consumed: int = 0
    bad_properties: list[str] = field(default_factory=list)
    consumers_after: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"N={self.n}: {2 * self.n} messages, migration {self.seconds:.1f} s, lost "
            f"{len(self.lost)}, duplicates {self.duplicates}, consumed {self.consumed}"
        )


Migration = Callable[[Path, str], Awaitable[None]]


async def run_scenario(url: str, tmp_path: Path, migration: Migration) -> Outcome:
    """Fill, then migrate (``migration(new_topology_file, url)``) under load; count."""
    n = migration_n()
    outcome = Outcome(n)
    old = load_declared(url, tmp_path, OLD)
    new_file = tmp_path / "new.yaml"
    new_file.write_text(NEW)
    before = [f"pre-{i}" for i in range(n)]
    during = [f"live-{i}" for i in range(n)]
    await publish_ids(url, before)
    seen: Counter[str] = Counter()

    app = ConsumerApp("migrate-test", grace=5)

    @app.handler("orders.q", prefetch=20, concurrency=2)
    async def handle(event: OrderCreated, message: Message) -> None:
        mid = message.message_id or ""
        seen[mid] += 1
        expected = (f"corr-{mid}", "order.created", "migrate-test", mid, 7, STAMP)
        actual = (
            message.correlation_id, message.type, message.app_id,
            message.headers.get("x-test"), message.headers.get("n"), message.timestamp,
        )  # fmt: skip
        if actual != expected and len(outcome.bad_properties) < 5:
            outcome.bad_properties.append(f"{mid}: {actual!r}")
        await asyncio.sleep(0.004)  # slower than the publisher: the queue keeps a backlog

    async with app.serve(BusSettings(amqp_url=url), topology=old) as runtime:
        rate = max(200.0, n / 20)  # the live messages arrive over about 20 s (10 s at N=2000)
        publisher = asyncio.create_task(publish_ids(url, during, rate=rate))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await migration(new_file, url)
        outcome.seconds = time.monotonic() - started
        await publisher
        everything = set(before) | set(during)
        await wait_until(lambda: set(seen) >= everything, seconds=120 + n / 100)
        await wait_until(lambda: queue_depth(url, "orders.q")[0] == 0, seconds=60)
        assert runtime.fatal is None, runtime.fatal
        outcome.consumers_after = queue_depth(url, "orders.q")[1]
    left = [props.message_id or "" for _, props, _ in drain(url, "orders.q")]
    outcome.lost = everything - set(seen) - set(left)
    outcome.consumed = sum(seen.values())
    outcome.duplicates = outcome.consumed + len(left) - len(everything)
    return outcome


def new_topology(tmp_path: Path) -> LoadedTopology:
    return load_topology(tmp_path / "new.yaml")
