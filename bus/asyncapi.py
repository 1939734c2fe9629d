"""AsyncAPI 3.0.0 document of the topology and its event contracts (``bus asyncapi``).

Layout of the document:

- one channel per exchange (``exchange.<name>``, AMQP binding ``is: routingKey``) and per queue
  (``queue.<name>``, ``is: queue``), generated dead-letter and retry objects included, because
  other-language services bind to and read from the same objects;
- one message per event in ``components.messages``, its payload the JSON Schema of the pydantic
  model in ``components.schemas`` (nested models too, refs rewritten to point there);
- a ``send`` operation per event on its exchange channel, the routing key in the AMQP
  operation binding's ``cc`` (the binding's field for "the routing keys of the publish");
- a ``receive`` operation per queue that at least one event reaches, listing those events.

Which queues an event reaches comes from :mod:`bus.routing` (the simulator behind
``bus route``, checked against the broker): the event's exchange, routing key and contract
headers, through exchange-to-exchange bindings and alternate exchanges. Dead-lettering is not
routing: dead-letter and retry queues carry the messages of the queue they belong to, but get
no ``receive`` operation.

The function is pure and deterministic (sorted keys), so the output diffs cleanly in review.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.errors import PydanticUserError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from bus.contracts import import_model
from bus.errors import ContractError
from bus.routing import Router
from bus.topology.load import LoadedTopology

__all__ = [
    "AMQP_BINDING_VERSION",
    "ASYNCAPI_VERSION",
    "DEFAULT_EXCHANGE_ID",
    "asyncapi_document",
    "dump_document",
    "passes_through",
]

ASYNCAPI_VERSION = "3.0.0"
# The only AMQP binding version AsyncAPI 3.0.0 accepts.
AMQP_BINDING_VERSION = "0.3.0"
# User exchanges cannot start with "amq.", so this id never collides with a declared exchange.
DEFAULT_EXCHANGE_ID = "exchange.amq.default"
_SCHEMA_REF = "#/components/schemas/{model}"
# Validation mode: the schema states what consumers accept (e.g. a Decimal as number or
# string), which is the contract a publisher in another language has to meet.
_SCHEMA_MODE: JsonSchemaMode = "validation"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def passes_through(
    router: Router, exchange: str, routing_key: str, headers: Mapping[str, Any]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(queues reached, exchanges the message passes through) for one publish, sorted."""
    result = router.route(exchange, routing_key, headers)
    exchanges = {exchange}
    for hop in result.trace:
        if (
            hop.kind in ("binding", "alternate")
            and hop.destination_type == "exchange"
            and hop.destination in router.exchanges
        ):
            exchanges.add(hop.destination)
    return tuple(sorted(result.queues)), tuple(sorted(exchanges))


def _ident(name: str) -> str:
    """A name usable as a map key and inside a JSON pointer; unusual names stay unique."""
    if _SAFE_ID.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"{cleaned}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def _exchange_channel_id(name: str) -> str:
    return DEFAULT_EXCHANGE_ID if name == "" else f"exchange.{_ident(name)}"


def _queue_channel_id(name: str) -> str:
    return f"queue.{_ident(name)}"


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(parts)}


def _schemas(
    models: Iterable[type[BaseModel]],
) -> tuple[dict[type[BaseModel], dict[str, Any]], dict[str, Any]]:
    """One JSON Schema per model; shared definitions once, name clashes resolved by pydantic."""
    unique = sorted(set(models), key=lambda m: (m.__module__, m.__qualname__))
    try:
        refs, defs = models_json_schema(
            [(m, _SCHEMA_MODE) for m in unique], ref_template=_SCHEMA_REF
        )
    except PydanticUserError as exc:
        raise ContractError(f"cannot build the JSON Schema of an event model: {exc}") from None
    by_model = {model: dict(refs[(model, _SCHEMA_MODE)]) for model in unique}
    return by_model, dict(sorted(defs.get("$defs", {}).items()))


def _headers_schema(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: {"const": v} for k, v in sorted(headers.items())},
        "required": sorted(headers),
    }


def _vhost(loaded: LoadedTopology) -> dict[str, str]:
    # Without a vhost in the topology the URL decides; claiming "/" would be a guess.
    vhost = loaded.model.vhost
    return {"vhost": vhost.name} if vhost is not None and vhost.name else {}


def _exchange_channel(
    loaded: LoadedTopology, router: Router, name: str, messages: list[str]
) -> dict[str, Any]:
    spec = loaded.expanded.exchanges.get(name)
    # AsyncAPI's AMQP binding has a type of its own for the default exchange.
    kind = "default" if name == "" else router.exchange_type(name)
    channel: dict[str, Any] = {"address": name}
    declared = loaded.model.exchanges.get(name)
    if name == "":
        channel["title"] = "default exchange"
        channel["description"] = "Routes to the queue named by the routing key."
    else:
        channel["title"] = f"exchange {name} ({kind})"
        notes: list[str] = []
        if declared is not None and declared.description:
            notes.append(declared.description)
        if router.is_internal(name):
            notes.append("Internal: fed only by exchange-to-exchange bindings.")
        if spec is not None and spec.alternate_exchange:
            notes.append(
                f"Unroutable messages go to the alternate exchange {spec.alternate_exchange}."
            )
        if spec is None:
            notes.append("Built into RabbitMQ.")
        if notes:
            channel["description"] = " ".join(notes)
    if messages:
        channel["messages"] = {m: _ref("components", "messages", m) for m in messages}
    exchange: dict[str, Any] = {"name": name, "type": kind}
    if spec is not None:
        exchange["durable"] = spec.durable
        exchange["autoDelete"] = spec.auto_delete
    elif name != "":
        # Built-in exchanges: durable, never auto-deleted.
        exchange["durable"] = True
        exchange["autoDelete"] = False
    exchange.update(_vhost(loaded))
    channel["bindings"] = {
        "amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP_BINDING_VERSION}
    }
    if spec is not None and spec.arguments:
        channel["x-amqp-arguments"] = dict(sorted(spec.arguments.items()))
    return channel


def _queue_channel(loaded: LoadedTopology, name: str, messages: list[str]) -> dict[str, Any]:
    spec = loaded.expanded.queues[name]
    declared = loaded.model.queues.get(name)
    channel: dict[str, Any] = {"address": name, "title": f"queue {name} ({spec.type})"}
    notes: list[str] = []
    if declared is not None and declared.description:
        notes.append(declared.description)
    if spec.owner is not None:
        notes.append(
            f"The {spec.role} queue of {spec.owner}: carries the messages of {spec.owner}."
        )
    if spec.celery_routing_key is not None:
        notes.append("Served by a Celery worker (Celery task messages).")
    if notes:
        channel["description"] = " ".join(notes)
    if messages:
        channel["messages"] = {m: _ref("components", "messages", m) for m in messages}
    queue: dict[str, Any] = {
        "name": name,
        "durable": spec.durable,
        "exclusive": declared.exclusive if declared is not None else False,
        "autoDelete": spec.auto_delete,
        **_vhost(loaded),
    }
    channel["bindings"] = {
        "amqp": {"is": "queue", "queue": queue, "bindingVersion": AMQP_BINDING_VERSION}
    }
    if spec.arguments:
        channel["x-amqp-arguments"] = dict(sorted(spec.arguments.items()))
    return channel


class _NoAliasDumper(yaml.SafeDumper):
    # Repeated sub-objects would otherwise come out as YAML anchors (&id001), which are valid
    # but unreadable and not what other tools expect in an AsyncAPI file.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_document(document: Mapping[str, Any], *, as_json: bool = False) -> str:
    """The document as YAML (default) or JSON text, keys in the document's own order."""
    if as_json:
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(
        dict(document),
        Dumper=_NoAliasDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


def asyncapi_document(loaded: LoadedTopology) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``loaded`` as plain data (YAML/JSON-serialisable).

    Raises :class:`~bus.errors.ContractError` when an event model cannot be imported or has
    no JSON Schema.
    """
    topology = loaded.expanded
    events = dict(sorted(topology.events.items()))
    models = {name: import_model(e.model) for name, e in events.items()}
    payloads, schemas = _schemas(models.values())

    router = Router(topology)
    on_exchange: dict[str, list[str]] = {}
    on_queue: dict[str, list[str]] = {}
    for name, e in events.items():
        queues, exchanges = passes_through(router, e.exchange, e.routing_key, e.headers)
        for x in exchanges:
            on_exchange.setdefault(x, []).append(_ident(name))
        for q in queues:
            on_queue.setdefault(q, []).append(_ident(name))
    reached = dict(on_queue)
    for spec in topology.queues.values():
        if spec.owner is not None and spec.owner in reached:
            on_queue[spec.name] = reached[spec.owner]

    exchange_names = (
        set(topology.exchanges)
        | {b.source for b in topology.bindings}
        | {e.exchange for e in events.values()}
        | set(on_exchange)
    )
    channels: dict[str, Any] = {}
    for x in exchange_names:
        channels[_exchange_channel_id(x)] = _exchange_channel(
            loaded, router, x, on_exchange.get(x, [])
        )
    for q in topology.queues:
        channels[_queue_channel_id(q)] = _queue_channel(loaded, q, on_queue.get(q, []))

    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for name, e in events.items():
        mid = _ident(name)
        message: dict[str, Any] = {
            "name": name,
            "title": name,
            "contentType": "application/json",
        }
        if e.description:
            message["description"] = e.description
        if e.headers:
            message["headers"] = _headers_schema(e.headers)
        message["payload"] = payloads[models[name]]
        # The AMQP `type` property carries the event name; no content-encoding is set on the wire.
        message["bindings"] = {
            "amqp": {"messageType": name, "bindingVersion": AMQP_BINDING_VERSION}
        }
        message["x-model"] = e.model
        messages[mid] = message

        channel_id = _exchange_channel_id(e.exchange)
        amqp: dict[str, Any] = {}
        if e.routing_key:
            amqp["cc"] = [e.routing_key]
        amqp.update(
            {
                "deliveryMode": 2,
                "mandatory": True,
                "timestamp": True,
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        )
        target = "the default exchange" if e.exchange == "" else f"exchange {e.exchange}"
        key = f" with routing key {e.routing_key}" if e.routing_key else ""
        operations[f"send.{mid}"] = {
            "action": "send",
            "channel": _ref("channels", channel_id),
            "title": f"publish {name}",
            "summary": f"Publish {name} to {target}{key}.",
            "messages": [_ref("channels", channel_id, "messages", mid)],
            "bindings": {"amqp": amqp},
        }

    for q in topology.queues:
        if q not in reached:
            continue
        channel_id = _queue_channel_id(q)
        operations[f"receive.{_ident(q)}"] = {
            "action": "receive",
            "channel": _ref("channels", channel_id),
            "title": f"consume {q}",
            "summary": f"Consume queue {q}: " + ", ".join(reached[q]) + ".",
            # Manual acks after the handler succeeds (DESIGN: nothing lost).
            "messages": [_ref("channels", channel_id, "messages", m) for m in reached[q]],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        }

    vhost = loaded.model.vhost
    description = (
        "Exchanges, queues and event contracts of the bus, generated by `bus asyncapi` from "
        "topology.yaml: edit the topology, not this document. Messages are plain AMQP: JSON body, "
        "`type` property = event name, persistent (delivery mode 2)."
    )
    if vhost is not None and vhost.description:
        description = f"{vhost.description}\n\n{description}"
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"amqp-bus {vhost.name}" if vhost is not None and vhost.name else "amqp-bus",
            "version": str(loaded.model.version),
            "description": description,
        },
        "defaultContentType": "application/json",
        "channels": dict(sorted(channels.items())),
        "operations": dict(sorted(operations.items())),
        "components": {
            "schemas": schemas,
            "messages": dict(sorted(messages.items())),
        },
    }
