"""One exchange compiled for routing: its bindings indexed by type, its results memoised."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from bus.errors import RoutingError
from bus.routing.destinations import NO_MATCH, Destination, Matched, binding_label, matched
from bus.routing.headers_match import HeadersIndex
from bus.routing.topic import TopicNode
from bus.topology.checks import BUILTIN_EXCHANGES
from bus.topology.expand import BindingSpec, ExpandedTopology

__all__ = ["CompiledExchange", "compile_exchanges"]

# Built-in exchanges every vhost has; amq.rabbitmq.trace is internal (firehose tracer).
_BUILTINS: dict[str, tuple[str, bool]] = {
    **{name: (kind, False) for name, kind in BUILTIN_EXCHANGES.items()},
    "amq.rabbitmq.trace": ("topic", True),
}
_CACHE_SIZE = 65_536


@dataclass
class CompiledExchange:
    name: str
    type: str
    internal: bool
    alternate: str | None
    direct: dict[str, list[Destination]] = field(default_factory=dict)
    fanout: list[Destination] = field(default_factory=list)
    topic: TopicNode = field(default_factory=TopicNode)
    headers: HeadersIndex = field(default_factory=HeadersIndex)
    # Routing keys repeat (a service publishes a handful of event types), and bindings
    # never change after compiling, so results are memoised per key. Bounded: cleared
    # when full, so a stream of unique keys costs one trie walk each, no more.
    cache: dict[str, Matched] = field(default_factory=dict)

    def add(self, binding: BindingSpec) -> None:
        dest = Destination(
            binding.destination,
            binding.destination_type == "exchange",
            binding_label(binding, self.type),
        )
        self.cache.clear()
        if self.type == "direct":
            self.direct.setdefault(binding.routing_key, []).append(dest)
        elif self.type == "topic":
            self.topic.insert(binding.routing_key, dest)
        elif self.type == "fanout":
            self.fanout.append(dest)
        elif self.type == "headers":
            self.headers.add(binding.arguments, dest)
        else:
            raise RoutingError(f"exchange {self.name!r}: type {self.type!r} is not simulated")

    def _by_key(self, key: str) -> Matched:
        found = self.cache.get(key)
        if found is None:
            if self.type == "topic":
                state = self.topic.final_state(key)
                found = NO_MATCH if state is None else state.matched
            else:
                dests = self.direct.get(key, []) if self.type == "direct" else self.fanout
                found = matched(dests) if dests else NO_MATCH
            if len(self.cache) >= _CACHE_SIZE:
                self.cache.clear()
            self.cache[key] = found
        return found

    def match(self, keys: tuple[str, ...], headers: Mapping[str, Hashable] | None) -> Matched:
        if self.type == "headers":
            found = self.headers.match(headers or {})
            return matched(found) if found else NO_MATCH
        if self.type == "fanout":
            return self._by_key("")
        if len(keys) == 1:
            return self._by_key(keys[0])
        unique = dict.fromkeys(keys) if self.type == "direct" else keys
        return matched([d for key in unique for d in self._by_key(key).dests])


def compile_exchanges(topology: ExpandedTopology) -> dict[str, CompiledExchange]:
    """Every exchange of ``topology`` plus the built-in ones, with its bindings added."""
    exchanges = {
        name: CompiledExchange(name, kind, internal, None)
        for name, (kind, internal) in _BUILTINS.items()
    }
    for spec in topology.exchanges.values():
        exchanges[spec.name] = CompiledExchange(
            spec.name, spec.type, spec.internal, spec.alternate_exchange
        )
    for binding in topology.bindings:
        source = exchanges.get(binding.source)
        if source is None:
            raise RoutingError(f"binding from unknown exchange {binding.source!r}")
        source.add(binding)
    return exchanges
