"""In-memory routing simulator: which queues does (exchange, routing key, headers) reach?

Pure and without I/O. The semantics are RabbitMQ 3.10.8's and 4.0.5's, checked against both
brokers by ``tests/integration/test_routing_differential.py``; ``Router(..., rabbitmq="4.0")``
picks the version (default 3.10.8, see :mod:`bus.versions` and docs/rabbitmq-versions.md):

- default exchange ``""``: the queue named by the key; direct: byte-exact key; fanout: all.
- topic: words split on ``.`` (``""`` is zero words, ``a..b`` has an empty middle word), ``*``
  exactly one word, ``#`` zero or more, case-sensitive.
- headers: ``x-match`` all (default) / any / all-with-x / any-with-x. all/any ignore binding
  arguments starting with ``x-``; the with-x kinds only skip ``x-match`` itself. A binding
  argument with no value (``None``, AMQP void) matches on presence. Values compare as the
  broker compares Erlang terms (:func:`header_term`): ``5`` != ``"5"``, ``1`` != ``True``,
  int widths are equal at the top level, ``str`` == ``bytes`` with the same UTF-8, a
  ``datetime`` equals its epoch seconds; inside arrays and tables the AMQP type tag counts
  too (typed as pika encodes it) and table order matters. From RabbitMQ 4.0 a message's
  top-level ``timestamp`` header is compared in *milliseconds* (:func:`message_header_term`),
  while a binding's timestamp stays in seconds: header ``n = timestamp 5`` matches a binding
  ``{n: 5000}``, not ``{n: 5}``, and not even ``{n: timestamp 5}`` (measured on 4.0.5).
- ``CC``/``BCC`` headers (arrays of strings) add routing keys; ``BCC`` is removed before the
  headers exchange sees the message. A ``CC``/``BCC`` header of another type is refused.
- exchange-to-exchange bindings route with the source's rules; every exchange is visited
  once (cycles end), every queue is reached once.
- an exchange whose own bindings match nothing (queue or exchange destinations alike)
  forwards to its alternate exchange; an e2e binding that leads nowhere still counts as a
  match, so the alternate exchange is *not* used then (observed on 3.10.8).
- publishing straight to an internal exchange is refused; reaching one through a binding,
  an alternate exchange or a dead-letter exchange is fine.
- dead-lettering (``on="reject"|"expire"``): each reached queue with
  ``x-dead-letter-exchange`` republishes there with ``x-dead-letter-routing-key`` or the
  original keys (CC included); ``expire`` never lands back in the queue it expired from
  (the broker's cycle detection drops it), ``reject`` may. One hop from a fresh message.
  From 4.0 the copy also carries ``x-last-death-reason/queue/exchange``, and the broker's
  ``x-death`` is not seen by the exchanges that route the copy (it is on the delivered copy).
"""

from __future__ import annotations

import calendar
import json
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal, NamedTuple

from pika.compat import long as pika_long

from bus.errors import RoutingError
from bus.topology.checks import BUILTIN_EXCHANGES
from bus.topology.expand import BindingSpec, ExchangeSpec, ExpandedTopology
from bus.versions import RabbitVersion, RuleSet, as_version

__all__ = [
    "HEADER_TYPES",
    "DeadLetterReason",
    "Hop",
    "Route",
    "Router",
    "header_term",
    "headers_binding_matches_everything",
    "headers_binding_matches_something",
    "message_header_term",
    "parse_header_option",
    "topic_matches",
]

DeadLetterReason = Literal["reject", "expire"]
HopKind = Literal["publish", "binding", "alternate", "default", "dead-letter", "unrouted"]

# Built-in exchanges every vhost has; amq.rabbitmq.trace is internal (firehose tracer).
_BUILTINS: dict[str, tuple[str, bool]] = {
    **{name: (kind, False) for name, kind in BUILTIN_EXCHANGES.items()},
    "amq.rabbitmq.trace": ("topic", True),
}
_ROUTING_HEADERS = ("CC", "BCC")
_X_MATCH = {"all", "any", "all-with-x", "any-with-x"}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_CACHE_SIZE = 65_536


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


@dataclass(frozen=True)
class Route:
    """Where one publish goes. ``dead_letters`` maps a reached queue to the route its
    dead-lettered copy takes (only with ``on=``; queues without a DLX are absent)."""

    exchange: str
    routing_keys: tuple[str, ...]
    queues: frozenset[str]
    # Raw record of the routing; ``trace`` turns it into hops only when asked, so routing
    # does not pay for a trace nobody reads.
    steps: tuple[_Step, ...] = field(repr=False)
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


# A hop, or (exchange, the destinations its bindings matched) expanded into hops lazily.
_Step = Hop | tuple[str, Sequence["_Dest"]]


# --- header values as the broker compares them ----------------------------------------------


def _amqp_tag(value: object) -> str:
    """The AMQP field type pika encodes ``value`` as (it matters inside arrays/tables)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, pika_long):
        return "long"
    if isinstance(value, int):
        return "signedint" if _INT32_MIN <= value <= _INT32_MAX else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, bytes | bytearray):
        return "binary"
    if value is None:
        return "void"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    raise RoutingError(f"header value {value!r} of type {type(value).__name__} has no AMQP type")


def header_term(value: object) -> Hashable:
    """A key equal for two values exactly when the broker's ``==`` on the decoded Erlang
    terms is true (the headers exchange compares values, not their AMQP types)."""
    if isinstance(value, bool):
        return ("atom", value)
    if isinstance(value, int | float):
        # Erlang's == is numeric across int and float; Python's is too, hashes included.
        return ("num", value)
    if isinstance(value, str):
        return ("bin", value.encode("utf-8"))
    if isinstance(value, bytes | bytearray):
        return ("bin", bytes(value))
    if value is None:
        return ("atom", "undefined")
    if isinstance(value, Decimal):
        return ("dec", *_decimal_wire(value))
    if isinstance(value, datetime):
        return ("num", calendar.timegm(value.utctimetuple()))
    if isinstance(value, Mapping):
        return ("list", tuple((str(k), _amqp_tag(v), header_term(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("list", tuple((_amqp_tag(v), header_term(v)) for v in value))
    raise RoutingError(f"header value {value!r} of type {type(value).__name__} has no AMQP type")


def message_header_term(value: object, rules: RuleSet = "3.10") -> Hashable:
    """The term a *message* header is compared as. Like :func:`header_term`, except that
    RabbitMQ 4.0 reads a top-level AMQP timestamp header as milliseconds (its message
    container converts it; values inside arrays and tables keep seconds), measured on 4.0.5."""
    if rules == "4.0" and isinstance(value, datetime):
        return ("num", calendar.timegm(value.utctimetuple()) * 1000)
    return header_term(value)


def _decimal_wire(value: Decimal) -> tuple[int, int]:
    """(scale, unscaled) as pika puts a Decimal on the wire (normalised first)."""
    value = value.normalize()
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < 0:
        return (-exponent, int(value * (Decimal(10) ** -exponent)))
    return (0, int(value))


class _HeadersBinding(NamedTuple):
    any: bool
    # (name, presence-only, term); presence-only is a void binding value.
    items: tuple[tuple[str, bool, Hashable], ...]
    dest: _Dest


def _compile_headers(arguments: Mapping[str, Any]) -> tuple[bool, list[tuple[str, bool, Hashable]]]:
    x_match = arguments.get("x-match", "all")
    kind = x_match if x_match in _X_MATCH else "all"
    with_x = kind.endswith("-with-x")
    items = [
        (name, value is None, header_term(value))
        for name, value in sorted(arguments.items())
        if name != "x-match" and (with_x or not name.startswith("x-"))
    ]
    return kind.startswith("any"), items


def headers_binding_matches_something(arguments: Mapping[str, Any]) -> bool:
    """False for headers bindings no message can match (``any`` with nothing to compare)."""
    is_any, items = _compile_headers(arguments)
    return not (is_any and not items)


def headers_binding_matches_everything(arguments: Mapping[str, Any]) -> bool:
    """True for headers bindings every message matches (all, nothing to compare)."""
    is_any, items = _compile_headers(arguments)
    return not is_any and not items


def _headers_match(binding: _HeadersBinding, headers: Mapping[str, Hashable]) -> bool:
    if binding.any:
        for name, presence, term in binding.items:
            if name in headers and (presence or headers[name] == term):
                return True
        return False
    for name, presence, term in binding.items:
        if name not in headers or not (presence or headers[name] == term):
            return False
    return True


class _HeadersIndex:
    """Candidate bindings found through the message's own (name, value) pairs, so a
    message is only checked against bindings that share at least one header with it."""

    def __init__(self) -> None:
        self.always: list[_Dest] = []
        self.by_pair: dict[tuple[str, Hashable], list[_HeadersBinding]] = {}
        self.by_name: dict[str, list[_HeadersBinding]] = {}
        self.count = 0

    def add(self, arguments: Mapping[str, Any], dest: _Dest) -> None:
        is_any, items = _compile_headers(arguments)
        binding = _HeadersBinding(is_any, tuple(items), dest)
        self.count += 1
        if not items:
            if not is_any:  # all with nothing to compare matches every message
                self.always.append(dest)
            return
        # An all-binding needs every item, so one index entry finds it; an any-binding
        # needs one item, so each of its items must find it.
        for name, presence, term in items if is_any else items[:1]:
            if presence:
                self.by_name.setdefault(name, []).append(binding)
            else:
                self.by_pair.setdefault((name, term), []).append(binding)

    def match(self, headers: Mapping[str, Hashable]) -> list[_Dest]:
        found = list(self.always)
        seen: set[int] = set()
        for name, term in headers.items():
            for candidates in (self.by_pair.get((name, term)), self.by_name.get(name)):
                if not candidates:
                    continue
                for binding in candidates:
                    if id(binding) not in seen:
                        seen.add(id(binding))
                        if _headers_match(binding, headers):
                            found.append(binding.dest)
        return found


# --- topic trie ------------------------------------------------------------------------------


class _TopicNode:
    __slots__ = ("children", "dests", "hash", "is_hash", "star", "states", "transitions")

    def __init__(self, is_hash: bool = False) -> None:
        self.children: dict[str, _TopicNode] = {}
        self.star: _TopicNode | None = None
        self.hash: _TopicNode | None = None
        self.is_hash = is_hash  # reached through a '#': may take any further word
        self.dests: list[_Dest] = []
        # On the root only: the sets of live nodes met so far (see _State), built lazily.
        self.states: dict[tuple[_TopicNode, ...], _State] | None = None
        self.transitions = 0

    def insert(self, pattern: str, dest: _Dest) -> None:
        self.states = None  # the trie changes: every cached state is stale
        node = self
        for word in _words(pattern):
            if word == "#":
                node.hash = node.hash or _TopicNode(is_hash=True)
                node = node.hash
            elif word == "*":
                node.star = node.star or _TopicNode()
                node = node.star
            else:
                node = node.children.setdefault(word, _TopicNode())
        node.dests.append(dest)

    def match(self, key: str, out: list[_Dest]) -> None:
        # Advance the set of live trie nodes word by word (an NFA), so a node is visited
        # at most once per word however many '#' lead to it: linear in the key length.
        # Each set met is kept as a _State with its transitions (a DFA built lazily), so
        # a key costs one dict lookup per word once its words have been seen in that
        # position, even when the key itself is new (ids in keys). Ordered like the NFA:
        # results (and traces) are deterministic.
        state = self.final_state(key)
        if state is not None:
            out.extend(state.dests)

    def final_state(self, key: str) -> _State | None:
        """The set of nodes ``key`` ends in (None once no node is left): see :meth:`match`."""
        if (
            self.states is None
            or len(self.states) > _MAX_STATES
            or self.transitions > _MAX_TRANSITIONS
        ):
            self.states, self.transitions = {}, 0
        state = self._state((self,))
        for word in _words(key):
            state = state.step(word, self)
            if not state.nodes:
                return None
        return state

    def _state(self, nodes: Iterable[_TopicNode]) -> _State:
        closure: dict[_TopicNode, None] = {}
        for node in nodes:
            _enter(closure, node)
        key = tuple(closure)
        assert self.states is not None
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = _State(key)
        return state


class _State:
    """One set of live trie nodes and the transitions found from it so far."""

    __slots__ = ("_matched", "dests", "literals", "next", "nodes", "other")

    def __init__(self, nodes: tuple[_TopicNode, ...]) -> None:
        self.nodes = nodes
        self.dests = [dest for node in nodes for dest in node.dests]
        self._matched: _Matched | None = None
        # Words some node takes literally; any other word moves only through '*' and '#'.
        self.literals = frozenset(word for node in nodes for word in node.children)
        self.next: dict[str, _State] = {}
        self.other: _State | None = None

    @property
    def matched(self) -> _Matched:
        """The bindings ending here, split for the routing loop (computed once)."""
        if self._matched is None:
            self._matched = _matched(self.dests) if self.dests else _NO_MATCH
        return self._matched

    def step(self, word: str, root: _TopicNode) -> _State:
        found = self.next.get(word)
        if found is not None:
            return found
        literal = word in self.literals
        if not literal and self.other is not None:
            return self.other
        advanced: list[_TopicNode] = []
        for node in self.nodes:
            if node.is_hash:
                advanced.append(node)
            if literal:
                child = node.children.get(word)
                if child is not None:
                    advanced.append(child)
            if node.star is not None:
                advanced.append(node.star)
        found = root._state(advanced)
        if literal:
            self.next[word] = found
            root.transitions += 1
        else:
            self.other = found
        return found


# Bounds of the lazily built states (a few MiB at most; 1,000 topic bindings of the bench
# use about 2,100 states and 1,800 transitions): past them everything is dropped and built
# again, so a stream of unique words costs NFA steps, never unbounded memory.
_MAX_STATES = 8192
_MAX_TRANSITIONS = 65536


def _enter(states: dict[_TopicNode, None], node: _TopicNode | None) -> None:
    # A '#' may also take no word at all: entering a node enters its '#' chain too.
    while node is not None and node not in states:
        states[node] = None
        node = node.hash


def _words(key: str) -> list[str]:
    # The broker splits "" into zero words, but "a." into ["a", ""].
    return key.split(".") if key else []


def topic_matches(pattern: str, key: str) -> bool:
    """Does topic binding ``pattern`` match routing ``key`` (one-off, uncompiled)?"""
    root = _TopicNode()
    marker = _Dest("", False, "")
    root.insert(pattern, marker)
    out: list[_Dest] = []
    root.match(key, out)
    return bool(out)


# --- compiled exchanges ----------------------------------------------------------------------


class _Dest(NamedTuple):
    name: str
    is_exchange: bool
    label: str


def _label(binding: BindingSpec, exchange_type: str) -> str:
    if exchange_type == "headers":
        return "headers " + json.dumps(binding.arguments, sort_keys=True, default=str)
    if exchange_type == "fanout":
        return "fanout"
    return f"key {binding.routing_key!r}"


class _Matched(NamedTuple):
    """The bindings a message matched on one exchange, split for the routing loop."""

    dests: Sequence[_Dest]
    queues: frozenset[str]
    exchanges: tuple[str, ...]


def _matched(dests: Sequence[_Dest]) -> _Matched:
    return _Matched(
        dests,
        frozenset(d.name for d in dests if not d.is_exchange),
        tuple(dict.fromkeys(d.name for d in dests if d.is_exchange)),
    )


_NO_MATCH = _matched(())


@dataclass
class _Exchange:
    name: str
    type: str
    internal: bool
    alternate: str | None
    direct: dict[str, list[_Dest]] = field(default_factory=dict)
    fanout: list[_Dest] = field(default_factory=list)
    topic: _TopicNode = field(default_factory=_TopicNode)
    headers: _HeadersIndex = field(default_factory=_HeadersIndex)
    # Routing keys repeat (a service publishes a handful of event types), and bindings
    # never change after compiling, so results are memoised per key. Bounded: cleared
    # when full, so a stream of unique keys costs one trie walk each, no more.
    cache: dict[str, _Matched] = field(default_factory=dict)

    def add(self, binding: BindingSpec) -> None:
        dest = _Dest(
            binding.destination, binding.destination_type == "exchange", _label(binding, self.type)
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

    def _by_key(self, key: str) -> _Matched:
        found = self.cache.get(key)
        if found is None:
            if self.type == "topic":
                state = self.topic.final_state(key)
                found = _NO_MATCH if state is None else state.matched
            else:
                dests = self.direct.get(key, []) if self.type == "direct" else self.fanout
                found = _matched(dests) if dests else _NO_MATCH
            if len(self.cache) >= _CACHE_SIZE:
                self.cache.clear()
            self.cache[key] = found
        return found

    def match(self, keys: tuple[str, ...], headers: Mapping[str, Hashable] | None) -> _Matched:
        if self.type == "headers":
            found = self.headers.match(headers or {})
            return _matched(found) if found else _NO_MATCH
        if self.type == "fanout":
            return self._by_key("")
        if len(keys) == 1:
            return self._by_key(keys[0])
        unique = dict.fromkeys(keys) if self.type == "direct" else keys
        return _matched([d for key in unique for d in self._by_key(key).dests])


def _split_headers(
    routing_key: str, headers: Mapping[str, Any] | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Routing keys (the key, then CC, then BCC) and the headers the exchanges see."""
    if not headers:
        return (routing_key,), {}
    keys = [routing_key]
    for name in _ROUTING_HEADERS:
        if name not in headers:
            continue
        value = headers[name]
        if not isinstance(value, list | tuple):
            raise RoutingError(
                f"header {name!r} must be an array of routing keys: the broker refuses "
                f"the message (unacceptable_type_in_header, {_amqp_tag(value)})"
            )
        # Only longstr entries route; the broker skips other types silently.
        keys.extend(v for v in value if isinstance(v, str))
    visible = {k: v for k, v in headers.items() if k != "BCC"}
    return tuple(keys), visible


class Router:
    """Routes publishes over an expanded topology; build once, route many times.

    ``Router(expanded).route("events", "order.created")`` -> :class:`Route`. ``rabbitmq``
    is the broker's version (``"4.0"``, ``"4.0.5"``, a :class:`~bus.versions.RabbitVersion`;
    default 3.10.8): its matching rules apply.
    """

    def __init__(
        self, topology: ExpandedTopology, *, rabbitmq: RabbitVersion | str | None = None
    ) -> None:
        self.topology = topology
        self.version = as_version(rabbitmq)
        self.rules: RuleSet = self.version.rules
        self.queues = frozenset(topology.queues)
        self._exchanges: dict[str, _Exchange] = {
            name: _Exchange(name, kind, internal, None)
            for name, (kind, internal) in _BUILTINS.items()
        }
        for spec in topology.exchanges.values():
            self._exchanges[spec.name] = self._compile(spec)
        for binding in topology.bindings:
            source = self._exchanges.get(binding.source)
            if source is None:
                raise RoutingError(f"binding from unknown exchange {binding.source!r}")
            source.add(binding)

    @staticmethod
    def _compile(spec: ExchangeSpec) -> _Exchange:
        return _Exchange(spec.name, spec.type, spec.internal, spec.alternate_exchange)

    @property
    def exchanges(self) -> frozenset[str]:
        """Every exchange name the router knows, built-in ``amq.*`` ones included."""
        return frozenset(self._exchanges)

    def exchange_type(self, name: str) -> str:
        if name == "":
            return "direct"
        return self._get(name).type

    def is_internal(self, name: str) -> bool:
        return name != "" and self._get(name).internal

    def alternate_exchange(self, name: str) -> str | None:
        return None if name == "" else self._get(name).alternate

    def _get(self, name: str) -> _Exchange:
        try:
            return self._exchanges[name]
        except KeyError:
            raise RoutingError(f"unknown exchange {name!r}") from None

    def route(
        self,
        exchange: str,
        routing_key: str = "",
        headers: Mapping[str, Any] | None = None,
        *,
        on: DeadLetterReason | None = None,
    ) -> Route:
        """The queues a publish reaches, with its trace; ``on`` adds where the copy in each
        reached queue goes when rejected (without requeue) or expired."""
        keys, visible = _split_headers(routing_key, headers)
        if exchange != "" and self._get(exchange).internal:
            raise RoutingError(
                f"exchange {exchange!r} is internal: the broker refuses direct publishes "
                "(403 ACCESS_REFUSED)"
            )
        route = self._route(exchange, keys, visible)
        if on is None:
            return route
        dead = {q: self._dead_letter(route, q, visible, on) for q in sorted(route.queues)}
        return Route(
            route.exchange,
            route.routing_keys,
            route.queues,
            route.steps,
            {q: r for q, r in dead.items() if r is not None},
            route.headers,
        )

    def _route(
        self,
        exchange: str,
        keys: tuple[str, ...],
        headers: Mapping[str, Any],
        unseen: tuple[str, ...] = (),
    ) -> Route:
        """``unseen``: headers the copy carries that the exchanges do not see."""
        steps: list[_Step] = []
        named: set[str] = set()
        if exchange == "":
            for key in dict.fromkeys(keys):
                if key in self.queues:
                    named.add(key)
                    steps.append(Hop("default", "", key, "queue", "queue named by the key"))
            if not named:
                steps.append(Hop("unrouted", "", "", "", "no queue has that name"))
            return Route(exchange, keys, frozenset(named), tuple(steps), {}, headers)
        first = self._exchanges.get(exchange)
        if first is None:
            steps.append(Hop("unrouted", exchange, "", "", "exchange does not exist: dropped"))
            return Route(exchange, keys, frozenset(), tuple(steps), {}, headers)
        terms: dict[str, Hashable] | None = None
        work: deque[_Exchange] = deque([first])
        seen = {exchange}
        reached: list[frozenset[str]] = []
        while work:
            x = work.popleft()
            if x.type == "headers" and terms is None:
                terms = {
                    name: message_header_term(value, self.rules)
                    for name, value in headers.items()
                    if name not in unseen
                }
            matched = x.match(keys, terms)
            if not matched.dests:
                if x.alternate is None:
                    steps.append(Hop("unrouted", x.name, "", "", "no binding matches"))
                    continue
                steps.append(Hop("alternate", x.name, x.alternate, "exchange"))
                ae = self._exchanges.get(x.alternate)
                if ae is None:
                    steps.append(Hop("unrouted", x.alternate, "", "", "does not exist: dropped"))
                elif x.alternate not in seen:
                    seen.add(x.alternate)
                    work.append(ae)
                continue
            steps.append((x.name, matched.dests))
            reached.append(matched.queues)
            for name in matched.exchanges:
                if name not in seen:
                    seen.add(name)
                    work.append(self._exchanges[name])
        queues = reached[0] if len(reached) == 1 else frozenset().union(*reached)
        return Route(exchange, keys, queues, tuple(steps), {}, headers)

    def dead_letter(
        self,
        queue: str,
        exchange: str,
        routing_key: str,
        headers: Mapping[str, Any] | None,
        on: DeadLetterReason,
    ) -> Route | None:
        """Where a message in ``queue`` (published to ``exchange`` with ``routing_key`` and
        ``headers``) goes when rejected or expired; None when ``queue`` has no DLX."""
        if queue not in self.queues:
            raise RoutingError(f"unknown queue {queue!r}")
        keys, visible = _split_headers(routing_key, headers)
        origin = Route(exchange, keys, frozenset({queue}), ())
        return self._dead_letter(origin, queue, visible, on)

    def _dead_letter(
        self, route: Route, queue: str, headers: Mapping[str, Any], on: DeadLetterReason
    ) -> Route | None:
        args = self.topology.queues[queue].arguments
        if "x-dead-letter-exchange" not in args:
            return None
        dlx = str(args["x-dead-letter-exchange"])
        dl_key = args.get("x-dead-letter-routing-key")
        dl_headers = dict(headers)
        if isinstance(dl_key, str):
            keys: tuple[str, ...] = (dl_key,)
            dl_headers.pop("CC", None)
        else:
            keys = route.routing_keys
        reason = "rejected" if on == "reject" else "expired"
        dl_headers.setdefault("x-first-death-reason", reason)
        dl_headers.setdefault("x-first-death-queue", queue)
        dl_headers.setdefault("x-first-death-exchange", route.exchange)
        if self.rules == "4.0":
            # 4.0 also names the latest death (measured on 4.0.5; 3.10.8 has no such headers).
            dl_headers["x-last-death-reason"] = reason
            dl_headers["x-last-death-queue"] = queue
            dl_headers["x-last-death-exchange"] = route.exchange
        dl_headers["x-death"] = [
            {
                "count": 1,
                "reason": reason,
                "queue": queue,
                "exchange": route.exchange,
                "routing-keys": list(route.routing_keys),
            }
        ]
        shown = ", ".join(repr(k) for k in keys)
        hop = Hop("dead-letter", queue, dlx, "exchange", f"({reason}, key {shown})")
        # 4.0 keeps the broker's own x-death beside the headers while it routes the copy (a
        # headers binding on x-death does not see it; measured on 4.0.5), 3.10 does not.
        unseen = ("x-death",) if self.rules == "4.0" else ()
        inner = self._route(dlx, keys, dl_headers, unseen)
        queues = inner.queues
        steps = list(inner.steps)
        if on == "expire" and queue in queues:
            queues = queues - {queue}
            steps.append(
                Hop("unrouted", dlx, queue, "queue", f"cycle back to {queue}: the broker drops it")
            )
        return Route(dlx, keys, queues, tuple(steps), {}, inner.headers, hop)

    def queues_for(
        self, exchange: str, routing_key: str = "", headers: Mapping[str, Any] | None = None
    ) -> frozenset[str]:
        """Shorthand for ``route(...).queues``."""
        return self.route(exchange, routing_key, headers).queues

    def bindings_from(self, exchange: str) -> Iterable[BindingSpec]:
        return (b for b in self.topology.bindings if b.source == exchange)


# --- header values from the command line -----------------------------------------------------

HEADER_TYPES = ("str", "int", "bool", "null", "json", "timestamp")


def parse_header_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` (a string) or ``NAME:TYPE=VALUE`` with TYPE one of str, int, bool,
    null (AMQP void; the value is ignored), json (arrays, tables, numbers, ...) or timestamp
    (AMQP timestamp: epoch seconds or an ISO 8601 time, UTC unless it names a zone).

    The broker compares header values with their type (``5`` does not match ``"5"``), so
    the type is explicit; a name without a known ``:TYPE`` suffix is taken whole.
    """
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise RoutingError(f"header {text!r}: expected NAME=VALUE or NAME:TYPE=VALUE")
    base, colon, kind = name.rpartition(":")
    if not colon or kind not in HEADER_TYPES or not base:
        return name, raw
    if kind == "str":
        return base, raw
    if kind == "int":
        try:
            return base, int(raw)
        except ValueError:
            raise RoutingError(f"header {base!r}: {raw!r} is not an integer") from None
    if kind == "bool":
        lowered = raw.lower()
        if lowered not in ("true", "false"):
            raise RoutingError(f"header {base!r}: {raw!r} is not true or false")
        return base, lowered == "true"
    if kind == "null":
        return base, None
    if kind == "timestamp":
        return base, _timestamp(base, raw)
    try:
        return base, json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RoutingError(f"header {base!r}: invalid JSON ({exc.msg})") from None


def _timestamp(name: str, raw: str) -> datetime:
    try:
        if raw.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(raw), UTC)
        value = datetime.fromisoformat(raw)
    except (ValueError, OverflowError, OSError):
        raise RoutingError(
            f"header {name!r}: {raw!r} is not epoch seconds or an ISO 8601 time"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
