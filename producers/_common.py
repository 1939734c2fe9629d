"""What the async and the sync publisher share besides :mod:`bus.outgoing`: defaults and
outcomes."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bus.errors import PublishError
from bus.outgoing import (
    CONTENT_TYPE,
    DEFAULT_MAX_MESSAGE_SIZE,
    Body,
    Outgoing,
    Resolved,
    Resolver,
    TopologyLike,
)

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_CONFIRM_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_WINDOW",
    "Body",
    "Outgoing",
    "PublishResult",
    "Resolved",
    "Resolver",
    "TopologyLike",
    "closed_over_another",
    "default_app_id",
    "first_refused",
    "where",
]

# Long enough for a quorum queue under load, short enough that a blocked connection
# (memory or disk alarm) surfaces as an error instead of a silent stall.
DEFAULT_CONFIRM_TIMEOUT = 10.0

# The baseline (docs/performance-baseline.md) shows a window of 100 reaching 0.88 of a window of
# 1000; 1000 is the better default and stays small in memory for ordinary messages.
DEFAULT_WINDOW = 1000


def default_app_id() -> str:
    """The program's name: the ``app_id`` property says which service published a message."""
    return Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "amqp-bus"


@dataclass(slots=True)
class PublishResult:
    """The outcome of one message of :meth:`publish_many`: ``error`` is None when confirmed."""

    message_id: str | None
    error: Exception | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.error is None


def where(message: Resolved) -> str:
    """How errors name a message's destination."""
    return f"exchange {message.exchange!r} routing key {message.routing_key!r}"


def first_refused(reply_text: str, unconfirmed: Iterable[Resolved]) -> int | None:
    """Position, among the unconfirmed publishes in wire order, of the one a channel close
    was about, when the broker's reply names its exchange (missing, or no write access).

    The broker handles a channel's frames in order, so that is the first unconfirmed
    publish to that exchange; it discards every frame written after it (they can be sent
    again), and those before it were routed but never confirmed.
    """
    for position, message in enumerate(unconfirmed):
        if f"exchange '{message.exchange or 'amq.default'}'" in reply_text:
            return position
    return None


def closed_over_another(message: Resolved, reply: str) -> PublishError:
    """The outcome of a publish written before the one the broker closed the channel over."""
    return PublishError(
        f"no confirm for {where(message)}: the broker closed the channel over another "
        f"message ({reply}); the message may or may not have been delivered"
    )
