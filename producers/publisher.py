"""Async publisher on one aio-pika robust connection: confirmed, mandatory, persistent.

``await publisher.publish(OrderCreated(...))`` returns once the broker has confirmed the
message and routed it to at least one queue; anything else raises:

- :class:`~bus.errors.UnroutableError`: returned by the broker (``mandatory``, no route);
- :class:`~bus.errors.PublishNackedError`: nacked (e.g. a full queue with ``reject-publish``);
- :class:`~bus.errors.PublishTimeoutError`: no confirm within the deadline (a blocked
  connection during a memory or disk alarm, a broker that is down or reconnecting);
- :class:`~bus.errors.MessageTooLargeError` / :class:`~bus.errors.ContractError`: refused
  before anything is sent;
- :class:`~bus.errors.NotFoundError` and other :class:`~bus.errors.BrokerError`: the broker
  closed the channel (a missing exchange, no permission). The next publish opens a new
  channel, so one bad publish never poisons the connection.

The publisher never declares topology: at start-up it checks passively that every exchange
it will publish to exists (``bus apply`` declares them).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence, Sized
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, cast, overload

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from pydantic import BaseModel

from bus.broker.connect import close_later, connect_async
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
from bus.settings import BusSettings
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
    closed_over_another,
    default_app_id,
    first_refused,
    where,
)

__all__ = ["Publisher"]

# How long to wait between attempts to open a channel while the connection is reconnecting.
_REOPEN_PAUSE = 0.1


class Publisher:
    """Confirmed publishing on one robust aio-pika connection.

    Use ``async with Publisher.connect(settings, topology) as publisher:`` (or
    ``publisher = await Publisher.connect(...)`` and ``await publisher.close()``).
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
        connection_name: str = "amqp-bus-publisher",
    ) -> None:
        if confirm_timeout <= 0:
            raise ValueError("confirm_timeout must be positive")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.settings = settings
        self.resolver = Resolver(topology, max_message_size)
        self.app_id = app_id or default_app_id()
        check_short_string(self.app_id, "app_id")
        self.confirm_timeout = confirm_timeout
        self.window = window
        self._exchanges = list(exchanges)
        self._connection_name = connection_name
        self._connection: AbstractRobustConnection | None = None
        self._channel: aio_pika.Channel | None = None
        self._underlay: aiormq.Channel | None = None
        self._lane: _Lane | None = None
        self._reopen_lock = asyncio.Lock()
        # message_id -> publishes waiting for the one in flight with that id (see _send_in_turn)
        self._in_flight: dict[str, list[asyncio.Future[None]] | None] = {}
        # Channels replaced after a nack, closed once their in-flight confirms had time.
        self._retiring: set[asyncio.Handle | asyncio.Task[None]] = set()
        self._second = -1
        self._timestamp = datetime.now(UTC)

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        settings: BusSettings,
        topology: TopologyLike | None = None,
        **options: Any,
    ) -> _Opening:
        """A publisher to ``await`` or to use as ``async with``; options as ``__init__``."""
        return _Opening(cls(settings, topology, **options))

    async def start(self) -> Publisher:
        """Connect, check every exchange passively, open the publishing channel."""
        if self._connection is not None:
            return self
        self._connection = await connect_async(self.settings, self._connection_name)
        try:
            await self.check_exchanges(self.resolver.exchanges(self._exchanges))
            await self._open_channel()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._underlay = self._lane = None
        for pending in self._retiring:
            pending.cancel()  # the connection's close below closes those channels too
        self._retiring.clear()
        if connection is not None and not connection.is_closed:
            await connection.close()

    async def __aenter__(self) -> Publisher:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def check_exchanges(self, names: Iterable[str]) -> None:
        """Raise :class:`NotFoundError` naming every exchange in ``names`` that is missing.

        Each check is a passive declare on a throwaway channel: a 404 closes the channel, and
        the publishing channel must not be the one that pays for it.
        """
        connection = self._require_connection()
        missing: list[str] = []
        channel: aio_pika.abc.AbstractChannel | None = None
        try:
            for name in names:
                if not name:
                    continue
                if channel is None or channel.is_closed:
                    channel = await connection.channel(publisher_confirms=False)
                try:
                    await channel.declare_exchange(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    missing.append(name)
                except aiormq.exceptions.ChannelAccessRefused as exc:
                    raise AccessRefusedError(f"no access to exchange {name!r}: {exc}") from None
        finally:
            if channel is not None and not channel.is_closed:
                await channel.close()
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            raise NotFoundError(
                f"exchange {listed} not found in vhost {self.settings.vhost!r}: "
                "producers never declare topology; run `bus apply` first"
                if len(missing) == 1
                else f"exchanges {listed} not found in vhost {self.settings.vhost!r}: "
                "producers never declare topology; run `bus apply` first"
            )

    # -- publishing -----------------------------------------------------------------------
    @overload
    async def publish(
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
    async def publish(
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

    async def publish(
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
        """Publish one message and wait for its confirm; returns its ``message_id``.

        ``publish(event)`` takes exchange, routing key and headers from the event's contract;
        ``publish(exchange, routing_key, body)`` publishes bytes, plain JSON data or a model.
        """
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
        await self._send_in_turn(
            message, self.confirm_timeout if confirm_timeout is None else confirm_timeout
        )
        return message.message_id

    async def send_task(
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
        """Enqueue a Celery task on a topology queue as plain AMQP; returns the task id.

        Confirmed and mandatory like every publish; no Celery import needed.
        """
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
        await self._send_in_turn(
            message, self.confirm_timeout if confirm_timeout is None else confirm_timeout
        )
        return message.message_id

    async def publish_many(
        self,
        messages: Iterable[Outgoing | BaseModel],
        *,
        window: int | None = None,
        confirm_timeout: float | None = None,
    ) -> list[PublishResult]:
        """Publish with at most ``window`` unconfirmed messages in flight.

        Returns one :class:`PublishResult` per message, in order; a failure of one message
        (unroutable, nacked, timed out, too large) is reported, the others go on. Each
        message has its own deadline, counted from the moment it is sent.
        """
        limit = window or self.window
        deadline = self.confirm_timeout if confirm_timeout is None else confirm_timeout
        if isinstance(messages, Sized):
            results: list[PublishResult | None] = [None] * len(messages)
            limit = min(limit, len(messages))
        else:
            results = []
        source: Iterator[tuple[int, Outgoing | BaseModel]] = enumerate(messages)

        # A fixed pool of `limit` workers instead of one task per message: the window is
        # the pool size and each message costs a coroutine step, not a task.
        async def worker() -> None:
            for index, item in source:
                if index >= len(results):
                    results.extend([None] * (index + 1 - len(results)))
                message_id: str | None = None
                try:
                    message = self.resolver.item(item)
                    message_id = message.message_id
                    await self._send_in_turn(message, deadline)
                except Exception as exc:
                    results[index] = PublishResult(message_id, exc)
                else:
                    results[index] = PublishResult(message_id)

        if limit > 0:
            async with asyncio.TaskGroup() as group:
                for _ in range(limit):
                    group.create_task(worker())
        # Every index was written by the worker that took it from `source`.
        return cast(list[PublishResult], results)

    async def _send_in_turn(self, message: Resolved, seconds: float) -> None:
        """:meth:`_send`, with at most one publish per ``message_id`` awaiting its confirm.

        The client matches a returned (unroutable) message to its publish by ``message_id``
        alone. Two publishes in flight with one id (a caller retrying with the same id, say)
        could swap outcomes: the unroutable one confirmed (and gone), the routed one raising
        UnroutableError. A publish whose id is in flight waits for it, within its deadline.
        """
        message_id = message.message_id
        in_flight = self._in_flight
        if message_id in in_flight:
            seconds = await self._wait_turn(message, seconds)
        in_flight[message_id] = None
        try:
            await self._send(message, seconds)
        finally:
            for turn in in_flight.pop(message_id, None) or ():
                if not turn.done():
                    turn.set_result(None)

    async def _wait_turn(self, message: Resolved, seconds: float) -> float:
        """Wait until no publish with this ``message_id`` is in flight; the time left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while message.message_id in self._in_flight:
            waiters = self._in_flight[message.message_id]
            if waiters is None:
                waiters = self._in_flight[message.message_id] = []
            turn: asyncio.Future[None] = loop.create_future()
            waiters.append(turn)
            try:
                async with asyncio.timeout_at(deadline):
                    await turn
            except TimeoutError:
                raise PublishTimeoutError(
                    f"no confirm within {seconds:g}s for exchange {message.exchange!r} routing "
                    f"key {message.routing_key!r}: an earlier publish with message_id "
                    f"{message.message_id!r} still awaits its confirm; nothing was sent"
                ) from None
        return max(deadline - loop.time(), 1e-3)

    # -- internals ------------------------------------------------------------------------
    def _require_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerError("publisher is not connected: use `async with Publisher.connect(...)`")
        return self._connection

    async def _open_channel(self) -> aiormq.Channel:
        connection = self._require_connection()
        await connection.ready()
        # A plain channel, not a robust one: after a channel error or a reconnect we open
        # a fresh one ourselves on the next publish instead of racing aio-pika's restore.
        channel = aio_pika.Channel(connection, publisher_confirms=True, on_return_raises=True)
        await channel.initialize()
        self._channel = channel
        # The concrete aiormq channel: _Lane writes its frames and registers its confirms.
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        self._underlay = underlay
        self._lane = _Lane(underlay)
        return underlay

    async def _channel_for_publish(self) -> aiormq.Channel:
        """The open publishing channel, or a new one once the connection is back.

        Callers bound this with their deadline: while the robust connection reconnects,
        opening a channel fails, and we try again until it is back or the deadline passes.
        """
        async with self._reopen_lock:
            while True:
                underlay = self._underlay
                if underlay is not None and not underlay.is_closed:
                    return underlay
                try:
                    return await self._open_channel()
                except (RuntimeError, aiormq.exceptions.AMQPError, ConnectionError):
                    await asyncio.sleep(_REOPEN_PAUSE)

    def _retire(self, lane: _Lane | None) -> None:
        """Publish on a new channel from now on: the broker nacked a publish on ``lane``'s.

        RabbitMQ 3.10.8 keeps a quorum queue client per channel. When a channel's first
        publish to the queue met the queue's leader node just killed, that client kept the
        dead leader and nacked every later publish to the queue (for over 90 s, until the
        test gave up) while a new channel was accepted (observed on a 3-node cluster;
        rabbit_fifo_client returns reject_publish without updating its leader when
        registering the publisher fails). Publishes still awaiting their confirm on the old
        channel keep it for a while.
        """
        if lane is None or lane is not self._lane:
            return  # already replaced by another nacked publish
        channel = self._channel
        self._channel = self._underlay = self._lane = None
        if channel is not None:
            close_later(channel.close, self.confirm_timeout, self._retiring)

    def _properties(self, message: Resolved) -> Basic.Properties:
        second = int(time.time())
        if second != self._second:
            # The AMQP timestamp has one-second resolution: one datetime per second will do.
            self._second = second
            self._timestamp = datetime.fromtimestamp(second, UTC)
        return Basic.Properties(
            content_type=CONTENT_TYPE,
            delivery_mode=2 if message.persistent else 1,
            headers=message.headers,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=self._timestamp,
            message_type=message.event_type,
            app_id=self.app_id,
            content_encoding=message.content_encoding,
            reply_to=message.reply_to,
        )

    async def _send(self, message: Resolved, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        properties = self._properties(message)
        lane: _Lane | None = None
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    lane = self._lane
                    if lane is None or lane.channel.is_closed:
                        await self._channel_for_publish()
                        continue
                    confirmation, tag, batch = lane.publish(message, properties)
                    try:
                        await confirmation
                        return
                    except _Discarded:
                        continue  # written after a message the broker refused: send it again
                    except (
                        aiormq.exceptions.AMQPError,
                        aiormq.exceptions.ChannelInvalidStateError,
                        ConnectionError,
                    ):
                        if batch.sent:
                            raise
                        # The channel closed before our batch was written (a channel error
                        # of another publish, a lost connection): not sent, try a fresh one.
                    finally:
                        lane.forget(confirmation, message.message_id, tag)
        except aiormq.exceptions.PublishError as exc:
            frame = exc.frame
            raise UnroutableError(
                getattr(frame, "exchange", message.exchange),
                getattr(frame, "routing_key", message.routing_key),
                f"{getattr(frame, 'reply_code', 312)} {getattr(frame, 'reply_text', 'NO_ROUTE')}",
            ) from None
        except aiormq.exceptions.DeliveryError:
            self._retire(lane)
            raise PublishNackedError(
                f"broker nacked the message to exchange {message.exchange!r} routing key "
                f"{message.routing_key!r} (e.g. a full queue with overflow reject-publish)"
            ) from None
        except TimeoutError:
            raise PublishTimeoutError(
                f"no confirm within {seconds:g}s for exchange {message.exchange!r} routing key "
                f"{message.routing_key!r} (broker blocked by a resource alarm, overloaded or "
                "unreachable); the message may or may not have been delivered"
            ) from None
        except aiormq.exceptions.ChannelClosed as exc:
            raise _channel_error(exc, message, self.settings) from None
        except _ClosedOverAnother as exc:
            raise closed_over_another(message, " ".join(str(exc.reason).split())) from None
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise _connection_lost(exc, message) from None
        except asyncio.CancelledError as exc:
            # aiormq rejects the pending confirms with CancelledError when it drops a link it
            # found stuck (no frame within the heartbeat grace). Our caller was not cancelled:
            # that is a lost connection, and must not end the caller's task.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise _connection_lost(exc, message) from None


# Publishes per payload written at once (see _Lane); 64 measured best of 32-256.
_CHUNK = 64


class _Discarded(Exception):
    """Written after the publish the broker refused: the broker discarded it, send again."""


class _ClosedOverAnother(Exception):
    """Written before the publish the broker refused: routed, but never confirmed."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


def _refused_tag(
    reason: BaseException, pending: dict[int, tuple[asyncio.Future[Any], Resolved]]
) -> int | None:
    """The tag of the publish the broker closed the channel over (see first_refused)."""
    if not isinstance(reason, aiormq.exceptions.ChannelClosed):
        return None
    position = first_refused(str(reason), (message for _, message in pending.values()))
    return None if position is None else list(pending)[position]


def _connection_lost(exc: BaseException, message: Resolved) -> PublishError:
    return PublishError(
        f"connection to the broker lost before the confirm for exchange "
        f"{message.exchange!r} routing key {message.routing_key!r}: "
        f"{exc or type(exc).__name__}; the message may or may not have been delivered"
    )


class _Batch:
    """Publishes flushed together; ``sent`` once their frames are in aiormq's write queue."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


class _Lane:
    """The publishing side of one aiormq channel, written in batches.

    aiormq's ``basic_publish`` costs a lock, two context managers, a timeout and one slot of
    the connection's 10-frame write queue per message, so pipelined publishing spends its
    time switching between publishers and the writer. Here a publish only takes the next
    delivery tag, registers its confirm where aiormq's reader resolves it (ack, nack, return)
    and appends its frames; once per loop iteration every frame appended goes to the write
    queue as one payload. Nothing awaits between taking a tag and appending the frames and
    payloads are queued in order, so the wire order is the tag order, as the broker's
    confirms assume. The lane must be the only publisher on its channel.

    A payload holds at most ``_CHUNK`` publishes; further chunks go out one per loop
    iteration. When a confirm frees hundreds of publishers at once, one payload of them all
    makes the broker confirm them as one batch again, and the window moves in a few large
    steps (about 20 confirms/s); chunks keep it moving (+16% at window 1000, measured with
    the bench's publish case).
    """

    __slots__ = (
        "_backlog", "_batch", "_count", "_frames", "_pending", "_putter", "_ready", "channel",
        "loop",
    )  # fmt: skip

    def __init__(self, channel: aiormq.Channel) -> None:
        self.channel = channel
        self.loop = asyncio.get_running_loop()
        self._frames: list[Any] = []
        self._batch = _Batch()
        self._count = 0
        # Full chunks, in tag order. A flush is pending exactly while _ready or _frames
        # holds something.
        self._ready: deque[tuple[list[Any], _Batch]] = deque()
        # Unconfirmed publishes by delivery tag (ascending), for the close of the channel.
        self._pending: dict[int, tuple[asyncio.Future[Any], Resolved]] = {}
        self._backlog: deque[tuple[ChannelFrame, _Batch]] = deque()
        self._putter: asyncio.Task[None] | None = None
        channel.closing.add_done_callback(self._on_close)

    def publish(
        self, message: Resolved, properties: Basic.Properties
    ) -> tuple[asyncio.Future[Any], int, _Batch]:
        channel = self.channel
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        if len(message.routing_key) > 255:
            raise ValueError("Routing key too long (max 255 bytes)")
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation = self.loop.create_future()
        channel.confirmations[tag] = confirmation
        # aiormq finds the confirm of a returned (unroutable) message by its message_id.
        channel.message_id_delivery_tag[message.message_id] = tag
        if not self._frames and not self._ready:
            self.loop.call_soon(self._flush)
        frames = self._frames
        exchange, routing_key = message.exchange, message.routing_key
        frames.append(Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True))
        frames.append(ContentHeader(properties=properties, body_size=len(message.body)))
        frames.extend(channel._split_body(message.body))
        self._pending[tag] = (confirmation, message)
        batch = self._batch
        self._count += 1
        if self._count == _CHUNK:
            self._ready.append((frames, batch))
            self._frames, self._batch, self._count = [], _Batch(), 0
        return confirmation, tag, batch

    def forget(self, confirmation: asyncio.Future[Any], message_id: str, tag: int) -> None:
        self._pending.pop(tag, None)
        mapping = self.channel.message_id_delivery_tag
        if mapping.get(message_id) == tag:
            del mapping[message_id]

    def _flush(self) -> None:
        """Queue the oldest chunk for writing; the next one goes in the next loop iteration."""
        if self._ready:
            frames, batch = self._ready.popleft()
        else:
            frames, batch = self._frames, self._batch
            self._frames, self._batch, self._count = [], _Batch(), 0
        channel = self.channel
        if channel.is_closed:
            # Not written: those publishes see an unsent batch and go to a fresh channel.
            self._ready.clear()
            self._frames, self._batch, self._count = [], _Batch(), 0
            return
        if self._ready or self._frames:
            self.loop.call_soon(self._flush)
        if not frames:
            return
        payload = ChannelFrame.marshall(channel_number=channel.number, frames=frames)
        if self._putter is None:
            try:
                channel.write_queue.put_nowait(payload)
            except asyncio.QueueFull:
                pass  # the writer is behind (e.g. a blocked connection): queue in order
            else:
                batch.sent = True
                return
        self._backlog.append((payload, batch))
        if self._putter is None:
            self._putter = self.loop.create_task(self._put_backlog())

    async def _put_backlog(self) -> None:
        channel = self.channel
        try:
            while self._backlog and not channel.is_closed:
                payload, batch = self._backlog[0]
                await channel.write_queue.put(payload)
                self._backlog.popleft()
                batch.sent = True
        finally:
            self._putter = None
            if channel.is_closed:
                self._backlog.clear()

    def _on_close(self, closing: asyncio.Future[Any]) -> None:
        # Our confirms are plain futures (aiormq's future store would add three callbacks
        # per message): reject the unresolved ones with the channel's close reason.
        reason = None if closing.cancelled() else closing.exception()
        if not isinstance(reason, Exception):
            reason = aiormq.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")
        pending, self._pending = self._pending, {}
        culprit = _refused_tag(reason, pending)
        for tag, (confirmation, _) in pending.items():
            if confirmation.done():
                continue
            if culprit is None or tag == culprit:
                confirmation.set_exception(reason)
            elif tag < culprit:
                confirmation.set_exception(_ClosedOverAnother(reason))
            else:
                confirmation.set_exception(_Discarded())
        if self._putter is not None:
            # Its queue belongs to a dead connection: a put there may never return.
            self._putter.cancel()


def _channel_error(
    exc: aiormq.exceptions.ChannelClosed, message: Resolved, settings: BusSettings
) -> BusError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    to = where(message)
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return NotFoundError(f"publish to {to} failed, channel closed by the broker: {text}")
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        # basic.publish needs write on the exchange (on 'amq.default' for the default one).
        return AccessRefusedError.from_reply(
            text, "write", kind="exchange", name=message.exchange or "amq.default",
            vhost=settings.vhost, user=settings.credentials()[0],
        )  # fmt: skip
    if "larger than configured max size" in text:
        return MessageTooLargeError(f"broker refused the message to {to}: {text}")
    return BrokerError(f"publish to {to} failed, channel closed by the broker: {text}")


class _Opening:
    """What :meth:`Publisher.connect` returns: awaitable, or an async context manager."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    def __await__(self) -> Generator[Any, None, Publisher]:
        return self._publisher.start().__await__()

    async def __aenter__(self) -> Publisher:
        return await self._publisher.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._publisher.close()
