"""The synchronous publisher of services: :class:`bus.publish.BlockingPublisher` (pika).

Same wire messages, semantics and errors as :class:`producers.Publisher`: confirms and
``mandatory`` always on, persistent by default, and every publish either returns after the
broker's confirm or raises. Every rule lives in the publishing core, :mod:`bus.publish`.
"""

from __future__ import annotations

from bus.publish import BlockingPublisher

__all__ = ["SyncPublisher"]


class SyncPublisher(BlockingPublisher):
    """Confirmed publishing on one pika ``BlockingConnection``.

    ``with SyncPublisher.connect(settings, topology) as publisher: publisher.publish(event)``.
    After a connection-level failure (timeout, lost connection) the next publish reconnects;
    after a channel-level one (missing exchange) it opens a new channel.
    """

    default_connection_name = "amqp-bus-sync-publisher"
