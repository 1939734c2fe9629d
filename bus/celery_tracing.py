"""Spans for tasks run by ``bus worker``: the task's run is the process span of its message.

The bus's publishers put the trace context into the task message's AMQP headers; Celery hands
every header of a protocol-2 task message to the task as an attribute of ``task.request``, so
the worker reads ``traceparent``/``tracestate`` there. The span opens in ``task_prerun`` and
closes in ``task_postrun`` (both run in the worker process, around the task, whatever the task
raised), so anything the task traces itself is a child of it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import signals

from bus import tracing
from bus.tracing import MessageTrace

__all__ = ["install_worker_tracing"]

_open: dict[str, contextlib.ExitStack] = {}


def _request_headers(task: Any) -> dict[str, Any]:
    request = task.request
    return {name: getattr(request, name, None) for name in tracing.TRACE_HEADERS}


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None or task is None or not tracing.tracing_enabled():
        return
    delivery = getattr(task.request, "delivery_info", None) or {}
    message = MessageTrace(
        exchange=str(delivery.get("exchange") or ""),
        routing_key=str(delivery.get("routing_key") or ""),
        message_id=task_id,
        queue=str(delivery.get("routing_key") or "") or None,
        celery_task=task.name,
    )
    stack = contextlib.ExitStack()
    stack.enter_context(tracing.processing(message, _request_headers(task)))
    _open[task_id] = stack


def _on_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    stack = _open.pop(task_id or "", None)
    if stack is None:
        return
    if state is not None and state != "SUCCESS":
        tracing.mark_current_failed(f"task ended {state}")
    stack.close()


def install_worker_tracing() -> None:
    """Open a span around every task this worker process runs (idempotent)."""
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="amqp-bus-tracing-prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="amqp-bus-tracing-postrun")
