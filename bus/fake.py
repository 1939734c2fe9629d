"""In-memory test double of the bus, on the routing simulator: no broker needed.

Code under test publishes to a :class:`FakeBus` exactly as to the real publisher
(``publish(event)`` or ``publish(exchange, routing_key, body)``; ``fake.aio`` for async code)
and the test looks at what each queue would hold::

    fake = FakeBus(load_topology("topology.yaml"))
    fake.publish(OrderCreated(order_id="o-1"))
    assert fake.events("billing.orders") == [OrderCreated(order_id="o-1")]
    fake.reject("billing.orders")               # dead-letters as the broker would
    assert fake.bodies("billing.orders.dlq") == [b'{"order_id":"o-1"}']

Routing is the simulator's (proven against RabbitMQ by the differential test) for the broker
version given as ``rabbitmq=`` (``"3.10"``, ``"4.0"``, ``"4.0.5"``; default 3.10.8: see
:mod:`bus.versions`), and the
publisher's failures are the real ones: a publish no queue receives raises
:class:`~bus.errors.UnroutableError` (the real publisher is always ``mandatory``), a missing
exchange :class:`~bus.errors.NotFoundError`, an internal one
:class:`~bus.errors.AccessRefusedError`. Consumers, acks, TTLs and queue limits are not
simulated: ``reject``/``expire`` move a message explicitly.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Unpack

from pydantic import BaseModel

from bus.contracts import ContractRegistry
from bus.errors import AccessRefusedError, ContractError, NotFoundError, UnroutableError
from bus.publish.message import CONTENT_TYPE, Body, PublishOptions, Resolver
from bus.routing import DeadLetterReason, Route, Router
from bus.topology.expand import ExpandedTopology
from bus.topology.load import LoadedTopology
from bus.versions import RabbitVersion

__all__ = ["AsyncFakePublisher", "FakeBus", "FakeMessage"]


@dataclass(frozen=True)
class FakeMessage:
    """One copy of a message in one queue."""

    queue: str
    exchange: str
    routing_key: str
    body: bytes
    headers: Mapping[str, Any]
    message_id: str
    type: str | None = None
    correlation_id: str | None = None
    content_type: str | None = CONTENT_TYPE
    persistent: bool = True
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    def json(self) -> Any:
        return json.loads(self.body)


class FakeBus:
    """Records what each queue of the topology would receive; see the module docstring."""

    def __init__(
        self,
        topology: LoadedTopology | ExpandedTopology,
        *,
        registry: ContractRegistry | None = None,
        rabbitmq: RabbitVersion | str | None = None,
    ) -> None:
        expanded = topology.expanded if isinstance(topology, LoadedTopology) else topology
        self.router = Router(expanded, rabbitmq=rabbitmq)
        self.registry = registry if registry is not None else ContractRegistry(expanded.events)
        self.resolver = Resolver(expanded, contracts=self.registry)
        self.published: list[tuple[FakeMessage, Route]] = []
        self._queues: dict[str, deque[FakeMessage]] = {q: deque() for q in expanded.queues}

    @property
    def aio(self) -> AsyncFakePublisher:
        """The same bus behind ``async def publish`` (shaped like the aio-pika publisher)."""
        return AsyncFakePublisher(self)

    # -- publishing -----------------------------------------------------------------------

    def publish(
        self,
        target: BaseModel | str,
        routing_key: str | None = None,
        body: Body | None = None,
        /,
        **options: Unpack[PublishOptions],
    ) -> str:
        """``publish(event)`` through its contract, or ``publish(exchange, key, body)``;
        returns the ``message_id``, like the real publisher."""
        # The real publishers' resolution: same contracts, body, ids, headers and size limit.
        resolved = self.resolver.call(target, routing_key, body, options)
        exchange, key, table = resolved.exchange, resolved.routing_key, resolved.headers or {}
        message = FakeMessage(
            queue="",
            exchange=exchange,
            routing_key=key,
            body=resolved.body,
            headers=table,
            message_id=resolved.message_id,
            type=resolved.event_type,
            correlation_id=resolved.correlation_id,
            persistent=resolved.persistent,
        )
        self._check_exchange(exchange)
        route = self.router.route(exchange, key, table or None)
        if not route.queues:
            raise UnroutableError(exchange, key, "NO_ROUTE (simulated)")
        self.published.append((message, route))
        self._deliver(message, route)
        return message.message_id

    def _check_exchange(self, exchange: str) -> None:
        if exchange == "":
            return
        if exchange not in self.router.exchanges:
            raise NotFoundError(f"NOT_FOUND - no exchange {exchange!r} (simulated)")
        if self.router.is_internal(exchange):
            raise AccessRefusedError(
                f"ACCESS_REFUSED - cannot publish to internal exchange {exchange!r} (simulated)"
            )

    def _deliver(self, message: FakeMessage, route: Route) -> None:
        # A dead-lettered copy arrives from the DLX with the DL key and the x-death headers.
        headers = dict(route.headers)
        for queue in sorted(route.queues):
            copy = replace(
                message,
                queue=queue,
                exchange=route.exchange,
                routing_key=route.routing_key,
                headers=headers,
            )
            self._queues[queue].append(copy)

    # -- looking at queues ----------------------------------------------------------------

    def _queue(self, queue: str) -> deque[FakeMessage]:
        try:
            return self._queues[queue]
        except KeyError:
            raise NotFoundError(f"no queue {queue!r} in the topology") from None

    def messages(self, queue: str) -> list[FakeMessage]:
        """The messages waiting in ``queue``, oldest first (left in place)."""
        return list(self._queue(queue))

    def bodies(self, queue: str) -> list[bytes]:
        return [m.body for m in self._queue(queue)]

    def events(self, queue: str) -> list[BaseModel]:
        """The messages of ``queue`` decoded through their event contract (AMQP ``type``)."""
        out = []
        for m in self._queue(queue):
            if m.type is None:
                raise ContractError(f"a message in {queue!r} has no type: not an event")
            out.append(self.registry.decode(m.type, m.body))
        return out

    def counts(self) -> dict[str, int]:
        """Queue name -> number of waiting messages, for queues that hold any."""
        return {q: len(ms) for q, ms in self._queues.items() if ms}

    def get(self, queue: str) -> FakeMessage | None:
        """Take the oldest message of ``queue`` (``basic_get`` with auto-ack)."""
        q = self._queue(queue)
        return q.popleft() if q else None

    def reject(self, queue: str) -> Route | None:
        """Reject the oldest message of ``queue`` without requeue: it is dead-lettered as
        the broker would (or dropped without a DLX). Returns the dead-letter route."""
        return self._dead_letter(queue, "reject")

    def expire(self, queue: str) -> Route | None:
        """Expire the oldest message of ``queue`` (TTL): dead-lettered, never back into
        ``queue`` itself (the broker's cycle rule)."""
        return self._dead_letter(queue, "expire")

    def _dead_letter(self, queue: str, reason: DeadLetterReason) -> Route | None:
        q = self._queue(queue)
        if not q:
            raise IndexError(f"queue {queue!r} is empty")
        message = q.popleft()
        route = self.router.dead_letter(
            queue, message.exchange, message.routing_key, message.headers, reason
        )
        if route is not None:
            self._deliver(message, route)
        return route

    def clear(self) -> None:
        """Empty every queue and forget what was published."""
        for q in self._queues.values():
            q.clear()
        self.published.clear()


class AsyncFakePublisher:
    """``await publisher.publish(...)`` onto a :class:`FakeBus`."""

    def __init__(self, bus: FakeBus) -> None:
        self.bus = bus

    async def publish(
        self,
        target: BaseModel | str,
        routing_key: str | None = None,
        body: Body | None = None,
        /,
        **options: Unpack[PublishOptions],
    ) -> str:
        return self.bus.publish(target, routing_key, body, **options)
