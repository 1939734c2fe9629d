"""Differential test: the routing simulator against RabbitMQ on random topologies.

Hypothesis draws a topology (all four exchange types, the built-in ``amq.*`` exchanges,
exchange-to-exchange bindings with cycles, alternate exchanges and their chains, internal
exchanges, headers bindings with every ``x-match`` and typed values, dead-letter exchanges)
and a batch of uniquely tagged messages with random keys, headers and ``CC``/``BCC``. Each
example is declared in the test's vhost under its own name prefix, every message is
published with confirms, every queue is drained, and each first-hop copy is rejected so the
dead-letter path (``on="reject"``) is compared too. Any disagreement fails with the minimal
example hypothesis finds.

The simulator is given the version of the broker under test (the management API's
``rabbitmq_version``), so the test proves the rules of whichever version the session uses.

``BUS_ROUTING_CASES`` (default 2000) is the least number of messages compared per run.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from bus.broker.management import ManagementClient
from bus.errors import RoutingError
from bus.routing import Router
from bus.topology.expand import BindingSpec, ExchangeSpec, ExpandedTopology, QueueSpec
from bus.versions import RabbitVersion, broker_version

pytestmark = pytest.mark.integration

CASES = int(os.environ.get("BUS_ROUTING_CASES", "2000"))
MIN_MESSAGES, MAX_MESSAGES = 25, 40
BUILTIN_SOURCES = ["amq.direct", "amq.topic", "amq.fanout", "amq.headers", "amq.match"]
TYPES = ["direct", "topic", "fanout", "headers"]
WORDS = ["a", "b", ""]
PATTERN_WORDS = ["a", "b", "", "*", "#"]
HEADER_NAMES = ["a", "b", "x-a"]
# Values the broker tells apart or not: "1" vs 1, 1 vs True, b"v" (binary) vs "v" (longstr),
# a long, void, an array, and a timestamp with the integers it equals on 3.10 (1, seconds)
# and on 4.0 (1000, a message header's milliseconds).
_T1 = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
HEADER_VALUES: list[Any] = [
    "v", "1", "", 1, 2**40, True, False, None, b"v", [1, "v"], _T1, 1000, [_T1],
]  # fmt: skip


@dataclass
class Case:
    """One example; names are local (x0, q1), prefixed when declared."""

    exchanges: list[tuple[str, bool, int | None]]  # type, internal, alternate (index)
    queues: list[tuple[int | None, str | None]]  # dead-letter exchange (-1 = ""), DL key
    bindings: list[tuple[str, str, str, dict[str, Any]]]  # source, "q1"/"x2", key, args
    messages: list[tuple[str, str, dict[str, Any] | None]]  # exchange, key, headers


def _key(words: list[str]) -> str:
    return ".".join(words)


keys = st.lists(st.sampled_from(WORDS), max_size=3).map(_key)
patterns = st.lists(st.sampled_from(PATTERN_WORDS), max_size=3).map(_key)
header_tables = st.dictionaries(
    st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES), max_size=3
)
DEATH_HEADERS = ("x-death", "x-first-death-reason", "x-last-death-reason")
# Bindings on the death header of a dead-lettered copy (x- names count only with -with-x).
# 4.0 adds x-last-death-*, and routes the copy without its x-death (3.10 sees x-death).
death_tables = st.fixed_dictionaries(
    {"x-match": st.sampled_from(["all-with-x", "any-with-x"])},
    optional={
        "x-last-death-reason": st.sampled_from(["rejected", None]),
        "x-death": st.none(),
        "x-first-death-reason": st.sampled_from(["rejected", "expired"]),
    },
)


@st.composite
def near_key(draw: st.DrawFn, pattern: str) -> str:
    """A routing key made from a binding pattern: '*' one word, '#' zero to two words."""
    words: list[str] = []
    for word in pattern.split(".") if pattern else []:
        if word == "*":
            words.append(draw(st.sampled_from(WORDS)))
        elif word == "#":
            words.extend(draw(st.lists(st.sampled_from(WORDS), max_size=2)))
        else:
            words.append(word)
    return _key(words)


@st.composite
def near_headers(draw: st.DrawFn, arguments: dict[str, Any]) -> dict[str, Any]:
    """Some of a binding's arguments as headers, perhaps one value changed or one added."""
    # Death headers are for bindings that catch dead-lettered copies, never for publishes:
    # the harness tells a copy from a publish by x-death.
    items = [(k, v) for k, v in arguments.items() if k != "x-match" and k not in DEATH_HEADERS]
    headers = dict(items[i] for i in draw(st.sets(st.integers(0, len(items) - 1)))) if items else {}
    if draw(st.booleans()):
        headers[draw(st.sampled_from(HEADER_NAMES))] = draw(st.sampled_from(HEADER_VALUES))
    # A value the versions compare differently from the binding's (1 = timestamp 1 on 3.10,
    # 1000 = timestamp 1 on 4.0): random draws rarely pair them.
    twins = [k for k, v in headers.items() if v in (1, 1000) and not isinstance(v, bool)]
    if twins and draw(st.booleans()):
        headers[draw(st.sampled_from(twins))] = _T1
    return headers


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n_x = draw(st.integers(1, 5))
    n_q = draw(st.integers(1, 5))
    exchanges = [
        (
            draw(st.sampled_from(TYPES)),
            draw(st.integers(0, 4)) == 0,
            draw(st.none() | st.integers(0, n_x - 1)),
        )
        for _ in range(n_x)
    ]
    queue_names = [f"q{i}" for i in range(n_q)]
    queues = []
    for _ in range(n_q):
        dlx = draw(st.none() | st.integers(-1, n_x - 1))
        dl_key = None if dlx is None else draw(st.none() | keys | st.sampled_from(queue_names))
        queues.append((dlx, dl_key))
    own = st.sampled_from([f"x{i}" for i in range(n_x)])
    sources = st.one_of(own, own, own, st.sampled_from(BUILTIN_SOURCES))
    bindings = []
    for _ in range(draw(st.integers(1, 12))):
        source = draw(sources)
        dest = draw(st.sampled_from(queue_names + [f"x{i}" for i in range(n_x)]))
        kind = (
            exchanges[int(source[1:])][0]
            if source.startswith("x")
            else {"amq.match": "headers"}.get(source, source[4:])
        )
        key = draw(patterns if kind == "topic" else keys)
        args: dict[str, Any] = {}
        if kind == "headers" or draw(st.integers(0, 5)) == 0:
            args = draw(header_tables | death_tables)
            match = draw(st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"]))
            if match is not None and "x-match" not in args:
                args["x-match"] = match
        bindings.append((source, dest, key, args))
    targets = st.one_of(own, own, own, st.sampled_from(["", *BUILTIN_SOURCES]))
    messages = []
    for _ in range(draw(st.integers(MIN_MESSAGES, MAX_MESSAGES))):
        bound = [b[0] for b in bindings]
        exchange = draw(st.sampled_from(bound) if draw(st.booleans()) else targets)
        # Random keys and headers rarely meet a binding; half the messages start from
        # one of the exchange's bindings, so the edge cases ('#' matching nothing,
        # headers with one value changed) are actually reached.
        near = [b for b in bindings if b[0] == exchange]
        if exchange == "":
            key = draw(st.sampled_from(queue_names))
        elif near and draw(st.integers(0, 3)) > 0:
            key = draw(near_key(draw(st.sampled_from(near))[2]))
        else:
            key = draw(keys | patterns)
        if near and draw(st.booleans()):
            headers = draw(near_headers(draw(st.sampled_from(near))[3]))
        else:
            headers = draw(st.none() | header_tables)
        if draw(st.integers(0, 7)) == 0:
            headers = dict(headers or {})
            routes = st.lists(keys | st.sampled_from(queue_names), max_size=2)
            headers[draw(st.sampled_from(["CC", "BCC"]))] = draw(routes)
        messages.append((exchange, key, headers))
    return Case(exchanges, queues, bindings, messages)


@dataclass
class Declared:
    topology: ExpandedTopology
    names: dict[str, str]  # local -> broker name
    local: dict[str, str] = field(default_factory=dict)

    def name(self, local: str) -> str:
        return self.names.get(local, local)

    def key(self, key: str) -> str:
        """Keys that name local queues (default exchange, DL keys, CC) are renamed too."""
        return self.names[key] if key.startswith("q") and key in self.names else key


def build(case: Case, prefix: str) -> Declared:
    names = {f"x{i}": f"{prefix}x{i}" for i in range(len(case.exchanges))}
    names |= {f"q{i}": f"{prefix}q{i}" for i in range(len(case.queues))}
    d = Declared(ExpandedTopology(None, {}, {}, [], {}, {}, [], {}), names)
    for i, (kind, internal, ae) in enumerate(case.exchanges):
        args = {} if ae is None else {"alternate-exchange": names[f"x{ae}"]}
        d.topology.exchanges[names[f"x{i}"]] = ExchangeSpec(
            names[f"x{i}"], kind, durable=False, internal=internal, arguments=args
        )
    for i, (dlx, dl_key) in enumerate(case.queues):
        args = {}
        if dlx is not None:
            args["x-dead-letter-exchange"] = "" if dlx < 0 else names[f"x{dlx}"]
            if dl_key is not None:
                args["x-dead-letter-routing-key"] = d.key(dl_key)
        d.topology.queues[names[f"q{i}"]] = QueueSpec(
            names[f"q{i}"], "classic", durable=False, arguments=args
        )
    for source, dest, key, args in case.bindings:
        dest_type = "queue" if dest.startswith("q") else "exchange"
        d.topology.bindings.append(BindingSpec(d.name(source), names[dest], dest_type, key, args))
    d.local = {v: k for k, v in names.items()}
    return d


def declare(ch: BlockingChannel, topology: ExpandedTopology) -> None:
    # An alternate exchange is looked up by name at publish time: declaration order is free.
    for x in topology.exchanges.values():
        ch.exchange_declare(
            x.name, x.type, durable=False, internal=x.internal, arguments=x.arguments or None
        )
    for q in topology.queues.values():
        ch.queue_declare(q.name, durable=False, arguments=q.arguments)
    for b in topology.bindings:
        if b.destination_type == "queue":
            ch.queue_bind(b.destination, b.source, b.routing_key, b.arguments or None)
        else:
            ch.exchange_bind(b.destination, b.source, b.routing_key, b.arguments or None)


def cleanup(ch: BlockingChannel, topology: ExpandedTopology) -> None:
    for q in topology.queues:
        ch.queue_delete(q)
    for x in topology.exchanges:
        ch.exchange_delete(x)


class Broker:
    def __init__(self, url: str) -> None:
        self.connection: BlockingConnection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self._open()

    def _open(self) -> BlockingChannel:
        ch = self.connection.channel()
        ch.confirm_delivery()
        return ch

    def reopen(self) -> None:
        if self.channel.is_open:
            self.channel.close()
        self.channel = self._open()


def run_on_broker(
    broker: Broker, d: Declared, messages: list[tuple[str, str, dict[str, Any] | None]]
) -> tuple[dict[int, set[str] | str], dict[tuple[int, str], set[str]]]:
    """First-hop queues per message (or "refused"), and dead-letter landings per
    (message, queue it was rejected from)."""
    first: dict[int, set[str] | str] = {}
    dead: dict[tuple[int, str], set[str]] = defaultdict(set)
    for n, (exchange, key, headers) in enumerate(messages):
        props = pika.BasicProperties(message_id=str(n), headers=headers)
        try:
            broker.channel.basic_publish(exchange, key, b"", props)
            first[n] = set()
        except pika.exceptions.ChannelClosedByBroker as exc:
            first[n] = f"refused {exc.reply_code}"
            broker.reopen()
    ch = broker.channel
    while True:
        got_any = False
        for queue in d.topology.queues:
            while True:
                method, props, _ = ch.basic_get(queue)
                if method is None:
                    break
                got_any = True
                n = int(props.message_id)
                if props.headers and "x-death" in props.headers:
                    dead[(n, props.headers["x-first-death-queue"])].add(queue)
                    ch.basic_ack(method.delivery_tag)
                else:
                    entry = first[n]
                    assert isinstance(entry, set)
                    entry.add(queue)
                    ch.basic_reject(method.delivery_tag, requeue=False)
        # A queue handles our rejects before our last (empty) get of it, so every copy it
        # dead-lettered elsewhere is already there; copies it sent to itself are queued
        # behind that get. One more pass finds them; a pass with nothing means all is in.
        if not got_any:
            return first, dict(dead)


def simulate(
    d: Declared, messages: list[tuple[str, str, dict[str, Any] | None]], version: RabbitVersion
) -> tuple[dict[int, set[str] | str], dict[tuple[int, str], set[str]]]:
    router = Router(d.topology, rabbitmq=version)
    first: dict[int, set[str] | str] = {}
    dead: dict[tuple[int, str], set[str]] = {}
    for n, (exchange, key, headers) in enumerate(messages):
        try:
            route = router.route(exchange, key, headers, on="reject")
        except RoutingError as exc:
            first[n] = "refused 403" if "internal" in str(exc) else f"refused: {exc}"
            continue
        first[n] = set(route.queues)
        for queue, dl in route.dead_letters.items():
            if dl.queues:
                dead[(n, queue)] = set(dl.queues)
    return first, dead


def localise(d: Declared, messages: list[tuple[str, str, dict[str, Any] | None]]) -> list[Any]:
    out = []
    for exchange, key, headers in messages:
        if headers is not None:
            headers = {
                k: [d.key(r) for r in v] if k in ("CC", "BCC") else v for k, v in headers.items()
            }
        out.append((d.name(exchange), d.key(key), headers))
    return out


@pytest.fixture
def broker(bus_vhost_url: str) -> Iterator[Broker]:
    b = Broker(bus_vhost_url)
    try:
        yield b
    finally:
        b.connection.close()


def test_simulator_routes_like_the_broker(broker: Broker, bus_management: ManagementClient) -> None:
    version = broker_version(bus_management.overview())
    compared = 0
    examples = 0

    @settings(
        max_examples=math.ceil(CASES / MIN_MESSAGES),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases())
    def check(case: Case) -> None:
        nonlocal compared, examples
        examples += 1
        d = build(case, f"d{examples}-")
        messages = localise(d, case.messages)
        try:
            declare(broker.channel, d.topology)
            on_broker = run_on_broker(broker, d, messages)
        finally:
            cleanup(broker.channel, d.topology)
        simulated = simulate(d, messages, version)
        compared += len(messages)
        first_b, dead_b = on_broker
        first_s, dead_s = simulated
        wrong = [
            (n, d.local.get(messages[n][0], messages[n][0]), *case.messages[n][1:], b, first_s[n])
            for n, b in first_b.items()
            if b != first_s[n]
        ]
        assert not wrong, (
            f"first hop differs on RabbitMQ {version} (n, exchange, key, headers, broker, sim): "
            f"{wrong}"
        )
        assert dead_b == dead_s, f"dead-letter landings differ: broker {dead_b} sim {dead_s}"

    check()
    assert compared >= CASES
