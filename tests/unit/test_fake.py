"""FakeBus: publishing without a broker, on the routing simulator."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from bus.errors import AccessRefusedError, ContractError, NotFoundError, UnroutableError
from bus.fake import FakeBus
from bus.testing import FakeBus as ExportedFakeBus
from bus.topology import LoadedTopology, load_topology
from producers.events import CacheInvalidated, EmailRequested, OrderCreated, OrderPaid

TOPOLOGY = Path(__file__).parents[2] / "topology.yaml"


@pytest.fixture
def fake() -> FakeBus:
    return FakeBus(load_topology(TOPOLOGY))


def _order() -> OrderCreated:
    return OrderCreated(order_id="o-1", customer_id="c-1", total=Decimal("9.50"))


def test_event_lands_where_the_broker_would_route_it(fake: FakeBus) -> None:
    message_id = fake.publish(_order())
    assert fake.counts() == {"analytics.all": 1, "audit.log": 1, "billing.orders": 1}
    [message] = fake.messages("billing.orders")
    assert message.message_id == message_id
    assert (message.exchange, message.routing_key, message.type) == (
        "events",
        "order.created",
        "order.created",
    )
    assert message.content_type == "application/json"
    assert fake.events("billing.orders") == [_order()]
    assert message.json()["order_id"] == "o-1"


def test_contract_headers_route_a_headers_exchange(fake: FakeBus) -> None:
    fake.publish(EmailRequested(to="a@b.c", subject="hi"))
    assert fake.counts() == {"email.priority": 1}
    assert fake.messages("email.priority")[0].headers == {"priority": "high"}


def test_explicit_publish_with_headers_and_plain_json(fake: FakeBus) -> None:
    fake.publish("notifications", "", {"x": 1}, headers={"kind": "newsletter"}, traceparent="tp")
    [message] = fake.messages("email.bulk")
    assert message.body == b'{"x":1}'
    assert message.headers == {"kind": "newsletter", "traceparent": "tp"}
    assert message.type is None


def test_fanout_reaches_every_bound_queue(fake: FakeBus) -> None:
    fake.publish(CacheInvalidated(key="user:1"))
    assert fake.counts() == {"cache.api": 1, "cache.web": 1}


def test_unmatched_event_key_goes_to_the_alternate_exchange(fake: FakeBus) -> None:
    fake.publish("events", "nobody.listens", b"{}")
    # analytics.all binds '#', so the alternate exchange is never used on this topology
    assert fake.counts() == {"analytics.all": 1}


def test_unroutable_publish_raises_like_the_mandatory_publisher(fake: FakeBus) -> None:
    with pytest.raises(UnroutableError, match="'commands' routing key 'nope'"):
        fake.publish("commands", "nope", b"{}")
    assert fake.counts() == {}
    assert fake.published == []


def test_missing_and_internal_exchanges_fail_like_the_broker(fake: FakeBus) -> None:
    with pytest.raises(NotFoundError, match="no exchange 'nope'"):
        fake.publish("nope", "k", b"{}")
    with pytest.raises(AccessRefusedError, match="internal exchange 'audit'"):
        fake.publish("audit", "k", b"{}")


def test_event_name_must_fit_the_model(fake: FakeBus) -> None:
    with pytest.raises(ContractError, match="expects OrderPaid"):
        fake.publish(_order(), event_name="order.paid")
    fake.publish(OrderPaid(order_id="o-1", amount=Decimal(1)), event_name="order.paid")
    assert fake.messages("billing.orders")[0].routing_key == "order.paid"


def test_publish_needs_exchange_key_and_body(fake: FakeBus) -> None:
    with pytest.raises(TypeError, match="needs all three"):
        fake.publish("events", "k")


def test_reject_dead_letters_with_the_original_key(fake: FakeBus) -> None:
    fake.publish(_order())
    route = fake.reject("billing.orders")
    assert route is not None
    assert route.queues == {"billing.orders.dlq"}
    [dead] = fake.messages("billing.orders.dlq")
    assert (dead.exchange, dead.routing_key) == ("billing.orders.dlx", "order.created")
    assert dead.headers["x-first-death-reason"] == "rejected"
    assert dead.headers["x-first-death-queue"] == "billing.orders"
    assert fake.events("billing.orders.dlq") == [_order()]
    assert fake.messages("billing.orders") == []


def test_reject_without_a_dead_letter_exchange_drops(fake: FakeBus) -> None:
    fake.publish(_order())
    assert fake.reject("analytics.all") is None
    assert fake.counts() == {"audit.log": 1, "billing.orders": 1}


def test_retry_queue_expiry_returns_the_message_to_its_queue(fake: FakeBus) -> None:
    fake.publish("", "billing.orders.retry.1s", _order(), event_type="order.created")
    assert fake.counts() == {"billing.orders.retry.1s": 1}
    fake.expire("billing.orders.retry.1s")
    assert fake.counts() == {"billing.orders": 1}
    assert fake.messages("billing.orders")[0].headers["x-first-death-reason"] == "expired"


def test_get_and_clear(fake: FakeBus) -> None:
    fake.publish(_order())
    fake.publish(_order())
    assert fake.get("billing.orders") is not None
    assert len(fake.bodies("billing.orders")) == 1
    fake.clear()
    assert fake.get("billing.orders") is None
    assert fake.published == []
    with pytest.raises(IndexError):
        fake.reject("billing.orders")
    with pytest.raises(NotFoundError):
        fake.messages("no.such.queue")


def test_async_publish_shares_the_bus(fake: FakeBus) -> None:
    message_id = asyncio.run(fake.aio.publish(_order(), correlation_id="c"))
    assert fake.messages("billing.orders")[0].message_id == message_id
    assert fake.messages("billing.orders")[0].correlation_id == "c"


def test_exported_by_the_pytest_plugin(bus_topology: LoadedTopology, fake_bus: FakeBus) -> None:
    assert ExportedFakeBus is FakeBus
    assert fake_bus.router.topology is bus_topology.expanded


_TIMESTAMP_BINDING = """
version: 1
exchanges: {h: {type: headers}}
queues:
  by.seconds: {bindings: [{exchange: h, arguments: {n: 5}}]}
  by.millis: {bindings: [{exchange: h, arguments: {n: 5000}}]}
"""


@pytest.mark.parametrize(("rabbitmq", "queue"), [("3.10", "by.seconds"), ("4.0.5", "by.millis")])
def test_timestamp_header_routes_as_the_named_version_compares_it(
    rabbitmq: str, queue: str
) -> None:
    """Header ``n = timestamp 5``: 3.10.8 compares it as 5, 4.0.5 as 5000 (both measured;
    ``tests/integration/test_routing_table.py`` replays the rows on the broker)."""
    from datetime import UTC, datetime

    from bus.topology import parse_topology

    fake = FakeBus(parse_topology(_TIMESTAMP_BINDING, "t.yaml"), rabbitmq=rabbitmq)
    fake.publish("h", "", b"{}", headers={"n": datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC)})
    assert fake.counts() == {queue: 1}


@pytest.mark.parametrize(("rabbitmq", "last_death"), [("3.10", False), ("4.0", True)])
def test_a_rejected_copy_carries_the_death_headers_of_the_version(
    rabbitmq: str, last_death: bool
) -> None:
    """4.0.5 adds x-last-death-* to a dead-lettered copy, 3.10.8 does not (both measured by
    ``tests/integration/test_routing_table.py::test_dead_letter_headers_on_the_broker``)."""
    fake = FakeBus(load_topology(TOPOLOGY), rabbitmq=rabbitmq)
    fake.publish(_order())
    fake.reject("billing.orders")
    [dead] = fake.messages("billing.orders.dlq")
    assert dead.headers["x-first-death-queue"] == "billing.orders"
    assert ("x-last-death-queue" in dead.headers) is last_death
    if last_death:
        assert dead.headers["x-last-death-reason"] == "rejected"
