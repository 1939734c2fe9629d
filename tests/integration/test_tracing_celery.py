"""A worker of the bus's Celery app reads the trace context from the task message's AMQP
headers (as a publisher in any language writes them) and runs the task in a child span."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from bus import tracing
from bus.broker.management import ManagementClient
from bus.celery_app import build_app
from bus.settings import with_vhost
from bus.topology import LoadedTopology
from tests.support.plan import settings_for
from tests.support.spans import finished_spans, span_exporter

pytestmark = pytest.mark.integration

UPSTREAM = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_task_span_is_a_child_of_the_publishers_context(
    amqp_url: str,
    bus_management: ManagementClient,
    bus_applied_vhost: str,
    bus_topology: LoadedTopology,
    request: pytest.FixtureRequest,
) -> None:
    span_exporter().clear()
    tracing.set_tracing(True)
    request.addfinalizer(lambda: tracing.set_tracing(False))
    settings = settings_for(with_vhost(amqp_url, bus_applied_vhost), bus_management)
    app: Celery = build_app(
        bus_topology.expanded, settings=settings, routes={"traced.work": "reports.build"}
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
