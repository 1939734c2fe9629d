"""rabbitmq-c's command-line clients (Debian's amqp-tools) against the bus, both ways.

``amqp-publish`` cannot set ``type`` or ``message_id``: every event of the shipped topology
published with it must still be handled by the demo consumers (the event is named by the one
contract whose exchange, key and headers match), and a bad one dead-letters with the place it
came from. ``amqp-get`` reads what our publisher sends. Without amqp-tools these tests fail
saying how to get them: a skipped foreign-client check is no check.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from bus.settings import BusSettings
from bus.topology import load_topology
from consumers.demo import app, recorder
from producers import SyncPublisher
from producers.events import CacheInvalidated, CancelOrder, EmailRequested, OrderCreated, OrderPaid
from tests.support.amqp import drain
from tests.support.consumer import load_declared, queue_depth
from tests.support.topologies import SAMPLES_REACH

SHIPPED = Path(__file__).resolve().parents[2] / "topology.yaml"

pytestmark = pytest.mark.integration


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install amqp-tools", pytrace=False)
    return path


def amqp_publish(url: str, exchange: str, key: str, body: str, *headers: str) -> None:
    argv = [_tool("amqp-publish"), "--url", url, "-e", exchange, "-r", key, "-p"]
    argv += ["-C", "application/json", "-b", body]
    for header in headers:
        argv += ["-H", header]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


async def test_amqp_publish_without_type_or_id_is_handled(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    load_declared(bus_vhost_url, tmp_path)
    recorder.clear()
    sent = [
        ("events", "order.created", OrderCreated(order_id="c-1", customer_id="c", total=5), ()),
        ("events", "order.paid", OrderPaid(order_id="c-1", amount="5.00"), ()),
        ("commands", "order.cancel", CancelOrder(order_id="c-1"), ()),
        ("broadcast", "", CacheInvalidated(key="product:1"), ()),
        ("notifications", "", EmailRequested(to="a@b.c", subject="s"), ("priority: high",)),
    ]
    for exchange, key, event, headers in sent:
        amqp_publish(bus_vhost_url, exchange, key, event.model_dump_json(), *headers)
    # Which queues each publish reaches follows the shipped bindings (direct key, topic order.*
    # and #, the events -> audit order.# exchange binding, fanout, headers any-of priority).
    expected = SAMPLES_REACH
    async with app.serve(BusSettings(amqp_url=bus_vhost_url), topology=load_topology(SHIPPED)):
        await recorder.wait_for(expected, seconds=20)
        await asyncio.sleep(0.3)
        counts = recorder.counts()
    assert counts == Counter(expected)
    assert all(r.event_type is None for rs in recorder.received.values() for r in rs)
    for dlq in ("billing.orders.dlq", "orders.commands.dlq", "email.priority.dlq"):
        assert queue_depth(bus_vhost_url, dlq)[0] == 0, dlq


async def test_a_dead_letter_names_its_event_and_where_it_came_from(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    load_declared(bus_vhost_url, tmp_path)
    amqp_publish(bus_vhost_url, "commands", "order.cancel", '{"order_id": ""}')
    async with app.serve(
        BusSettings(amqp_url=bus_vhost_url),
        topology=load_topology(SHIPPED),
        queues=["orders.commands"],
    ):
        for _ in range(100):
            if queue_depth(bus_vhost_url, "orders.commands.dlq")[0]:
                break
            await asyncio.sleep(0.1)
    ((_, properties, _),) = drain(bus_vhost_url, "orders.commands.dlq")
    headers = properties.headers
    assert headers["x-failure-reason"] == "schema"
    assert headers["x-failed-queue"] == "orders.commands"
    assert headers["x-original-exchange"] == "commands"
    assert headers["x-original-routing-key"] == "order.cancel"
    assert properties.type == "order.cancel"
    assert properties.message_id  # the copy got one: amqp-publish sent none


def test_amqp_get_reads_what_our_publisher_sends(bus_vhost_url: str, tmp_path: Path) -> None:
    load_declared(bus_vhost_url, tmp_path)
    event = CancelOrder(order_id="g-1", reason="read by amqp-get")
    with SyncPublisher.connect(BusSettings(amqp_url=bus_vhost_url), load_topology(SHIPPED)) as p:
        p.publish(event)
    got = subprocess.run(
        [_tool("amqp-get"), "--url", bus_vhost_url, "-q", "orders.commands"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert CancelOrder.model_validate_json(got.stdout) == event
