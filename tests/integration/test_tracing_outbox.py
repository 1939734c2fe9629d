"""The outbox relay continues the trace of the transaction that wrote the row.

A service writes an event inside its own span; the relay publishes it later, from another
thread with no span of its own. The publish span belongs to the writer's trace, as a child of
the writer's span, and the message on the wire carries that publish span's context.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bus import tracing
from bus.outbox import Outbox, Relay, backlog, create_outbox, make_engine
from bus.settings import BusSettings
from bus.topology import parse_topology
from producers import SyncPublisher
from producers.events import OrderCreated
from tests.support.amqp import declare_with_pika
from tests.support.outbox import TOPOLOGY, read_queue
from tests.support.spans import finished_spans, span_exporter

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    create_outbox(engine)
    yield engine
    engine.dispose()


def test_the_relays_publish_continues_the_writers_trace(
    engine: Engine, bus_vhost_url: str, request: pytest.FixtureRequest
) -> None:
    from opentelemetry import trace

    span_exporter().clear()
    tracing.set_tracing(True)
    request.addfinalizer(lambda: tracing.set_tracing(False))
    topology = parse_topology(TOPOLOGY)
    declare_with_pika(bus_vhost_url, topology.expanded)
    outbox = Outbox(topology)

    with (
        trace.get_tracer("test").start_as_current_span("place order") as writer,
        Session(engine) as session,
        session.begin(),
    ):
        outbox.add(session, OrderCreated(order_id="o-1", customer_id="1", total=Decimal(3)))
    writer_context = writer.get_span_context()

    with SyncPublisher(BusSettings(amqp_url=bus_vhost_url)) as publisher:
        relay = Relay(engine, publisher, poll_interval=0.05, listen=False).start()
        try:
            (seen,) = read_queue(bus_vhost_url, "outbox.all", idle=3.0)
        finally:
            relay.stop()
    assert backlog(engine).pending == 0

    (publish,) = [s for s in finished_spans() if s.name == "publish events"]
    assert publish.context is not None
    assert publish.context.trace_id == writer_context.trace_id
    assert publish.parent is not None
    assert publish.parent.span_id == writer_context.span_id
    assert publish.kind.name == "PRODUCER"
    assert publish.attributes is not None
    assert publish.attributes["messaging.message.id"] == seen.message_id
    # The wire carries the relay's publish span, so a consumer's span is its child.
    headers = seen.properties.headers or {}
    version, trace_id, span_id, _flags = str(headers["traceparent"]).split("-")
    assert (version, trace_id, span_id) == (
        "00",
        f"{publish.context.trace_id:032x}",
        f"{publish.context.span_id:016x}",
    )
