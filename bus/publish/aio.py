"""The aio-pika flavour of the publishing core: confirmed, mandatory, persistent.

``await publisher.publish(OrderCreated(...))`` returns once the broker has confirmed the
message and routed it to at least one queue; anything else raises (see
:mod:`bus.publish.outcomes`):

- :class:`~bus.errors.UnroutableError`: returned by the broker (``mandatory``, no route);
- :class:`~bus.errors.PublishNackedError`: nacked (e.g. a full queue with ``reject-publish``);
  the next publish goes out on a new channel (:meth:`AsyncPublisher._retire` says why);
- :class:`~bus.errors.PublishTimeoutError`: no confirm within the deadline (a blocked
  connection during a memory or disk alarm, a broker that is down or reconnecting);
- :class:`~bus.errors.MessageTooLargeError` / :class:`~bus.errors.ContractError`: refused
  before anything is sent;
- :class:`~bus.errors.NotFoundError` and other :class:`~bus.errors.BrokerError`: the broker
  closed the channel (a missing exchange, no permission). The next publish opens a new
  channel, so one bad publish never poisons the connection.

The publisher never declares topology: at start-up it checks passively that every exchange
it will publish to exists (``bus apply`` declares them). :meth:`AsyncPublisher.start_on`
publishes on a connection of the caller's (the consumer runtime's retry and dead-letter
copies), and :meth:`AsyncPublisher.publish_resolved` sends a message resolved elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Sized
from typing import Any, Generic, Self, TypeVar, Unpack, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection
from pydantic import BaseModel

from bus.broker.connect import close_later, connect_async
from bus.errors import AccessRefusedError, BrokerError, PublishTimeoutError
from bus.publish.base import PublisherBase, PublisherOptions
from bus.publish.lane import ClosedOverAnother, Discarded, Lane
from bus.publish.message import (
    Outgoing,
    Resolved,
    TopologyLike,
)
from bus.publish.outcomes import (
    PublishResult,
    channel_error,
    closed_over_another,
    connection_lost,
    exchanges_missing,
    nacked,
    timed_out,
    unroutable,
)
from bus.settings import BusSettings

__all__ = ["AsyncPublisher", "Opening"]

# How long to wait between attempts to open a channel while the connection is reconnecting.
_REOPEN_PAUSE = 0.1

# What a lost channel or connection looks like to aiormq's callers.
_LOST = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError)


class AsyncPublisher(PublisherBase[Coroutine[Any, Any, str]]):
    """Confirmed publishing on one robust aio-pika connection (see the module docstring)."""

    def __init__(
        self,
        settings: BusSettings,
        topology: TopologyLike | None = None,
        **options: Unpack[PublisherOptions],
    ) -> None:
        super().__init__(settings, topology, **options)
        self._connection: AbstractRobustConnection | None = None
        self._owns_connection = True
        self._channel: aio_pika.Channel | None = None
        self._lane: Lane | None = None
        self._reopen_lock = asyncio.Lock()
        # message_id -> publishes waiting for the one in flight with that id (see _send_in_turn)
        self._in_flight: dict[str, list[asyncio.Future[None]] | None] = {}
        # Channels replaced after a nack, closed once their in-flight confirms had time.
        self._retiring: set[asyncio.Handle | asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        settings: BusSettings,
        topology: TopologyLike | None = None,
        **options: Unpack[PublisherOptions],
    ) -> Opening[Self]:
        """A publisher to ``await`` or to use as ``async with``; options as ``__init__``."""
        return Opening(cls(settings, topology, **options))

    async def start(self) -> Self:
        """Connect, check every exchange passively, open the publishing channel."""
        if self._connection is not None:
            return self
        self._connection = await connect_async(self.settings, self.connection_name)
        try:
            await self.check_exchanges(self.exchanges_to_check())
            await self._open_channel()
        except BaseException:
            await self.close()
            raise
        return self

    async def start_on(self, connection: AbstractRobustConnection) -> Self:
        """Publish on ``connection``, which stays the caller's: :meth:`close` leaves it open."""
        self._connection, self._owns_connection = connection, False
        await self._open_channel()
        return self

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._lane = None
        for pending in self._retiring:
            pending.cancel()  # the connection's close below closes those channels too
        self._retiring.clear()
        if self._owns_connection and connection is not None and not connection.is_closed:
            await connection.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def channel(self) -> aio_pika.Channel | None:
        """The channel publishes go out on now (a new one after a nack or a channel error)."""
        return self._channel

    async def check_exchanges(self, names: Iterable[str]) -> None:
        """Raise :class:`NotFoundError` naming every exchange in ``names`` that is missing.

        Each check is a passive declare on a throwaway channel: a 404 closes the channel, and
        the publishing channel must not be the one that pays for it.
        """
        connection = self._require_connection()
        missing: list[str] = []
        probe: aio_pika.abc.AbstractChannel | None = None
        try:
            for name in filter(None, names):
                if probe is None or probe.is_closed:
                    probe = await connection.channel(publisher_confirms=False)
                try:
                    await probe.declare_exchange(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    missing.append(name)
                except aiormq.exceptions.ChannelAccessRefused as exc:
                    raise AccessRefusedError(f"no access to exchange {name!r}: {exc}") from None
        finally:
            if probe is not None and not probe.is_closed:
                await probe.close()
        if missing:
            raise exchanges_missing(missing, self.settings.vhost)

    # -- publishing -----------------------------------------------------------------------
    async def _deliver(self, resolve: Callable[[], Resolved], confirm_timeout: float | None) -> str:
        # A coroutine: a message that cannot be resolved raises when awaited, like a send.
        message = resolve()
        await self._send_in_turn(message, self.seconds(confirm_timeout))
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
        deadline = self.seconds(confirm_timeout)
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
                    message = self.resolve_item(item)
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

    # -- the channel ----------------------------------------------------------------------
    def _require_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerError("publisher is not connected: use `async with Publisher.connect(...)`")
        return self._connection

    async def _open_channel(self) -> Lane:
        connection = self._require_connection()
        await connection.ready()
        # A plain channel, not a robust one: after a channel error or a reconnect we open
        # a fresh one ourselves on the next publish instead of racing aio-pika's restore.
        channel = aio_pika.Channel(connection, publisher_confirms=True, on_return_raises=True)
        await channel.initialize()
        self._channel = channel
        # The concrete aiormq channel: the Lane writes its frames and registers its confirms.
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        self._lane = Lane(underlay)
        return self._lane

    async def _lane_for_publish(self) -> Lane:
        """The open publishing lane, or a new one once the connection is back.

        Callers bound this with their deadline: while the robust connection reconnects,
        opening a channel fails, and we try again until it is back or the deadline passes.
        """
        async with self._reopen_lock:
            while True:
                lane = self._lane
                if lane is not None and not lane.channel.is_closed:
                    return lane
                try:
                    return await self._open_channel()
                except (RuntimeError, aiormq.exceptions.AMQPError, ConnectionError):
                    await asyncio.sleep(_REOPEN_PAUSE)

    def _retire(self, lane: Lane | None) -> None:
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
        self._channel = self._lane = None
        if channel is not None:
            close_later(channel.close, self.confirm_timeout, self._retiring)

    async def _send(self, message: Resolved, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # Encoded before anything is sent: a value AMQP cannot carry raises here.
        properties = self.properties(message, int(time.time()))
        lane: Lane | None = None
        try:
            while True:
                lane = self._lane
                if lane is None or lane.channel.is_closed:
                    # The lane's timer bounds the wait for a confirm; this bounds the wait
                    # for a channel while the connection is reconnecting.
                    async with asyncio.timeout_at(deadline):
                        await self._lane_for_publish()
                    continue
                confirmation, batch = lane.publish(message, properties, deadline)
                try:
                    await confirmation
                    return
                except Discarded:
                    continue  # written after a message the broker refused: send it again
                except _LOST:
                    if batch.sent:
                        raise
                    # The channel closed before our batch was written (a channel error
                    # of another publish, a lost connection): not sent, try a fresh one.
        except aiormq.exceptions.PublishError as exc:
            raise unroutable(exc.frame, message) from None
        except aiormq.exceptions.DeliveryError:
            self._retire(lane)
            raise nacked(message) from None
        except TimeoutError:
            raise timed_out(message, seconds) from None
        except aiormq.exceptions.ChannelClosed as exc:
            raise _channel_error(exc, message, self) from None
        except ClosedOverAnother as exc:
            raise closed_over_another(message, " ".join(str(exc.reason).split())) from None
        except _LOST as exc:
            raise connection_lost(message, str(exc) or type(exc).__name__) from None
        except asyncio.CancelledError as exc:
            # aiormq rejects the pending confirms with CancelledError when it drops a link it
            # found stuck (no frame within the heartbeat grace). Our caller was not cancelled:
            # that is a lost connection, and must not end the caller's task.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise connection_lost(message, str(exc) or type(exc).__name__) from None


def _channel_error(
    exc: aiormq.exceptions.ChannelClosed, message: Resolved, publisher: PublisherBase[Any]
) -> Exception:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        code: int | None = 404
    elif isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        code = 403
    else:
        code = None
    return channel_error(code, text, text, message, publisher.settings)


P = TypeVar("P", bound=AsyncPublisher)


class Opening(Generic[P]):
    """What :meth:`AsyncPublisher.connect` returns: awaitable, or an async context manager."""

    def __init__(self, publisher: P) -> None:
        self._publisher = publisher

    def __await__(self) -> Generator[Any, None, P]:
        return self._publisher.start().__await__()

    async def __aenter__(self) -> P:
        return await self._publisher.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._publisher.close()
