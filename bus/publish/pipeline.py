"""Pipelined confirmed publishing on a pika ``BlockingConnection`` (``publish_many`` of
:class:`bus.publish.blocking.BlockingPublisher`).

pika's ``BlockingChannel`` waits for each confirm inside ``basic_publish``: one message per
round trip. A :class:`ConfirmPipeline` keeps up to ``window`` publishes unconfirmed on a
channel of its own instead: the channel's underlying ``pika.channel.Channel`` gets the
pipeline's confirm, return and close callbacks, each publish is written without waiting, and
the connection's I/O loop runs until the window has room. pika's blocking adapter has no
public "run the I/O loop until this holds"; the pipeline uses the one ``BlockingChannel``
itself uses (``BlockingConnection._flush_output``), as the publisher already uses the
adapter's I/O loop for its deadlines.

Outcomes follow the broker's rules: an ack or nack covers every tag up to its own when
``multiple`` is set; an unroutable message comes back (``basic.return``) before its ack and is
matched by ``message_id``, so a publish waits while another with its id is unconfirmed (the
async Publisher does the same, see aio-pika#689); a channel closed by the broker fails every
unconfirmed message with the channel's error; a lost connection or an expired deadline fails
them as "may or may not have been delivered". Every failure is reported, never dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from bus.errors import BusError, PublishError, UnroutableError
from bus.publish.frames import PublishFrames
from bus.publish.message import Resolved
from bus.publish.outcomes import (
    closed_over_another,
    connection_lost,
    first_refused,
    nacked,
    timed_out,
    unroutable,
    where,
)

__all__ = ["ConfirmPipeline"]

# Written frames are handed to pika's transport at the latest once this many bytes are due.
_EMIT_BYTES = 256 * 1024

ChannelError = Callable[[pika.exceptions.ChannelClosedByBroker, Resolved], BusError]


@dataclass(slots=True)
class _Unconfirmed:
    tag: int
    index: int
    message: Resolved
    deadline: float
    returned: UnroutableError | None = None


class ConfirmPipeline:
    """Up to ``window`` unconfirmed publishes on one channel; see :meth:`take_outcomes`."""

    def __init__(
        self,
        connection: Any,
        properties: Callable[[Resolved], bytes],
        channel_error: ChannelError,
        open_timeout: float,
    ) -> None:
        self.connection = connection
        self.properties = properties
        self.channel_error = channel_error
        self.failed: dict[int, Exception] = {}
        self.unsent: list[tuple[int, Resolved]] = []
        self.dead = False
        self._unconfirmed: dict[int, _Unconfirmed] = {}  # by delivery tag, ascending
        self._tag_of: dict[str, int] = {}  # message_id -> its unconfirmed delivery tag
        self._tag = 0
        self._impl = connection.channel()._impl
        # Frames written but not yet handed to pika's transport (see _emit).
        self._out: list[bytes] = []
        self._out_size = 0
        self._frames = PublishFrames(self._impl.channel_number, connection._impl.params.frame_max)
        self._impl.add_on_return_callback(self._on_return)
        self._impl.add_on_close_callback(self._on_close)
        selected: list[bool] = []
        self._impl.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: selected.append(True)
        )
        self._run_until(lambda: bool(selected), time.monotonic() + open_timeout)
        if not selected:
            raise PublishError(
                f"could not turn on publisher confirms on a new channel within {open_timeout:g}s"
            )

    def publish(self, index: int, message: Resolved, seconds: float, window: int) -> None:
        """Write ``message`` once the window has room and no publish with its id is pending
        (into ``unsent`` instead when the channel closes meanwhile)."""
        if message.message_id in self._tag_of:
            self._wait(lambda: message.message_id not in self._tag_of)
        if len(self._unconfirmed) >= window:
            self._wait(lambda: len(self._unconfirmed) < window)
        if self.dead:
            self.unsent.append((index, message))  # never written: the next channel sends it
            return
        # Encoded first: a value AMQP cannot carry fails this message only, nothing written.
        data = self._frames.message(
            message.exchange, message.routing_key, self.properties(message), message.body
        )
        if not self._impl.is_open:
            exc = pika.exceptions.ChannelWrongStateError("Channel is closed.")
            self._connection_lost(exc)
            raise PublishError(f"not sent to {where(message)}: {exc!r}")
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= _EMIT_BYTES:
            self._emit()
        self._tag += 1
        self._unconfirmed[self._tag] = _Unconfirmed(
            self._tag, index, message, time.monotonic() + seconds
        )
        self._tag_of[message.message_id] = self._tag

    def take_outcomes(self) -> tuple[dict[int, Exception], list[tuple[int, Resolved]]]:
        """The failures so far and the messages to send again (never delivered), once."""
        failed, self.failed = self.failed, {}
        unsent, self.unsent = self.unsent, []
        return failed, unsent

    def poll(self) -> None:
        """Send what is written and take in the confirms that arrived, without waiting."""
        self._run_until(lambda: True, None)

    def drain(self) -> None:
        """Wait until every publish is confirmed or has failed."""
        self._wait(lambda: not self._unconfirmed)

    # -- the I/O loop ---------------------------------------------------------------------
    def _emit(self) -> None:
        """Hand every frame written since the last time to pika's transport as one chunk.

        pika's ``basic_publish`` gives the transport one chunk per frame and the transport
        sends each chunk with its own ``send()``: three system calls per message. Frames
        written here wait in ``_out`` until the pipeline runs pika's I/O loop (or
        ``_EMIT_BYTES`` pile up), then go out in one ``send()`` for the whole window.
        """
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        impl = self.connection._impl
        # Never frames for a closed channel (the broker would close the connection for them);
        # the close settled their messages (sent again, or failed).
        if impl.is_open and self._impl.is_open:
            # pika's own path for marshalled frames: counts the bytes for its heartbeats.
            impl._output_marshaled_frames([data])

    def _wait(self, ready: Callable[[], bool]) -> None:
        while not self.dead and not ready():
            oldest = next(iter(self._unconfirmed.values()), None)
            if oldest is None:
                return  # nothing unconfirmed: whatever was awaited cannot change
            self._run_until(ready, oldest.deadline)
            if not self.dead and time.monotonic() >= oldest.deadline and not ready():
                self._fail_all(lambda m: timed_out(m, None))

    def _run_until(self, ready: Callable[[], bool], deadline: float | None) -> None:
        self._emit()
        connection = self.connection
        ioloop = connection._impl.ioloop
        # A timer that only wakes the loop's poll, so that the deadline is looked at in time.
        wake = (
            None
            if deadline is None
            else ioloop.call_later(max(deadline - time.monotonic(), 0), _nothing)
        )
        try:
            connection._flush_output(
                lambda: (
                    self.dead or ready() or (deadline is not None and time.monotonic() >= deadline)
                )
            )
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._connection_lost(exc)
        finally:
            if wake is not None and connection.is_open:
                ioloop.remove_timeout(wake)

    # -- broker callbacks -----------------------------------------------------------------
    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, is_nack = method.delivery_tag, isinstance(method, pika.spec.Basic.Nack)
        if method.multiple:
            tags = []
            for pending in self._unconfirmed:
                if pending > tag:
                    break
                tags.append(pending)
        else:
            tags = [tag] if tag in self._unconfirmed else []
        for settled in tags:
            entry = self._forget(settled)
            if is_nack:
                self.failed[entry.index] = nacked(entry.message)
            elif entry.returned is not None:
                self.failed[entry.index] = entry.returned

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        tag = self._tag_of.get(properties.message_id)
        entry = self._unconfirmed.get(tag) if tag is not None else None
        if entry is not None:
            entry.returned = unroutable(method, entry.message)

    def _on_close(self, _channel: Any, reason: Exception) -> None:
        self._out.clear()  # not written: settled below with every unconfirmed message
        self._out_size = 0
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self._closed_by_broker(reason)
        else:
            self._connection_lost(reason)
        self.dead = True

    def _closed_by_broker(self, reason: pika.exceptions.ChannelClosedByBroker) -> None:
        """The broker refused one publish (missing exchange, no write access) and closed the
        channel: that message fails with the broker's error. The broker handles a channel's
        frames in order and discards what arrives after its close, so the messages written
        after it were not delivered: they go to ``unsent`` and out again on a new channel.
        Those written before it were routed but never confirmed: may or may not."""
        entries = list(self._unconfirmed.values())
        culprit = first_refused(reason.reply_text, (entry.message for entry in entries))
        if culprit is None:  # the reply names no exchange we wrote to: assume nothing
            self._fail_all(lambda m: self.channel_error(reason, m))
            return
        for position, entry in enumerate(entries):
            self._forget_entry(entry)
            if position == culprit:
                self.failed[entry.index] = self.channel_error(reason, entry.message)
            elif position < culprit:
                self.failed[entry.index] = closed_over_another(
                    entry.message, f"{reason.reply_code} {reason.reply_text}"
                )
            else:
                self.unsent.append((entry.index, entry.message))

    def _connection_lost(self, exc: BaseException) -> None:
        if isinstance(exc, pika.exceptions.ConnectionBlockedTimeout):
            self._fail_all(lambda m: timed_out(m, None, blocked=True))
        else:
            self._fail_all(lambda m: connection_lost(m, repr(exc)))

    def _fail_all(self, error: Callable[[Resolved], Exception]) -> None:
        """Every unconfirmed message failed; the pipeline takes no more (its tags are void)."""
        self.dead = True
        for tag in list(self._unconfirmed):
            entry = self._forget(tag)
            self.failed[entry.index] = error(entry.message)

    def _forget(self, tag: int) -> _Unconfirmed:
        entry = self._unconfirmed[tag]
        self._forget_entry(entry)
        return entry

    def _forget_entry(self, entry: _Unconfirmed) -> None:
        tag = entry.tag
        del self._unconfirmed[tag]
        if self._tag_of.get(entry.message.message_id) == tag:
            del self._tag_of[entry.message.message_id]


def _nothing() -> None:
    return None
