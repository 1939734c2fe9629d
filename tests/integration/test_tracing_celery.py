"""A worker of the bus's Celery app reads the trace context from the task message's AMQP
headers (as a publisher in any language writes them) and runs the task in a child span."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker

from bus import tracing
from bus.broker.management import ManagementClient
from bus.celery_app import build_app
from bus.settings import BusSettings, with_vhost
from bus.topology import LoadedTopology
from producers import SyncPublisher
from tests.support.plan import settings_for
from tests.support.spans import finished_spans, span_exporter, span_path

pytestmark = pytest.mark.integration

UPSTREAM = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def traced_settings(
    amqp_url: str,
    bus_management: ManagementClient,
    bus_applied_vhost: str,
) -> Iterator[BusSettings]:
    """Tracing on (off again afterwards), a fresh exporter, settings for the applied vhost."""
    span_exporter().clear()
    tracing.set_tracing(True)
    yield settings_for(with_vhost(amqp_url, bus_applied_vhost), bus_management)
    tracing.set_tracing(False)


def test_task_span_is_a_child_of_the_publishers_context(
    traced_settings: BusSettings, bus_topology: LoadedTopology
) -> None:
    app: Celery = build_app(
        bus_topology.expanded, settings=traced_settings, routes={"traced.work": "reports.build"}
    )
    ran = threading.Event()
    seen: dict[str, Any] = {}

    @app.task(name="traced.work")
    def work() -> None:
        from opentelemetry import trace

        seen["span"] = trace.get_current_span().get_span_context()
        ran.set()

    with start_worker(
        app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=60
    ):
        app.send_task("traced.work", headers={"traceparent": UPSTREAM})
        assert ran.wait(30), "the task did not run"

    (span,) = [s for s in finished_spans() if s.name.startswith("process ")]
    assert span.parent is not None
    assert span.parent.span_id == 0x00F067AA0BA902B7
    assert span.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert span.kind.name == "CONSUMER"
    assert span.attributes is not None
    assert span.attributes["celery.task_name"] == "traced.work"
    assert span.attributes["messaging.rabbitmq.destination.routing_key"] == "reports.build"
    # What the task traces itself is a child of the task's span.
    assert seen["span"].span_id == span.context.span_id


@pytest.fixture
def celery_instrumented() -> Iterator[None]:
    """Celery's own instrumentation switched on after the bus's app is built (as a prefork
    worker's worker_process_init would), and off again afterwards."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor: Any = CeleryInstrumentor()
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


def test_celerys_task_span_is_a_child_of_the_bus_process_span(
    traced_settings: BusSettings, bus_topology: LoadedTopology, request: pytest.FixtureRequest
) -> None:
    """send_task from our publisher inside an application span, run by the bus's worker with
    opentelemetry-instrumentation-celery on: one trace, Celery's run/ span under ours, the
    task's own span under Celery's; a failed task marks our span; nothing stays attached."""
    from opentelemetry import trace

    settings = traced_settings
    app: Celery = build_app(
        bus_topology.expanded,
        settings=settings,
        routes={"traced.child": "reports.build", "traced.fail": "reports.build"},
    )
    # Instrumented only now, after the app is built: Celery's receivers run after ours.
    request.getfixturevalue("celery_instrumented")
    done = threading.Semaphore(0)
    left_attached: list[bool] = []

    @app.task(name="traced.child")
    def child() -> None:
        with trace.get_tracer("test").start_as_current_span("render"):
            pass
        done.release()

    @app.task(name="traced.fail")
    def fail() -> None:
        done.release()
        raise ValueError("boom")

    @signals.task_postrun.connect(weak=False)
    def _after_every_receiver(**_: Any) -> None:  # connected last: runs after Celery's own
        left_attached.append(trace.get_current_span().get_span_context().is_valid)

    request.addfinalizer(lambda: signals.task_postrun.disconnect(_after_every_receiver))
    tracer = trace.get_tracer("test")
    with (
        start_worker(
            app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=60
        ),
        SyncPublisher(settings, bus_topology) as publisher,
    ):
        with tracer.start_as_current_span("checkout"):
            publisher.send_task("reports.build", "traced.child")
        assert done.acquire(timeout=30), "the task did not run"
        publisher.send_task("reports.build", "traced.fail")
        assert done.acquire(timeout=30), "the failing task did not run"
        deadline = time.monotonic() + 30
        while len([s for s in finished_spans() if s.name.startswith("run/")]) < 2:
            assert time.monotonic() < deadline, "Celery's spans did not end"
            time.sleep(0.05)

    spans = finished_spans()
    (render,) = [s for s in spans if s.name == "render"]
    assert span_path(render, spans) == [
        "checkout",
        "publish tasks",
        "process reports.build",
        "run/traced.child",
        "render",
    ]
    (failed_run,) = [s for s in spans if s.name == "run/traced.fail"]
    failed_path = span_path(failed_run, spans)
    assert failed_path == ["publish tasks", "process reports.build", "run/traced.fail"]
    (failed_process,) = [
        s
        for s in spans
        if s.name == "process reports.build"
        and s.context is not None
        and failed_run.parent is not None
        and s.context.span_id == failed_run.parent.span_id
    ]
    assert failed_process.status.status_code.name == "ERROR"
    # After each task every receiver has run: no span of the task is still current.
    assert left_attached == [False, False]
