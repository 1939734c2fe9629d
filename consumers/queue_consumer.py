"""One handler consuming one queue on its own robust channel (used by the runtime).

Deliveries arrive through a :class:`consumers.wire.DeliveryTap` on the channel: the connection's
reader task hands each complete delivery to :meth:`QueueConsumer._deliver`, which only records
it (its tag in the channel's :class:`~consumers.settle.ChannelSession`, the delivery in the
backlog) and wakes a worker. ``concurrency`` worker tasks take deliveries off the backlog and
run the handler; after each one a worker flushes the session's acks when ``ack_batch`` are
waiting, or arms the session's short timer when the backlog is empty.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING, cast

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel, DeliveredMessage

from bus.broker.passive import missing_async
from bus.errors import AccessRefusedError, BrokerError, NotFoundError
from bus.topology import FailurePolicy
from consumers.handlers import HandlerSpec
from consumers.settle import ChannelSession
from consumers.wire import DeliveryTap

if TYPE_CHECKING:
    from consumers.runtime import Runtime

__all__ = ["QueueConsumer", "delivery_tag"]

# The runtime's logger: operators filter on it, whichever module writes the line.
log = logging.getLogger("consumers.runtime")

# How long a consumer whose queue was deleted waits for it to be declared again (a live
# migration, docs/queue-migration.md, deletes and redeclares within moments) before it stops.
REATTACH_TIMEOUT = 120.0


class QueueConsumer:
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
        self.connection: AbstractRobustConnection | None = None
        self.reattaching: asyncio.Task[None] | None = None

    async def start(self, connection: AbstractRobustConnection) -> None:
        self.connection = connection
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
        session = self.session
        if session is None or session.channel is not underlay:
            # Tags belong to their channel: a new channel starts a new session. Re-attaching on
            # the same channel (after a broker cancel) keeps it, so that a multiple-ack of the
            # new consumer never covers a delivery of the old one that is still running.
            session = ChannelSession(underlay, self.queue, self.runtime.metrics)
            self.session = session
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)

        def deliver(delivered: DeliveredMessage) -> None:
            self._deliver(session, delivered)

        async def deliver_async(delivered: DeliveredMessage) -> None:
            # aiormq's own path, used only if a delivery ever bypassed the tap.
            self._deliver(session, delivered)

        DeliveryTap.attach(underlay, self.consumer_tag, deliver)
        try:
            await underlay.basic_consume(self.queue, deliver_async, consumer_tag=self.consumer_tag)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            # basic.consume needs read on the queue (and nothing else).
            settings = self.runtime.settings
            raise AccessRefusedError.from_reply(
                str(exc), "read", kind="queue", name=self.queue, vhost=settings.vhost,
                user=settings.credentials()[0],
            ) from None  # fmt: skip

    async def _on_reopen(self, channel: AbstractRobustChannel | None) -> None:
        if self.stopping or channel is None or self._reattach_pending():
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
        if frame.consumer_tag != self.consumer_tag or self.stopping or self._reattach_pending():
            return
        # The queue was deleted (a live migration deletes and redeclares it): wait for it.
        log.warning(
            "consumer of %r: cancelled by the broker (queue deleted?); waiting up to %.0f s "
            "for the queue to be declared again",
            self.queue,
            REATTACH_TIMEOUT,
        )
        self.reattaching = asyncio.get_running_loop().create_task(self._reattach())

    def _reattach_pending(self) -> bool:
        return self.reattaching is not None and not self.reattaching.done()

    async def _reattach(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REATTACH_TIMEOUT
        while not self.stopping:
            if await self._queue_exists() and self.channel is not None:
                try:
                    await self._consume(await self.channel.get_underlay_channel())
                except Exception as exc:  # deleted again meanwhile, or the channel died
                    log.warning("consumer of %r: re-attaching failed: %s", self.queue, exc)
                else:
                    log.info("consumer of %r attached again to the new queue", self.queue)
                    return
            if loop.time() > deadline:
                self.runtime.fail(
                    BrokerError(
                        f"the broker cancelled the consumer of queue {self.queue!r} (queue "
                        f"deleted?) and it did not come back within {REATTACH_TIMEOUT:.0f} s"
                    )
                )
                return
            await asyncio.sleep(0.5)

    async def _queue_exists(self) -> bool:
        # On plain channels of the raw connection: a 404 closes the channel, and a robust
        # channel would reopen it. Any error (the connection is being replaced) means "not yet".
        transport = self.connection.transport if self.connection is not None else None
        if transport is None:
            return False
        try:
            return not await missing_async(transport.connection, [("queue", self.queue)])
        except Exception:
            return False

    def _deliver(self, session: ChannelSession, delivered: DeliveredMessage) -> None:
        # Called by the connection's reader (through the tap): only bookkeeping here, handlers
        # run in the workers so that a channel closing cannot interrupt them halfway.
        tag = delivery_tag(delivered)
        session.track(tag)
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.consumed(self.queue)
        if self.stopping:
            self.runtime.spawn(session.nack(tag, requeue=True))
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
            if session.pending_acks >= self.ack_batch:
                await session.flush()
            elif not backlog:
                session.flush_later()

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
            self.runtime.spawn(session.nack(tag, requeue=True))

        self.timers[key] = loop.call_later(delay, fire)

    async def stop_consuming(self) -> None:
        """Cancel at the broker and hand back deliveries that never started."""
        self.stopping = True
        if self.reattaching is not None:
            self.reattaching.cancel()
        session = self.session
        if session is not None and session.alive:
            try:
                await asyncio.wait_for(session.channel.basic_cancel(self.consumer_tag), 5)
            except Exception as exc:
                log.warning("consumer of %r: basic.cancel failed: %s", self.queue, exc)
        pending = list(self.backlog)
        self.backlog.clear()
        for owner, delivered in pending:
            await owner.nack(delivery_tag(delivered), requeue=True)
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


def delivery_tag(delivered: DeliveredMessage) -> int:
    # Consumers only ever receive Basic.Deliver, whose tag is always set.
    return cast(aiormq.spec.Basic.Deliver, delivered.delivery).delivery_tag or 0
