"""The async publisher of services: :class:`bus.publish.AsyncPublisher` (aio-pika).

``await publisher.publish(OrderCreated(...))`` returns once the broker has confirmed the
message and routed it to at least one queue; anything else raises a
:class:`~bus.errors.PublishError` (unroutable, nacked, timed out, too large, refused by the
broker). Every rule lives in the publishing core, :mod:`bus.publish`.
"""

from __future__ import annotations

from bus.publish import AsyncPublisher

__all__ = ["Publisher"]


class Publisher(AsyncPublisher):
    """Confirmed publishing on one robust aio-pika connection.

    Use ``async with Publisher.connect(settings, topology) as publisher:`` (or
    ``publisher = await Publisher.connect(...)`` and ``await publisher.close()``).
    """

    default_connection_name = "amqp-bus-publisher"
