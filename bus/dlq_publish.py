"""Copies of dead letters through the publishing core, unchanged.

A publisher builds a message's properties itself (``timestamp`` now, its own ``app_id``,
``application/json``); a replayed copy must keep the dead letter's. :class:`CopyPublisher` is
the core's pika flavour (same confirm pipeline, returns, nacks, reconnects) used through its
public hooks, with no confirm loop of its own:

- :class:`CopyItem` carries the original properties; :class:`CopyResolver` turns it into a
  message with :class:`~bus.publish.KeptProperties`, which the core puts on the wire with the
  new headers;
- :meth:`CopyPublisher.publish_in_order` is ``publish_many(in_order=True)``: a batch stops at
  the first lost channel or connection instead of going on over a new one, since a copy whose
  fate is unknown must be sent again before any later one, or a queue's order would break.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import pika
from pydantic import BaseModel

from bus.errors import (
    AccessRefusedError,
    MessageTooLargeError,
    NotFoundError,
    NotSentError,
    PublishNackedError,
    UnroutableError,
)
from bus.publish import (
    BlockingPublisher,
    KeptProperties,
    Outgoing,
    PublishResult,
    Resolved,
    Resolver,
)
from bus.publish.wire import check_size
from bus.settings import BusSettings

__all__ = ["CopyItem", "CopyPublisher", "CopyResolver", "NotSentError", "is_definite"]


def is_definite(error: Exception) -> bool:
    """True when the broker certainly did not take the copy (it can be sent again safely)."""
    return isinstance(
        error,
        UnroutableError
        | PublishNackedError
        | MessageTooLargeError
        | NotFoundError
        | AccessRefusedError
        | NotSentError,
    )


@dataclass(slots=True)
class CopyItem(Outgoing):
    """A message to send as it was received: ``properties`` are the original ones."""

    properties: pika.BasicProperties | None = None


def kept(properties: pika.BasicProperties) -> KeptProperties:
    """A dead letter's properties, to go out again as they were (pika names each property as
    :class:`KeptProperties` does)."""
    return KeptProperties(**{f.name: getattr(properties, f.name) for f in fields(KeptProperties)})


class CopyResolver(Resolver):
    """Resolves :class:`CopyItem` copies only: the body as it was, the size limit checked."""

    def item(self, item: Outgoing | BaseModel) -> Resolved:
        if not isinstance(item, CopyItem):
            raise TypeError("CopyPublisher publishes CopyItem only")
        body = bytes(item.body) if isinstance(item.body, bytes | bytearray | memoryview) else b""
        check_size(body, self.max_message_size, item.exchange, item.routing_key)
        original = item.properties
        return Resolved(
            item.exchange, item.routing_key, body, item.event_type,
            dict(item.headers or {}), item.message_id or "", item.correlation_id or "",
            item.persistent, kept=None if original is None else kept(original),
        )  # fmt: skip


class CopyPublisher(BlockingPublisher):
    """The core's pika publisher for :class:`CopyItem` copies, in order (see the module
    docstring)."""

    def __init__(self, settings: BusSettings, *, window: int = 1000) -> None:
        super().__init__(
            settings, None, window=window, connection_name="amqp-bus-dlq-replay",
            resolver=CopyResolver(None),
        )  # fmt: skip

    def publish_in_order(self, items: Sequence[CopyItem]) -> list[PublishResult]:
        """One result per item; after a lost channel or connection the rest fail with
        :class:`NotSentError` (never written), so nothing overtakes an unconfirmed copy."""
        return self.publish_many(items, in_order=True)
