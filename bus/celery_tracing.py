"""Spans for tasks run by ``bus worker``: the task's run is the process span of its message.

The bus's publishers put the trace context into the task message's AMQP headers; Celery hands
every header of a protocol-2 task message to the task as an attribute of ``task.request``, so
the worker reads ``traceparent``/``tracestate`` there. The span opens in ``task_prerun`` and
closes in ``task_postrun`` (both run in the worker process, around the task, whatever the task
raised), so anything the task traces itself is a child of it.

Celery's own instrumentation (``opentelemetry-instrumentation-celery``) reads the parent of
its ``run/TASK`` span from the same request attributes, in its own ``task_prerun`` receiver.
While our span is open, the request's trace attributes name our span, so Celery's span
becomes its child: publish > process QUEUE > run/TASK > what the task traces. Celery calls
receivers in the order they were connected, so this holds when Celery is instrumented after
the bus's app is built (in ``worker_process_init``, as that instrumentation's own docs advise
for the prefork pool); instrumented earlier, its span opens first and cannot be our child,
and the worker says so once in its log. With that instrumentation on, our span is not made
the current one: Celery's span attaches itself on top and detaches after our ``task_postrun``
receiver has run, which would leave our context attached to the worker thread after the task.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from celery import signals

from bus import tracing
from bus.tracing import MessageTrace

__all__ = ["install_worker_tracing"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class _OpenTask:
    """One task's open span and the request trace attributes it replaced."""

    stack: contextlib.ExitStack
    span: tracing.Processing
    request: Any
    replaced: dict[str, Any] = field(default_factory=dict)

    def close(self, state: str | None) -> None:
        if state is not None and state != "SUCCESS":
            self.span.fail(f"task ended {state}")
        for name, value in self.replaced.items():
            setattr(self.request, name, value)
        self.stack.close()


_open: dict[str, _OpenTask] = {}
_warned_order = False


def _request_headers(task: Any) -> dict[str, Any]:
    request = task.request
    return {name: getattr(request, name, None) for name in tracing.TRACE_HEADERS}


def _celery_instrumented() -> bool:
    """Whether opentelemetry-instrumentation-celery is installed and switched on."""
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError:
        return False
    # BaseInstrumentor is a singleton: this is the instance that instrument() switched on.
    # (The instrumentation ships no type hints, hence Any.)
    instrumentor: Any = CeleryInstrumentor
    return bool(instrumentor().is_instrumented_by_opentelemetry)


def _warn_if_a_task_span_is_open(task: Any) -> None:
    """Another receiver already opened a span for this task (Celery's instrumentation, connected
    before the bus's app was built): say so once, since its span cannot become our child."""
    global _warned_order
    if _warned_order:
        return
    from opentelemetry import trace

    if trace.get_current_span().get_span_context().is_valid:
        _warned_order = True
        _log.warning(
            "a span was already open when task %s started: instrument Celery after the bus's "
            "app is built (in worker_process_init) so its task span is a child of the bus's "
            "process span",
            task.name,
        )


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None or task is None or not tracing.tracing_enabled():
        return
    _warn_if_a_task_span_is_open(task)
    delivery = getattr(task.request, "delivery_info", None) or {}
    message = MessageTrace(
        exchange=str(delivery.get("exchange") or ""),
        routing_key=str(delivery.get("routing_key") or ""),
        message_id=task_id,
        queue=str(delivery.get("routing_key") or "") or None,
        celery_task=task.name,
    )
    stack = contextlib.ExitStack()
    span = stack.enter_context(
        tracing.processing(message, _request_headers(task), current=not _celery_instrumented())
    )
    opened = _OpenTask(stack, span, task.request)
    ours = span.trace_headers()
    for name in tracing.TRACE_HEADERS:
        opened.replaced[name] = getattr(task.request, name, None)
        setattr(task.request, name, ours.get(name))
    _open[task_id] = opened


def _on_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    opened = _open.pop(task_id or "", None)
    if opened is not None:
        opened.close(state)


def install_worker_tracing() -> None:
    """Open a span around every task this worker process runs (idempotent)."""
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="amqp-bus-tracing-prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="amqp-bus-tracing-postrun")
