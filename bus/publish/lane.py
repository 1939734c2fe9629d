"""Batched publishing on one aiormq channel, for :class:`bus.publish.aio.AsyncPublisher`.

See :class:`Lane`. A channel closed by the broker settles every unconfirmed publish by its
place relative to the refused one (:func:`bus.publish.outcomes.first_refused`): that one gets
the broker's error, those written before it :class:`ClosedOverAnother`, those after it
:class:`Discarded` (the broker dropped them: they are sent again on a new channel).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bus.publish.message import Resolved
from bus.publish.outcomes import first_refused

__all__ = ["Batch", "ClosedOverAnother", "Discarded", "Lane"]

# Publishes per payload written at once (see Lane); 64 measured best of 32-256.
_CHUNK = 64


class Discarded(Exception):
    """Written after the publish the broker refused: the broker discarded it, send again."""


class ClosedOverAnother(Exception):
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


class Batch:
    """Publishes flushed together; ``sent`` once their frames are in aiormq's write queue."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


class Lane:
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
        self._batch = Batch()
        self._count = 0
        # Full chunks, in tag order. A flush is pending exactly while _ready or _frames
        # holds something.
        self._ready: deque[tuple[list[Any], Batch]] = deque()
        # Unconfirmed publishes by delivery tag (ascending), for the close of the channel.
        self._pending: dict[int, tuple[asyncio.Future[Any], Resolved]] = {}
        self._backlog: deque[tuple[ChannelFrame, Batch]] = deque()
        self._putter: asyncio.Task[None] | None = None
        channel.closing.add_done_callback(self._on_close)

    def publish(
        self, message: Resolved, properties: Basic.Properties
    ) -> tuple[asyncio.Future[Any], int, Batch]:
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
            self._frames, self._batch, self._count = [], Batch(), 0
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
            self._frames, self._batch, self._count = [], Batch(), 0
        channel = self.channel
        if channel.is_closed:
            # Not written: those publishes see an unsent batch and go to a fresh channel.
            self._ready.clear()
            self._frames, self._batch, self._count = [], Batch(), 0
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
                confirmation.set_exception(ClosedOverAnother(reason))
            else:
                confirmation.set_exception(Discarded())
        if self._putter is not None:
            # Its queue belongs to a dead connection: a put there may never return.
            self._putter.cancel()
