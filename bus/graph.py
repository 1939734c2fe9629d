"""Pictures of the expanded topology: Mermaid and Graphviz dot.

Edges: exchange -> queue and exchange -> exchange bindings (labelled with the key or the
header match), alternate exchanges (dashed, ``alternate``) and dead-letter exchanges
(dotted, ``dead-letter``; the default exchange appears as ``(default)`` for retry queues).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from bus.topology.expand import BindingSpec, ExpandedTopology

__all__ = ["Edge", "edges", "render", "to_dot", "to_mermaid"]

DEFAULT_EXCHANGE = "(default)"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: Literal["binding", "alternate", "dead-letter"]
    label: str


def _binding_label(binding: BindingSpec) -> str:
    if binding.arguments:
        return ", ".join(f"{k}={v}" for k, v in binding.arguments.items())
    return binding.routing_key


def edges(topology: ExpandedTopology) -> list[Edge]:
    out: list[Edge] = []
    for b in topology.bindings:
        out.append(
            Edge(
                f"x:{b.source}",
                _node(b.destination, b.destination_type),
                "binding",
                _binding_label(b),
            )
        )
    for x in topology.exchanges.values():
        if x.alternate_exchange:
            out.append(Edge(f"x:{x.name}", f"x:{x.alternate_exchange}", "alternate", "alternate"))
    for q in topology.queues.values():
        dlx = q.dead_letter_exchange
        if dlx is not None:
            target = f"x:{dlx}" if dlx else f"x:{DEFAULT_EXCHANGE}"
            key = q.arguments.get("x-dead-letter-routing-key")
            label = f"dead-letter ({key})" if key else "dead-letter"
            out.append(Edge(f"q:{q.name}", target, "dead-letter", label))
    return out


def _node(name: str, kind: str) -> str:
    return f"q:{name}" if kind == "queue" else f"x:{name}"


def _ids(topology: ExpandedTopology, all_edges: list[Edge]) -> dict[str, str]:
    names = [f"x:{n}" for n in topology.exchanges] + [f"q:{n}" for n in topology.queues]
    for edge in all_edges:
        for end in (edge.source, edge.target):
            if end not in names:
                names.append(end)
    ids: dict[str, str] = {}
    for index, name in enumerate(names):
        ids[name] = f"{name[0]}{index}_" + re.sub(r"\W", "_", name[2:])[:40]
    return ids


def to_mermaid(topology: ExpandedTopology) -> str:
    all_edges = edges(topology)
    ids = _ids(topology, all_edges)
    lines = ["flowchart LR"]
    for node, ident in ids.items():
        name = node[2:].replace('"', "#quot;")
        if node.startswith("x:"):
            spec = topology.exchanges.get(node[2:])
            kind = spec.type if spec else "default" if node[2:] == DEFAULT_EXCHANGE else "builtin"
            lines.append(f'    {ident}{{{{"{name}<br/>{kind}"}}}}')
        else:
            q = topology.queues.get(node[2:])
            lines.append(f'    {ident}[("{name}<br/>{q.type if q else "queue"}")]')
    arrows = {"binding": "-->", "alternate": "-.->", "dead-letter": "-.->"}
    for edge in all_edges:
        label = edge.label.replace('"', "#quot;").replace("|", "#124;")
        arrow = arrows[edge.kind]
        text = f'|"{label}"|' if label else ""
        lines.append(f"    {ids[edge.source]} {arrow}{text} {ids[edge.target]}")
    return "\n".join(lines) + "\n"


def to_dot(topology: ExpandedTopology) -> str:
    all_edges = edges(topology)
    ids = _ids(topology, all_edges)
    lines = ["digraph topology {", "    rankdir=LR;"]
    for node, ident in ids.items():
        name = node[2:]
        if node.startswith("x:"):
            spec = topology.exchanges.get(name)
            kind = spec.type if spec else "default" if name == DEFAULT_EXCHANGE else "builtin"
            label = json.dumps(f"{name}\n{kind}")
            lines.append(f"    {ident} [shape=hexagon, label={label}];")
        else:
            q = topology.queues.get(name)
            label = json.dumps(f"{name}\n{q.type if q else 'queue'}")
            lines.append(f"    {ident} [shape=cylinder, label={label}];")
    styles = {"binding": "solid", "alternate": "dashed", "dead-letter": "dotted"}
    for edge in all_edges:
        lines.append(
            f"    {ids[edge.source]} -> {ids[edge.target]} "
            f"[label={json.dumps(edge.label)}, style={styles[edge.kind]}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(topology: ExpandedTopology, fmt: str) -> str:
    return to_dot(topology) if fmt == "dot" else to_mermaid(topology)
