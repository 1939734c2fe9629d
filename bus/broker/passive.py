"""Passive declares: the one way the bus asks whether an exchange or a queue exists.

A passive declare changes nothing and needs no configure permission. A missing object closes
the channel with 404 NOT_FOUND (a queue exclusive to another connection: 405 RESOURCE_LOCKED);
the caller decides what that means, because a closed channel surfaces differently per client.
Both synchronous clients the bus uses are accepted: pika's ``BlockingChannel`` and py-amqp's
channel (Celery's pre-flight, through kombu). Both take the name first and ``passive=True``.
:func:`missing_async` does the same for a list of objects on an aiormq connection (the
consumer runtime).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import aiormq

from bus.broker.live import QueueUsage
from bus.errors import AccessRefusedError

__all__ = ["check_exchange", "check_queue", "missing_async"]


def check_exchange(channel: Any, name: str, exchange_type: str = "direct") -> None:
    """Raise the client's channel error unless exchange ``name`` exists.

    The type is ignored by the broker on a passive declare; py-amqp requires one anyway.
    """
    channel.exchange_declare(name, exchange_type, passive=True)


def check_queue(channel: Any, name: str) -> QueueUsage:
    """Exact ready-message and consumer counts of queue ``name``; the client's error if missing.

    The counts are the broker's own at this instant (the management API's are sampled and lag).
    """
    result = channel.queue_declare(name, passive=True)
    # pika wraps the Queue.DeclareOk method in a frame; py-amqp returns it as a named tuple.
    ok = getattr(result, "method", result)
    return QueueUsage(messages=int(ok.message_count), consumers=int(ok.consumer_count))


async def missing_async(
    connection: aiormq.abc.AbstractConnection,
    needed: Iterable[tuple[Literal["exchange", "queue"], str]],
) -> list[str]:
    """The objects of ``needed`` (kind, name) that do not exist, as ``"kind 'name'"``.

    Each 404 closes the channel, so the next check gets a new one; a 403 raises
    :class:`~bus.errors.AccessRefusedError`.
    """
    missing: list[str] = []
    channel = await connection.channel(publisher_confirms=False)
    try:
        for kind, name in needed:
            try:
                if kind == "queue":
                    await channel.queue_declare(name, passive=True)
                else:
                    await channel.exchange_declare(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                missing.append(f"{kind} {name!r}")
                channel = await connection.channel(publisher_confirms=False)
            except aiormq.exceptions.ChannelAccessRefused as exc:
                raise AccessRefusedError(f"{kind} {name!r}: {exc}") from None
    finally:
        if not channel.is_closed:
            await channel.close()
    return missing
