"""Passive declares: the one way the bus asks whether an exchange or a queue exists.

A passive declare changes nothing and needs no configure permission. A missing object closes
the channel with 404 NOT_FOUND (a queue exclusive to another connection: 405 RESOURCE_LOCKED);
the caller decides what that means, because a closed channel surfaces differently per client.
Both synchronous clients the bus uses are accepted: pika's ``BlockingChannel`` and py-amqp's
channel (Celery's pre-flight, through kombu). Both take the name first and ``passive=True``.
"""

from __future__ import annotations

from typing import Any

from bus.broker.live import QueueUsage

__all__ = ["check_exchange", "check_queue"]


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
