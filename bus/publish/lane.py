"""Batched publishing on one aiormq channel, for :class:`bus.publish.aio.AsyncPublisher`.

See :class:`Lane`. A channel closed by the broker settles every unconfirmed publish by its
place relative to the refused one (:func:`bus.publish.outcomes.first_refused`): that one gets
the broker's error, those written before it :class:`ClosedOverAnother`, those after it
:class:`Discarded` (the broker dropped them: they are sent again on a new channel).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bus.publish.frames import PublishFrames
from bus.publish.message import Resolved
from bus.publish.outcomes import first_refused

__all__ = ["Batch", "ClosedOverAnother", "Discarded", "Lane"]

# Publishes per payload written at once (see Lane); 64 measured best of 32-256.
_CHUNK = 64

# One unconfirmed publish: delivery tag, its confirm, the message, its deadline (loop time).
_Entry = tuple[int, asyncio.Future[None], Resolved, float]


class Discarded(Exception):
    """Written after the publish the broker refused: the broker discarded it, send again."""


class ClosedOverAnother(Exception):
    """Written before the publish the broker refused: routed, but never confirmed."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


class Batch:
    """Publishes flushed together; ``sent`` once their frames are in aiormq's write queue."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


class Lane:
    """The publishing side of one aiormq channel: frames written in batches, confirms and
    deadlines kept per channel.

    aiormq's ``basic_publish`` costs a lock, two context managers, a timeout, pamqp's generic
    marshalling and one slot of the connection's 10-frame write queue per message. Here a
    publish encodes its frames (:class:`~bus.publish.frames.PublishFrames`), takes the next
    delivery tag and appends them; once per loop iteration every frame appended goes to the
    write queue as one payload. Nothing awaits between taking a tag and appending the frames
    and payloads are queued in order, so the wire order is the tag order, as the broker's
    confirms assume. The lane must be the only publisher on its channel.

    The lane reads the channel's confirms and returns itself (it takes over the aiormq
    channel's handlers of ``basic.ack``/``basic.nack`` and ``basic.return``): its unconfirmed
    publishes are a queue in tag order, so an ack with ``multiple`` settles a range from the
    front instead of aiormq's scan of every unconfirmed tag with a callback per tag. One timer
    per lane, at the earliest deadline of its publishes, replaces a timeout per message.

    A payload holds at most ``_CHUNK`` publishes; further chunks go out one per loop
    iteration. When a confirm frees hundreds of publishers at once, one payload of them all
    makes the broker confirm them as one batch again, and the window moves in a few large
    steps (about 20 confirms/s); chunks keep it moving (+16% at window 1000, measured with
    the bench's publish case).
    """

    __slots__ = (
        "_acked", "_backlog", "_batch", "_chunk", "_count", "_frames", "_pending", "_putter",
        "_ready", "_timer", "_timer_at", "channel", "loop",
    )  # fmt: skip

    def __init__(self, channel: aiormq.Channel) -> None:
        self.channel = channel
        self.loop = asyncio.get_running_loop()
        self._frames = PublishFrames(channel.number, channel.connection.connection_tune.frame_max)
        self._chunk: list[bytes] = []
        self._batch = Batch()
        self._count = 0
        # Full chunks, in tag order. A flush is pending exactly while _ready or _chunk holds
        # something.
        self._ready: deque[tuple[list[bytes], Batch]] = deque()
        # Unconfirmed publishes in tag order (consecutive tags), and the tags in it that a
        # single (not multiple) ack settled already.
        self._pending: deque[_Entry] = deque()
        self._acked: set[int] = set()
        self._backlog: deque[tuple[ChannelFrame, Batch]] = deque()
        self._putter: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        # Instance attributes shadow the channel's methods: its reader calls ours.
        channel._on_confirm_frame = self._on_confirm  # type: ignore[method-assign]
        channel._on_return_frame = self._on_return  # type: ignore[method-assign]
        channel.closing.add_done_callback(self._on_close)

    def publish(
        self, message: Resolved, properties: bytes, deadline: float
    ) -> tuple[asyncio.Future[None], Batch]:
        """Queue ``message`` (its encoded ``properties``) for the next write; its confirm
        resolves when the broker acks it and raises on a nack, a return, the channel's close
        or at ``deadline`` (loop time: ``TimeoutError``)."""
        channel = self.channel
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        # Encoded before the tag is taken: a message that cannot be sent leaves no gap.
        data = self._frames.message(message.exchange, message.routing_key, properties, message.body)
        channel.delivery_tag += 1
        confirmation: asyncio.Future[None] = self.loop.create_future()
        self._pending.append((channel.delivery_tag, confirmation, message, deadline))
        if deadline < self._timer_at:
            self._arm(deadline)
        if not self._chunk and not self._ready:
            self.loop.call_soon(self._flush)
        self._chunk.append(data)
        batch = self._batch
        self._count += 1
        if self._count == _CHUNK:
            self._ready.append((self._chunk, batch))
            self._chunk, self._batch, self._count = [], Batch(), 0
        return confirmation, batch

    # -- writing --------------------------------------------------------------------------
    def _flush(self) -> None:
        """Queue the oldest chunk for writing; the next one goes in the next loop iteration."""
        if self._ready:
            chunk, batch = self._ready.popleft()
        else:
            chunk, batch = self._chunk, self._batch
            self._chunk, self._batch, self._count = [], Batch(), 0
        channel = self.channel
        if channel.is_closed:
            # Not written: those publishes see an unsent batch and go to a fresh channel.
            self._ready.clear()
            self._chunk, self._batch, self._count = [], Batch(), 0
            return
        if self._ready or self._chunk:
            self.loop.call_soon(self._flush)
        if not chunk:
            return
        payload = ChannelFrame(payload=b"".join(chunk), should_close=False)
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

    # -- confirms, returns, deadlines -----------------------------------------------------
    async def _on_confirm(self, frame: Basic.Ack | Basic.Nack | Basic.Reject) -> None:
        tag = frame.delivery_tag
        pending = self._pending
        if tag is None or not pending or tag < pending[0][0]:
            return  # settled already (the broker confirms each tag once)
        nack = not isinstance(frame, Basic.Ack)
        if getattr(frame, "multiple", False):
            while pending and pending[0][0] <= tag:
                _settle(pending.popleft(), nack, frame, self._acked)
            return
        entry = pending[tag - pending[0][0]] if tag - pending[0][0] < len(pending) else None
        if entry is None:
            return
        if tag == pending[0][0]:
            pending.popleft()
            _settle(entry, nack, frame, self._acked)
            while pending and pending[0][0] in self._acked:  # settled singly before
                self._acked.discard(pending.popleft()[0])
        elif tag not in self._acked:
            self._acked.add(tag)
            _settle(entry, nack, frame, None)

    async def _on_return(self, frame: Basic.Return) -> None:
        """An unroutable message came back (``mandatory``): its publish raises aiormq's
        PublishError now; the broker's ack for it follows and finds it settled."""
        channel = self.channel
        header = await channel._get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} after basic.return")
        returned = await channel._read_content(frame, header)
        message_id = header.properties.message_id
        # At most one publish per message_id is in flight (AsyncPublisher._send_in_turn).
        for tag, confirmation, message, _ in self._pending:
            if message.message_id == message_id and tag not in self._acked:
                if not confirmation.done():
                    confirmation.set_exception(aiormq.exceptions.PublishError(returned, frame))
                return

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Fail every publish past its deadline; wait again for the earliest left."""
        self._timer, self._timer_at = None, math.inf
        now = self.loop.time()
        earliest = math.inf
        for _, confirmation, _, deadline in self._pending:
            if confirmation.done():
                continue
            if deadline <= now:
                confirmation.set_exception(TimeoutError())
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self._arm(earliest)

    def _on_close(self, closing: asyncio.Future[Any]) -> None:
        # Reject the unconfirmed publishes with the channel's close reason, by their place
        # relative to the refused one.
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        reason = None if closing.cancelled() else closing.exception()
        if not isinstance(reason, Exception):
            reason = aiormq.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")
        unconfirmed = [entry for entry in self._pending if entry[0] not in self._acked]
        self._pending.clear()
        self._acked.clear()
        culprit = _refused_tag(reason, unconfirmed)
        for tag, confirmation, _, _ in unconfirmed:
            if confirmation.done():
                continue
            if culprit is None or tag == culprit:
                confirmation.set_exception(reason)
            elif tag < culprit:
                confirmation.set_exception(ClosedOverAnother(reason))
            else:
                confirmation.set_exception(Discarded())
        if self._putter is not None:
            # Its queue belongs to a dead connection: a put there may never return.
            self._putter.cancel()


def _settle(
    entry: _Entry, nack: bool, frame: Basic.Ack | Basic.Nack | Basic.Reject, acked: set[int] | None
) -> None:
    tag, confirmation, _, _ = entry
    if acked is not None:
        acked.discard(tag)
    if confirmation.done():
        return  # returned, timed out or cancelled already
    if nack:
        confirmation.set_exception(aiormq.exceptions.DeliveryError(None, frame))
    else:
        confirmation.set_result(None)


def _refused_tag(reason: BaseException, unconfirmed: list[_Entry]) -> int | None:
    """The tag of the publish the broker closed the channel over (see first_refused)."""
    if not isinstance(reason, aiormq.exceptions.ChannelClosed):
        return None
    position = first_refused(str(reason), (message for _, _, message, _ in unconfirmed))
    return None if position is None else unconfirmed[position][0]
