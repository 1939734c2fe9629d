"""A message without ``type`` is named by the one contract its exchange, key and headers match.

Which parts of a delivery can tell contracts apart follows the broker: fanout and headers
exchanges route whatever the routing key (the shipped topology's ``broadcast`` and
``notifications`` exchanges are proven so by the routing differential), so a foreign client
may publish to them with any key.
"""

from __future__ import annotations

from pathlib import Path

from bus.contracts import ContractRegistry
from bus.topology import load_topology, parse_topology

SHIPPED = Path(__file__).resolve().parents[2] / "topology.yaml"


def _registry() -> ContractRegistry:
    return ContractRegistry.of(load_topology(SHIPPED).expanded)


def _name(found: object) -> str | None:
    return getattr(found, "name", None)


def test_direct_and_topic_events_are_named_by_exchange_and_key() -> None:
    contracts = _registry()
    assert _name(contracts.infer("events", "order.created")) == "order.created"
    assert _name(contracts.infer("events", "order.paid")) == "order.paid"
    assert _name(contracts.infer("commands", "order.cancel")) == "order.cancel"
    assert contracts.infer("events", "order.shipped") is None
    assert contracts.infer("commands", "order.created") is None  # right key, wrong exchange


def test_fanout_ignores_the_key() -> None:
    contracts = _registry()
    assert _name(contracts.infer("broadcast", "")) == "cache.invalidated"
    assert _name(contracts.infer("broadcast", "anything.at.all")) == "cache.invalidated"


def test_headers_events_need_their_headers_with_the_same_type() -> None:
    contracts = _registry()
    assert _name(contracts.infer("notifications", "", {"priority": "high"})) == "email.requested"
    assert _name(contracts.infer("notifications", "x", {"priority": "high", "n": 1})) == (
        "email.requested"
    )
    assert contracts.infer("notifications", "", {"priority": "low"}) is None
    assert contracts.infer("notifications", "", {}) is None


def test_several_matching_contracts_name_none() -> None:
    text = """
version: 1
exchanges:
  bus: {type: direct}
queues:
  q:
    bindings: [{exchange: bus, routing_key: k}]
events:
  first: {exchange: bus, routing_key: k, model: "producers.events:CancelOrder"}
  second: {exchange: bus, routing_key: k, model: "producers.events:OrderPaid"}
"""
    contracts = ContractRegistry.of(parse_topology(text, "t.yaml").expanded)
    assert [c.name for c in contracts.matching("bus", "k")] == ["first", "second"]
    assert contracts.infer("bus", "k") is None


def test_typed_header_values_do_not_match_across_types() -> None:
    text = """
version: 1
exchanges:
  h: {type: headers}
queues:
  q:
    bindings: [{exchange: h, arguments: {x-match: all, level: 5}}]
events:
  leveled: {exchange: h, headers: {level: 5}, model: "producers.events:CancelOrder"}
"""
    contracts = ContractRegistry.of(parse_topology(text, "t.yaml").expanded)
    assert _name(contracts.infer("h", "", {"level": 5})) == "leveled"
    assert contracts.infer("h", "", {"level": "5"}) is None
    assert contracts.infer("h", "", {"level": True}) is None
