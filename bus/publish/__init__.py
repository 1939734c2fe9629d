"""The publishing core: every rule of publishing written once, under two client flavours.

- :mod:`bus.publish.message`: resolving a call (an event to its contract's exchange, routing
  key and headers; explicit messages; Celery tasks) and encoding the body; the publish
  keywords (:class:`PublishOptions`, :class:`TaskOptions`);
- :mod:`bus.publish.wire`: the pre-send check of what AMQP can carry;
- :mod:`bus.publish.outcomes`: confirms, returns, nacks, timeouts, channel and connection
  losses as :mod:`bus.errors` errors, and :class:`PublishResult`;
- :mod:`bus.publish.base`: :class:`PublisherBase`, the constructor and resolving both flavours
  share;
- :class:`AsyncPublisher` (aio-pika, :mod:`bus.publish.aio` with :mod:`bus.publish.lane`) and
  :class:`BlockingPublisher` (pika, :mod:`bus.publish.blocking` with
  :mod:`bus.publish.pipeline`): the I/O, and the nack-and-renew-channel rule.

``producers.Publisher`` and ``producers.SyncPublisher`` are these flavours under their
service-facing names; the consumer runtime's retry and dead-letter copies, the DLQ replay and
the outbox relay publish through them too (:meth:`AsyncPublisher.publish_resolved` with
:class:`KeptProperties`, ``publish_many(in_order=True)``).
"""

from bus.publish.aio import AsyncPublisher, Opening
from bus.publish.base import PublisherBase, PublisherOptions
from bus.publish.blocking import BlockingPublisher
from bus.publish.message import (
    CONTENT_TYPE,
    DEFAULT_MAX_MESSAGE_SIZE,
    Body,
    KeptProperties,
    Outgoing,
    PublishOptions,
    Resolved,
    Resolver,
    TaskOptions,
    TopologyLike,
)
from bus.publish.outcomes import DEFAULT_CONFIRM_TIMEOUT, DEFAULT_WINDOW, PublishResult

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_CONFIRM_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_WINDOW",
    "AsyncPublisher",
    "BlockingPublisher",
    "Body",
    "KeptProperties",
    "Opening",
    "Outgoing",
    "PublishOptions",
    "PublishResult",
    "PublisherBase",
    "PublisherOptions",
    "Resolved",
    "Resolver",
    "TaskOptions",
    "TopologyLike",
]
