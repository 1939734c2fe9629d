"""OpenTelemetry spans for the bus, after the messaging semantic conventions for RabbitMQ.

Optional and off by default: spans exist only when the ``otel`` extra (``opentelemetry-api``)
is installed and tracing is switched on, by ``BUS_TRACING=true`` for the ``bus`` commands or
:func:`set_tracing` in a service. Off, every function here returns a context manager that
does nothing and touches no header (a ``traceparent`` the caller set passes through as given),
so the bus pays one flag test per message. Spans go to the tracer provider the service
configures (the OpenTelemetry SDK and its exporter); without one they are not recorded.

The trace travels in the message's AMQP headers as W3C Trace Context (``traceparent``,
``tracestate``), which any client in any language can read and write:

- ``publishing`` opens a PRODUCER span ``publish EXCHANGE`` and writes its context into the
  headers about to be sent. Its parent is the current span when there is one (a handler
  publishing a retry copy, an application's own span); otherwise a ``traceparent`` already in
  those headers (given by the caller, carried by an outbox row, on a dead letter being
  replayed), so the trace goes on where it came from.
- ``processing`` opens a CONSUMER span ``process QUEUE`` whose parent is the context the message
  carries and which also links to it (the convention for a consumer). A retry copy is published
  inside that span, so each attempt is a span of its own in the same trace, linked to the publish
  that carried it; the dead-letter copy and its replay continue the same trace.
- ``Processing.settling`` (on what ``processing`` yields) opens a CLIENT span ``ack QUEUE`` /
  ``nack QUEUE`` / ``reject QUEUE``, a child of that message's process span.

Attribute names are those of the conventions (``messaging.system``, ``messaging.operation.type``,
``messaging.operation.name``, ``messaging.destination.name`` = the exchange,
``messaging.rabbitmq.destination.routing_key``, ``messaging.message.id``,
``messaging.rabbitmq.message.delivery_tag``, ``messaging.consumer.group.name`` = the queue).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from bus.errors import UsageError

__all__ = [
    "TRACE_HEADERS",
    "MessageTrace",
    "Processing",
    "current_traceparent",
    "mark_current_failed",
    "otel_available",
    "processing",
    "publishing",
    "set_tracing",
    "tracing_enabled",
]

TRACE_HEADERS = ("traceparent", "tracestate")
"""The headers that carry the trace (W3C Trace Context); never copied blindly between messages."""

_INSTRUMENTATION = "amqp-bus"

try:  # the extra is optional: without it, tracing is off and costs nothing
    from opentelemetry import context as _otel_context
    from opentelemetry import propagate as _otel_propagate
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - exercised by an install without the extra
    _OTEL = False
else:
    _OTEL = True

_enabled = False


def otel_available() -> bool:
    """Whether the ``otel`` extra (opentelemetry-api) is installed."""
    return _OTEL


def tracing_enabled() -> bool:
    """Whether spans are made (the extra is installed and tracing was not switched off)."""
    return _enabled


def set_tracing(enabled: bool) -> None:
    """Switch spans on or off for this process (off by default).

    Switching on without the extra installed is refused: a silent no-op would hide a missing
    dependency.
    """
    global _enabled
    if enabled and not _OTEL:
        raise UsageError("tracing needs the otel extra: pip install 'amqp-bus[otel]'")
    _enabled = enabled


@dataclass(frozen=True, slots=True)
class MessageTrace:
    """What a span says about one message (the fields the conventions define for RabbitMQ)."""

    exchange: str
    routing_key: str
    message_id: str | None = None
    queue: str | None = None
    delivery_tag: int | None = None
    correlation_id: str | None = None
    body_size: int | None = None
    celery_task: str | None = None

    def attributes(self, operation_type: str, operation_name: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": operation_type,
            "messaging.operation.name": operation_name,
            # The default exchange has the empty name; the conventions call it "amq.default".
            "messaging.destination.name": self.exchange or "amq.default",
            "messaging.rabbitmq.destination.routing_key": self.routing_key,
        }
        optional = {
            "messaging.message.id": self.message_id,
            "messaging.consumer.group.name": self.queue,
            "messaging.rabbitmq.message.delivery_tag": self.delivery_tag,
            "messaging.message.conversation_id": self.correlation_id,
            "messaging.message.body.size": self.body_size,
            # Not a messaging convention: Celery's own instrumentation names the task so.
            "celery.task_name": self.celery_task,
        }
        attributes.update({key: value for key, value in optional.items() if value is not None})
        return attributes


def _carrier(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The trace headers of a message as text (a foreign client may send them as bytes)."""
    carrier: dict[str, str] = {}
    for name in TRACE_HEADERS:
        value = (headers or {}).get(name)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            carrier[name] = value
    return carrier


@contextlib.contextmanager
def publishing(message: MessageTrace, headers: MutableMapping[str, Any]) -> Iterator[None]:
    """A PRODUCER span around one publish; writes the span's context into ``headers``."""
    if not _enabled:
        yield
        return
    # Inside a span (a handler republishing a retry copy, an application's own span) the
    # message is a child of that span; outside any span, of the context the headers carry.
    carrier = _carrier(headers)
    in_span = _otel_trace.get_current_span().get_span_context().is_valid
    parent = _otel_propagate.extract(carrier) if carrier and not in_span else None
    tracer = _otel_trace.get_tracer(_INSTRUMENTATION)
    with tracer.start_as_current_span(
        f"publish {message.exchange or 'amq.default'}",
        context=parent,
        kind=_otel_trace.SpanKind.PRODUCER,
        attributes=message.attributes("send", "publish"),
    ):
        written: dict[str, str] = {}
        _otel_propagate.inject(written)
        # Without an SDK configured the span is not recording and nothing is written: the
        # headers keep whatever context they carried.
        if written:
            for name in TRACE_HEADERS:
                headers.pop(name, None)
            headers.update(written)
        yield


class Processing:
    """The span of one message being processed; ``settling`` makes its ack/nack a child of it.

    Settling may happen after the handler's span has closed and on another task (the runtime
    acks in batches), so the settle span names its parent instead of relying on the current
    context.
    """

    __slots__ = ("_context", "_message")

    def __init__(self, message: MessageTrace, context: Any) -> None:
        self._message = message
        self._context = context

    @contextlib.contextmanager
    def settling(self, outcome: str) -> Iterator[None]:
        """A CLIENT span around an ack, nack or reject (``outcome``) of this message."""
        if self._context is None:
            yield
            return
        message = self._message
        tracer = _otel_trace.get_tracer(_INSTRUMENTATION)
        with tracer.start_as_current_span(
            f"{outcome} {message.queue or message.exchange or 'amq.default'}",
            context=self._context,
            kind=_otel_trace.SpanKind.CLIENT,
            attributes=message.attributes("settle", outcome),
        ):
            yield

    def trace_headers(self) -> dict[str, str]:
        """The W3C headers naming this process span (empty with tracing off or no SDK)."""
        if self._context is None:
            return {}
        carrier: dict[str, str] = {}
        _otel_propagate.inject(carrier, context=self._context)
        return {name: carrier[name] for name in TRACE_HEADERS if name in carrier}

    def fail(self, description: str) -> None:
        """Set this process span's status to ERROR (whether or not it is the current span)."""
        if self._context is not None:
            span = _otel_trace.get_current_span(self._context)
            span.set_status(_otel_trace.StatusCode.ERROR, description)


@contextlib.contextmanager
def processing(
    message: MessageTrace, headers: Mapping[str, Any] | None, *, current: bool = True
) -> Iterator[Processing]:
    """A CONSUMER span around one handler call, child of and linked to the message's context.

    ``current=False`` opens the span without making it the current one: for a caller whose
    child span (Celery's instrumentation) attaches itself and detaches in an order we do not
    control, where a context we attached could outlive the task.
    """
    if not _enabled:
        yield Processing(message, None)
        return
    carrier = _carrier(headers)
    parent = _otel_propagate.extract(carrier) if carrier else None
    links = []
    if parent is not None:
        creation = _otel_trace.get_current_span(parent).get_span_context()
        if creation.is_valid:
            links.append(_otel_trace.Link(creation))
    tracer = _otel_trace.get_tracer(_INSTRUMENTATION)
    span = tracer.start_span(
        f"process {message.queue or message.exchange or 'amq.default'}",
        context=parent if parent is not None else _otel_context.Context(),
        kind=_otel_trace.SpanKind.CONSUMER,
        links=links,
        attributes=message.attributes("process", "process"),
    )
    processing_ = Processing(message, _otel_trace.set_span_in_context(span))
    if not current:
        try:
            yield processing_
        finally:
            span.end()
        return
    with _otel_trace.use_span(span, end_on_exit=True):
        yield processing_


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (to store with an outbox row), if any."""
    if not _enabled or not _otel_trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _otel_propagate.inject(carrier)
    return carrier.get("traceparent")


def mark_current_failed(description: str) -> None:
    """Set the current span's status to ERROR (a handler raised, a task failed)."""
    if _enabled:
        _otel_trace.get_current_span().set_status(_otel_trace.StatusCode.ERROR, description)
