"""Move every message of one queue into another: confirmed publish first, ack after.

A message is acked on the source only once the broker confirmed its copy on the target
(publisher confirms, ``mandatory``: a copy that routes nowhere is returned, never dropped).
A crash between the confirm and the ack leaves the message in the source and its copy in the
target: moved again by the next run, it is a duplicate, never a loss. Copies keep the body and
every property (headers, ``message_id``, ``timestamp``, ``type``, ``expiration``...) exactly.

Copies go to the default exchange with the target queue's name as routing key, through
:func:`_publisher` (the project's confirm pipeline, pipelined ``window`` at a time): the one
place to switch when the publishing core moves.

The source is read by a consumer with a prefetch of one batch. Other consumers of the source
(the application's own) may keep taking messages meanwhile; what they take they handle, and the
move ends when the source is empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from bus.broker.connect import connect_sync
from bus.dlq_publish import CopyItem, CopyPublisher, is_definite
from bus.errors import BrokerError, NotFoundError
from bus.outgoing import Resolved
from bus.settings import BusSettings, with_vhost

__all__ = ["MoveReport", "move_messages"]

Progress = Callable[["MoveReport"], None]


@dataclass
class MoveReport:
    source: str
    target: str
    moved: int = 0
    passes: int = 0
    seconds: float = 0.0


class _MovePublisher(CopyPublisher):
    """The copy publisher, putting the original properties on the wire untouched."""

    def _properties(self, message: Resolved) -> pika.BasicProperties:
        original = getattr(message, "properties", None)
        if isinstance(original, pika.BasicProperties):
            # user_id must be the connection's user or absent (406 otherwise).
            if original.user_id is not None and original.user_id != self._user:
                original.user_id = None
            return original
        return super()._properties(message)


def _publisher(settings: BusSettings, window: int) -> CopyPublisher:
    return _MovePublisher(settings, window=window)


def _copy(target: str, body: bytes, props: pika.BasicProperties, tag: int) -> CopyItem:
    # The pipeline matches returns and confirms by message id; a message without one is
    # tracked under a private id (the wire keeps the original properties, id-less).
    return CopyItem(
        "", target, body,
        headers=dict(props.headers or {}),
        event_type=props.type,
        message_id=props.message_id or f"amqp-bus-migrate-{tag}-{time.monotonic_ns()}",
        correlation_id=props.correlation_id,
        persistent=props.delivery_mode == 2,
        properties=props,
    )  # fmt: skip


def move_messages(
    settings: BusSettings,
    vhost: str,
    source: str,
    target: str,
    *,
    batch: int = 500,
    idle: float = 0.5,
    progress: Progress | None = None,
    max_failed_passes: int = 5,
) -> MoveReport:
    """Move until ``source`` is empty (a pass found nothing for ``idle`` seconds and the
    queue counts 0 ready messages). Raises :class:`BrokerError` when copies keep failing."""
    vsettings = settings.model_copy(update={"amqp_url": with_vhost(settings.amqp_url, vhost)})
    report = MoveReport(source, target)
    started = time.monotonic()
    publisher = _publisher(vsettings, batch)
    failures = 0
    try:
        while True:
            moved, remaining, error = _one_pass(vsettings, source, target, publisher, batch, idle,
                                                report, progress)  # fmt: skip
            report.passes += 1
            if error is not None:
                failures += 1
                if failures > max_failed_passes:
                    raise BrokerError(
                        f"moving {source!r} into {target!r} stopped after {report.moved} "
                        f"messages: {error}"
                    )
                time.sleep(min(0.2 * 2**failures, 5.0))
                continue
            failures = 0 if moved else failures
            if remaining == 0:
                break
    finally:
        publisher.close()
        report.seconds = round(time.monotonic() - started, 3)
    return report


def _one_pass(
    settings: BusSettings,
    source: str,
    target: str,
    publisher: CopyPublisher,
    batch: int,
    idle: float,
    report: MoveReport,
    progress: Progress | None,
) -> tuple[int, int, str | None]:
    """(moved in this pass, ready messages left in the source, why it stopped early)."""
    connection: Any = connect_sync(settings, f"amqp-bus-migrate {source}")
    moved = 0
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(target, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise NotFoundError(f"target queue {target!r}: {exc.reply_text}") from None
        channel = connection.channel()
        channel.basic_qos(prefetch_count=batch)
        held: list[tuple[int, pika.BasicProperties, bytes]] = []
        for method, props, body in channel.consume(source, inactivity_timeout=idle):
            if method is not None:
                held.append((method.delivery_tag, props, body))
                if len(held) < batch:
                    continue
            if held:
                done, error = _publish_batch(channel, publisher, target, held)
                moved += done
                report.moved += done
                held = []
                if progress is not None:
                    progress(report)
                if error is not None:
                    return moved, -1, error
                continue
            break  # idle: nothing delivered for ``idle`` seconds
        channel.cancel()
        remaining = int(channel.queue_declare(source, passive=True).method.message_count)
        return moved, remaining, None
    except (pika.exceptions.AMQPError, OSError) as exc:
        return moved, -1, f"{type(exc).__name__}: {exc}"
    finally:
        try:
            if connection.is_open:
                connection.close()  # returns any unacked message to the source
        except (pika.exceptions.AMQPError, OSError):
            pass


def _publish_batch(
    channel: Any,
    publisher: CopyPublisher,
    target: str,
    held: list[tuple[int, pika.BasicProperties, bytes]],
) -> tuple[int, str | None]:
    """Copy ``held``; ack each confirmed one, give back the rest. (acked, first error)."""
    items = [_copy(target, body, props, tag) for tag, props, body in held]
    results = publisher.publish_in_order(items)
    acked = 0
    error: str | None = None
    for (tag, _props, _body), result in zip(held, results, strict=True):
        if result.error is None:
            channel.basic_ack(tag)
            acked += 1
        else:
            # Definite (never taken) or uncertain (maybe taken: a duplicate at worst):
            # either way the original stays in the source and a later pass sends it again.
            channel.basic_nack(tag, requeue=True)
            if error is None:
                kind = "refused" if is_definite(result.error) else "unconfirmed"
                error = f"a copy was {kind}: {result.error}"
    return acked, error
