"""The consumer runtime: typed handlers on topology queues that never lose a message.

::

    app = ConsumerApp("billing")

    @app.handler("billing.orders", prefetch=50, concurrency=4)
    async def on_order(event: OrderCreated | OrderPaid, message: Message) -> None:
        ...

    asyncio.run(app.run())          # or: bus consume --app mymodule:app

A handler gets the pydantic model of the event named by the message's AMQP ``type`` (see
:mod:`consumers.handlers` for the accepted signatures). The message is acked only after the
handler returned.

Failure rules (exact; the decision itself lives in :func:`consumers.policy.decide`):

1. Handler returned: ack. Acks are batched as ``basic.ack(multiple=True)`` over the contiguous
   run of finished deliveries only (a running delivery is never covered), written after
   prefetch/4 of them or 2 ms after the backlog empties (:mod:`consumers.settle`).
2. Handler raised an exception and the queue's ``retry`` ladder has a step left
   (``x-retry-count`` < number of delays): a copy (same body, properties, ``message_id``,
   headers, persistent) is published with publisher confirms to delay queue number
   ``x-retry-count`` (``<queue>.retry.<delay>``) through the default exchange, with
   ``x-retry-count`` + 1; once confirmed the original is acked. The delay queue's TTL moves it
   back into the queue, so attempt *n + 1* is not delivered before delay *n* has passed.
3. Ladder exhausted (or no ladder), or a permanent failure, and the queue has
   ``dead_letter: true``: a confirmed copy goes to ``<queue>.dlx`` (hence ``<queue>.dlq``) with
   ``x-exception-type``, ``x-exception-message``, ``x-failure-reason``, ``x-failed-queue`` and
   ``x-retry-count``; then the original is acked. Permanent failures skip the ladder: wrong
   content type, JSON that does not parse, a body that fails the model, a missing or unknown
   ``type``, an event the handler's annotation does not accept (``x-failure-reason``
   ``content-type``, ``json``, ``schema``, ``unknown-type``, ``not-accepted``,
   ``undecodable``) and a :class:`RejectMessage` raised by the handler (``rejected``).
   Handler exceptions have ``x-failure-reason: handler``.
4. The queue has an ``x-dead-letter-exchange`` but no DLQ of ours: ``basic.reject`` without
   requeue; the broker dead-letters it (``x-death`` reason ``rejected``).
5. No dead-letter exchange at all: a permanent failure is dropped at once (``basic.reject``
   without requeue, logged at ERROR, counted in :attr:`Runtime.dropped`); a handler failure
   is requeued (``basic.nack``) after a back-off (``backoff.base * 2**n`` s, at most
   ``backoff.cap``), logged at ERROR, at most ``backoff.max_requeues`` times, then dropped
   the same way. ``n`` is the quorum ``x-delivery-count`` (never trusted on a classic queue,
   where a publisher could forge it), else this process's count per ``message_id`` or, without
   one, per digest of the message. Requeuing without bound starves the valid messages behind
   the failing ones until they expire. A quorum ``delivery_limit`` below the bound stays the
   guard (its final delivery is logged as such). A WARNING at start-up names every consumed
   queue in this situation: give it ``dead_letter: true``.
6. A confirm that does not come (nack, return, timeout, connection lost): the original is not
   acked but requeued after the back-off of rule 5, so nothing is lost.

Hostile input: the runtime installs :func:`bus.lenient.install`, so a message whose properties
the client cannot decode (non-UTF-8 short strings, header tables nested past 32 levels, values
out of range) arrives marked ``x-bus-undecodable`` instead of closing the connection, and is a
permanent failure with reason ``undecodable``. Copies (retries, dead letters) carry only the
headers :func:`bus.headers.safe_headers` keeps: never ``x-delivery-count``, never a forged
``x-death``.

Connection loss: the robust connection reconnects by itself and the consumers are re-registered
on the new channels. Deliveries of the dead channel are never acked or rejected (their tags
would close the new channel); a handler still running finishes, its result is dropped and the
broker redelivers the message (``redelivered=True``). Use ``idempotent=True`` for handlers that
must run once per ``message_id``.

Shutdown (SIGTERM/SIGINT with :meth:`ConsumerApp.run`): every consumer is cancelled at the
broker; prefetched deliveries that did not start are nacked with requeue; running handlers get
``grace`` seconds to finish and are acked (every ack written before the channel closes); a
handler still running after that is cancelled and its delivery is not acked (the broker
redelivers it when the channel closes). A second signal ends the grace period at once.

Start-up: a passive check that every consumed queue, its delay queues and its dead-letter
exchange exist; a clear :class:`~bus.errors.NotFoundError` names what is missing. Consumers
never declare topology (``bus apply`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from bus import lenient, tracing
from bus.broker.connect import connect_async
from bus.broker.passive import missing_async
from bus.contracts import ContractRegistry
from bus.errors import BrokerError, NotFoundError, UsageError
from bus.lenient import UNDECODABLE_HEADER
from bus.publish import AsyncPublisher
from bus.settings import BusSettings, mask_url
from bus.topology import ExpandedTopology, LoadedTopology, expanded_topology
from consumers import wire
from consumers.decode import Decoder, InvalidMessageError
from consumers.failures import FailureHandling
from consumers.handlers import HandlerFunc, HandlerOptions, HandlerSpec, inspect_handler
from consumers.idempotency import IdempotencyStore, MemoryIdempotencyStore
from consumers.message import Message
from consumers.metrics import ConsumerMetrics
from consumers.policy import Backoff, RejectMessage
from consumers.queue_consumer import QueueConsumer, delivery_tag
from consumers.settle import ChannelSession

__all__ = ["ConsumerApp", "Runtime"]

log = logging.getLogger("consumers.runtime")


class ConsumerApp:
    """Handlers registered per queue, plus the runtime settings shared by all of them."""

    def __init__(
        self,
        name: str = "app",
        *,
        idempotency_store: IdempotencyStore | None = None,
        metrics: ConsumerMetrics | None = None,
        backoff: Backoff | None = None,
        publish_timeout: float = 10.0,
        grace: float = 30.0,
    ) -> None:
        self.name = name
        self.handlers: dict[str, HandlerSpec] = {}
        self.idempotency_store: IdempotencyStore = idempotency_store or MemoryIdempotencyStore()
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self.publish_timeout = publish_timeout
        self.grace = grace
        self._runtime: Runtime | None = None

    def handler(
        self,
        queue: str,
        *,
        prefetch: int = 100,
        concurrency: int = 1,
        idempotent: bool = False,
        raw: bool = False,
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register the decorated async function as the handler of ``queue`` (one per queue)."""
        options = HandlerOptions(prefetch, concurrency, idempotent, raw)

        def register(func: HandlerFunc) -> HandlerFunc:
            if queue in self.handlers:
                raise ValueError(
                    f"queue {queue!r} already has a handler ({self.handlers[queue].name})"
                )
            self.handlers[queue] = inspect_handler(queue, func, options)
            return func

        return register

    @asynccontextmanager
    async def serve(
        self,
        settings: BusSettings | None = None,
        *,
        topology: LoadedTopology | ExpandedTopology | Path | None = None,
        queues: Iterable[str] | None = None,
        grace: float | None = None,
    ) -> AsyncIterator[Runtime]:
        """Consume while the block runs; shut down gracefully when it exits."""
        runtime = Runtime(self, settings or BusSettings(), topology, queues)
        async with self._running(runtime, grace):
            yield runtime

    @asynccontextmanager
    async def _running(self, runtime: Runtime, grace: float | None) -> AsyncIterator[None]:
        self._runtime = runtime
        try:
            await runtime.start()
            yield
        finally:
            try:
                await runtime.shutdown(self.grace if grace is None else grace)
            finally:
                self._runtime = None

    async def run(
        self,
        settings: BusSettings | None = None,
        *,
        topology: LoadedTopology | ExpandedTopology | Path | None = None,
        queues: Iterable[str] | None = None,
        grace: float | None = None,
        handle_signals: bool = True,
    ) -> None:
        """Consume until SIGTERM/SIGINT (or :meth:`stop`), then shut down gracefully.

        Raises :class:`~bus.errors.BrokerError` when consuming cannot go on (e.g. the broker
        cancelled a consumer because its queue was deleted, and the queue was not declared
        again within ``consumers.queue_consumer.REATTACH_TIMEOUT``).
        """
        runtime = Runtime(self, settings or BusSettings(), topology, queues)
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            # Before start-up: handlers run as soon as consuming starts, and a signal arriving
            # then must still mean a graceful shutdown, not the default kill.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, runtime.request_stop, sig.name)
                installed.append(sig)
        try:
            async with self._running(runtime, grace):
                await runtime.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        if runtime.fatal is not None:
            raise runtime.fatal

    def stop(self) -> None:
        """Ask the running app to shut down gracefully (a second call skips the grace period)."""
        if self._runtime is not None:
            self._runtime.request_stop("stop()")


class Runtime(FailureHandling):
    """One run of a :class:`ConsumerApp`: connection, consumers, republishing, shutdown."""

    def __init__(
        self,
        app: ConsumerApp,
        settings: BusSettings,
        topology: LoadedTopology | ExpandedTopology | Path | None,
        queues: Iterable[str] | None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = app.metrics
        self.backoff = app.backoff
        self.topology = expanded_topology(topology)
        self.decoder = Decoder(ContractRegistry.of(self.topology))
        self.consumers = self._select(queues)
        self.connection: AbstractRobustConnection | None = None
        # Retry and dead-letter copies go out through the publishing core, on this connection.
        self.publisher = AsyncPublisher(settings, confirm_timeout=app.publish_timeout)
        self.background: set[asyncio.Task[Any]] = set()
        self.fatal: BrokerError | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._stopped = False
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._requeues: OrderedDict[str, int] = OrderedDict()
        self.dropped: Counter[str] = Counter()
        """Messages rejected without a dead-letter exchange (rule 5), per queue."""

    @property
    def publish_channel(self) -> aio_pika.Channel | None:
        """The channel copies go out on now (a new one after the broker nacked a copy)."""
        return self.publisher.channel

    def _select(self, queues: Iterable[str] | None) -> list[QueueConsumer]:
        wanted = list(self.app.handlers) if queues is None else list(dict.fromkeys(queues))
        if not wanted:
            raise UsageError(f"consumer app {self.app.name!r} has no handlers to run")
        consumers: list[QueueConsumer] = []
        for name in wanted:
            spec = self.app.handlers.get(name)
            if spec is None:
                known = ", ".join(sorted(self.app.handlers)) or "none"
                raise UsageError(
                    f"app {self.app.name!r} has no handler for queue {name!r} ({known})"
                )
            queue = self.topology.queues.get(name)
            if queue is None or queue.role != "queue":
                raise UsageError(f"queue {name!r} is not a queue of the topology")
            if queue.celery_routing_key is not None:
                raise UsageError(f"queue {name!r} is served by Celery (bus worker), not consumers")
            consumers.append(QueueConsumer(self, spec, self.topology.failure[name]))
        return consumers

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.decoder.preload()
        # One message with undecodable properties must not close the connection of every
        # consumer (see bus.lenient): the runtime dead-letters it instead.
        lenient.install()
        # Frames read in bulk, deliveries decoded without pamqp's generic path (see
        # consumers.wire); every other frame still goes through bus.lenient.
        wire.install()
        connection = await connect_async(self.settings, name=f"amqp-bus consumer {self.app.name}")
        self.connection = connection
        try:
            await self._check_topology(connection)
            await self.publisher.start_on(connection)
            for consumer in self.consumers:
                await consumer.start(connection)
        except BaseException:
            await connection.close()
            raise
        for consumer in self.consumers:
            if consumer.policy.dead_letter_exchange is None:
                log.warning(
                    "queue %r has no dead-letter exchange: invalid messages are dropped and "
                    "failing ones requeued with back-off at most %d times, then dropped; give "
                    "it `dead_letter: true` to keep them",
                    consumer.queue,
                    self.backoff.max_requeues,
                )
        log.info(
            "consuming %s at %s",
            ", ".join(c.queue for c in self.consumers),
            mask_url(self.settings.amqp_url),
        )

    def _needed(self) -> list[tuple[Literal["exchange", "queue"], str]]:
        needed: list[tuple[Literal["exchange", "queue"], str]] = []
        for consumer in self.consumers:
            policy = consumer.policy
            needed.append(("queue", consumer.queue))
            needed += [("queue", step.queue) for step in policy.retry]
            if policy.dead_letter_exchange:
                needed.append(("exchange", policy.dead_letter_exchange))
            if policy.dead_letter_queue:
                needed.append(("queue", policy.dead_letter_queue))
        return list(dict.fromkeys(needed))

    async def _check_topology(self, connection: AbstractRobustConnection) -> None:
        """Passive declares only: existence is checked, nothing is ever created."""
        transport = connection.transport
        if transport is None:
            raise BrokerError("connection closed during start-up")
        missing = await missing_async(transport.connection, self._needed())
        if missing:
            raise NotFoundError(
                f"{', '.join(missing)} not found in vhost {self.settings.vhost!r}: "
                "declare the topology first (bus apply); consumers never declare it"
            )

    # -- running ----------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop") -> None:
        if self._stop.is_set():
            log.warning("%s again: ending the grace period now", reason)
            self._force.set()
            return
        log.info("%s: shutting down gracefully", reason)
        self._stop.set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in a task that shutdown waits for (a settle that cannot wait inline)."""
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def fail(self, error: BrokerError) -> None:
        if self.fatal is None:
            self.fatal = error
            log.error("%s", error)
        self._stop.set()

    async def wait(self) -> None:
        """Until a stop is requested or consuming cannot go on."""
        await self._stop.wait()

    async def shutdown(self, grace: float) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        loop = asyncio.get_running_loop()
        for consumer in self.consumers:
            await consumer.stop_consuming()
        deadline = loop.time() + grace
        finishing: asyncio.Future[Any] = asyncio.gather(
            *(c.finish(deadline) for c in self.consumers)
        )
        force: asyncio.Task[Any] = asyncio.create_task(self._force.wait())
        try:
            await asyncio.wait({finishing, force}, return_when=asyncio.FIRST_COMPLETED)
            if not finishing.done():
                for consumer in self.consumers:
                    for task in consumer.workers:
                        task.cancel()
            await finishing
        finally:
            force.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await force
            for task in list(self.background):
                with contextlib.suppress(Exception):
                    await task
            await self.publisher.close()  # the connection's close closes its channels
            if self.connection is not None:
                await self.connection.close()
        dropped = sum(c.session.dropped for c in self.consumers if c.session is not None)
        if dropped:
            log.info("%d settle(s) of closed channels were not sent (redelivered)", dropped)

    async def process(
        self, consumer: QueueConsumer, session: ChannelSession, delivered: DeliveredMessage
    ) -> None:
        message = Message(delivered, consumer.queue)
        if not tracing.tracing_enabled():
            await self._process(consumer, session, delivered, message, None)
            return
        with tracing.processing(message.trace(), message.headers) as traced:
            await self._process(consumer, session, delivered, message, traced)

    async def _process(
        self,
        consumer: QueueConsumer,
        session: ChannelSession,
        delivered: DeliveredMessage,
        message: Message,
        traced: tracing.Processing | None,
    ) -> None:
        spec = consumer.spec
        tag = delivery_tag(delivered)
        args: tuple[Any, ...]
        try:
            undecodable = (delivered.header.properties.headers or {}).get(UNDECODABLE_HEADER)
            if undecodable is not None:
                raise InvalidMessageError(
                    "undecodable", "properties not decodable: " + str(undecodable)
                )
            if spec.wants_model:
                props = delivered.header.properties
                name = self.decoder.event_name(
                    props.message_type,
                    message.original_exchange,
                    message.original_routing_key,
                    props.headers,
                )
                event = self.decoder.decode(props.content_type, name, delivered.body, spec.accepted)
                args = (event, message) if spec.wants_message else (event,)
            else:
                args = (message,)
            if spec.options.idempotent and message.message_id:
                if not await self._run_once(consumer, message.message_id, args):
                    if self.metrics is not None:
                        self.metrics.duplicate(consumer.queue)
                    _acked(session, tag, traced)
                    return
            elif self.metrics is not None:
                await self._timed(consumer, args)
            else:
                await spec.func(*args)
        except InvalidMessageError as exc:
            await self._failed(consumer, session, message, exc, permanent=True, reason=exc.reason)
        except RejectMessage as exc:
            await self._failed(consumer, session, message, exc, permanent=True, reason="rejected")
        except Exception as exc:
            await self._failed(consumer, session, message, exc, permanent=False, reason="handler")
        else:
            _acked(session, tag, traced)

    async def _run_once(
        self, consumer: QueueConsumer, message_id: str, args: tuple[Any, ...]
    ) -> bool:
        """Run the handler unless ``message_id`` already succeeded on this queue."""
        key = f"{consumer.queue}:{message_id}"
        store = self.app.idempotency_store
        while (running := self._inflight.get(key)) is not None:
            # The same id is being handled right now: its outcome decides for this copy.
            await asyncio.shield(running)
        if await store.seen(key):
            log.info("queue %r: message_id %r already handled, skipped", consumer.queue, message_id)
            return False
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            if self.metrics is not None:
                await self._timed(consumer, args)
            else:
                await consumer.spec.func(*args)
            await store.remember(key)
            return True
        finally:
            del self._inflight[key]
            done.set_result(None)

    async def _timed(self, consumer: QueueConsumer, args: tuple[Any, ...]) -> None:
        """Run the handler and observe its duration, whether it returns or raises."""
        started = time.perf_counter()
        try:
            await consumer.spec.func(*args)
        finally:
            if self.metrics is not None:
                self.metrics.handler_seconds(consumer.queue, time.perf_counter() - started)


def _acked(session: ChannelSession, tag: int, traced: tracing.Processing | None) -> None:
    """Mark the delivery done (its ack goes out with the session's next flush)."""
    if traced is None:
        session.done(tag)
        return
    with traced.settling("ack"):
        session.done(tag)
