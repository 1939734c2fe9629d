"""``bus export``: the topology.yaml of an existing vhost, read through the management API.

The output starts with the ``vhost:`` section (name, description, default queue type) and
names concrete objects only (no ``dead_letter``/``retry`` shorthands): applying
it back to the same vhost plans as all-unchanged. Queue arguments with a typed field are
written as that field, the rest under ``arguments``; bindings go under their queue,
exchange-to-exchange bindings under ``exchange_bindings``. Exclusive and server-named queues
belong to one connection and are left out, as are ``amq.*`` exchanges.

The generated text is validated like any topology file before it is returned; a vhost can
hold what topology.yaml rejects (a dead-letter exchange that does not exist, a numeric
argument stored as a string), and :attr:`Export.issues` then says what.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from bus.broker.inspect import read_live_state
from bus.broker.live import LiveBinding, LiveState, LiveVhost
from bus.broker.management import ManagementClient
from bus.errors import NotFoundError, TopologyError
from bus.settings import BusSettings, mask_url
from bus.topology.load import parse_topology
from bus.topology.model import QUEUE_ARGUMENTS

__all__ = ["Export", "export_data", "export_topology"]

# x-argument -> typed queue field (the inverse of bus.topology.model.QUEUE_ARGUMENTS).
_TYPED_FIELD: dict[str, str] = {arg: name for name, (arg, _) in QUEUE_ARGUMENTS.items() if arg}
_TYPED_FIELD["x-quorum-initial-group-size"] = "initial_cluster_size"
_TYPED_FIELD["x-initial-cluster-size"] = "initial_cluster_size"


@dataclass
class Export:
    vhost: str
    text: str
    issues: list[str] = field(default_factory=list)


def _binding(b: LiveBinding, target: str) -> dict[str, Any]:
    entry: dict[str, Any] = {target: b.source}
    if b.routing_key:
        entry["routing_key"] = b.routing_key
    if b.arguments:
        entry["arguments"] = dict(sorted(b.arguments.items()))
    return entry


def _vhost(info: LiveVhost) -> dict[str, Any]:
    # The name makes a re-apply target the exported vhost (it wins over the URL's vhost);
    # classic is what an unset default means, so it is left out like every other default.
    entry: dict[str, Any] = {"name": info.name}
    if info.description:
        entry["description"] = info.description
    if info.default_queue_type != "classic":
        entry["default_queue_type"] = info.default_queue_type
    return entry


def export_data(live: LiveState) -> dict[str, Any]:
    """Topology data (YAML-ready) of a live vhost read through the management API."""
    data: dict[str, Any] = {"version": 1}
    if live.vhost_info is not None:
        data["vhost"] = _vhost(live.vhost_info)
    exchanges: dict[str, Any] = {}
    for name, x in sorted(live.exchanges.items()):
        entry: dict[str, Any] = {"type": x.type}
        if not x.durable:
            entry["durable"] = False
        if x.auto_delete:
            entry["auto_delete"] = True
        if x.internal:
            entry["internal"] = True
        arguments = dict(x.arguments)
        if "alternate-exchange" in arguments:
            entry["alternate_exchange"] = arguments.pop("alternate-exchange")
        if arguments:
            entry["arguments"] = dict(sorted(arguments.items()))
        exchanges[name] = entry
    queue_bindings: dict[str, list[dict[str, Any]]] = {}
    exchange_bindings: list[dict[str, Any]] = []
    for b in sorted(live.bindings, key=lambda b: (b.destination, b.source, b.routing_key)):
        if b.destination_type == "queue":
            if b.destination in live.queues:
                queue_bindings.setdefault(b.destination, []).append(_binding(b, "exchange"))
        else:
            entry = {"source": b.source, "destination": b.destination}
            entry.update({k: v for k, v in _binding(b, "source").items() if k != "source"})
            exchange_bindings.append(entry)
    queues: dict[str, Any] = {}
    for name, q in sorted(live.queues.items()):
        entry = {"type": q.type}
        if not q.durable:
            entry["durable"] = False
        if q.auto_delete:
            entry["auto_delete"] = True
        rest: dict[str, Any] = {}
        for arg, value in sorted(q.arguments.items()):
            if arg == "x-queue-type":
                continue
            typed = _TYPED_FIELD.get(arg)
            if typed is not None:
                entry[typed] = value
            else:
                rest[arg] = value
        if rest:
            entry["arguments"] = rest
        if name in queue_bindings:
            entry["bindings"] = queue_bindings[name]
        queues[name] = entry
    if exchanges:
        data["exchanges"] = exchanges
    if queues:
        data["queues"] = queues
    if exchange_bindings:
        data["exchange_bindings"] = exchange_bindings
    if live.policies:
        data["policies"] = {
            name: {
                "pattern": p.pattern,
                "apply_to": p.apply_to,
                "priority": p.priority,
                "definition": dict(sorted(p.definition.items())),
            }
            for name, p in sorted(live.policies.items())
        }
    return data


def export_topology(settings: BusSettings | None = None, vhost: str | None = None) -> Export:
    """The topology.yaml text of ``vhost`` (default: the AMQP URL's vhost)."""
    settings = settings or BusSettings()
    name = vhost or settings.vhost
    with ManagementClient.from_settings(settings) as management:
        live = read_live_state(management, name)
    if not live.vhost_exists:
        raise NotFoundError(f"vhost {name!r} does not exist")
    header = (
        f"# Exported by bus export from vhost {name!r} of {mask_url(settings.amqp_url)}.\n"
        "# Concrete objects only: review, then keep this file as the vhost's source of truth.\n"
    )
    body = yaml.safe_dump(export_data(live), sort_keys=False, allow_unicode=True, width=100)
    text = header + body
    issues: list[str] = []
    try:
        parse_topology(text, "exported.yaml")
    except TopologyError as exc:
        issues = [str(issue) for issue in exc.issues]
    return Export(name, text, issues)
