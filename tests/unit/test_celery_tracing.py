"""The worker's task span, driven through Celery's own signals as a worker sends them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import signals
from opentelemetry import trace

from bus import celery_tracing, tracing
from bus.celery_tracing import install_worker_tracing
from tests.support.spans import finished_spans, span_exporter

UPSTREAM = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def _traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    span_exporter().clear()
    tracing.set_tracing(True)
    install_worker_tracing()
    monkeypatch.setattr(celery_tracing, "_warned_order", False)
    yield
    tracing.set_tracing(False)


class _Task:
    """What the receivers read of a Celery task (signal senders must be hashable)."""

    name = "reports.build_report"

    def __init__(self, task_id: str) -> None:
        self.request = SimpleNamespace(
            id=task_id,
            delivery_info={"exchange": "tasks", "routing_key": "reports.build"},
            traceparent=UPSTREAM,
            tracestate=None,
        )


def _task(task_id: str) -> Any:
    return _Task(task_id)


def _run(task: Any, state: str) -> None:
    signals.task_prerun.send(sender=task, task_id=task.request.id, task=task, args=(), kwargs={})
    signals.task_postrun.send(
        sender=task, task_id=task.request.id, task=task, args=(), kwargs={}, state=state
    )


def test_the_request_names_our_span_while_the_task_runs_and_is_restored_after() -> None:
    task = _task("t-1")
    seen: dict[str, Any] = {}

    def during(**_: Any) -> None:  # connected after ours: runs while our span is open
        seen["traceparent"] = task.request.traceparent

    signals.task_prerun.connect(during, weak=False, dispatch_uid="test-during")
    try:
        _run(task, "FAILURE")
    finally:
        signals.task_prerun.disconnect(dispatch_uid="test-during")
    (span,) = finished_spans()
    assert span.context is not None
    assert seen["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
    assert task.request.traceparent == UPSTREAM
    assert span.status.status_code.name == "ERROR"
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_span_already_open_when_the_task_starts_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="bus.celery_tracing"),
        trace.get_tracer("test").start_as_current_span("someone else's task span"),
    ):
        _run(_task("t-2"), "SUCCESS")
        _run(_task("t-3"), "SUCCESS")
    warnings = [r for r in caplog.records if "worker_process_init" in r.getMessage()]
    assert len(warnings) == 1
