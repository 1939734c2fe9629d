"""``Message``: a read-only view of one delivery, handed to handlers that ask for the raw message.

It wraps the client's delivery without copying it: properties and headers are read on access,
so building one per delivery costs one small object.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

from aiormq.abc import DeliveredMessage

from bus.tracing import MessageTrace

__all__ = [
    "ORIGINAL_EXCHANGE_HEADER",
    "ORIGINAL_ROUTING_KEY_HEADER",
    "RETRY_COUNT_HEADER",
    "Message",
    "describe",
    "int_header",
]

T = TypeVar("T")  # the type of one AMQP property

RETRY_COUNT_HEADER = "x-retry-count"
# Where a message was first published: carried by every retry and dead-letter copy, so that it
# can be named without a type and sent back where it came from (`bus dlq replay --to-exchange`).
ORIGINAL_EXCHANGE_HEADER = "x-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER = "x-original-routing-key"


def int_header(headers: dict[str, Any] | None, name: str) -> int | None:
    """A non-negative integer header, or None when absent or not a usable integer."""
    if not headers:
        return None
    value = headers.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class _Property(Generic[T]):
    """One AMQP property of the delivery, read on access like a ``property``."""

    __slots__ = ("attribute",)

    def __init__(self, attribute: str) -> None:
        self.attribute = attribute

    @overload
    def __get__(self, message: None, owner: type[Message]) -> _Property[T]: ...
    @overload
    def __get__(self, message: Message, owner: type[Message] | None = None) -> T: ...
    def __get__(
        self, message: Message | None, owner: type[Message] | None = None
    ) -> T | _Property[T]:
        if message is None:  # looked up on the class (help(), documentation tools)
            return self
        value: T = getattr(message._delivered.header.properties, self.attribute)
        return value


class Message:
    """One delivery from ``queue``: body, AMQP properties and delivery information."""

    __slots__ = ("_delivered", "queue")

    def __init__(self, delivered: DeliveredMessage, queue: str) -> None:
        self._delivered = delivered
        self.queue = queue

    @property
    def body(self) -> bytes:
        return self._delivered.body

    def json(self) -> Any:
        """The body decoded as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self._delivered.body)

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self._delivered.header.properties.headers or {})

    content_type = _Property[str | None]("content_type")
    content_encoding = _Property[str | None]("content_encoding")
    type = _Property[str | None]("message_type")
    """The AMQP ``type`` property: the event name."""
    message_id = _Property[str | None]("message_id")
    correlation_id = _Property[str | None]("correlation_id")
    app_id = _Property[str | None]("app_id")
    timestamp = _Property[datetime | None]("timestamp")
    delivery_mode = _Property[int | None]("delivery_mode")

    def trace(self) -> MessageTrace:
        """What the ``process`` span of this delivery says about it (:mod:`bus.tracing`)."""
        return MessageTrace(
            self.exchange,
            self.routing_key,
            message_id=self.message_id,
            queue=self.queue,
            delivery_tag=self.delivery_tag,
            correlation_id=self.correlation_id,
            body_size=len(self.body),
        )

    @property
    def exchange(self) -> str:
        return self._delivered.exchange or ""

    @property
    def routing_key(self) -> str:
        return self._delivered.routing_key or ""

    @property
    def original_exchange(self) -> str:
        """The exchange the message was first published to: ``x-original-exchange`` of a retry
        or dead-letter copy (which arrives through the default exchange), else ``exchange``."""
        value = (self._delivered.header.properties.headers or {}).get(ORIGINAL_EXCHANGE_HEADER)
        return value if isinstance(value, str) else self.exchange

    @property
    def original_routing_key(self) -> str:
        """The routing key it was first published with (``x-original-routing-key``)."""
        value = (self._delivered.header.properties.headers or {}).get(ORIGINAL_ROUTING_KEY_HEADER)
        return value if isinstance(value, str) else self.routing_key

    @property
    def delivery_tag(self) -> int:
        tag = self._delivered.delivery_tag
        return tag if tag is not None else 0

    @property
    def redelivered(self) -> bool:
        return bool(self._delivered.redelivered)

    @property
    def retry_count(self) -> int:
        """How many times the runtime has sent this message through the retry ladder."""
        return int_header(self._delivered.header.properties.headers, RETRY_COUNT_HEADER) or 0

    @property
    def delivery_count(self) -> int | None:
        """Quorum queues' ``x-delivery-count`` (0 on the first delivery); None on classic queues."""
        return int_header(self._delivered.header.properties.headers, "x-delivery-count")

    @property
    def death(self) -> list[dict[str, Any]]:
        """The broker's ``x-death`` history (newest first), empty when never dead-lettered."""
        value = (self._delivered.header.properties.headers or {}).get("x-death")
        if not isinstance(value, list):
            return []
        return [dict(entry) for entry in value if isinstance(entry, dict)]

    @property
    def key(self) -> str:
        """A name for this message that survives redelivery: ``message_id``, else a digest.

        The digest covers the body, ``type`` and routing key, which a requeue does not change;
        two identical messages without an id share it (and so share a requeue count).
        """
        message_id = self.message_id
        if message_id:
            return f"id:{message_id}"
        digest = hashlib.sha256()
        for part in (self.type or "", self.routing_key):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        digest.update(self._delivered.body)
        return f"sha256:{digest.hexdigest()[:16]}"

    @property
    def delivered(self) -> DeliveredMessage:
        """The client's delivery object (aiormq), for what this view does not cover."""
        return self._delivered

    def __repr__(self) -> str:
        return (
            f"Message(queue={self.queue!r}, type={self.type!r}, message_id={self.message_id!r}, "
            f"routing_key={self.routing_key!r}, delivery_tag={self.delivery_tag})"
        )


def describe(message: Message) -> str:
    """How logs name a message: its id, or (without one) digest, type, key and size."""
    if message.message_id:
        return repr(message.message_id)
    return (
        f"without message_id ({message.key}, type {message.type!r}, "
        f"routing key {message.routing_key!r}, {len(message.body)} bytes)"
    )
