"""Acks, nacks and rejects of one AMQP channel, batched without ever acking unfinished work.

A :class:`ChannelSession` belongs to one underlying channel. Delivery tags are only meaningful
on the channel that delivered them: after a reconnect the robust channel gets a new underlying
channel, a new session starts, and every settle of the old session is dropped (an ack with an
old tag would close the new channel with ``PRECONDITION_FAILED - unknown delivery tag``); the
broker redelivers those messages instead.

Batching: finished deliveries are acked with one ``basic.ack(multiple=True)`` carrying the
highest tag of the *contiguous* run of settled deliveries from the oldest one, so a tag whose
handler is still running (or waits for its retry copy's confirm, or for a delayed requeue) is
never covered. Finished deliveries behind a running one are acked one by one. A nack or reject
is written before its tag counts as settled, so a later multiple-ack frame always follows it on
the wire (and the broker, which settles a tag once, does not count it again).

When: the consumer flushes after ``ack_batch`` finished deliveries, and otherwise
:meth:`ChannelSession.flush_later` sends them :data:`ACK_DELAY` after its backlog emptied
(one timer per session, armed by the first finished delivery after a flush). Flushes never
overlap: a second :meth:`~ChannelSession.flush` waits for the one under way and then sends what
is left, so the flush of a graceful stop has written every ack before the channel closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from aiormq.abc import AbstractChannel

from consumers.metrics import ConsumerMetrics

__all__ = ["ACK_DELAY", "ChannelSession"]

log = logging.getLogger("consumers.settle")

ACK_DELAY = 0.002
"""Seconds finished deliveries wait for more before their acks are written (the backlog is
empty by then): at most this much later than an ack per message, for one frame per batch."""

_RUNNING = 0
_DONE = 1  # finished, ack not sent yet
_SETTLED = 2  # acked, nacked or rejected on the wire


class ChannelSession:
    """Delivery bookkeeping of one underlying channel (one consumer)."""

    __slots__ = (
        "_done_count",
        "_flushing",
        "_order",
        "_state",
        "_tasks",
        "_timer",
        "ack_delay",
        "channel",
        "dead",
        "dropped",
        "metrics",
        "queue",
    )

    def __init__(
        self,
        channel: AbstractChannel,
        queue: str,
        metrics: ConsumerMetrics | None = None,
        *,
        ack_delay: float = ACK_DELAY,
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.metrics = metrics
        self.ack_delay = ack_delay
        self.dead = False
        self.dropped = 0
        self._order: deque[int] = deque()
        self._state: dict[int, int] = {}
        self._done_count = 0
        self._flushing = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def alive(self) -> bool:
        if self.dead:
            return False
        if self.channel.is_closed:
            self.dead = True
            return False
        return True

    @property
    def pending_acks(self) -> int:
        return self._done_count

    @property
    def unsettled(self) -> int:
        return len(self._state)

    def track(self, tag: int) -> None:
        """A delivery arrived (tags grow monotonically on a channel)."""
        self._order.append(tag)
        self._state[tag] = _RUNNING

    def done(self, tag: int) -> None:
        """The delivery may be acked: its handler finished (or its copy was confirmed)."""
        if self._state.get(tag) == _RUNNING:
            self._state[tag] = _DONE
            self._done_count += 1

    async def nack(self, tag: int, *, requeue: bool) -> bool:
        """``basic.nack`` (requeue) or ``basic.reject`` (no requeue); False when not sent."""
        if self._state.get(tag) != _RUNNING:
            return False
        if not self.alive:
            self.dropped += 1
            return False
        try:
            if requeue:
                await self.channel.basic_nack(tag, requeue=True, wait=False)
            else:
                await self.channel.basic_reject(tag, requeue=False, wait=False)
        except Exception as exc:
            self._lost(exc)
            return False
        state, order = self._state, self._order
        if state.get(tag) == _RUNNING:
            state[tag] = _SETTLED
        while order and state[order[0]] == _SETTLED:  # settled on the wire: stop tracking it
            del state[order.popleft()]
        return True

    def flush_later(self) -> None:
        """Flush within :attr:`ack_delay` unless a flush comes first (nothing else is queued)."""
        if self._timer is None and self._done_count:
            self._timer = asyncio.get_running_loop().call_later(self.ack_delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._done_count:
            task = asyncio.get_running_loop().create_task(self.flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send the acks of every finished delivery (one multiple-ack for the contiguous run).

        Waits for a flush under way first, so that when it returns every delivery marked done
        before the call has had its ack written (or dropped with a dead channel).
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._done_count == 0 and not self._flushing.locked():
            return
        async with self._flushing:
            while self._done_count:
                if not self.alive:
                    self.dropped += self._done_count
                    self._done_count = 0
                    return
                await self._flush_once()

    async def _flush_once(self) -> None:
        order, state = self._order, self._state
        last_done = 0
        acked = 0
        while order and state[order[0]] != _RUNNING:
            tag = order.popleft()
            if state.pop(tag) == _DONE:
                last_done = tag
                acked += 1
        singles = [tag for tag in order if state[tag] == _DONE] if self._done_count > acked else []
        for tag in singles:
            state[tag] = _SETTLED
        self._done_count -= acked + len(singles)
        try:
            if last_done:
                await self.channel.basic_ack(last_done, multiple=True, wait=False)
            for tag in singles:
                await self.channel.basic_ack(tag, wait=False)
        except Exception as exc:
            self._lost(exc)
            return
        if self.metrics is not None:
            self.metrics.acked(self.queue, acked + len(singles))

    def _lost(self, exc: BaseException) -> None:
        self.dead = True
        log.warning(
            "consumer of %r: channel closed (%s); unsent acks dropped, the broker redelivers",
            self.queue,
            exc or type(exc).__name__,
        )
