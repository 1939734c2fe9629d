"""How publish calls map onto wire messages (no broker): contracts, headers, bodies, sizes."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from pydantic import BaseModel

from bus.errors import ContractError, MessageTooLargeError
from bus.publish import Resolver
from bus.topology import parse_topology
from producers import Outgoing
from producers.events import CancelOrder, EmailRequested, OrderCreated, OrderPaid

TOPOLOGY = """
version: 1
exchanges:
  events: {type: topic}
  commands: {type: direct}
  notifications: {type: headers}
events:
  order.created: {exchange: events, routing_key: order.created, model: "producers.events:OrderCreated"}
  order.cancel: {exchange: commands, routing_key: order.cancel, model: "producers.events:CancelOrder"}
  email.requested:
    exchange: notifications
    headers: {priority: high, kind: transactional}
    model: "producers.events:EmailRequested"
  order.paid: {exchange: events, routing_key: order.paid, model: "producers.events:OrderPaid"}
  order.paid.again: {exchange: events, routing_key: order.repaid, model: "producers.events:OrderPaid"}
"""  # noqa: E501


class Stray(BaseModel):
    value: int


@pytest.fixture
def resolver() -> Resolver:
    return Resolver(parse_topology(TOPOLOGY, "t.yaml"), max_message_size=64)


def test_typed_event_takes_exchange_key_and_type_from_its_contract(resolver: Resolver) -> None:
    event = CancelOrder(order_id="o1", reason="r")
    message = resolver.call(event, None, None, {})
    assert (message.exchange, message.routing_key, message.event_type) == (
        "commands",
        "order.cancel",
        "order.cancel",
    )
    assert json.loads(message.body) == {"order_id": "o1", "reason": "r"}
    assert message.headers is None
    assert str(uuid.UUID(message.message_id)) == message.message_id
    assert message.correlation_id == message.message_id


def test_contract_headers_then_caller_headers_then_traceparent(resolver: Resolver) -> None:
    message = resolver.call(
        EmailRequested(to="a@b.c", subject="s"),
        None,
        None,
        {"headers": {"kind": "bulk", "tenant": "acme"}, "traceparent": "00-abc-def-01"},
    )
    assert message.exchange == "notifications"
    assert message.headers == {
        "priority": "high",
        "kind": "bulk",
        "tenant": "acme",
        "traceparent": "00-abc-def-01",
    }


def test_unknown_and_ambiguous_models_are_contract_errors(resolver: Resolver) -> None:
    with pytest.raises(ContractError, match="matches no event contract"):
        resolver.call(Stray(value=1), None, None, {})
    paid = OrderPaid(order_id="o", amount=Decimal(1))
    with pytest.raises(ContractError, match="several events"):
        resolver.call(paid, None, None, {})
    named = resolver.call(paid, None, None, {"event_name": "order.paid.again"})
    assert named.routing_key == "order.repaid"
    with pytest.raises(ContractError, match="expects OrderCreated"):
        resolver.call(paid, None, None, {"event_name": "order.created"})


def test_explicit_model_body_is_typed_when_the_topology_knows_it(resolver: Resolver) -> None:
    known = resolver.item(Outgoing("x", "k", CancelOrder(order_id="o")))
    unknown = resolver.item(Outgoing("x", "k", Stray(value=5)))
    assert known.event_type == "order.cancel"
    assert unknown.event_type is None
    assert json.loads(unknown.body) == {"value": 5}


def test_bodies_bytes_and_plain_data(resolver: Resolver) -> None:
    assert resolver.item(Outgoing("x", "k", b"\x00raw")).body == b"\x00raw"
    assert resolver.item(Outgoing("x", "k", bytearray(b"ab"))).body == b"ab"
    data = {"name": "Zoë", "n": [1, 2]}
    assert json.loads(resolver.item(Outgoing("x", "k", data)).body.decode("utf-8")) == data
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        resolver.item(Outgoing("x", "k", {"when": object()}))


def test_size_limit_is_inclusive(resolver: Resolver) -> None:
    assert len(resolver.item(Outgoing("x", "k", b"a" * 64)).body) == 64
    with pytest.raises(MessageTooLargeError, match="65 bytes"):
        resolver.item(Outgoing("x", "k", b"a" * 65))


def test_caller_ids_and_persistence_are_kept(resolver: Resolver) -> None:
    message = resolver.item(
        Outgoing("x", "k", b"{}", message_id="m-1", correlation_id="c-1", persistent=False)
    )
    assert (message.message_id, message.correlation_id, message.persistent) == ("m-1", "c-1", False)


def test_exchanges_to_check_cover_contracts_and_extras(resolver: Resolver) -> None:
    assert resolver.exchanges(["extra", ""]) == ["commands", "events", "extra", "notifications"]


def test_no_topology_means_explicit_publishing_only() -> None:
    bare = Resolver(None, max_message_size=1024)
    assert bare.exchanges() == []
    with pytest.raises(ContractError):
        bare.item(OrderCreated(order_id="o", customer_id="c", total=Decimal(0)))
