"""Publishing side of amqp-bus: confirmed, mandatory, persistent publishing.

``Publisher`` (async, aio-pika) and ``SyncPublisher`` (pika) publish typed events from the
topology's contracts or explicit ``(exchange, routing_key, body)`` messages, and raise
:mod:`bus.errors` ``PublishError`` subclasses instead of losing anything silently. Both are
thin users of the publishing core, :mod:`bus.publish`.
"""

from bus.publish import (
    DEFAULT_CONFIRM_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_WINDOW,
    Outgoing,
    PublishResult,
)
from producers.publisher import Publisher
from producers.sync import SyncPublisher

__all__ = [
    "DEFAULT_CONFIRM_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_WINDOW",
    "Outgoing",
    "PublishResult",
    "Publisher",
    "SyncPublisher",
]
