"""Consuming side of amqp-bus: typed handlers on topology queues (see ``consumers.runtime``)."""

from consumers.decode import InvalidMessageError
from consumers.handlers import HandlerOptions
from consumers.idempotency import IdempotencyStore, MemoryIdempotencyStore
from consumers.message import RETRY_COUNT_HEADER, Message
from consumers.metrics import ConsumerMetrics, PrometheusMetrics
from consumers.policy import Backoff, RejectMessage
from consumers.runtime import ConsumerApp, Runtime

__all__ = [
    "RETRY_COUNT_HEADER",
    "Backoff",
    "ConsumerApp",
    "ConsumerMetrics",
    "HandlerOptions",
    "IdempotencyStore",
    "InvalidMessageError",
    "MemoryIdempotencyStore",
    "Message",
    "PrometheusMetrics",
    "RejectMessage",
    "Runtime",
]
