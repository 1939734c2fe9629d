"""The consumer's read path on aiormq: frames read in bulk, deliveries handed over directly.

aiormq (under aio-pika) receives a delivery as three frames (``Basic.Deliver``, content header,
body). For each frame its ``FrameReceiver`` takes a lock, awaits three ``readexactly`` calls
into a ``BytesIO`` and unmarshals the frame with pamqp's generic decoder; the connection's
reader task puts the frame on the channel's queue; the channel's reader task takes the three
frames off the queue again, assembles the message and starts a task per delivery for the
consumer callback. docs/wire-performance.md measured this at 39 % of the runtime's CPU.

This module keeps aiormq (its connection handling, heartbeats, channel life cycle and the
robust reconnects of aio-pika) and replaces two steps, both contained here:

:class:`FrameReader`
    aiormq's ``FrameReceiver`` with the same interface and the same frames and errors, reading
    the socket in chunks of up to :data:`READ_SIZE` bytes and decoding complete frames from its
    buffer without awaiting; the frames of a delivery are decoded by :mod:`consumers.frames`,
    every other frame by ``pamqp.frame.unmarshal`` as before (so :mod:`bus.lenient` still
    decodes hostile input). :func:`install` makes aiormq use it for connections opened from
    then on, process-wide (the consumer runtime installs it, like :mod:`bus.lenient`).

:class:`DeliveryTap`
    On one consumer channel, takes the frames of the deliveries of one consumer tag as the
    connection's reader puts them on the channel's queue, and calls a plain function with each
    complete :class:`~aiormq.abc.DeliveredMessage`: no queue hop, no task per delivery. Every
    other frame (RPC replies, ``Basic.Cancel``, ``Channel.Close``) goes to the queue as before,
    and the channel's own reader handles it. Deliveries reach the function in wire order, and
    before any later frame of the channel is handled.

Both touch aiormq internals (``aiormq.connection.FrameReceiver``, ``Channel.frames``); the
unit tests (tests/unit/test_consume_wire.py) pin the behaviour they rely on, so an aiormq
upgrade that changes it fails there first.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import aiormq.connection
import pamqp.frame
from aiormq.abc import AbstractChannel, DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from consumers import frames

__all__ = ["READ_SIZE", "DeliveryTap", "FrameReader", "install"]

READ_SIZE = 256 * 1024
"""Bytes asked of the socket per read: a few hundred deliveries of small messages."""

_FRAME_HEADER = struct.Struct(">BHI")
_FRAME_END = 0xCE

ReceivedFrame = tuple[int, int, Any]


class FrameReader(aiormq.connection.FrameReceiver):
    """aiormq's frame receiver reading in bulk (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._data = b""
        self._position = 0

    def __aiter__(self) -> FrameReader:
        return self

    async def __anext__(self) -> ReceivedFrame:
        return self._buffered() or await self._receive()

    async def get_frame(self) -> ReceivedFrame:
        return self._buffered() or await self._receive()

    def _buffered(self) -> ReceivedFrame | None:
        """The next frame when the buffer holds all of it (no await), else None."""
        data, position = self._data, self._position
        if len(data) - position < 7 or not self.started:
            return None
        frame_type, channel, size = _FRAME_HEADER.unpack_from(data, position)
        end = position + 8 + size
        if end > len(data):
            return None
        self._position = end
        if data[end - 1] == _FRAME_END:
            frame = frames.decode(frame_type, data, position + 7, end - 1)
            if frame is not None:
                return end - position, channel, frame
        return self._unmarshal(data[position:end])

    async def _receive(self) -> ReceivedFrame:
        """Read until the buffer holds the next frame, then decode it."""
        async with self.lock:
            while True:
                if not self.started and len(self._data) - self._position >= 7:
                    # aiormq's check: a broker that does not speak our protocol version
                    # answers with its own protocol header instead of Connection.Start.
                    if self._data.startswith(b"AMQP", self._position):
                        raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                    self.started = True
                frame = self._buffered()
                if frame is not None:
                    return frame
                await self._read_more()

    async def _read_more(self) -> None:
        reader: asyncio.StreamReader | None = getattr(self, "reader", None)
        if reader is None:
            raise AMQPConnectionError()
        left = self._data[self._position :]
        if not left and reader.at_eof():
            del self.reader
            raise StopAsyncIteration
        try:
            chunk = await reader.read(READ_SIZE)
        except ConnectionRefusedError as e:
            raise AMQPConnectionError(f"Server connection refused: {e!r}") from e
        except ConnectionResetError as e:
            raise AMQPConnectionError(f"Server connection reset: {e!r}") from e
        except ConnectionError as e:
            raise AMQPConnectionError(f"Server connection error: {e!r}") from e
        except OSError as e:
            raise AMQPConnectionError(f"Server communication error: {e!r}") from e
        if not chunk:
            expected = 7
            if len(left) >= 7:
                expected = 8 + _FRAME_HEADER.unpack_from(left)[2]
            raise AMQPConnectionError(
                "Server connection unexpectedly closed. "
                f"Read {len(left)} bytes but {expected} bytes expected"
            )
        self._data = left + chunk if left else chunk
        self._position = 0

    @staticmethod
    def _unmarshal(raw: bytes) -> ReceivedFrame:
        try:
            result: ReceivedFrame = pamqp.frame.unmarshal(raw)
        except PAMQPException as e:
            raise InvalidFrameError(str(e)) from e
        return result


def install() -> None:
    """Make aiormq read with :class:`FrameReader` on every connection opened from now on."""
    aiormq.connection.FrameReceiver = FrameReader  # type: ignore[misc]


Sink = Callable[[DeliveredMessage], None]


class DeliveryTap:
    """Deliveries of one consumer tag on one channel, straight to ``sink`` (module docstring).

    Installed by replacing the ``put`` of the channel's frame queue on that one queue object
    (the channel's reader keeps waiting on the same queue). :meth:`attach` on a channel that
    already has a tap points that tap at the new consumer tag and sink instead of stacking.
    """

    __slots__ = (
        "_body", "_channel", "_deliver", "_header", "_missing", "_put", "sink", "tag",
    )  # fmt: skip

    def __init__(self, channel: AbstractChannel, put: Callable[[Any], Any]) -> None:
        self._channel = channel
        self._put = put
        self.tag = ""
        self.sink: Sink | None = None
        self._deliver: Basic.Deliver | None = None
        self._header: ContentHeader | None = None
        self._body: list[bytes] = []
        self._missing = 0

    @classmethod
    def attach(cls, channel: AbstractChannel, consumer_tag: str, sink: Sink) -> DeliveryTap:
        """Before ``basic_consume``: deliveries for ``consumer_tag`` go to ``sink`` from now on."""
        queue: asyncio.Queue[Any] = channel.frames
        tap = getattr(queue.put, "__self__", None)
        if not isinstance(tap, DeliveryTap):
            tap = cls(channel, queue.put)
            queue.put = tap.put  # type: ignore[method-assign]
        tap.tag = consumer_tag
        tap.sink = sink
        return tap

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if self._deliver is None:
            if type(frame) is Basic.Deliver and frame.consumer_tag == self.tag:
                self._deliver = frame
                return
            await self._put(item)
            return
        if self._header is None:
            if type(frame) is not ContentHeader:
                raise InvalidFrameError(f"expected the content header of a delivery, got {frame!r}")
            self._header = frame
            self._missing = frame.body_size or 0
            if self._missing == 0:
                self._emit(b"")
            return
        if type(frame) is not ContentBody:
            raise InvalidFrameError(f"expected the body of a delivery, got {frame!r}")
        value = frame.value or b""
        self._missing -= len(value)
        if self._missing > 0:
            self._body.append(value)
        elif self._body:
            self._body.append(value)
            body = b"".join(self._body)
            self._body = []
            self._emit(body)
        else:
            self._emit(value)

    def _emit(self, body: bytes) -> None:
        deliver, header = self._deliver, self._header
        self._deliver = self._header = None
        if deliver is None or header is None or self.sink is None:  # pragma: no cover
            raise AssertionError("a delivery completed without its method or header")
        self.sink(DeliveredMessage(delivery=deliver, header=header, body=body,
                                   channel=self._channel))  # fmt: skip
