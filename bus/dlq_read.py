"""Reading a dead-letter queue without disturbing it: one pass of unacked deliveries.

A :class:`QueuePass` consumes a queue with manual acks and holds every delivery it does not
ack. Closing the channel hands all of them back at once, in order (checked on RabbitMQ
3.10.8 with 300 messages: consume all, ack every other one, close; the rest come back in
their order). A classic queue puts them back in their places. A quorum queue appends them
to its tail (read 1 of 5 and close: it comes back last), so callers read a quorum queue
whole (:func:`bus.dlq._whole`). Never ``basic.get``: on a quorum queue, messages taken by
``basic.get`` come back in hash order when their channel closes.

Quorum queues count every return in ``x-delivery-count``; once a return takes it past the
queue's delivery limit the broker drops or dead-letters the message. RabbitMQ 3.10 has no
default limit, 4.0 and later default to 20: :func:`bus.dlq.check_delivery_limit` refuses to
read a queue whose head one more read would put past its limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions

from bus.broker.connect import connect_sync
from bus.errors import BrokerError, NotFoundError
from bus.settings import BusSettings

__all__ = [
    "BROKER_HEADERS",
    "FAILURE_HEADERS",
    "DeadLetter",
    "PassLost",
    "QueuePass",
    "plain",
]

# Headers the consumer runtime writes on a dead-lettered copy: the retry ladder starts over
# without them.
FAILURE_HEADERS = (
    "x-retry-count",
    "x-exception-type",
    "x-exception-message",
    "x-failure-reason",
    "x-failed-queue",
)
# Owned by the broker: a client that sends them makes a later x-death history lie.
BROKER_HEADERS = ("x-death", "x-delivery-count")
BROKER_PREFIXES = ("x-first-death-", "x-last-death-")

# prefetch_count is an AMQP short; quorum queues ignore 0 ("unlimited") and give 2000.
_MAX_PREFETCH = 65535


class PassLost(BrokerError):
    """The connection or channel of a pass was lost: every unacked delivery went back."""


def plain(value: Any) -> Any:
    """A header value as JSON-friendly data (pika gives bytes, datetimes and Decimals)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or UTC).isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class DeadLetter:
    """One delivery of a dead-letter queue, as read (never changed)."""

    position: int
    delivery_tag: int
    properties: pika.BasicProperties
    body: bytes
    exchange: str
    routing_key: str
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def message_id(self) -> str | None:
        return _text(self.properties.message_id)

    @property
    def deaths(self) -> list[dict[str, Any]]:
        value = self.headers.get("x-death")
        return [d for d in value if isinstance(d, dict)] if isinstance(value, list) else []

    @property
    def ours(self) -> bool:
        """Dead-lettered by the consumer runtime (it names the queue that failed)."""
        return self.headers.get("x-failed-queue") is not None

    @property
    def reason(self) -> str | None:
        """``x-failure-reason``, else the broker's reason (rejected, expired, delivery_limit...)."""
        return self._ours_else_death("x-failure-reason", "reason")

    @property
    def exception_type(self) -> str | None:
        return _text(self.headers.get("x-exception-type"))

    @property
    def failed_queue(self) -> str | None:
        """The queue the message failed in: ``x-failed-queue``, else the latest ``x-death``."""
        return self._ours_else_death("x-failed-queue", "queue")

    def _ours_else_death(self, header: str, death_field: str) -> str | None:
        # A dead letter of the consumer runtime names its own reason and queue; one of the
        # broker has only x-death, latest death first.
        ours = _text(self.headers.get(header))
        if ours is not None:
            return ours
        deaths = self.deaths
        return _text(deaths[0].get(death_field)) if deaths else None

    @property
    def delivery_count(self) -> int | None:
        value = self.headers.get("x-delivery-count")
        return int(value) if isinstance(value, int) else None

    @property
    def replayed(self) -> int:
        value = self.headers.get("x-replayed")
        return int(value) if isinstance(value, int) else 0

    def dead_since(self) -> datetime | None:
        """When it was dead-lettered (``x-death`` time), else when it was published."""
        deaths = self.deaths
        when = deaths[0].get("time") if deaths else None
        if isinstance(when, datetime):
            return when.replace(tzinfo=when.tzinfo or UTC)
        stamp = self.properties.timestamp
        return datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int) else None

    def age(self, now: float | None = None) -> float | None:
        since = self.dead_since()
        if since is None:
            return None
        return max((now if now is not None else time.time()) - since.timestamp(), 0.0)

    def identity(self) -> tuple[str, str, str]:
        """What this message is, whatever the broker added on a return: seeing the same
        identity again after a lost connection means the same message came back."""
        headers = {k: v for k, v in self.headers.items() if k != "x-delivery-count"}
        digest = hashlib.sha256(self.body).hexdigest()
        return (self.message_id or "", digest, repr(sorted(plain(headers).items())))

    def to_data(self, preview: int = 200) -> dict[str, Any]:
        props = self.properties
        text = self.body[:preview].decode("utf-8", "replace")
        return {
            "position": self.position,
            "message_id": self.message_id,
            "reason": self.reason,
            "exception_type": self.exception_type,
            "exception_message": _text(self.headers.get("x-exception-message")),
            "failed_queue": self.failed_queue,
            "dead_lettered_by": "consumer" if self.ours else "broker",
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "age_seconds": self.age(),
            "properties": {
                "content_type": props.content_type,
                "content_encoding": props.content_encoding,
                "type": props.type,
                "correlation_id": props.correlation_id,
                "app_id": props.app_id,
                "timestamp": props.timestamp,
                "delivery_mode": props.delivery_mode,
                "priority": props.priority,
                "reply_to": props.reply_to,
                "expiration": props.expiration,
            },
            "headers": plain(self.headers),
            "body_bytes": len(self.body),
            "body_preview": text + ("..." if len(self.body) > preview else ""),
        }


class QueuePass:
    """One read of ``queue`` from its head: deliveries in order, unacked until :meth:`ack`.

    ``with QueuePass(settings, queue) as reading: for dead in reading.read(n): ...``;
    leaving the block closes the channel and every delivery not acked goes back in place.

    The consumer's prefetch is exactly the number asked for (the whole queue for a replay),
    so the broker sends nothing beyond it until acks free credit; the channel close then
    returns the held deliveries as one ordered batch. Messages dead-lettered while a pass
    runs may be pulled in by freed credit; pika hands those back one by one before the close,
    which on a quorum queue puts them ahead of the held ones.
    """

    def __init__(
        self,
        settings: BusSettings,
        queue: str,
        *,
        idle_timeout: float = 2.0,
        connection_name: str = "amqp-bus-dlq",
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.idle_timeout = idle_timeout
        self.connection_name = connection_name
        self.depth = 0
        self.consumers = 0
        self._connection: Any = None
        self._channel: Any = None
        self._consumer_tag: str | None = None

    def __enter__(self) -> QueuePass:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> int:
        """Connect and count the queue (raises :class:`NotFoundError` when it is missing)."""
        try:
            self._connection = connect_sync(self.settings, self.connection_name)
        except BrokerError as exc:
            raise PassLost(str(exc)) from None
        try:
            channel = self._connection.channel()
            try:
                ok = channel.queue_declare(self.queue, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    raise NotFoundError(
                        f"queue {self.queue!r} not found in vhost {self.settings.vhost!r}"
                    ) from None
                raise BrokerError(f"queue {self.queue!r}: {exc.reply_text}") from None
            self.depth, self.consumers = ok.message_count, ok.consumer_count
            self._channel = channel
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise PassLost(f"opening {self.queue!r}: connection lost ({exc!r})") from None
        except BaseException:
            self.close()
            raise
        return self.depth

    def read(self, count: int) -> list[DeadLetter]:
        """The first ``count`` messages of the queue (fewer when it holds fewer), in order."""
        count = min(count, _MAX_PREFETCH)
        got: list[DeadLetter] = []
        if count <= 0:
            return got
        channel = self._channel

        def take(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            dead = DeadLetter(len(got), method.delivery_tag, props, body, method.exchange,
                              method.routing_key, dict(props.headers or {}))  # fmt: skip
            got.append(dead)

        try:
            channel.basic_qos(prefetch_count=count)
            self._consumer_tag = channel.basic_consume(self.queue, take, auto_ack=False)
            idle_until = time.monotonic() + self.idle_timeout
            seen = 0
            while len(got) < count and time.monotonic() < idle_until:
                self._connection.process_data_events(time_limit=0.05)
                if len(got) != seen:
                    seen, idle_until = len(got), time.monotonic() + self.idle_timeout
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise PassLost(f"reading {self.queue!r}: connection lost ({exc!r})") from None
        return got

    def ack(self, tag: int) -> None:
        try:
            self._channel.basic_ack(tag)
        except (pika.exceptions.AMQPError, OSError, AttributeError) as exc:
            raise PassLost(f"ack on {self.queue!r}: connection lost ({exc!r})") from None

    def flush(self) -> None:
        """Write pending acks and read what the broker sent (raises :class:`PassLost`)."""
        try:
            if self._connection is None or not self._connection.is_open:
                raise PassLost(f"connection reading {self.queue!r} is closed")
            self._connection.process_data_events(time_limit=0)
            if self._channel is None or not self._channel.is_open:
                raise PassLost(f"channel reading {self.queue!r} is closed")
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise PassLost(f"reading {self.queue!r}: connection lost ({exc!r})") from None

    def finish(self) -> None:
        """Close the channel and wait for the broker's close-ok: every ack sent before it
        has then been applied, and every delivery not acked is back in its place."""
        channel, self._channel = self._channel, None
        try:
            if channel is None or not channel.is_open:
                raise PassLost(f"channel on {self.queue!r} closed before its acks were applied")
            # Acks go before the cancel: on a 3.10.8 quorum queue, acks sent after the
            # consumer's cancel were found not applied (the messages came back).
            if self._consumer_tag is not None:
                channel.basic_cancel(self._consumer_tag)
            channel.close()
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise PassLost(f"closing {self.queue!r}: connection lost ({exc!r})") from None
        finally:
            self.close()

    def close(self) -> None:
        """Close the channel first, so every held delivery goes back in order, then the link."""
        channel, connection = self._channel, self._connection
        self._channel = self._connection = None
        # Already lost when these fail: the broker has requeued everything unacked anyway.
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            if channel is not None and channel.is_open:
                channel.close()
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            if connection is not None and connection.is_open:
                connection.close()
