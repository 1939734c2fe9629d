"""An outbox row is the publishers' wire message, stored: nothing is encoded twice or lost."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest
from sqlalchemy import insert, select

from bus.errors import ContractError
from bus.outbox import Outbox, RelayStats, create_outbox, make_engine, outbox_table
from bus.outbox.add import outgoing_from_row
from bus.publish import Outgoing, Resolver
from bus.topology import parse_topology
from producers.events import CancelOrder, OrderCreated

TOPOLOGY = parse_topology(
    """
version: 1
exchanges:
  events: {type: topic}
  notifications: {type: headers}
  tasks: {type: topic}
queues:
  email.send:
    celery: true
    bindings: [{exchange: tasks, routing_key: email.send}]
events:
  order.created:
    exchange: events
    routing_key: order.created
    headers: {tier: gold}
    model: producers.events:OrderCreated
"""
)


def _through_the_table(row: dict[str, object], tmp_path: object) -> dict[str, object]:
    engine = make_engine(f"sqlite:///{tmp_path}/rows.db")
    try:
        create_outbox(engine)
        with engine.begin() as conn:
            conn.execute(insert(outbox_table()).values(row))
            stored = conn.execute(select(outbox_table())).one()._mapping
            return dict(stored)
    finally:
        engine.dispose()


def test_an_event_row_publishes_what_the_publisher_would_send(tmp_path: object) -> None:
    outbox = Outbox(TOPOLOGY)
    event = OrderCreated(order_id="o1", customer_id="c", total=Decimal("10.50"))
    row = outbox.event_row(
        event, ordering_key="o1", headers={"x": 1}, message_id="m-1", traceparent="00-a-b-01"
    )
    direct = Resolver(TOPOLOGY).event(
        event, {"headers": {"x": 1}, "message_id": "m-1", "traceparent": "00-a-b-01"}
    )
    relayed = Resolver(None).item(outgoing_from_row(_through_the_table(row, tmp_path)))
    assert dataclasses.asdict(relayed) == dataclasses.asdict(direct)
    assert relayed.headers == {"tier": "gold", "x": 1, "traceparent": "00-a-b-01"}
    assert json.loads(relayed.body)["total"] == "10.50"
    assert row["ordering_key"] == "o1"


def test_a_task_row_keeps_the_celery_properties(tmp_path: object) -> None:
    outbox = Outbox(TOPOLOGY, app_id="svc")
    row = outbox.task_row("email.send", "consumers.tasks.send_email", ["a@b.c"], task_id="t-1")
    direct = Resolver(TOPOLOGY).task(
        "email.send", "consumers.tasks.send_email", ["a@b.c"], None, task_id="t-1",
        origin="svc", ignore_result=True, reply_to=None, expires=None,
    )  # fmt: skip
    relayed = Resolver(None).item(outgoing_from_row(_through_the_table(row, tmp_path)))
    assert dataclasses.asdict(relayed) == dataclasses.asdict(direct)
    assert relayed.content_encoding == "utf-8"


def test_an_event_outside_the_contracts_is_refused_before_any_write() -> None:
    with pytest.raises(ContractError, match="matches no event contract"):
        Outbox(TOPOLOGY).event_row(CancelOrder(order_id="o1"))


def test_an_explicit_message_row_keeps_its_ids() -> None:
    row = Outbox().event_row(
        Outgoing("", "q", b"raw", message_id="m-2", correlation_id="c-2", persistent=False)
    )
    assert (row["exchange"], row["routing_key"], row["body"]) == ("", "q", b"raw")
    assert (row["message_id"], row["correlation_id"], row["persistent"]) == ("m-2", "c-2", False)
    assert row["headers"] is None


def test_relay_stats_rate_counts_the_recent_window() -> None:
    stats = RelayStats()
    assert stats.rate == 0.0
    stats.record(100, 2)
    stats.record(50, 0)
    assert (stats.published, stats.failed, stats.batches) == (150, 2, 2)
    assert stats.rate == pytest.approx(150.0, rel=0.01)  # over at least one second
