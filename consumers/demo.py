"""The demo consumer app: one handler per demo queue of topology.yaml.

Run it with ``bus consume --app consumers.demo:app``. It exercises every exchange type of the
demo topology:

- direct: ``orders.commands`` (``commands`` exchange, key ``order.cancel``);
- topic: ``billing.orders`` (``events``, ``order.*``), ``analytics.all`` (``events``, ``#``),
  ``audit.log`` (``audit``, fed by ``events`` through an exchange binding ``order.#``),
  ``unrouted.events`` (the ``events`` alternate exchange);
- fanout: ``cache.web`` and ``cache.api`` (``broadcast``);
- headers: ``email.priority`` (``x-match: any``, priority=high or tier=gold) and ``email.bulk``
  (``x-match: all``, kind=newsletter).

Every handler writes what it received to :data:`recorder`, so a caller in the same process
(``bus demo``, the tests) can see what went where: ``recorder.counts()``,
``recorder.received[queue]`` and ``await recorder.wait_for({...})``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass

from pydantic import BaseModel

from consumers.message import Message
from consumers.runtime import ConsumerApp
from producers.events import CacheInvalidated, CancelOrder, EmailRequested, OrderCreated, OrderPaid

__all__ = [
    "DEMO_QUEUES",
    "FLAKY_PREFIX",
    "Received",
    "Recorder",
    "TransientBillingError",
    "app",
    "recorder",
]

log = logging.getLogger("consumers.demo")

DEMO_QUEUES = (
    "billing.orders",
    "orders.commands",
    "analytics.all",
    "audit.log",
    "unrouted.events",
    "cache.web",
    "cache.api",
    "email.priority",
    "email.bulk",
)


@dataclass(frozen=True)
class Received:
    queue: str
    event_type: str | None
    message_id: str | None
    routing_key: str
    exchange: str
    body: bytes
    retry_count: int = 0
    correlation_id: str | None = None


class Recorder:
    """What each demo handler received, in order, observable from the same process."""

    def __init__(self) -> None:
        self.received: defaultdict[str, list[Received]] = defaultdict(list)
        self._changed = asyncio.Event()

    def record(self, message: Message) -> None:
        self.received[message.queue].append(
            Received(
                message.queue,
                message.type,
                message.message_id,
                message.routing_key,
                message.exchange,
                message.body,
                message.retry_count,
                message.correlation_id,
            )
        )
        self._changed.set()

    def counts(self) -> Counter[str]:
        return Counter({queue: len(items) for queue, items in self.received.items() if items})

    def clear(self) -> None:
        self.received.clear()

    async def wait_for(self, expected: dict[str, int], seconds: float = 10.0) -> Counter[str]:
        """Wait until every queue in ``expected`` received at least that many messages."""

        def reached() -> bool:
            counts = self.counts()
            return all(counts[q] >= n for q, n in expected.items())

        async with asyncio.timeout(seconds):
            while not reached():
                self._changed.clear()
                await self._changed.wait()
        return self.counts()


recorder = Recorder()
app = ConsumerApp("demo")

FLAKY_PREFIX = "flaky-"
"""Orders whose id starts with this fail on their first attempt: the demo's retry ladder."""


class TransientBillingError(RuntimeError):
    """A failure worth retrying (in real life: the payment provider timed out)."""


@app.handler("billing.orders", prefetch=50)
async def bill_order(event: OrderCreated | OrderPaid, message: Message) -> None:
    if event.order_id.startswith(FLAKY_PREFIX) and message.retry_count == 0:
        raise TransientBillingError(f"payment provider timed out for {event.order_id}")
    log.info("billing.orders: %s %s", message.type, event.order_id)
    recorder.record(message)


@app.handler("orders.commands", prefetch=20)
async def cancel_order(command: CancelOrder, message: Message) -> None:
    log.info("orders.commands: cancel %s (%s)", command.order_id, command.reason or "no reason")
    recorder.record(message)


@app.handler("analytics.all", raw=True)
async def count_event(message: Message) -> None:
    # Raw: the `#` binding also receives events this service has no contract for.
    recorder.record(message)


@app.handler("audit.log")
async def audit(event: BaseModel, message: Message) -> None:
    log.info("audit.log: %s %s", message.type, event.model_dump_json())
    recorder.record(message)


@app.handler("unrouted.events", raw=True)
async def unrouted(message: Message) -> None:
    log.warning("unrouted event %r with key %r", message.type, message.routing_key)
    recorder.record(message)


@app.handler("cache.web")
async def invalidate_web(event: CacheInvalidated, message: Message) -> None:
    recorder.record(message)


@app.handler("cache.api")
async def invalidate_api(event: CacheInvalidated, message: Message) -> None:
    recorder.record(message)


@app.handler("email.priority")
async def send_priority_email(event: EmailRequested, message: Message) -> None:
    log.info("email.priority: to %s: %s", event.to, event.subject)
    recorder.record(message)


@app.handler("email.bulk")
async def send_bulk_email(event: EmailRequested, message: Message) -> None:
    recorder.record(message)
