"""The message side of publishing, by its historical name: see :mod:`bus.publish.message`
(resolving and encoding) and :mod:`bus.publish.wire` (the pre-send check).

Kept because the outbox, the CLI and services import these names from here.
"""

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
    encode_body,
)
from bus.publish.wire import MAX_HEADER_DEPTH, check_short_string, check_size, check_wire

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_HEADER_DEPTH",
    "Body",
    "KeptProperties",
    "Outgoing",
    "PublishOptions",
    "Resolved",
    "Resolver",
    "TaskOptions",
    "TopologyLike",
    "check_short_string",
    "check_size",
    "check_wire",
    "encode_body",
]
