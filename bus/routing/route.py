"""Route results: where one publish went (:class:`Route`) and the hops that explain it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, NamedTuple

from bus.routing.destinations import Destination

__all__ = ["DeadLetterReason", "Hop", "HopKind", "Route", "Step"]

DeadLetterReason = Literal["reject", "expire"]
HopKind = Literal["publish", "binding", "alternate", "default", "dead-letter", "unrouted"]


class Hop(NamedTuple):
    """One step of a route. ``detail`` is the binding key/arguments or a note."""

    kind: HopKind
    source: str
    destination: str
    destination_type: Literal["exchange", "queue", ""]
    detail: str = ""

    def describe(self) -> str:
        src = _show_exchange(self.source)
        if self.kind == "publish":
            return f"publish to {_show_exchange(self.destination)} {self.detail}"
        if self.kind == "unrouted":
            return f"{src}: {self.detail}"
        target = f"{self.destination_type} {self.destination}".strip()
        if self.kind == "dead-letter":
            target = f"dead-letter {_show_exchange(self.destination)}"
            return f"queue {self.source} -> {target} {self.detail}".rstrip()
        arrow = {"binding": "->", "alternate": "-> alternate", "default": "->"}[self.kind]
        extra = f"  [{self.detail}]" if self.detail else ""
        return f"{src} {arrow} {target}{extra}"


def _publish_hop(exchange: str, keys: tuple[str, ...]) -> Hop:
    return Hop("publish", "", exchange, "exchange", "key " + ", ".join(map(repr, keys)))


def _show_exchange(name: str) -> str:
    return "(default exchange)" if name == "" else f"exchange {name}"


# A hop, or (exchange, the destinations its bindings matched) expanded into hops lazily.
Step = Hop | tuple[str, Sequence[Destination]]


@dataclass(frozen=True)
class Route:
    """Where one publish goes. ``dead_letters`` maps a reached queue to the route its
    dead-lettered copy takes (only with ``on=``; queues without a DLX are absent)."""

    exchange: str
    routing_keys: tuple[str, ...]
    queues: frozenset[str]
    # Raw record of the routing; ``trace`` turns it into hops only when asked, so routing
    # does not pay for a trace nobody reads.
    steps: tuple[Step, ...] = field(repr=False)
    dead_letters: Mapping[str, Route] = field(default_factory=dict)
    # The headers the exchanges saw (BCC removed; x-death and friends on a dead letter).
    headers: Mapping[str, Any] = field(default_factory=dict)
    # How the message entered: None for a publish, the dead-letter hop for a dead letter.
    entry: Hop | None = None

    @cached_property
    def trace(self) -> tuple[Hop, ...]:
        """Every hop in routing order; a binding to an exchange seen before is marked
        ``already visited`` (the broker visits each exchange once)."""
        seen = {self.exchange}
        hops: list[Hop] = [self.entry or _publish_hop(self.exchange, self.routing_keys)]
        for step in self.steps:
            if isinstance(step, Hop):
                hops.append(step)
                if step.kind == "alternate":
                    seen.add(step.destination)
                continue
            source, dests = step
            for dest in dests:
                if not dest.is_exchange:
                    hops.append(Hop("binding", source, dest.name, "queue", dest.label))
                elif dest.name in seen:
                    label = f"{dest.label}; already visited"
                    hops.append(Hop("binding", source, dest.name, "exchange", label))
                else:
                    seen.add(dest.name)
                    hops.append(Hop("binding", source, dest.name, "exchange", dest.label))
        return tuple(hops)

    @property
    def routing_key(self) -> str:
        return self.routing_keys[0]

    @property
    def routed(self) -> bool:
        return bool(self.queues)

    @property
    def dead_letter_queues(self) -> frozenset[str]:
        """Every queue a dead-lettered copy lands in."""
        return frozenset().union(*(r.queues for r in self.dead_letters.values()))

    def describe_trace(self) -> list[str]:
        lines = [hop.describe() for hop in self.trace]
        for queue, dead in sorted(self.dead_letters.items()):
            lines.append(f"dead-lettered from queue {queue}:")
            lines.extend(f"  {hop.describe()}" for hop in dead.trace)
        return lines
