"""The message side of publishing under its former name; it lives in :mod:`bus.publish.message`
(resolving, encoding, the publish keywords) and :mod:`bus.publish.wire` (the pre-send check).

Kept for the names the outbox and the publish CLI import from here.
"""

from bus.publish.message import DEFAULT_MAX_MESSAGE_SIZE, Outgoing, Resolved, Resolver, TopologyLike

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Outgoing", "Resolved", "Resolver", "TopologyLike"]
