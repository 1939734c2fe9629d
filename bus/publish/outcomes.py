"""What a publish comes to, written once for both flavours: defaults, results and the errors.

Every publish either returns after the broker's confirm or raises one of these
:mod:`bus.errors` errors; the aio-pika and the pika flavour only say which client event
means which outcome. The messages name the destination the same way (:func:`where`) and say
"may or may not have been delivered" whenever the broker may have taken the message.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.errors import (
    AccessRefusedError,
    BrokerError,
    BusError,
    MessageTooLargeError,
    NotFoundError,
    PublishError,
    PublishNackedError,
    PublishTimeoutError,
    UnroutableError,
)
from bus.publish.message import Resolved
from bus.settings import BusSettings

__all__ = [
    "DEFAULT_CONFIRM_TIMEOUT",
    "DEFAULT_WINDOW",
    "PublishResult",
    "channel_error",
    "closed_over_another",
    "connection_lost",
    "default_app_id",
    "exchanges_missing",
    "first_refused",
    "nacked",
    "timed_out",
    "unroutable",
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
    """The outcome of one message of ``publish_many``: ``error`` is None when confirmed."""

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


def unroutable(returned: Any, message: Resolved) -> UnroutableError:
    """The broker returned the message (``mandatory``, no queue bound): ``returned`` is the
    ``basic.return`` method frame when the client kept it."""
    return UnroutableError(
        getattr(returned, "exchange", message.exchange),
        getattr(returned, "routing_key", message.routing_key),
        f"{getattr(returned, 'reply_code', 312)} {getattr(returned, 'reply_text', 'NO_ROUTE')}",
    )


def nacked(message: Resolved) -> PublishNackedError:
    return PublishNackedError(
        f"broker nacked the message to {where(message)} "
        "(e.g. a full queue with overflow reject-publish)"
    )


def timed_out(message: Resolved, seconds: float | None, *, blocked: bool = False) -> PublishError:
    """No confirm by the deadline (``seconds`` after the send, when known)."""
    within = "within the deadline" if seconds is None else f"within {seconds:g}s"
    cause = (
        "connection blocked by a broker resource alarm"
        if blocked
        else "broker blocked by a resource alarm, overloaded or unreachable"
    )
    return PublishTimeoutError(
        f"no confirm {within} for {where(message)} ({cause}); "
        "the message may or may not have been delivered"
    )


def connection_lost(message: Resolved, detail: str) -> PublishError:
    return PublishError(
        f"connection to the broker lost before the confirm for {where(message)}: "
        f"{detail}; the message may or may not have been delivered"
    )


def channel_error(
    code: int | None, text: str, reply: str, message: Resolved, settings: BusSettings
) -> BusError:
    """The broker closed the channel over ``message``: ``code`` is the reply code, ``text``
    how the client shows the close and ``reply`` the broker's reply text."""
    to = where(message)
    if code == 404:
        return NotFoundError(f"publish to {to} failed, channel closed by the broker: {text}")
    if code == 403:
        # basic.publish needs write on the exchange (on 'amq.default' for the default one).
        return AccessRefusedError.from_reply(
            reply, "write", kind="exchange", name=message.exchange or "amq.default",
            vhost=settings.vhost, user=settings.credentials()[0],
        )  # fmt: skip
    if "larger than configured max size" in text:
        return MessageTooLargeError(f"broker refused the message to {to}: {text}")
    return BrokerError(f"publish to {to} failed, channel closed by the broker: {text}")


def exchanges_missing(missing: list[str], vhost: str) -> NotFoundError:
    """The start-up check found these exchanges missing (publishers never declare them)."""
    listed = ", ".join(repr(name) for name in missing)
    noun = "exchange" if len(missing) == 1 else "exchanges"
    return NotFoundError(
        f"{noun} {listed} not found in vhost {vhost!r}: "
        "producers never declare topology; run `bus apply` first"
    )
