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
   run of finished deliveries only; a running delivery is never covered.
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
``grace`` seconds to finish and are acked; a handler still running after that is cancelled and
its delivery is not acked (the broker redelivers it when the channel closes). A second signal
ends the grace period at once.

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
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)
from aiormq.abc import AbstractChannel, DeliveredMessage

from bus import lenient
from bus.broker.connect import close_later, connect_async
from bus.contracts import ContractRegistry
from bus.errors import AccessRefusedError, BrokerError, NotFoundError, UsageError
from bus.headers import safe_headers
from bus.lenient import UNDECODABLE_HEADER
from bus.settings import BusSettings, mask_url
from bus.topology import ExpandedTopology, FailurePolicy, LoadedTopology, load_topology
from consumers.decode import Decoder, InvalidMessageError
from consumers.handlers import HandlerFunc, HandlerOptions, HandlerSpec, inspect_handler
from consumers.idempotency import IdempotencyStore, MemoryIdempotencyStore
from consumers.message import RETRY_COUNT_HEADER, Message, describe
from consumers.metrics import ConsumerMetrics
from consumers.policy import (
    Backoff,
    DeadLetter,
    Drop,
    FailureAction,
    Reject,
    RejectMessage,
    Requeue,
    Retry,
    decide,
)
from consumers.settle import ChannelSession

__all__ = ["ConsumerApp", "Runtime"]

log = logging.getLogger("consumers.runtime")

_MAX_HEADER_TEXT = 1024


def _exception_type(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


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
        cancelled a consumer because its queue was deleted).
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


class _QueueConsumer:
    """One handler consuming one queue on its own robust channel."""

    def __init__(self, runtime: Runtime, spec: HandlerSpec, policy: FailurePolicy) -> None:
        self.runtime = runtime
        self.spec = spec
        self.queue = spec.queue
        self.policy = policy
        self.channel: AbstractRobustChannel | None = None
        self.session: ChannelSession | None = None
        self.consumer_tag = f"{runtime.app.name}.{spec.queue}.{uuid.uuid4().hex[:8]}"
        self.backlog: deque[tuple[ChannelSession, DeliveredMessage]] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.workers: list[asyncio.Task[None]] = []
        self.timers: dict[tuple[ChannelSession, int], asyncio.TimerHandle] = {}
        self.stopping = False
        self.ack_batch = max(1, spec.options.prefetch // 4)
        self.quorum = runtime.topology.queues[spec.queue].type == "quorum"

    async def start(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel(publisher_confirms=False)
        self.channel = channel
        # global_=False: per-consumer prefetch; quorum queues refuse global QoS.
        await channel.set_qos(prefetch_count=self.spec.options.prefetch, global_=False)
        channel.reopen_callbacks.add(self._on_reopen)
        await self._consume(await channel.get_underlay_channel())
        self.workers = [
            asyncio.create_task(self._worker(), name=f"consumer {self.queue} #{i}")
            for i in range(self.spec.options.concurrency)
        ]

    async def _consume(self, underlay: AbstractChannel) -> None:
        session = ChannelSession(underlay, self.queue, self.runtime.metrics)
        self.session = session
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        try:
            await underlay.basic_consume(
                self.queue, partial(self._on_delivery, session), consumer_tag=self.consumer_tag
            )
        except aiormq.exceptions.ChannelAccessRefused as exc:
            # basic.consume needs read on the queue (and nothing else).
            settings = self.runtime.settings
            raise AccessRefusedError.from_reply(
                str(exc), "read", kind="queue", name=self.queue, vhost=settings.vhost,
                user=settings.credentials()[0],
            ) from None  # fmt: skip

    async def _on_reopen(self, channel: AbstractRobustChannel | None) -> None:
        if self.stopping or channel is None:
            return
        try:
            await self._consume(await channel.get_underlay_channel())
        except aiormq.exceptions.ChannelNotFoundEntity:
            self.runtime.fail(
                NotFoundError(f"queue {self.queue!r} no longer exists: cannot resume consuming")
            )
            return
        except Exception as exc:
            # The channel died again while re-registering; the next reopen tries again.
            log.warning(
                "consumer of %r: re-registering after reconnect failed: %s", self.queue, exc
            )
            return
        log.info("consumer of %r resumed after reconnect", self.queue)

    def _on_broker_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        if frame.consumer_tag == self.consumer_tag and not self.stopping:
            self.runtime.fail(
                BrokerError(
                    f"the broker cancelled the consumer of queue {self.queue!r} "
                    "(queue deleted?): stopping"
                )
            )

    async def _on_delivery(self, session: ChannelSession, delivered: DeliveredMessage) -> None:
        # Runs in the client's per-delivery task: only bookkeeping here, handlers run in the
        # workers so that a channel closing cannot interrupt them halfway.
        tag = _tag(delivered)
        session.track(tag)
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.consumed(self.queue)
        if self.stopping:
            await session.nack(tag, requeue=True)
            return
        self.backlog.append((session, delivered))
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def _worker(self) -> None:
        backlog = self.backlog
        process = self.runtime.process
        loop = asyncio.get_running_loop()
        while not self.stopping:
            if not backlog:
                waiter: asyncio.Future[None] = loop.create_future()
                self.waiters.append(waiter)
                await waiter
                continue
            session, delivered = backlog.popleft()
            if not session.alive:
                session.dropped += 1
                continue
            await process(self, session, delivered)
            if not backlog or session.pending_acks >= self.ack_batch:
                await session.flush()

    def wake_all(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def requeue_later(self, session: ChannelSession, tag: int, delay: float) -> None:
        loop = asyncio.get_running_loop()
        key = (session, tag)

        def fire() -> None:
            self.timers.pop(key, None)
            task = loop.create_task(session.nack(tag, requeue=True))
            self.runtime.background.add(task)
            task.add_done_callback(self.runtime.background.discard)

        self.timers[key] = loop.call_later(delay, fire)

    async def stop_consuming(self) -> None:
        """Cancel at the broker and hand back deliveries that never started."""
        self.stopping = True
        session = self.session
        if session is not None and session.alive:
            try:
                await asyncio.wait_for(session.channel.basic_cancel(self.consumer_tag), 5)
            except Exception as exc:
                log.warning("consumer of %r: basic.cancel failed: %s", self.queue, exc)
        pending = list(self.backlog)
        self.backlog.clear()
        for owner, delivered in pending:
            await owner.nack(_tag(delivered), requeue=True)
        self.wake_all()

    async def finish(self, deadline: float) -> None:
        """Wait for running handlers until ``deadline`` (loop time), then settle and close."""
        loop = asyncio.get_running_loop()
        if self.workers:
            timeout = max(0.0, deadline - loop.time())
            _, late = await asyncio.wait(self.workers, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "consumer of %r: %d handler(s) still running after the grace period were "
                    "cancelled; their messages are not acked and will be redelivered",
                    self.queue,
                    len(late),
                )
            await asyncio.gather(*self.workers, return_exceptions=True)
        for (owner, tag), handle in list(self.timers.items()):
            handle.cancel()
            await owner.nack(tag, requeue=True)
        self.timers.clear()
        if self.session is not None:
            await self.session.flush()
        if self.channel is not None:
            try:
                await self.channel.close()
            except Exception as exc:
                log.debug("closing the channel of %r: %s", self.queue, exc)


class Runtime:
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
        self.topology = _expanded(topology)
        self.decoder = Decoder(ContractRegistry(self.topology.events))
        self.consumers = self._select(queues)
        self.connection: AbstractRobustConnection | None = None
        self.publish_channel: AbstractRobustChannel | None = None
        self.exchanges: dict[str, AbstractExchange] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.fatal: BrokerError | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._stopped = False
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._requeues: OrderedDict[str, int] = OrderedDict()
        self.dropped: Counter[str] = Counter()
        """Messages rejected without a dead-letter exchange (rule 5), per queue."""
        self._retired: set[asyncio.Handle | asyncio.Task[None]] = set()

    def _select(self, queues: Iterable[str] | None) -> list[_QueueConsumer]:
        wanted = list(self.app.handlers) if queues is None else list(dict.fromkeys(queues))
        if not wanted:
            raise UsageError(f"consumer app {self.app.name!r} has no handlers to run")
        consumers: list[_QueueConsumer] = []
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
            consumers.append(_QueueConsumer(self, spec, self.topology.failure[name]))
        return consumers

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.decoder.preload()
        # One message with undecodable properties must not close the connection of every
        # consumer (see bus.lenient): the runtime dead-letters it instead.
        lenient.install()
        connection = await connect_async(self.settings, name=f"amqp-bus consumer {self.app.name}")
        self.connection = connection
        try:
            await self._check_topology(connection)
            self.publish_channel = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
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

    def _needed(self) -> list[tuple[str, str]]:
        needed: list[tuple[str, str]] = []
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
        raw = transport.connection
        missing: list[str] = []
        channel = await raw.channel(publisher_confirms=False)
        try:
            for kind, name in self._needed():
                try:
                    if kind == "queue":
                        await channel.queue_declare(name, passive=True)
                    else:
                        await channel.exchange_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    missing.append(f"{kind} {name!r}")
                    channel = await raw.channel(publisher_confirms=False)
                except aiormq.exceptions.ChannelAccessRefused as exc:
                    raise AccessRefusedError(f"{kind} {name!r}: {exc}") from None
        finally:
            if not channel.is_closed:
                await channel.close()
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
            for pending in self._retired:
                pending.cancel()  # closing the connection closes the retired channels too
            if self.connection is not None:
                await self.connection.close()
        dropped = sum(c.session.dropped for c in self.consumers if c.session is not None)
        if dropped:
            log.info("%d settle(s) of closed channels were not sent (redelivered)", dropped)

    async def process(
        self, consumer: _QueueConsumer, session: ChannelSession, delivered: DeliveredMessage
    ) -> None:
        spec = consumer.spec
        tag = _tag(delivered)
        message = Message(delivered, consumer.queue)
        args: tuple[Any, ...]
        try:
            undecodable = (delivered.header.properties.headers or {}).get(UNDECODABLE_HEADER)
            if undecodable is not None:
                raise InvalidMessageError(
                    "undecodable", "properties not decodable: " + str(undecodable)
                )
            if spec.wants_model:
                props = delivered.header.properties
                event = self.decoder.decode(
                    props.content_type, props.message_type, delivered.body, spec.accepted
                )
                args = (event, message) if spec.wants_message else (event,)
            else:
                args = (message,)
            if spec.options.idempotent and message.message_id:
                if not await self._run_once(consumer, message.message_id, args):
                    if self.metrics is not None:
                        self.metrics.duplicate(consumer.queue)
                    session.done(tag)
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
            session.done(tag)

    async def _run_once(
        self, consumer: _QueueConsumer, message_id: str, args: tuple[Any, ...]
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

    async def _timed(self, consumer: _QueueConsumer, args: tuple[Any, ...]) -> None:
        """Run the handler and observe its duration, whether it returns or raises."""
        started = time.perf_counter()
        try:
            await consumer.spec.func(*args)
        finally:
            if self.metrics is not None:
                self.metrics.handler_seconds(consumer.queue, time.perf_counter() - started)

    # -- failures ---------------------------------------------------------------------------
    def _attempts(self, consumer: _QueueConsumer, message: Message) -> int:
        """Requeues seen by this process (the broker counts none on classic queues).

        Keyed by ``message_id``, else by a digest of the message, so the back-off grows and
        the ``max_requeues`` bound holds for messages without an id too.
        """
        key = f"{consumer.queue}:{message.key}"
        count = self._requeues.pop(key, 0)
        self._requeues[key] = count + 1
        while len(self._requeues) > 10_000:
            self._requeues.popitem(last=False)
        return count

    async def _failed(
        self,
        consumer: _QueueConsumer,
        session: ChannelSession,
        message: Message,
        exc: BaseException,
        *,
        permanent: bool,
        reason: str,
    ) -> None:
        queue, tag = consumer.queue, message.delivery_tag
        if not session.alive:
            # The broker redelivers it; acting on it now would duplicate the message.
            session.dropped += 1
            return
        # Only a quorum queue counts deliveries; on a classic queue the header is a forgery.
        delivery_count = message.delivery_count if consumer.quorum else None
        attempts = 0 if delivery_count is not None else self._attempts(consumer, message)
        action: FailureAction = decide(
            consumer.policy,
            retry_count=message.retry_count,
            delivery_count=delivery_count,
            permanent=permanent,
            backoff=self.backoff,
            attempts=attempts,
        )
        what = f"{_exception_type(exc)}: {str(exc)[:_MAX_HEADER_TEXT]}"
        metrics = self.metrics
        try:
            if isinstance(action, Retry):
                step = action.step
                await self._republish(message, "", step.queue, {RETRY_COUNT_HEADER: step.attempt})
                log.warning(
                    "queue %r: message %s failed (%s); retry %d/%d in %d ms via %r",
                    queue, describe(message), what, step.attempt,
                    len(consumer.policy.retry), step.delay_ms, step.queue,
                )  # fmt: skip
                if metrics is not None:
                    metrics.retried(queue)
                session.done(tag)
            elif isinstance(action, DeadLetter):
                headers = {
                    RETRY_COUNT_HEADER: message.retry_count,
                    "x-exception-type": _exception_type(exc),
                    "x-exception-message": str(exc)[:_MAX_HEADER_TEXT],
                    "x-failure-reason": reason,
                    "x-failed-queue": queue,
                }
                key = self._dead_letter_key(queue, message)
                await self._republish(message, action.exchange, key, headers)
                log.error(
                    "queue %r: message %s dead-lettered to %r (%s: %s)",
                    queue, describe(message), action.exchange, reason, what,
                )  # fmt: skip
                if metrics is not None:
                    metrics.dead_lettered(queue, reason)
                session.done(tag)
            elif isinstance(action, Reject):
                log.error(
                    "queue %r: message %s rejected to its dead-letter exchange %r (%s: %s)",
                    queue, describe(message), action.exchange, reason, what,
                )  # fmt: skip
                if await session.nack(tag, requeue=False) and metrics is not None:
                    metrics.dead_lettered(queue, reason)
            elif isinstance(action, Drop):
                log.error(
                    "queue %r: message %s DROPPED: %s (%s: %s) and the queue has no dead-letter "
                    "exchange; give it `dead_letter: true` to keep such messages",
                    queue, describe(message), action.why, reason, what,
                )  # fmt: skip
                if await session.nack(tag, requeue=False):
                    self.dropped[queue] += 1
                    if metrics is not None:
                        metrics.dropped(queue, reason)
            else:
                self._requeue(consumer, session, message, action, what)
        except Exception as publish_exc:
            delay = self.backoff.delay(attempts or (delivery_count or 0))
            log.error(
                "queue %r: message %s failed (%s) and could not be moved (%s: %s); "
                "requeued in %.1f s instead",
                queue, describe(message), what,
                _exception_type(publish_exc), str(publish_exc)[:_MAX_HEADER_TEXT], delay,
            )  # fmt: skip
            if session.alive:
                consumer.requeue_later(session, tag, delay)
                if metrics is not None:
                    metrics.requeued(queue)

    def _requeue(
        self,
        consumer: _QueueConsumer,
        session: ChannelSession,
        message: Message,
        action: Requeue,
        what: str,
    ) -> None:
        if action.final:
            log.error(
                "queue %r: message %s failed (%s) on its last delivery allowed by the delivery "
                "limit (%s) and the queue has no dead-letter exchange: the broker will DROP it "
                "when it is requeued now",
                consumer.queue, describe(message), what, consumer.policy.delivery_limit,
            )  # fmt: skip
        else:
            log.error(
                "queue %r: message %s failed (%s); no dead-letter exchange, requeued in %.1f s",
                consumer.queue, describe(message), what, action.delay,
            )  # fmt: skip
        consumer.requeue_later(session, message.delivery_tag, action.delay)
        if self.metrics is not None:
            self.metrics.requeued(consumer.queue)

    def _dead_letter_key(self, queue: str, message: Message) -> str:
        spec = self.topology.queues[queue]
        key = spec.arguments.get("x-dead-letter-routing-key")
        return key if isinstance(key, str) else message.routing_key

    async def _exchange(self, name: str) -> AbstractExchange:
        channel = self.publish_channel
        if channel is None:
            raise BrokerError("not started")
        if name == "":
            return channel.default_exchange
        exchange = self.exchanges.get(name)
        if exchange is None:
            exchange = self.exchanges[name] = await channel.get_exchange(name, ensure=False)
        return exchange

    async def _republish(
        self, message: Message, exchange: str, routing_key: str, extra: dict[str, Any]
    ) -> None:
        """A confirmed, persistent, mandatory copy of ``message`` (raises when not confirmed)."""
        props = message.delivered.header.properties
        # Broker-owned headers are never forwarded as a publisher wrote them: a forged x-death
        # crashes the broker's dead-lettering when the copy expires from a delay queue.
        headers, dropped = safe_headers(props.headers)
        if dropped:
            log.warning(
                "queue %r: message %s: dropped forged or broker-owned header(s) %s from its copy",
                message.queue, describe(message), ", ".join(sorted(dropped)),
            )  # fmt: skip
        headers.update(extra)
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=props.priority,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            # Returned messages are matched by id: never publish a copy without one.
            message_id=props.message_id or str(uuid.uuid4()),
            timestamp=props.timestamp,
            type=props.message_type,
            app_id=props.app_id,
        )
        channel = self.publish_channel
        target = await self._exchange(exchange)
        try:
            async with asyncio.timeout(self.app.publish_timeout):
                await target.publish(copy, routing_key, mandatory=True)
        except aiormq.exceptions.PublishError:
            raise  # returned unroutable: the channel is fine
        except aiormq.exceptions.DeliveryError:
            await self._renew_publish_channel(channel)
            raise
        except aiormq.exceptions.ChannelAccessRefused as exc:
            # Retries go through the default exchange: write on 'amq.default' is needed.
            raise AccessRefusedError.from_reply(
                str(exc), "write", kind="exchange", name=exchange or "amq.default",
                vhost=self.settings.vhost, user=self.settings.credentials()[0],
            ) from None  # fmt: skip
        except asyncio.CancelledError:
            # aiormq rejects pending confirms with CancelledError when it drops a link it
            # found stuck (no frame within the heartbeat grace). This worker was not
            # cancelled: report a lost connection (the delivery is redelivered) instead of
            # letting the worker task end, which would leave the consumer holding its
            # prefetched deliveries with nobody to handle them.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise BrokerError(
                f"connection lost before the broker confirmed the copy to {exchange!r}"
            ) from None

    async def _renew_publish_channel(self, nacked: AbstractRobustChannel | None) -> None:
        """Republish on a fresh channel once the broker nacked a copy on ``nacked``.

        RabbitMQ 3.10.8 can keep nacking every publish on a channel whose first publish to a
        quorum queue met its leader just killed, while a new channel is accepted (see
        ``producers.publisher.Publisher._retire``). Copies still awaiting their confirm on
        the old channel keep it until the publish timeout has passed.
        """
        connection = self.connection
        if nacked is None or nacked is not self.publish_channel or connection is None:
            return  # already replaced after another nack
        try:
            fresh = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:
            log.warning("could not open a new publishing channel after a nack (%s)", exc)
            return
        if self.publish_channel is not nacked:
            await fresh.close()  # another worker replaced it while this one was opening
            return
        self.publish_channel, self.exchanges = fresh, {}
        log.info("broker nacked a copy: publishing retries and dead letters on a new channel")
        close_later(nacked.close, self.app.publish_timeout, self._retired)


def _tag(delivered: DeliveredMessage) -> int:
    # Consumers only ever receive Basic.Deliver, whose tag is always set.
    return cast(aiormq.spec.Basic.Deliver, delivered.delivery).delivery_tag or 0


def _expanded(topology: LoadedTopology | ExpandedTopology | Path | None) -> ExpandedTopology:
    if isinstance(topology, ExpandedTopology):
        return topology
    if isinstance(topology, LoadedTopology):
        return topology.expanded
    return load_topology(topology).expanded
