"""One trace for a message's whole life, from the broker's point of view: published, failed,
retried through the delay queue, failed again and dead-lettered, replayed by ``bus dlq
replay``, handled. Each hop is a real publish and delivery; the spans come from the SDK's
in-memory exporter in this process (the runtime and the replay run here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus import tracing
from bus.dlq_replay import replay
from bus.settings import BusSettings
from consumers import Backoff, ConsumerApp, Message
from producers import Publisher
from producers.events import OrderCreated
from tests.support.consumer import load_declared, wait_until
from tests.support.spans import finished_spans, span_exporter, span_path
from tests.support.topologies import order_topology

pytestmark = pytest.mark.integration

TOPOLOGY = order_topology(
    """
    traced.q:
      dead_letter: true
      retry: {delays: [200ms]}
      bindings: [{exchange: events, routing_key: order.created}]
    """
)


class Boom(Exception):
    pass


async def test_fail_retry_dead_letter_replay_succeed_is_one_trace(
    bus_vhost_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    span_exporter().clear()
    tracing.set_tracing(True)
    request.addfinalizer(lambda: tracing.set_tracing(False))
    topology = load_declared(bus_vhost_url, tmp_path, TOPOLOGY)
    settings = BusSettings(amqp_url=bus_vhost_url)
    app = ConsumerApp("traced", backoff=Backoff(base=0.05, cap=0.2), grace=5)
    calls: list[Message] = []

    @app.handler("traced.q")
    async def handle(event: OrderCreated, message: Message) -> None:
        calls.append(message)
        if len(calls) <= 2:  # the first attempt and its one retry fail: dead-lettered
            raise Boom(f"attempt {len(calls)}")

    async with app.serve(settings, topology=topology):
        async with Publisher.connect(settings, topology) as publisher:
            message_id = await publisher.publish(
                OrderCreated(order_id="o-1", customer_id="c-1", total="12")
            )
        await wait_until(lambda: len(calls) == 2)
        report = await asyncio.to_thread(replay, settings, "traced.q.dlq")
        assert report.replayed == 1
        await wait_until(lambda: len(calls) == 3)
        await wait_until(lambda: any(s.name == "ack traced.q" for s in finished_spans()))

    spans = finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1, [s.name for s in spans]

    (settled,) = [span for span in spans if span.name == "ack traced.q"]
    assert span_path(settled, spans) == [
        "publish events",  # the producer
        "process traced.q",  # attempt 1 fails
        "publish amq.default",  # its retry copy, to traced.q.retry.200ms by queue name
        "process traced.q",  # attempt 2 fails: no step left
        "publish traced.q.dlx",  # the dead-letter copy
        "publish amq.default",  # bus dlq replay, back to traced.q by queue name
        "process traced.q",  # attempt 3 succeeds
        "ack traced.q",
    ]
    processes = [span for span in spans if span.name == "process traced.q"]
    assert len(processes) == 3
    for process in processes:
        assert process.attributes is not None
        assert process.attributes["messaging.message.id"] == message_id
        assert process.attributes["messaging.consumer.group.name"] == "traced.q"
        assert process.parent is not None
        # Each attempt links to the publish that carried it.
        assert [link.context.span_id for link in process.links] == [process.parent.span_id]
    failed = [p for p in processes if p.status.status_code.name == "ERROR"]
    assert len(failed) == 2
