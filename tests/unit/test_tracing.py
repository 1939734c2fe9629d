"""The span tree of one message's life, headers passed exactly as the broker passes them.

The broker copies a message's headers unchanged to its consumer and into a dead-letter copy
(recorded in docs/rabbitmq-versions.md: only ``x-death``/``x-*`` are added), so handing the
header dict from one step to the next is what happens on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bus import tracing
from bus.tracing import MessageTrace
from tests.support.spans import finished_spans, span_exporter, span_path


@pytest.fixture(autouse=True)
def _fresh_exporter() -> Iterator[None]:
    span_exporter().clear()
    tracing.set_tracing(True)
    yield
    tracing.set_tracing(False)  # off by default: other tests see headers as given
    span_exporter().clear()


def _publish(exchange: str, key: str, headers: dict[str, Any]) -> dict[str, Any]:
    with tracing.publishing(MessageTrace(exchange, key, message_id="m-1"), headers):
        pass
    return headers


def test_publish_writes_w3c_context_and_the_conventions_attributes() -> None:
    headers = _publish("events", "order.created", {"x-app": "1"})

    (span,) = finished_spans()
    assert span.name == "publish events"
    assert span.kind.name == "PRODUCER"
    assert dict(span.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "events",
        "messaging.rabbitmq.destination.routing_key": "order.created",
        "messaging.message.id": "m-1",
    }
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == span.context.trace_id
    assert int(span_id, 16) == span.context.span_id
    assert headers["x-app"] == "1"


def test_the_default_exchange_is_named_amq_default() -> None:
    _publish("", "email.send", {})
    (span,) = finished_spans()
    assert span.name == "publish amq.default"
    assert span.attributes is not None
    assert span.attributes["messaging.destination.name"] == "amq.default"


def test_a_given_traceparent_becomes_the_parent() -> None:
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = _publish("events", "order.created", {"traceparent": upstream})
    (span,) = finished_spans()
    assert span.parent is not None
    assert span.parent.span_id == 0xB7AD6B7169203331
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert headers["traceparent"] != upstream


def test_bytes_headers_from_a_foreign_client_are_read() -> None:
    upstream = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.processing(MessageTrace("events", "k", queue="q"), {"traceparent": upstream}):
        pass
    (span,) = finished_spans()
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C


def test_garbage_traceparent_starts_a_new_trace() -> None:
    with tracing.processing(MessageTrace("events", "k", queue="q"), {"traceparent": "nonsense"}):
        pass
    (span,) = finished_spans()
    assert span.parent is None
    assert not span.links


def test_fail_retry_dead_letter_replay_succeed_is_one_trace() -> None:
    # 1. The producer publishes.
    headers = _publish("events", "order.created", {})
    # 2. Attempt 1 fails; the runtime publishes the retry copy inside the process span.
    message = MessageTrace("events", "order.created", message_id="m-1", queue="billing",
                           delivery_tag=1)
    with tracing.processing(message, headers) as first:
        retry_headers = dict(headers)
        _publish("billing.retry", "billing", retry_headers)
    # Settled after the handler's span closed, as the runtime does.
    with first.settling("ack"):
        pass
    # 3. Attempt 2 fails for good: the dead-letter copy, published inside the second attempt.
    second = MessageTrace("billing.retry", "billing", message_id="m-1", queue="billing",
                          delivery_tag=2)
    with tracing.processing(second, retry_headers):
        dead_headers = dict(retry_headers)
        _publish("billing.dlx", "billing", dead_headers)
    # 4. `bus dlq replay` sends it back; attempt 3 succeeds.
    replay_headers = dict(dead_headers)
    _publish("events", "order.created", replay_headers)
    third = MessageTrace("events", "order.created", message_id="m-1", queue="billing",
                         delivery_tag=3)
    with tracing.processing(third, replay_headers):
        pass

    spans = finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1

    leaf = [span for span in spans if span.name == "process billing"][-1]
    assert span_path(leaf, spans) == [
        "publish events",
        "process billing",
        "publish billing.retry",
        "process billing",
        "publish billing.dlx",
        "publish events",
        "process billing",
    ]
    settle = next(span for span in spans if span.name == "ack billing")
    assert span_path(settle, spans) == ["publish events", "process billing", "ack billing"]
    assert settle.kind.name == "CLIENT"
    # Each attempt links to the publish that carried it.
    for process in (span for span in spans if span.name == "process billing"):
        assert process.parent is not None
        assert [link.context.span_id for link in process.links] == [process.parent.span_id]
        assert process.kind.name == "CONSUMER"


def test_switched_off_no_span_and_headers_untouched() -> None:
    tracing.set_tracing(False)
    headers: dict[str, Any] = {"x": 1}
    _publish("events", "k", headers)
    with tracing.processing(MessageTrace("events", "k", queue="q"), headers):
        pass
    assert headers == {"x": 1}
    assert finished_spans() == []


def test_an_outbox_row_keeps_the_context_of_the_transaction_that_wrote_it() -> None:
    import json
    from decimal import Decimal
    from pathlib import Path

    from opentelemetry import trace

    from bus.outbox import Outbox
    from bus.topology import load_topology
    from producers.events import OrderCreated

    outbox = Outbox(load_topology(Path(__file__).parents[2] / "topology.yaml").expanded)
    event = OrderCreated(order_id="1", customer_id="c1", total=Decimal("10"))
    with trace.get_tracer("test").start_as_current_span("place order") as span:
        row = outbox.event_row(event)
    headers = json.loads(str(row["headers"]))
    assert headers["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    assert headers["traceparent"].split("-")[2] == format(span.get_span_context().span_id, "016x")
    # Outside any span, a row carries no invented context.
    assert "traceparent" not in json.loads(str(outbox.event_row(event)["headers"] or "{}"))


def test_off_by_default_and_switched_on_by_bus_tracing_for_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bus.cli import main

    tracing.set_tracing(False)
    monkeypatch.delenv("BUS_TRACING", raising=False)
    assert main(["validate", "-f", "topology.yaml"]) == 0
    assert not tracing.tracing_enabled()
    monkeypatch.setenv("BUS_TRACING", "true")
    assert main(["validate", "-f", "topology.yaml"]) == 0
    assert tracing.tracing_enabled()
    capsys.readouterr()


WITHOUT_THE_EXTRA = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from bus import tracing
from bus.cli import main
from bus.errors import UsageError
from bus.tracing import MessageTrace

assert not tracing.otel_available() and not tracing.tracing_enabled()
headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
with tracing.publishing(MessageTrace("events", "order.created"), headers):
    pass
with tracing.processing(MessageTrace("events", "order.created"), headers) as span:
    assert span.trace_headers() == {}
assert headers == {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
assert tracing.current_traceparent() is None
try:
    tracing.set_tracing(True)
except UsageError as exc:
    assert "otel extra" in str(exc), exc
else:
    raise AssertionError("switching tracing on without the extra was accepted")
sys.exit(main(["validate", "-f", "topology.yaml"]))
"""


def test_without_the_extra_nothing_is_traced_and_bus_tracing_is_a_clear_error() -> None:
    import os
    import sys

    from tests.support.commands import run

    done = run([sys.executable, "-c", WITHOUT_THE_EXTRA], env={**os.environ, "BUS_TRACING": "true"})
    # The command refuses with the extra's name, as a one-line usage error (exit 2).
    assert done.returncode == 2, done.stdout + done.stderr
    assert "otel extra" in done.stderr
    assert "Traceback" not in done.stderr
