"""Copies of dead letters through the project's confirmed publisher, unchanged.

:class:`producers.SyncPublisher` builds a message's properties itself (``timestamp`` now, its
own ``app_id``, ``application/json``); a replayed copy must keep the dead letter's. The
:class:`CopyPublisher` here is that publisher (same confirm pipeline, returns, nacks,
reconnects) with two additions, and no confirm loop of its own:

- :class:`CopyItem` carries the original properties, which :meth:`CopyPublisher._properties`
  puts on the wire with the new headers;
- :meth:`CopyPublisher.publish_in_order` stops a batch at the first lost channel or connection
  instead of going on over a new one: a copy whose fate is unknown must be sent again
  before any later one, or a queue's order would break.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pika

from bus.errors import (
    AccessRefusedError,
    MessageTooLargeError,
    NotFoundError,
    PublishError,
    PublishNackedError,
    UnroutableError,
)
from bus.outgoing import Outgoing, Resolved, Resolver, check_size
from bus.settings import BusSettings
from producers import PublishResult, SyncPublisher
from producers._pipeline import ConfirmPipeline

__all__ = ["CopyItem", "CopyPublisher", "NotSentError", "is_definite"]


class NotSentError(PublishError):
    """Never written: an earlier copy of the batch lost its channel or connection."""


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


@dataclass(slots=True)
class _Copy(Resolved):
    properties: pika.BasicProperties | None = None


class _CopyResolver(Resolver):
    def item(self, item: Outgoing | object) -> Resolved:
        if not isinstance(item, CopyItem):
            raise TypeError("CopyPublisher publishes CopyItem only")
        body = bytes(item.body) if isinstance(item.body, bytes | bytearray | memoryview) else b""
        check_size(body, self.max_message_size, item.exchange, item.routing_key)
        return _Copy(
            item.exchange, item.routing_key, body, item.event_type,
            dict(item.headers or {}), item.message_id or "", item.correlation_id or "",
            item.persistent, properties=item.properties,
        )  # fmt: skip


class CopyPublisher(SyncPublisher):
    """``SyncPublisher`` for :class:`CopyItem` copies, in order (see the module docstring)."""

    def __init__(self, settings: BusSettings, *, window: int = 1000) -> None:
        super().__init__(settings, None, window=window, connection_name="amqp-bus-dlq-replay")
        self.resolver = _CopyResolver(None, self.resolver.max_message_size)
        self._user = settings.credentials()[0]
        self._batch_pipeline: ConfirmPipeline | None = None
        self._in_batch = False
        self.stopped = False

    def publish_in_order(self, items: Sequence[CopyItem]) -> list[PublishResult]:
        """One result per item; after a lost channel or connection the rest fail with
        :class:`NotSentError` (never written), so nothing overtakes an unconfirmed copy."""
        self._batch_pipeline, self._in_batch, self.stopped = None, True, False

        def until_stopped() -> Iterator[CopyItem]:
            for item in items:
                if self.stopped:
                    return
                yield item

        try:
            results = self.publish_many(until_stopped())
        finally:
            self._in_batch = False
        missing = [
            PublishResult(item.message_id, NotSentError("not sent: the batch stopped earlier"))
            for item in items[len(results) :]
        ]
        return results + missing

    def _open_pipeline(self) -> ConfirmPipeline:
        used = self._batch_pipeline
        if self._in_batch and used is not None and (used.dead or self._pipeline is not used):
            self.stopped = True
            raise NotSentError("not sent: the channel or connection was lost earlier in the batch")
        pipeline = super()._open_pipeline()
        if self._in_batch:
            self._batch_pipeline = pipeline
        return pipeline

    def _properties(self, message: Resolved) -> pika.BasicProperties:
        original = message.properties if isinstance(message, _Copy) else None
        if original is None:
            return super()._properties(message)
        user_id = original.user_id
        return pika.BasicProperties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=message.headers,
            delivery_mode=original.delivery_mode,
            priority=original.priority,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            expiration=original.expiration,
            message_id=message.message_id,
            timestamp=original.timestamp,
            type=original.type,
            # The broker refuses a user_id other than the connection's user (406).
            user_id=user_id if user_id == self._user else None,
            app_id=original.app_id,
            cluster_id=original.cluster_id,
        )
