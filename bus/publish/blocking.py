"""The pika flavour of the publishing core, for services that are not async.

Same wire messages, semantics and errors as :class:`bus.publish.aio.AsyncPublisher`:
confirms and ``mandatory`` always on, persistent by default, and every publish either
returns after the broker's confirm or raises (see :mod:`bus.publish.outcomes`).

``publish`` waits for each confirm in turn; :meth:`BlockingPublisher.publish_many` keeps up to
``window`` publishes unconfirmed on a channel of its own (:mod:`bus.publish.pipeline`), and
with ``in_order=True`` (the DLQ replay) stops at the first lost channel or connection instead
of going on over a new one, so that nothing overtakes a message whose fate is unknown.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Any, Self, Unpack

import pika
import pika.exceptions
from pydantic import BaseModel

from bus.broker.connect import pika_parameters_all, translate_error
from bus.errors import AccessRefusedError, BrokerError, BusError, NotSentError, PublishError
from bus.publish import outcomes
from bus.publish.base import PublisherBase, PublisherOptions, item_id
from bus.publish.frames import PROPERTY_NAMES
from bus.publish.message import (
    Outgoing,
    Resolved,
    TopologyLike,
)
from bus.publish.outcomes import PublishResult
from bus.publish.pipeline import ConfirmPipeline
from bus.settings import BusSettings, mask_urls

__all__ = ["BlockingPublisher"]

# pika's names of the properties, in the order of frames.PROPERTY_NAMES.
_PIKA_NAMES = tuple("type" if name == "message_type" else name for name in PROPERTY_NAMES)

# publish_many lets the connection read confirms every so many writes, so that the broker's
# acks do not pile up in the socket while a large window is still filling.
_POLL_EVERY = 64


class _DeadlineExpired(Exception):
    """Ends pika's wait for a confirm; never leaves this module."""


class BlockingPublisher(PublisherBase[str]):
    """Confirmed publishing on one pika ``BlockingConnection``.

    After a connection-level failure (timeout, lost connection) the next publish reconnects;
    after a channel-level one (missing exchange) it opens a new channel.
    """

    _connection: Any = None
    _channel: Any = None
    _pipeline: ConfirmPipeline | None = None
    _started = False

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        settings: BusSettings,
        topology: TopologyLike | None = None,
        **options: Unpack[PublisherOptions],
    ) -> Self:
        """A connected publisher (exchanges checked); options as ``__init__``."""
        return cls(settings, topology, **options).start()

    def start(self) -> Self:
        if self._started:
            return self
        try:
            self.check_exchanges(self.exchanges_to_check())
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check_exchanges(self, names: Iterable[str]) -> None:
        """Raise :class:`NotFoundError` naming every exchange in ``names`` that is missing."""
        connection = self._ensure_connection()
        missing: list[str] = []
        probe: Any = None
        try:
            for name in filter(None, names):
                if probe is None or probe.is_closed:
                    probe = connection.channel()
                try:
                    probe.exchange_declare(name, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    _missing_or_raise(exc, name, missing)
        finally:
            if probe is not None and probe.is_open:
                probe.close()
        if missing:
            raise outcomes.exchanges_missing(missing, self.settings.vhost)

    # -- publishing -----------------------------------------------------------------------
    def _deliver(self, resolve: Callable[[], Resolved], confirm_timeout: float | None) -> str:
        message = resolve()
        self._send(message, self.seconds(confirm_timeout))
        return message.message_id

    def publish_many(
        self,
        messages: Iterable[Outgoing | BaseModel],
        *,
        window: int | None = None,
        confirm_timeout: float | None = None,
        in_order: bool = False,
    ) -> list[PublishResult]:
        """Publish with at most ``window`` unconfirmed messages in flight (pipelined, on a
        channel of its own); one :class:`PublishResult` per message, in order.

        A failure of one message (unroutable, nacked, invalid) is reported and the others go
        on. When the channel or the connection is lost, every unconfirmed message fails
        ("may or may not have been delivered": retry it with the same ``message_id``) and the
        rest go out on a new channel or connection; with ``in_order`` they fail with
        :class:`~bus.errors.NotSentError` instead. ``window=1`` waits for each confirm.
        """
        seconds = self.seconds(confirm_timeout)
        limit = self.window if window is None else window
        if limit < 1:
            raise ValueError("window must be at least 1")
        ids: list[str | None] = []
        failed: dict[int, Exception] = {}
        # Written on a channel the broker closed over an earlier message: never delivered,
        # sent again first, in their order, on the next channel.
        again: deque[tuple[int, Resolved]] = deque()
        pipeline: ConfirmPipeline | None = None
        opened = stopped = False
        self._check_connection()

        def settle(done: ConfirmPipeline) -> None:
            done_failed, unsent = done.take_outcomes()
            failed.update(done_failed)
            again.extendleft(reversed(unsent))

        def open_pipeline() -> ConfirmPipeline:
            nonlocal opened, stopped
            if in_order and opened:
                stopped = True
                raise NotSentError(
                    "not sent: the channel or connection was lost earlier in the batch"
                )
            opened = True
            return self._open_pipeline()

        def live_pipeline() -> ConfirmPipeline:
            nonlocal pipeline
            while pipeline is None or pipeline.dead or again:
                if pipeline is not None and pipeline.dead:
                    settle(pipeline)
                    pipeline = None
                if pipeline is None:
                    pipeline = open_pipeline()
                while again and not pipeline.dead:
                    index, message = again.popleft()
                    try:
                        pipeline.publish(index, message, seconds, limit)
                    except Exception as exc:
                        failed[index] = exc
            return pipeline

        for index, item in enumerate(messages):
            ids.append(None)
            if stopped:
                ids[index] = item_id(item)
                failed[index] = NotSentError("not sent: the batch stopped earlier")
                continue
            try:
                message = self.resolve_item(item)
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

    # -- the connection and its channels --------------------------------------------------
    def _ensure_connection(self) -> Any:
        connection = self._connection
        if connection is not None and connection.is_open:
            return connection
        self._connection = self._channel = None
        # One parameter set per cluster node: pika tries them in order, so the connection
        # opened again after a lost one lands on a node that is up.
        nodes = pika_parameters_all(self.settings, self.connection_name)
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
                partial(_channel_error, publisher=self),
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

    def _properties(self, message: Resolved) -> bytes:
        return self.properties(message, int(time.time()))

    def _pika_properties(self, message: Resolved) -> pika.BasicProperties:
        """The properties of a single publish, which goes through pika's ``BlockingChannel``
        (it waits for the confirm): pika encodes them."""
        values = {
            name: None if value == "" else value  # not sent, as in every other path
            for name, value in zip(
                _PIKA_NAMES, self.wire_values(message, int(time.time())), strict=True
            )
        }
        stamp = values["timestamp"]
        if isinstance(stamp, datetime):  # a copy's, as aiormq gives it
            values["timestamp"] = int(stamp.timestamp())
        return pika.BasicProperties(**values)

    def _send(self, message: Resolved, seconds: float) -> None:
        try:
            channel = self._ensure_channel()
        except BusError:
            raise
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise PublishError(
                f"cannot open a channel to publish to {outcomes.where(message)}: {exc}"
            ) from None
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
                self._pika_properties(message),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError as exc:
            raise outcomes.unroutable(
                exc.messages[0].method if exc.messages else None, message
            ) from None
        except pika.exceptions.NackError:
            self._renew_channel(channel)
            raise outcomes.nacked(message) from None
        except (_DeadlineExpired, pika.exceptions.ConnectionBlockedTimeout) as exc:
            self._drop()
            blocked = isinstance(exc, pika.exceptions.ConnectionBlockedTimeout)
            raise outcomes.timed_out(message, seconds, blocked=blocked) from None
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            raise _channel_error(exc, message, self) from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise outcomes.connection_lost(message, repr(exc)) from None
        finally:
            if expired and self._connection is connection:
                # The confirm won the race against the deadline, but the stream is already
                # being torn down: the next publish must not find this connection.
                self._drop()
            elif self._connection is connection and connection.is_open:
                connection._impl.ioloop.remove_timeout(timer)

    def _renew_channel(self, nacked_on: Any) -> None:
        """The nack-and-renew rule (see :meth:`bus.publish.aio.AsyncPublisher._retire`): a
        new channel for the next publish. Nothing else is in flight on this one: close it."""
        self._channel = None
        with contextlib.suppress(pika.exceptions.AMQPError):
            nacked_on.close()

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


def _missing_or_raise(
    exc: pika.exceptions.ChannelClosedByBroker, name: str, missing: list[str]
) -> None:
    """A passive declare of exchange ``name`` failed: note it missing, or raise."""
    if exc.reply_code == 404:
        missing.append(name)
    elif exc.reply_code == 403:
        raise AccessRefusedError(f"no access to exchange {name!r}: {exc.reply_text}") from None
    else:
        raise BrokerError(
            f"checking exchange {name!r}: {exc.reply_code} {exc.reply_text}"
        ) from None


def _channel_error(
    exc: pika.exceptions.ChannelClosedByBroker, message: Resolved, publisher: PublisherBase[Any]
) -> BusError:
    text = f"{exc.reply_code} {exc.reply_text}"
    return outcomes.channel_error(exc.reply_code, text, exc.reply_text, message, publisher.settings)
