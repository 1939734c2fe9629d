"""An in-memory OpenTelemetry exporter for span-tree tests (the SDK's own, installed once)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["finished_spans", "span_exporter", "span_path"]

_exporter: InMemorySpanExporter | None = None


def span_exporter() -> InMemorySpanExporter:
    """The process's exporter; the global tracer provider can be set only once per process."""
    global _exporter
    if _exporter is None:
        _exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    return _exporter


def finished_spans() -> list[ReadableSpan]:
    return list(span_exporter().get_finished_spans())


def span_path(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    """The names from the root of ``span``'s trace down to ``span`` (among ``spans``)."""
    by_id = {each.context.span_id: each for each in spans if each.context is not None}
    names: list[str] = []
    current: ReadableSpan | None = span
    while current is not None:
        names.append(current.name)
        parent = current.parent
        current = by_id.get(parent.span_id) if parent is not None else None
    return names[::-1]
