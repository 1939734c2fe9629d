"""Moving a failed delivery: retry copy, dead letter, reject, drop or requeue.

The decision is :func:`consumers.policy.decide`; this is its execution, mixed into
:class:`consumers.runtime.Runtime`: confirmed copies (only safe headers, see
:func:`bus.headers.safe_headers`), the count of requeues per message for the back-off and the
``max_requeues`` bound, and the logs that name each message (its id, else a digest).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from bus import tracing
from bus.errors import PublishNackedError
from bus.headers import safe_headers
from bus.publish import AsyncPublisher, KeptProperties, Resolved
from bus.settings import BusSettings
from bus.topology import ExpandedTopology
from consumers.decode import Decoder
from consumers.message import (
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    RETRY_COUNT_HEADER,
    Message,
    describe,
)
from consumers.metrics import ConsumerMetrics
from consumers.policy import (
    Backoff,
    DeadLetter,
    Drop,
    FailureAction,
    Reject,
    Requeue,
    Retry,
    decide,
)
from consumers.settle import ChannelSession

if TYPE_CHECKING:
    from consumers.queue_consumer import QueueConsumer
    from consumers.runtime import ConsumerApp

__all__ = ["FailureHandling"]

# The runtime's logger: operators filter on it, whichever module writes the line.
log = logging.getLogger("consumers.runtime")

_MAX_HEADER_TEXT = 1024


def _exception_type(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class FailureHandling:
    """The part of the runtime that moves failed deliveries (a mixin of ``Runtime``)."""

    app: ConsumerApp
    settings: BusSettings
    topology: ExpandedTopology
    metrics: ConsumerMetrics | None
    backoff: Backoff
    publisher: AsyncPublisher
    decoder: Decoder
    dropped: Counter[str]
    """Messages rejected without a dead-letter exchange (rule 5), per queue."""
    _requeues: OrderedDict[str, int]

    def _attempts(self, consumer: QueueConsumer, message: Message) -> int:
        """Requeues seen by this process (the broker counts none on classic queues).

        Keyed by ``message_id``, else by a digest of the message, so the back-off grows and
        the ``max_requeues`` bound holds for messages without an id too.
        """
        key = f"{consumer.queue}:{message.key}"
        count = self._requeues.pop(key, 0)
        self._requeues[key] = count + 1
        while len(self._requeues) > 10_000:
            self._requeues.popitem(last=False)
        return count

    async def _failed(
        self,
        consumer: QueueConsumer,
        session: ChannelSession,
        message: Message,
        exc: BaseException,
        *,
        permanent: bool,
        reason: str,
    ) -> None:
        queue, tag = consumer.queue, message.delivery_tag
        tracing.mark_current_failed(f"{reason}: {type(exc).__name__}")
        if not session.alive:
            # The broker redelivers it; acting on it now would duplicate the message.
            session.dropped += 1
            return
        # Only a quorum queue counts deliveries; on a classic queue the header is a forgery.
        delivery_count = message.delivery_count if consumer.quorum else None
        attempts = 0 if delivery_count is not None else self._attempts(consumer, message)
        action: FailureAction = decide(
            consumer.policy,
            retry_count=message.retry_count,
            delivery_count=delivery_count,
            permanent=permanent,
            backoff=self.backoff,
            attempts=attempts,
        )
        what = f"{_exception_type(exc)}: {str(exc)[:_MAX_HEADER_TEXT]}"
        metrics = self.metrics
        try:
            if isinstance(action, Retry):
                step = action.step
                await self._republish(message, "", step.queue, {RETRY_COUNT_HEADER: step.attempt})
                log.warning(
                    "queue %r: message %s failed (%s); retry %d/%d in %d ms via %r",
                    queue, describe(message), what, step.attempt,
                    len(consumer.policy.retry), step.delay_ms, step.queue,
                )  # fmt: skip
                if metrics is not None:
                    metrics.retried(queue)
                session.done(tag)
            elif isinstance(action, DeadLetter):
                headers = {
                    RETRY_COUNT_HEADER: message.retry_count,
                    "x-exception-type": _exception_type(exc),
                    "x-exception-message": str(exc)[:_MAX_HEADER_TEXT],
                    "x-failure-reason": reason,
                    "x-failed-queue": queue,
                }
                key = self._dead_letter_key(queue, message)
                await self._republish(message, action.exchange, key, headers)
                log.error(
                    "queue %r: message %s dead-lettered to %r (%s: %s)",
                    queue, describe(message), action.exchange, reason, what,
                )  # fmt: skip
                if metrics is not None:
                    metrics.dead_lettered(queue, reason)
                session.done(tag)
            elif isinstance(action, Reject):
                log.error(
                    "queue %r: message %s rejected to its dead-letter exchange %r (%s: %s)",
                    queue, describe(message), action.exchange, reason, what,
                )  # fmt: skip
                if await session.nack(tag, requeue=False) and metrics is not None:
                    metrics.dead_lettered(queue, reason)
            elif isinstance(action, Drop):
                log.error(
                    "queue %r: message %s DROPPED: %s (%s: %s) and the queue has no dead-letter "
                    "exchange; give it `dead_letter: true` to keep such messages",
                    queue, describe(message), action.why, reason, what,
                )  # fmt: skip
                if await session.nack(tag, requeue=False):
                    self.dropped[queue] += 1
                    if metrics is not None:
                        metrics.dropped(queue, reason)
            else:
                self._requeue(consumer, session, message, action, what)
        except Exception as publish_exc:
            delay = self.backoff.delay(attempts or (delivery_count or 0))
            log.error(
                "queue %r: message %s failed (%s) and could not be moved (%s: %s); "
                "requeued in %.1f s instead",
                queue, describe(message), what,
                _exception_type(publish_exc), str(publish_exc)[:_MAX_HEADER_TEXT], delay,
            )  # fmt: skip
            if session.alive:
                consumer.requeue_later(session, tag, delay)
                if metrics is not None:
                    metrics.requeued(queue)

    def _requeue(
        self,
        consumer: QueueConsumer,
        session: ChannelSession,
        message: Message,
        action: Requeue,
        what: str,
    ) -> None:
        if action.final:
            log.error(
                "queue %r: message %s failed (%s) on its last delivery allowed by the delivery "
                "limit (%s) and the queue has no dead-letter exchange: the broker will DROP it "
                "when it is requeued now",
                consumer.queue, describe(message), what, consumer.policy.delivery_limit,
            )  # fmt: skip
        else:
            log.error(
                "queue %r: message %s failed (%s); no dead-letter exchange, requeued in %.1f s",
                consumer.queue, describe(message), what, action.delay,
            )  # fmt: skip
        consumer.requeue_later(session, message.delivery_tag, action.delay)
        if self.metrics is not None:
            self.metrics.requeued(consumer.queue)

    def _dead_letter_key(self, queue: str, message: Message) -> str:
        spec = self.topology.queues[queue]
        key = spec.arguments.get("x-dead-letter-routing-key")
        return key if isinstance(key, str) else message.routing_key

    async def _republish(
        self, message: Message, exchange: str, routing_key: str, extra: dict[str, Any]
    ) -> None:
        """A confirmed, persistent, mandatory copy of ``message`` (raises when not confirmed),
        through the publishing core: after a nack it publishes on a new channel (the rule of
        :meth:`bus.publish.AsyncPublisher._retire`)."""
        props = message.delivered.header.properties
        # Broker-owned headers are never forwarded as a publisher wrote them: a forged x-death
        # crashes the broker's dead-lettering when the copy expires from a delay queue.
        headers, dropped = safe_headers(props.headers)
        if dropped:
            log.warning(
                "queue %r: message %s: dropped forged or broker-owned header(s) %s from its copy",
                message.queue, describe(message), ", ".join(sorted(dropped)),
            )  # fmt: skip
        headers.update(extra)
        headers[ORIGINAL_EXCHANGE_HEADER] = message.original_exchange
        headers[ORIGINAL_ROUTING_KEY_HEADER] = message.original_routing_key
        # A message named by its exchange and key keeps its name on the copy, which comes back
        # (or is replayed) through the default exchange, where the key names no contract.
        name = self.decoder.event_name(
            props.message_type, message.original_exchange, message.original_routing_key, headers
        )
        kept = KeptProperties(
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            delivery_mode=2,  # persistent, whatever the original was
            priority=props.priority,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            timestamp=props.timestamp,
            type=name,
            app_id=props.app_id,
        )
        # Returned messages are matched by id: never publish a copy without one.
        message_id = props.message_id or str(uuid.uuid4())
        copy = Resolved(
            exchange, routing_key, message.body, name, headers, message_id,
            props.correlation_id or "", True, kept=kept,
        )  # fmt: skip
        # Retries go through the default exchange: write on 'amq.default' is needed (the
        # core's AccessRefusedError says so).
        try:
            await self.publisher.publish_resolved(copy)
        except PublishNackedError:
            log.info("broker nacked a copy: publishing retries and dead letters on a new channel")
            raise
