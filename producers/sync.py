"""Synchronous publisher on pika for services that are not async.

Same wire messages, semantics and errors as :class:`producers.publisher.Publisher`:
confirms and ``mandatory`` always on, persistent by default, and every publish either
returns after the broker's confirm or raises.

pika's blocking API waits for each confirm in turn, so :meth:`SyncPublisher.publish_many`
publishes one message at a time (a window of 1); use the async publisher for throughput.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, overload

import pika
import pika.exceptions
from pydantic import BaseModel

from bus.broker.connect import pika_parameters_all, translate_error
from bus.errors import (
    AccessRefusedError,
    BrokerError,
    BusError,
    MessageTooLargeError,
    NotFoundError,
    PublishError,
    PublishNackedError,
    PublishTimeoutError,
    UnroutableError,
)
from bus.outgoing import check_short_string
from bus.settings import BusSettings, mask_urls
from producers._common import (
    CONTENT_TYPE,
    DEFAULT_CONFIRM_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_WINDOW,
    Body,
    Outgoing,
    PublishResult,
    Resolved,
    Resolver,
    TopologyLike,
    default_app_id,
    where,
)
from producers._pipeline import ConfirmPipeline

__all__ = ["SyncPublisher"]

# publish_many lets the connection read confirms every so many writes, so that the broker's
# acks do not pile up in the socket while a large window is still filling.
_POLL_EVERY = 64


class _DeadlineExpired(Exception):
    """Ends pika's wait for a confirm; never leaves this module."""


class SyncPublisher:
    """Confirmed publishing on one pika ``BlockingConnection``.

    ``with SyncPublisher.connect(settings, topology) as publisher: publisher.publish(event)``.
    After a connection-level failure (timeout, lost connection) the next publish reconnects;
    after a channel-level one (missing exchange) it opens a new channel.
    """

    def __init__(
        self,
        settings: BusSettings,
        topology: TopologyLike | None = None,
        *,
        exchanges: Iterable[str] = (),
        app_id: str | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        window: int = DEFAULT_WINDOW,
        connection_name: str = "amqp-bus-sync-publisher",
    ) -> None:
        if confirm_timeout <= 0:
            raise ValueError("confirm_timeout must be positive")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.settings = settings
        self.resolver = Resolver(topology, max_message_size)
        self.app_id = app_id or default_app_id()
        check_short_string(self.app_id, "app_id")
        self.confirm_timeout = confirm_timeout
        self._exchanges = list(exchanges)
        self._connection_name = connection_name
        self._connection: Any = None
        self._channel: Any = None
        self._pipeline: ConfirmPipeline | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        settings: BusSettings,
        topology: TopologyLike | None = None,
        **options: Any,
    ) -> SyncPublisher:
        """A connected publisher (exchanges checked); options as ``__init__``."""
        return cls(settings, topology, **options).start()

    def start(self) -> SyncPublisher:
        if self._started:
            return self
        try:
            self.check_exchanges(self.resolver.exchanges(self._exchanges))
            self._ensure_channel()
        except BaseException:
            self.close()
            raise
        self._started = True
        return self

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._pipeline = None
        self._started = False
        if connection is not None and connection.is_open:
            # Already going away when this fails: nothing left to release.
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()

    def __enter__(self) -> SyncPublisher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def check_exchanges(self, names: Iterable[str]) -> None:
        """Raise :class:`NotFoundError` naming every exchange in ``names`` that is missing."""
        connection = self._ensure_connection()
        missing: list[str] = []
        channel: Any = None
        try:
            for name in names:
                if not name:
                    continue
                if channel is None or channel.is_closed:
                    channel = connection.channel()
                try:
                    channel.exchange_declare(name, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code == 404:
                        missing.append(name)
                    elif exc.reply_code == 403:
                        raise AccessRefusedError(
                            f"no access to exchange {name!r}: {exc.reply_text}"
                        ) from None
                    else:
                        raise BrokerError(
                            f"checking exchange {name!r}: {exc.reply_code} {exc.reply_text}"
                        ) from None
        finally:
            if channel is not None and channel.is_open:
                channel.close()
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            noun = "exchange" if len(missing) == 1 else "exchanges"
            raise NotFoundError(
                f"{noun} {listed} not found in vhost {self.settings.vhost!r}: "
                "producers never declare topology; run `bus apply` first"
            )

    # -- publishing -----------------------------------------------------------------------
    @overload
    def publish(
        self,
        event: BaseModel,
        /,
        *,
        event_name: str | None = None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        persistent: bool = True,
        confirm_timeout: float | None = None,
    ) -> str: ...

    @overload
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        /,
        *,
        event_type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        persistent: bool = True,
        confirm_timeout: float | None = None,
    ) -> str: ...

    def publish(
        self,
        target: BaseModel | str,
        routing_key: str | None = None,
        body: Body | None = None,
        /,
        *,
        event_name: str | None = None,
        event_type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        persistent: bool = True,
        confirm_timeout: float | None = None,
    ) -> str:
        """Publish one message and wait for its confirm; returns its ``message_id``."""
        message = self.resolver.call(
            target,
            routing_key,
            body,
            event_name=event_name,
            event_type=event_type,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            traceparent=traceparent,
            persistent=persistent,
        )
        self._send(message, self.confirm_timeout if confirm_timeout is None else confirm_timeout)
        return message.message_id

    def send_task(
        self,
        queue: str,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        ignore_result: bool = True,
        reply_to: str | None = None,
        expires: datetime | None = None,
        confirm_timeout: float | None = None,
    ) -> str:
        """Enqueue a Celery task on a topology queue as plain AMQP; returns the task id."""
        message = self.resolver.task(
            queue,
            task,
            args,
            kwargs,
            task_id=task_id,
            origin=self.app_id,
            ignore_result=ignore_result,
            reply_to=reply_to,
            expires=expires,
        )
        self._send(message, self.confirm_timeout if confirm_timeout is None else confirm_timeout)
        return message.message_id

    def publish_many(
        self,
        messages: Iterable[Outgoing | BaseModel],
        *,
        window: int | None = None,
        confirm_timeout: float | None = None,
    ) -> list[PublishResult]:
        """Publish with at most ``window`` unconfirmed messages in flight (pipelined, on a
        channel of its own); one :class:`PublishResult` per message, in order.

        A failure of one message (unroutable, nacked, invalid) is reported and the others go
        on. When the channel or the connection is lost, every unconfirmed message fails
        ("may or may not have been delivered": retry it with the same ``message_id``) and the
        rest go out on a new channel or connection. ``window=1`` waits for each confirm.
        """
        seconds = self.confirm_timeout if confirm_timeout is None else confirm_timeout
        limit = self.window if window is None else window
        if limit < 1:
            raise ValueError("window must be at least 1")
        ids: list[str | None] = []
        failed: dict[int, Exception] = {}
        # Written on a channel the broker closed over an earlier message: never delivered,
        # sent again first, in their order, on the next channel.
        again: deque[tuple[int, Resolved]] = deque()
        pipeline: ConfirmPipeline | None = None
        self._check_connection()

        def settle(done: ConfirmPipeline) -> None:
            done_failed, unsent = done.take_outcomes()
            failed.update(done_failed)
            again.extendleft(reversed(unsent))

        def live_pipeline() -> ConfirmPipeline:
            nonlocal pipeline
            while pipeline is None or pipeline.dead or again:
                if pipeline is not None and pipeline.dead:
                    settle(pipeline)
                    pipeline = None
                if pipeline is None:
                    pipeline = self._open_pipeline()
                while again and not pipeline.dead:
                    index, message = again.popleft()
                    try:
                        pipeline.publish(index, message, seconds, limit)
                    except Exception as exc:
                        failed[index] = exc
            return pipeline

        for index, item in enumerate(messages):
            ids.append(None)
            try:
                message = self.resolver.item(item)
                ids[index] = message.message_id
                current = live_pipeline()
                current.publish(index, message, seconds, limit)
                if index % _POLL_EVERY == 0:
                    current.poll()
            except Exception as exc:
                failed[index] = exc
        while pipeline is not None or again:
            try:
                current = live_pipeline()
            except Exception as exc:  # no channel for the messages to send again
                failed.update((index, exc) for index, _ in again)
                break
            current.drain()
            settle(current)
            if not again:
                break
        return [PublishResult(message_id, failed.get(i)) for i, message_id in enumerate(ids)]

    # -- internals ------------------------------------------------------------------------
    def _ensure_connection(self) -> Any:
        connection = self._connection
        if connection is not None and connection.is_open:
            return connection
        self._connection = self._channel = None
        # One parameter set per cluster node: pika tries them in order, so the connection
        # opened again after a lost one lands on a node that is up.
        nodes = pika_parameters_all(self.settings, self._connection_name)
        for params in nodes:
            # pika tears the connection down when a broker alarm blocks it for this long; it
            # matches the confirm deadline so a blocked publish fails like an unconfirmed one.
            params.blocked_connection_timeout = self.confirm_timeout
        try:
            self._connection = pika.BlockingConnection(nodes if len(nodes) > 1 else nodes[0])
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise translate_error(exc, mask_urls(self.settings.amqp_urls)) from None
        return self._connection

    def _check_connection(self) -> None:
        """Read what the broker sent meanwhile: a connection it closed is dropped here,
        before a pipeline writes into it."""
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        try:
            connection.process_data_events(time_limit=0)
        except (pika.exceptions.AMQPError, OSError):
            self._drop()

    def _open_pipeline(self) -> ConfirmPipeline:
        pipeline = self._pipeline
        if pipeline is not None and not pipeline.dead and self._connection is not None:
            return pipeline
        self._pipeline = None
        try:
            connection = self._ensure_connection()
            pipeline = ConfirmPipeline(
                connection,
                self._properties,
                partial(_channel_error, settings=self.settings),
                self.confirm_timeout,
            )
        except BusError:
            self._drop()
            raise
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise PublishError(f"cannot open a channel to publish: {exc!r}") from None
        if pipeline.dead:
            self._drop()
            raise PublishError("the new publishing channel closed at once")
        self._pipeline = pipeline
        return pipeline

    def _ensure_channel(self) -> Any:
        channel = self._channel
        if channel is not None and channel.is_open:
            return channel
        connection = self._ensure_connection()
        channel = connection.channel()
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def _properties(self, message: Resolved) -> pika.BasicProperties:
        return pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=2 if message.persistent else 1,
            headers=message.headers,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=int(time.time()),
            type=message.event_type,
            app_id=self.app_id,
            content_encoding=message.content_encoding,
            reply_to=message.reply_to,
        )

    def _send(self, message: Resolved, seconds: float) -> None:
        to = where(message)
        try:
            channel = self._ensure_channel()
        except BusError:
            raise
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise PublishError(f"cannot open a channel to publish to {to}: {exc}") from None
        connection = self._connection
        # BlockingChannel waits for the confirm with no deadline of its own. When ours
        # expires, end the stream the way pika ends it for blocked_connection_timeout: the
        # wait returns with our error and the next publish reconnects.
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            connection._impl._terminate_stream(_DeadlineExpired())

        timer = connection._impl.ioloop.call_later(seconds, expire)
        try:
            channel.basic_publish(
                message.exchange,
                message.routing_key,
                message.body,
                self._properties(message),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError as exc:
            returned = exc.messages[0].method if exc.messages else None
            raise UnroutableError(
                getattr(returned, "exchange", message.exchange),
                getattr(returned, "routing_key", message.routing_key),
                f"{getattr(returned, 'reply_code', 312)} "
                f"{getattr(returned, 'reply_text', 'NO_ROUTE')}",
            ) from None
        except pika.exceptions.NackError:
            # A new channel for the next publish: RabbitMQ 3.10.8 can keep nacking every
            # publish of a channel to a quorum queue whose leader's node died (see
            # Publisher._retire); nothing else is in flight on this channel.
            self._channel = None
            with contextlib.suppress(pika.exceptions.AMQPError):
                channel.close()
            raise PublishNackedError(
                f"broker nacked the message to {to} "
                "(e.g. a full queue with overflow reject-publish)"
            ) from None
        except (_DeadlineExpired, pika.exceptions.ConnectionBlockedTimeout) as exc:
            self._drop()
            blocked = isinstance(exc, pika.exceptions.ConnectionBlockedTimeout)
            raise PublishTimeoutError(
                f"no confirm within {seconds:g}s for {to}"
                + (
                    " (connection blocked by a broker resource alarm)"
                    if blocked
                    else " (broker blocked by a resource alarm, overloaded or unreachable)"
                )
                + "; the message may or may not have been delivered"
            ) from None
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            raise _channel_error(exc, message, self.settings) from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise PublishError(
                f"connection to the broker lost before the confirm for {to}: "
                f"{exc!r}; the message may or may not have been delivered"
            ) from None
        finally:
            if expired and self._connection is connection:
                # The confirm won the race against the deadline, but the stream is already
                # being torn down: the next publish must not find this connection.
                self._drop()
            elif self._connection is connection and connection.is_open:
                connection._impl.ioloop.remove_timeout(timer)

    def _drop(self) -> None:
        """Forget a connection that failed; close it if pika has not done so already."""
        connection, self._connection, self._channel = self._connection, None, None
        self._pipeline = None
        if connection is None or connection.is_closed:
            return
        # It is failing anyway: errors of the close itself say nothing new.
        with contextlib.suppress(pika.exceptions.AMQPError, OSError, _DeadlineExpired):
            if connection.is_open:
                connection.close()
            else:
                # pika is tearing the stream down; run its loop until the socket is closed.
                until = time.monotonic() + 5.0
                while not connection.is_closed and time.monotonic() < until:
                    connection.process_data_events(0.05)


def _channel_error(
    exc: pika.exceptions.ChannelClosedByBroker, message: Resolved, settings: BusSettings
) -> BusError:
    text = f"{exc.reply_code} {exc.reply_text}"
    to, exchange = where(message), message.exchange
    if exc.reply_code == 404:
        return NotFoundError(f"publish to {to} failed, channel closed by the broker: {text}")
    if exc.reply_code == 403:
        # basic.publish needs write on the exchange (on 'amq.default' for the default one).
        return AccessRefusedError.from_reply(
            exc.reply_text, "write", kind="exchange", name=exchange or "amq.default",
            vhost=settings.vhost, user=settings.credentials()[0],
        )  # fmt: skip
    if "larger than configured max size" in exc.reply_text:
        return MessageTooLargeError(f"broker refused the message to {to}: {text}")
    return BrokerError(f"publish to {to} failed, channel closed by the broker: {text}")
