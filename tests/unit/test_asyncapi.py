"""``bus asyncapi``: the document's structure, schemas, reachability and the CLI (no node).

The official parser's verdict on the document is in tests/integration/test_asyncapi_parser.py;
these tests pin what the document says, which a schema validator cannot judge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from bus.asyncapi import DEFAULT_EXCHANGE_ID, asyncapi_document, dump_document
from bus.cli import main
from bus.contracts import import_model
from bus.errors import ContractError
from bus.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "topology.yaml"
HERE = "tests.unit.test_asyncapi"


# Models for the schema tests: a nested model whose class name clashes with another one.
class Line(BaseModel):
    sku: str
    quantity: int


class Other:
    class Line(BaseModel):
        text: str


class Basket(BaseModel):
    lines: list[Line]
    note: Other.Line | None = None


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _topology(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return asyncapi_document(load_topology(SHIPPED))


# --- the shipped topology -------------------------------------------------------------------

# Stated from topology.yaml by hand, not computed by the code under test.
EXPECTED_QUEUES = {
    "order.created": ["analytics.all", "audit.log", "billing.orders"],
    "order.paid": ["analytics.all", "audit.log", "billing.orders"],
    "order.cancel": ["orders.commands"],
    "cache.invalidated": ["cache.api", "cache.web"],
    "email.requested": ["email.priority"],
}


def test_header_and_sections(shipped: dict[str, Any]) -> None:
    assert shipped["asyncapi"] == "3.0.0"
    assert list(shipped) == [
        "asyncapi",
        "info",
        "defaultContentType",
        "channels",
        "operations",
        "components",
    ]
    assert shipped["defaultContentType"] == "application/json"
    assert shipped["info"]["title"]
    assert isinstance(shipped["info"]["version"], str)


def test_every_ref_resolves_and_no_defs_remain(shipped: dict[str, Any]) -> None:
    refs = _refs(shipped)
    assert len(refs) > 30
    for ref in refs:
        _resolve(shipped, ref)
    assert "$defs" not in json.dumps(shipped)


def _channel_binding(kind: str, **target: dict[str, Any]) -> dict[str, Any]:
    """An AsyncAPI AMQP channel binding (0.3.0): ``is`` ``kind``, then the exchange or queue."""
    return {"is": kind, **target, "bindingVersion": "0.3.0"}


def test_a_channel_per_exchange_and_queue_with_amqp_bindings(shipped: dict[str, Any]) -> None:
    expanded = load_topology(SHIPPED).expanded
    channels = shipped["channels"]
    for x in expanded.exchanges.values():
        amqp = channels[f"exchange.{x.name}"]["bindings"]["amqp"]
        exchange = dict(name=x.name, type=x.type, durable=x.durable, autoDelete=x.auto_delete)
        assert amqp == _channel_binding("routingKey", exchange=exchange)
        assert channels[f"exchange.{x.name}"]["address"] == x.name
    for q in expanded.queues.values():
        amqp = channels[f"queue.{q.name}"]["bindings"]["amqp"]
        queue = dict(name=q.name, durable=q.durable, exclusive=False, autoDelete=q.auto_delete)
        assert amqp == _channel_binding("queue", queue=queue)
    assert len(channels) == len(expanded.exchanges) + len(expanded.queues)
    assert channels["queue.billing.orders"]["x-amqp-arguments"]["x-queue-type"] == "quorum"


@pytest.mark.parametrize("event", sorted(EXPECTED_QUEUES))
def test_message_of_each_event(shipped: dict[str, Any], event: str) -> None:
    contract = load_topology(SHIPPED).expanded.events[event]
    message = shipped["components"]["messages"][event]
    assert message["name"] == event
    assert message["contentType"] == "application/json"
    assert message["bindings"]["amqp"] == {"messageType": event, "bindingVersion": "0.3.0"}
    schema = _resolve(shipped, message["payload"]["$ref"])
    model_schema = import_model(contract.model).model_json_schema()
    assert schema["properties"] == model_schema["properties"]
    assert schema["required"] == model_schema["required"]
    assert schema["additionalProperties"] is False  # extra="forbid" survives


def test_headers_of_a_headers_exchange_event(shipped: dict[str, Any]) -> None:
    message = shipped["components"]["messages"]["email.requested"]
    assert message["headers"] == {
        "type": "object",
        "properties": {"priority": {"const": "high"}},
        "required": ["priority"],
    }
    assert "headers" not in shipped["components"]["messages"]["order.created"]


@pytest.mark.parametrize("event", sorted(EXPECTED_QUEUES))
def test_send_operation_of_each_event(shipped: dict[str, Any], event: str) -> None:
    contract = load_topology(SHIPPED).expanded.events[event]
    op = shipped["operations"][f"send.{event}"]
    channel_id = f"exchange.{contract.exchange}"
    assert op["action"] == "send"
    assert op["channel"] == {"$ref": f"#/channels/{channel_id}"}
    assert op["messages"] == [{"$ref": f"#/channels/{channel_id}/messages/{event}"}]
    amqp = op["bindings"]["amqp"]
    assert amqp["deliveryMode"] == 2
    assert amqp["mandatory"] is True
    if contract.routing_key:
        assert amqp["cc"] == [contract.routing_key]
    else:
        assert "cc" not in amqp


@pytest.mark.parametrize("event", sorted(EXPECTED_QUEUES))
def test_receive_operation_on_each_queue_the_event_reaches(
    shipped: dict[str, Any], event: str
) -> None:
    receivers = sorted(
        op["channel"]["$ref"].removeprefix("#/channels/queue.")
        for op in shipped["operations"].values()
        if op["action"] == "receive"
        and any(m["$ref"].endswith(f"/messages/{event}") for m in op["messages"])
    )
    assert receivers == EXPECTED_QUEUES[event]
    for queue in receivers:
        op = shipped["operations"][f"receive.{queue}"]
        assert op["bindings"]["amqp"] == {"ack": True, "bindingVersion": "0.3.0"}
        assert event in shipped["channels"][f"queue.{queue}"]["messages"]


def test_queues_no_event_reaches_get_no_receive_operation(shipped: dict[str, Any]) -> None:
    receive = {k for k, op in shipped["operations"].items() if op["action"] == "receive"}
    assert receive == {f"receive.{q}" for qs in EXPECTED_QUEUES.values() for q in qs}
    # Celery task queues and the alternate exchange's queue carry no event.
    for queue in ("email.send", "reports.build", "unrouted.events"):
        assert "messages" not in shipped["channels"][f"queue.{queue}"]


def test_dead_letter_and_retry_queues_carry_the_messages_of_their_queue(
    shipped: dict[str, Any],
) -> None:
    channels = shipped["channels"]
    for name in ("billing.orders.dlq", "billing.orders.retry.1s", "billing.orders.retry.5s"):
        assert sorted(channels[f"queue.{name}"]["messages"]) == ["order.created", "order.paid"]
        assert "billing.orders" in channels[f"queue.{name}"]["description"]
    assert "messages" not in channels["queue.email.send.dlq"]


def test_exchange_channels_list_the_events_passing_through(shipped: dict[str, Any]) -> None:
    channels = shipped["channels"]
    assert sorted(channels["exchange.events"]["messages"]) == ["order.created", "order.paid"]
    # events -> audit is an exchange-to-exchange binding on "order.#".
    assert sorted(channels["exchange.audit"]["messages"]) == ["order.created", "order.paid"]
    assert "messages" not in channels["exchange.unrouted"]
    assert "Internal" in channels["exchange.audit"]["description"]


def test_deterministic(shipped: dict[str, Any]) -> None:
    again = asyncapi_document(load_topology(SHIPPED))
    assert dump_document(again) == dump_document(shipped)
    for section in ("channels", "operations"):
        assert list(shipped[section]) == sorted(shipped[section])
    assert list(shipped["components"]["messages"]) == sorted(shipped["components"]["messages"])


def test_yaml_has_no_aliases_and_round_trips(shipped: dict[str, Any]) -> None:
    text = dump_document(shipped)
    assert "&id" not in text
    assert "*id" not in text
    assert yaml.safe_load(text) == shipped
    assert json.loads(dump_document(shipped, as_json=True)) == shipped


# --- schemas --------------------------------------------------------------------------------


def test_nested_models_go_to_components_and_clashing_names_stay_apart(tmp_path: Path) -> None:
    path = _topology(
        tmp_path,
        "version: 1\nexchanges:\n  shop: {type: direct}\n"
        "queues:\n  baskets:\n    bindings: [{exchange: shop, routing_key: basket}]\n"
        "events:\n"
        f"  basket.saved: {{exchange: shop, routing_key: basket, model: '{HERE}:Basket'}}\n"
        f"  line.added: {{exchange: shop, routing_key: line, model: '{HERE}:Line'}}\n",
    )
    document = asyncapi_document(load_topology(path))
    schemas = document["components"]["schemas"]
    assert len(schemas) == 3, sorted(schemas)  # Basket, Line and Other.Line, once each
    basket = _resolve(
        document, document["components"]["messages"]["basket.saved"]["payload"]["$ref"]
    )
    line = _resolve(document, basket["properties"]["lines"]["items"]["$ref"])
    assert set(line["properties"]) == {"sku", "quantity"}
    note_ref = next(s["$ref"] for s in basket["properties"]["note"]["anyOf"] if "$ref" in s)
    assert set(_resolve(document, note_ref)["properties"]) == {"text"}
    # The event whose model is Line itself shares the schema Basket refers to.
    assert (
        document["components"]["messages"]["line.added"]["payload"]["$ref"]
        == basket["properties"]["lines"]["items"]["$ref"]
    )
    for ref in _refs(document):
        assert not ref.startswith("#/$defs"), ref
        _resolve(document, ref)


def test_unimportable_model_is_a_contract_error(tmp_path: Path) -> None:
    path = _topology(
        tmp_path,
        "version: 1\nexchanges:\n  x: {type: fanout}\n"
        "events:\n  e: {exchange: x, model: 'no_such_module_here:Thing'}\n",
    )
    with pytest.raises(ContractError, match="cannot import event model"):
        asyncapi_document(load_topology(path))


# --- reachability (bus.routing semantics, seen through the document) -----------------------

ROUTING = """\
version: 1
exchanges:
  main: {type: topic, alternate_exchange: lost}
  lost: {type: fanout}
  hdr: {type: headers}
  ring: {type: fanout}
queues:
  topic.q: {bindings: [{exchange: main, routing_key: "a.*"}]}
  lost.q: {bindings: [{exchange: lost}]}
  all.q: {bindings: [{exchange: hdr, arguments: {x-match: all, kind: k, tier: gold}}]}
  any.q: {bindings: [{exchange: hdr, arguments: {x-match: any, kind: k, tier: gold}}]}
  ring.q: {bindings: [{exchange: ring}]}
exchange_bindings:
  - {source: main, destination: ring, routing_key: "b.#"}
  - {source: ring, destination: main}
events:
"""


@pytest.mark.parametrize(
    ("event", "queues", "exchanges"),
    [
        ("{exchange: main, routing_key: a.x}", ["topic.q"], ["main"]),
        # nothing matched: the alternate exchange takes it
        ("{exchange: main, routing_key: zzz}", ["lost.q"], ["lost", "main"]),
        # the e2e binding matched, so no alternate exchange; the cycle back to main ends
        ("{exchange: main, routing_key: b.c}", ["ring.q"], ["main", "ring"]),
        ("{exchange: hdr, headers: {kind: k, tier: gold}}", ["all.q", "any.q"], ["hdr"]),
        ("{exchange: hdr, headers: {kind: k}}", ["any.q"], ["hdr"]),
        ("{exchange: hdr, headers: {kind: other}}", [], ["hdr"]),
    ],
)
def test_receive_operations_and_channels_follow_the_routing(
    tmp_path: Path, event: str, queues: list[str], exchanges: list[str]
) -> None:
    text = ROUTING + f"  ev: {event[:-1]}, model: 'producers.events:CancelOrder'}}\n"
    document = asyncapi_document(load_topology(_topology(tmp_path, text)))
    receivers = sorted(
        k.removeprefix("receive.")
        for k, op in document["operations"].items()
        if op["action"] == "receive"
    )
    assert receivers == queues
    carrying = sorted(
        k.removeprefix("exchange.")
        for k, channel in document["channels"].items()
        if k.startswith("exchange.") and "ev" in channel.get("messages", {})
    )
    assert carrying == exchanges
    for queue in queues:
        assert list(document["channels"][f"queue.{queue}"]["messages"]) == ["ev"]


def test_default_exchange_event_gets_its_own_channel(tmp_path: Path) -> None:
    path = _topology(
        tmp_path,
        "version: 1\nqueues:\n  jobs: {}\n"
        "events:\n  job.queued: {exchange: '', routing_key: jobs, "
        "model: 'producers.events:CancelOrder'}\n",
    )
    document = asyncapi_document(load_topology(path))
    channel = document["channels"][DEFAULT_EXCHANGE_ID]
    assert channel["bindings"]["amqp"]["exchange"] == {"name": "", "type": "default"}
    assert document["operations"]["send.job.queued"]["channel"] == {
        "$ref": f"#/channels/{DEFAULT_EXCHANGE_ID}"
    }
    assert list(document["channels"]["queue.jobs"]["messages"]) == ["job.queued"]


def test_unusual_names_give_safe_distinct_ids(tmp_path: Path) -> None:
    path = _topology(
        tmp_path,
        "version: 1\nexchanges:\n  'a b': {type: fanout}\n  'a/b': {type: fanout}\n"
        "queues:\n  'q~1': {bindings: [{exchange: 'a b'}]}\n"
        "events:\n  'ev one': {exchange: 'a b', model: 'producers.events:CancelOrder'}\n"
        "vhost: {name: shop}\n",
    )
    document = asyncapi_document(load_topology(path))
    ids = [*document["channels"], *document["operations"], *document["components"]["messages"]]
    assert len(ids) == len(set(ids))
    for ident in ids:
        assert all(c.isalnum() or c in "._-" for c in ident), ident
    for ref in _refs(document):
        _resolve(document, ref)
    addresses = sorted(c["address"] for c in document["channels"].values())
    assert addresses == ["a b", "a/b", "q~1"]
    exchange_ids = [i for i in document["channels"] if i.startswith("exchange.a_b-")]
    assert len(exchange_ids) == 2
    exchange = next(iter(document["channels"].values()))["bindings"]["amqp"]["exchange"]
    assert exchange["vhost"] == "shop"


# --- CLI ------------------------------------------------------------------------------------


def test_cli_prints_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["asyncapi", "-f", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == asyncapi_document(load_topology(SHIPPED))


@pytest.mark.parametrize(("name", "loader"), [("a.json", json.loads), ("a.yaml", yaml.safe_load)])
def test_cli_writes_json_or_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, loader: Any
) -> None:
    target = tmp_path / name
    assert main(["asyncapi", "-f", str(SHIPPED), "-o", str(target)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(target) in captured.err
    assert loader(target.read_text(encoding="utf-8"))["asyncapi"] == "3.0.0"
    if name.endswith(".yaml"):
        assert not target.read_text(encoding="utf-8").lstrip().startswith("{")


def test_cli_invalid_topology_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _topology(tmp_path, "version: 1\nqueus: {}\n")
    assert main(["asyncapi", "-f", str(path)]) == 2
    assert "queus" in capsys.readouterr().err


def test_cli_unimportable_model_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _topology(
        tmp_path,
        "version: 1\nexchanges:\n  x: {type: fanout}\n"
        "events:\n  e: {exchange: x, model: 'producers.events:NoSuchModel'}\n",
    )
    assert main(["asyncapi", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot import event model 'producers.events:NoSuchModel'")
    assert "Traceback" not in err


def test_cli_unwritable_output_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "missing-dir" / "a.yaml"
    assert main(["asyncapi", "-f", str(SHIPPED), "-o", str(target)]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot write {target}")
