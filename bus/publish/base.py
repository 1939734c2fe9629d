"""What both publishing flavours are before any I/O: options, resolving, properties.

:class:`PublisherBase` is to :class:`~bus.publish.aio.AsyncPublisher` (aio-pika) and
:class:`~bus.publish.blocking.BlockingPublisher` (pika) what httpx's base client is to its
sync and async clients: the constructor and its checks, the mapping of ``publish`` and
``send_task`` calls onto wire messages (:class:`~bus.publish.message.Resolver`) and the
properties each message carries. The flavours add the I/O only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from pydantic import BaseModel

from bus import tracing
from bus.publish.frames import OwnProperties, encode_properties
from bus.publish.message import (
    CONTENT_TYPE,
    DEFAULT_MAX_MESSAGE_SIZE,
    Body,
    Outgoing,
    PublishOptions,
    Resolved,
    Resolver,
    TaskOptions,
    TopologyLike,
)
from bus.publish.outcomes import DEFAULT_CONFIRM_TIMEOUT, DEFAULT_WINDOW, default_app_id
from bus.publish.wire import check_short_string
from bus.settings import BusSettings
from bus.tracing import MessageTrace

__all__ = ["PublisherBase", "PublisherOptions", "item_id"]


class PublisherOptions(TypedDict, total=False):
    """The constructor keywords of every publisher (see :class:`PublisherBase`)."""

    exchanges: Iterable[str]
    app_id: str | None
    confirm_timeout: float
    max_message_size: int
    window: int
    connection_name: str | None
    resolver: Resolver | None


# What a publish returns: the message_id (pika), or a coroutine that gives it (aio-pika).
R = TypeVar("R")


class PublisherBase(Generic[R]):
    """Settings, resolver, defaults and the publish calls of one publisher; see the module
    docstring. A flavour implements :meth:`_deliver` (and ``publish_many``).

    ``resolver`` replaces the one built from ``topology`` (a public hook: the DLQ replay's
    resolver keeps a dead letter's properties, see :class:`~bus.publish.message.KeptProperties`).
    """

    default_connection_name = "amqp-bus-publisher"

    def __init__(
        self,
        settings: BusSettings,
        topology: TopologyLike | None = None,
        **options: Unpack[PublisherOptions],
    ) -> None:
        self._init(settings, topology, **options)

    def _init(
        self,
        settings: BusSettings,
        topology: TopologyLike | None,
        *,
        exchanges: Iterable[str] = (),
        app_id: str | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        window: int = DEFAULT_WINDOW,
        connection_name: str | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        if confirm_timeout <= 0:
            raise ValueError("confirm_timeout must be positive")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.settings = settings
        self.resolver = resolver if resolver is not None else Resolver(topology, max_message_size)
        self.app_id = app_id or default_app_id()
        check_short_string(self.app_id, "app_id")
        self.confirm_timeout = confirm_timeout
        self.window = window
        self.connection_name = connection_name or self.default_connection_name
        self._exchanges = list(exchanges)
        self._user = settings.credentials()[0]
        self._own = OwnProperties(CONTENT_TYPE, self.app_id)

    def seconds(self, confirm_timeout: float | None) -> float:
        """The deadline of one publish: its own, else the publisher's."""
        return self.confirm_timeout if confirm_timeout is None else confirm_timeout

    def exchanges_to_check(self) -> list[str]:
        """Every exchange the start-up check covers: the contracts' and ``exchanges=``."""
        return self.resolver.exchanges(self._exchanges)

    # -- publishing -----------------------------------------------------------------------
    def publish(
        self,
        target: BaseModel | str,
        routing_key: str | None = None,
        body: Body | None = None,
        /,
        *,
        confirm_timeout: float | None = None,
        **options: Unpack[PublishOptions],
    ) -> R:
        """Publish one message and wait for its confirm; returns its ``message_id``.

        ``publish(event)`` takes exchange, routing key and headers from the event's contract;
        ``publish(exchange, routing_key, body)`` publishes bytes, plain JSON data or a model.
        """
        return self._deliver(
            lambda: self.resolver.call(target, routing_key, body, options), confirm_timeout
        )

    def send_task(
        self,
        queue: str,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        confirm_timeout: float | None = None,
        **options: Unpack[TaskOptions],
    ) -> R:
        """Enqueue a Celery task on a topology queue as plain AMQP; returns the task id.

        Confirmed and mandatory like every publish; no Celery import needed.
        """
        return self._deliver(
            lambda: self.resolve_task(queue, task, args, kwargs, **options), confirm_timeout
        )

    def publish_resolved(self, message: Resolved, *, confirm_timeout: float | None = None) -> R:
        """Send a message resolved by the caller (a copy with :class:`KeptProperties`, say)
        and wait for its confirm; returns its ``message_id``."""
        return self._deliver(lambda: message, confirm_timeout)

    def _deliver(self, resolve: Callable[[], Resolved], confirm_timeout: float | None) -> R:
        """Resolve (errors are the caller's, nothing sent) and send one message, waiting for
        its confirm: the flavour's I/O."""
        raise NotImplementedError

    def resolve_item(self, item: Outgoing | BaseModel) -> Resolved:
        """The wire message of one ``publish_many`` item."""
        return self.resolver.item(item)

    def resolve_task(
        self,
        queue: str,
        task: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        **options: Unpack[TaskOptions],
    ) -> Resolved:
        """The wire message of one ``send_task`` call (Celery protocol 2, plain AMQP)."""
        return self.resolver.task_with(queue, task, args, kwargs, self.app_id, options)

    def properties(self, message: Resolved, now: int) -> bytes:
        """The content-header properties of ``message`` as they go on the wire (see
        :mod:`bus.publish.frames`), sent at ``now`` (seconds since the epoch). Raises
        :class:`~bus.errors.UnsendableMessageError` for a value AMQP cannot carry."""
        headers = traced_headers(message)
        if message.kept is None:
            return self._own.encode(message, headers, now)
        return encode_properties(self._values(message, headers, now))

    def wire_values(self, message: Resolved, now: int) -> tuple[Any, ...]:
        """The property values of ``message`` in the order of
        :data:`~bus.publish.frames.PROPERTY_NAMES` (None: not sent), for a client's own
        properties class: what :meth:`properties` encodes."""
        return self._values(message, traced_headers(message), now)

    def _values(
        self, message: Resolved, headers: dict[str, Any] | None, now: int
    ) -> tuple[Any, ...]:
        kept = message.kept
        if kept is None:
            return (
                CONTENT_TYPE, message.content_encoding, headers, 2 if message.persistent else 1,
                None, message.correlation_id, message.reply_to, None, message.message_id, now,
                message.event_type, None, self.app_id, None,
            )  # fmt: skip
        # A copy keeps every property but its headers and message_id; a user_id goes out only
        # when it is the connection's user (the broker refuses another with 406).
        return (
            kept.content_type, kept.content_encoding, headers, kept.delivery_mode,
            kept.priority, kept.correlation_id, kept.reply_to, kept.expiration,
            message.message_id, kept.timestamp, kept.type,
            kept.user_id if kept.user_id == self._user else None, kept.app_id, kept.cluster_id,
        )  # fmt: skip


def traced_headers(message: Resolved) -> dict[str, Any] | None:
    """The headers to send, with the context of a ``publish`` span when tracing is on.

    Properties are built right before the write, by every path (one publish, a batch, a
    copy), so each message gets its span here: it marks the send (its parent is the current
    span, else the context the headers carry), not the wait for the confirm.
    """
    if not tracing.tracing_enabled():
        return message.headers
    headers = dict(message.headers or {})
    trace = MessageTrace(
        message.exchange,
        message.routing_key,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        body_size=len(message.body),
    )
    with tracing.publishing(trace, headers):
        pass
    return headers or None


def item_id(item: object) -> str | None:
    """The ``message_id`` of a ``publish_many`` item that was never resolved."""
    return item.message_id if isinstance(item, Outgoing) else None
