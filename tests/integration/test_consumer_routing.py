"""The demo consumers receive what direct, topic, fanout and headers routing should deliver.

Expected counts are derived from the bindings written below (the routing rules of the broker,
docs/rabbitmq-behaviour.md section 8), not from the code under test.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from bus.settings import BusSettings
from consumers.demo import DEMO_QUEUES, app, recorder
from producers.events import (
    CacheInvalidated,
    CancelOrder,
    EmailRequested,
    OrderCreated,
    OrderPaid,
)
from tests.support.consumer import load_declared, publish, queue_depth

JSON = "application/json"


def event(exchange: str, key: str, name: str, body: str, **props: Any) -> dict[str, Any]:
    return {
        "exchange": exchange,
        "routing_key": key,
        "body": body,
        "content_type": JSON,
        "type": name,
        **props,
    }


def batch() -> list[dict[str, Any]]:
    created = OrderCreated(order_id="o-1", customer_id="c", total=5).model_dump_json()
    paid = OrderPaid(order_id="o-1", amount=5).model_dump_json()
    cancel = CancelOrder(order_id="o-1", reason="changed mind").model_dump_json()
    cache = CacheInvalidated(key="product:1").model_dump_json()
    email = EmailRequested(to="a@b.c", subject="hi").model_dump_json()
    return [
        *[event("events", "order.created", "order.created", created) for _ in range(3)],
        *[event("events", "order.paid", "order.paid", paid) for _ in range(2)],
        # order.* needs exactly one word after "order": these two only reach analytics (#)
        # and, through the order.# exchange binding, audit.log.
        event("events", "order.created.eu", "order.created", created),
        event("events", "order", "order.created", created),
        # No binding matches customer.*, except analytics' "#": not unrouted.
        event("events", "customer.signed_up", "customer.signed_up", "{}"),
        *[event("commands", "order.cancel", "order.cancel", cancel) for _ in range(4)],
        # direct: no binding has this key, so nobody gets it.
        event("commands", "order.refund", "order.cancel", cancel, mandatory=False),
        *[event("broadcast", "anything", "cache.invalidated", cache) for _ in range(2)],
        event("notifications", "", "email.requested", email, headers={"priority": "high"}),
        event("notifications", "", "email.requested", email, headers={"tier": "gold"}),
        event(
            "notifications",
            "",
            "email.requested",
            email,
            headers={"kind": "newsletter", "priority": "high"},
        ),
        event("notifications", "", "email.requested", email, headers={"kind": "newsletter"}),
        event(
            "notifications",
            "",
            "email.requested",
            email,
            headers={"priority": "low"},
            mandatory=False,
        ),
    ]


EXPECTED = Counter(
    {
        "billing.orders": 3 + 2,
        "analytics.all": 3 + 2 + 2 + 1,
        "audit.log": 3 + 2 + 2,
        "orders.commands": 4,
        "cache.web": 2,
        "cache.api": 2,
        "email.priority": 3,
        "email.bulk": 2,
    }
)


async def test_demo_consumers_receive_what_routing_delivers(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    loaded = load_declared(bus_vhost_url, tmp_path)
    recorder.clear()
    async with app.serve(BusSettings(amqp_url=bus_vhost_url), topology=loaded, grace=5):
        await publish(bus_vhost_url, batch())
        await recorder.wait_for(dict(EXPECTED), seconds=20)
        # Anything routed too widely would arrive right behind the expected messages.
        await asyncio.sleep(0.5)
        counts = recorder.counts()
    assert counts == EXPECTED
    assert "unrouted.events" not in counts
    keys = Counter(r.routing_key for r in recorder.received["billing.orders"])
    assert keys == Counter({"order.created": 3, "order.paid": 2})
    for queue in DEMO_QUEUES:
        assert queue_depth(bus_vhost_url, queue) == (0, 0), queue
    for dlq in ("billing.orders.dlq", "orders.commands.dlq", "email.priority.dlq"):
        assert queue_depth(bus_vhost_url, dlq)[0] == 0


async def test_unmatched_events_reach_the_unrouted_consumer(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    loaded = load_declared(bus_vhost_url, tmp_path)
    # Without analytics' "#" binding an unmatched event falls through to the alternate exchange.
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    connection.channel().queue_unbind("analytics.all", "events", "#")
    connection.close()
    recorder.clear()
    async with app.serve(
        BusSettings(amqp_url=bus_vhost_url),
        topology=loaded,
        queues=["unrouted.events", "billing.orders"],
        grace=5,
    ):
        await publish(
            bus_vhost_url,
            [
                event("events", "customer.signed_up", "customer.signed_up", "{}"),
                # Goes to audit through the order.# exchange binding: routed, not unrouted.
                event("events", "order.created.eu", "order.created", "{}"),
                event("events", "invoice.sent", "invoice.sent", "{}"),
            ],
        )
        await recorder.wait_for({"unrouted.events": 2}, seconds=20)
        await asyncio.sleep(0.3)
    assert recorder.counts() == Counter({"unrouted.events": 2})
    assert [r.routing_key for r in recorder.received["unrouted.events"]] == [
        "customer.signed_up",
        "invoice.sent",
    ]
    assert queue_depth(bus_vhost_url, "audit.log")[0] == 1
