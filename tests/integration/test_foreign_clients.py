"""Foreign clients, not written here: Node's amqplib publishes and consumes our events.

The wire format of every contract must be exactly what its AsyncAPI schema says and what our
consumer accepts. Bodies are generated from the AsyncAPI document by json-schema-faker, judged
by an independent validator (Ajv, JSON Schema 2020-12), published from Node with amqplib, and
read back from the queues the routing simulator expects. Our consumer's decoder (the step of the
runtime that dead-letters with ``x-failure-reason``) must accept exactly what Ajv accepts, and
refuse the rest with reason ``schema``. The other way, Node reads what our publisher sends.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bus.asyncapi import asyncapi_document
from bus.contracts import ContractRegistry
from bus.routing import Router
from bus.settings import BusSettings
from bus.topology import LoadedTopology, load_topology
from consumers.decode import Decoder, InvalidMessageError
from producers import SyncPublisher
from producers.events import CancelOrder, EmailRequested, OrderCreated
from tests.support.amqp import drain
from tests.support.node import install_tool, run_node

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "topology.yaml"
SAMPLES_PER_EVENT = 15

pytestmark = [pytest.mark.integration, pytest.mark.bus_topology(str(SHIPPED))]


@pytest.fixture(scope="module")
def conformance() -> tuple[str, Path]:
    return install_tool("conformance")


def _violations(event: str, sample: dict[str, Any], schema: dict[str, Any]) -> list[Any]:
    """Bodies that break the schema in one way each: a required field missing, a field of the
    wrong JSON type, a string under its minimum length or off its pattern, an unknown field."""
    out: list[Any] = []
    for name in schema.get("required", []):
        out.append({k: v for k, v in sample.items() if k != name})
    for name, spec in schema["properties"].items():
        if spec.get("type") == "string":
            out.append({**sample, name: 12345})
            if spec.get("minLength", 0) > 0:
                out.append({**sample, name: ""})
            if "pattern" in spec:
                out.append({**sample, name: "abc"})
                out.append({**sample, name: "-1"})
    out.append({**sample, "unexpected_field": 1})
    out.append([sample])
    return out


def test_node_publishes_schema_samples_and_our_consumer_agrees_with_the_schema(
    conformance: tuple[str, Path],
    bus_topology: LoadedTopology,
    bus_applied_vhost: str,
    bus_vhost_url: str,
    tmp_path: Path,
) -> None:
    node, tool = conformance
    document = asyncapi_document(bus_topology)
    doc_path = tmp_path / "asyncapi.json"
    doc_path.write_text(json.dumps(document), encoding="utf-8")
    samples = json.loads(
        run_node(node, tool / "samples.mjs", str(doc_path), str(SAMPLES_PER_EVENT), "11")
    )
    contracts = ContractRegistry(bus_topology.expanded.events)
    assert set(samples) == {c.name for c in contracts}

    bodies: list[dict[str, Any]] = []  # {"event", "body", "message_id", "valid"}
    for event, generated in samples.items():
        schema = document["components"]["schemas"][contracts.by_name(event).model.__name__]
        for i, sample in enumerate(generated):
            bodies.append({"event": event, "body": json.dumps(sample), "id": f"{event}-ok-{i}"})
        for i, bad in enumerate(_violations(event, generated[0], schema)):
            bodies.append({"event": event, "body": json.dumps(bad), "id": f"{event}-bad-{i}"})
    verdicts = json.loads(
        run_node(node, tool / "validate.mjs", str(doc_path), stdin=json.dumps(bodies))
    )
    for entry, valid in zip(bodies, verdicts, strict=True):
        entry["valid"] = valid
    # The generator and the mutations do what they say, by the independent validator's verdict.
    assert all(e["valid"] for e in bodies if "-ok-" in e["id"])
    assert not any(e["valid"] for e in bodies if "-bad-" in e["id"])

    messages = []
    for entry in bodies:
        contract = contracts.by_name(entry["event"])
        messages.append(
            {
                "exchange": contract.exchange,
                "routing_key": contract.routing_key,
                "headers": dict(contract.headers),
                "type": entry["event"],
                "message_id": entry["id"],
                "body": entry["body"],
            }
        )
    report = json.loads(
        run_node(node, tool / "publish.mjs", bus_vhost_url, stdin=json.dumps(messages))
    )
    assert report == {"confirmed": len(messages), "returned": [], "nacked": []}

    router = Router(bus_topology.expanded)
    expected: Counter[str] = Counter()
    for entry in bodies:
        contract = contracts.by_name(entry["event"])
        for queue in router.route(contract.exchange, contract.routing_key, contract.headers).queues:
            expected[queue] += 1
    by_id = {e["id"]: e for e in bodies}
    decoder = Decoder(contracts)
    received: Counter[str] = Counter()
    for queue in sorted(expected):
        for _, properties, body in drain(bus_vhost_url, queue):
            received[queue] += 1
            entry = by_id[properties.message_id]
            assert properties.type == entry["event"]
            if entry["valid"]:
                decoder.decode(properties.content_type, properties.type, body, None)
            else:
                with pytest.raises(InvalidMessageError) as refused:
                    decoder.decode(properties.content_type, properties.type, body, None)
                assert refused.value.reason == "schema", (entry["id"], str(refused.value))
    assert received == expected


def test_node_reads_what_our_publisher_sends(
    conformance: tuple[str, Path], bus_applied_vhost: str, bus_vhost_url: str
) -> None:
    node, tool = conformance
    events = [
        OrderCreated(order_id="n-1", customer_id="c-1", total="12.50"),
        CancelOrder(order_id="n-1", reason="changed mind"),
        EmailRequested(to="a@example.com", subject="hi", body="hello"),
    ]
    queues = ["audit.log", "orders.commands", "email.priority"]
    settings = BusSettings(amqp_url=bus_vhost_url)
    contracts = ContractRegistry(load_topology(SHIPPED).expanded.events)
    sent = []
    with SyncPublisher.connect(settings, load_topology(SHIPPED)) as publisher:
        for event in events:
            sent.append(publisher.publish(event))
    for event, queue, message_id in zip(events, queues, sent, strict=True):
        seen = json.loads(run_node(node, tool / "consume.mjs", bus_vhost_url, queue, "1", "10000"))
        assert len(seen) == 1, queue
        message = seen[0]
        assert json.loads(message["body"]) == json.loads(event.model_dump_json())
        props = message["properties"]
        assert props["contentType"] == "application/json"
        assert props["deliveryMode"] == 2
        assert props["messageId"] == message_id
        assert props["type"] == contracts.for_model(event).name
        assert props["appId"]
        assert isinstance(props["timestamp"], int)
        assert props["correlationId"] == message_id
