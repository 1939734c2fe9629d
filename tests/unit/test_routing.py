"""The routing simulator against tables of broker behaviour.

Every expected value below was observed on RabbitMQ 3.10.8 and 4.0.5: the section 8 cases of
docs/rabbitmq-behaviour.md, the rest probed for this module; rows where the two versions differ are
in ``VERSIONED_HEADERS_CASES`` (docs/rabbitmq-versions.md). ``tests/integration/
test_routing_table.py`` replays these same tables on the real broker (whichever version the
session uses), so a wrong row fails there, not only here. The property tests at the end
check the compiled structures (trie, headers index) against naive reference matchers.
"""

from __future__ import annotations

import datetime
import re
import textwrap
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika.compat import long

from bus.errors import RoutingError
from bus.routing import (
    Router,
    header_term,
    headers_binding_matches_something,
    parse_header_option,
    topic_matches,
)
from bus.routing import topic as topic_trie
from bus.routing.destinations import Destination as _Dest
from bus.routing.headers_match import HeadersBinding as _HeadersBinding
from bus.routing.headers_match import HeadersIndex as _HeadersIndex
from bus.routing.headers_match import compile_headers as _compile_headers
from bus.routing.headers_match import headers_match as _headers_match
from bus.routing.topic import TopicNode as _TopicNode
from bus.topology import BindingSpec, ExchangeSpec, ExpandedTopology, QueueSpec, parse_topology
from bus.versions import RuleSet

# (binding pattern, routing key, does the broker deliver?)
TOPIC_CASES: list[tuple[str, str, bool]] = [
    # docs/rabbitmq-behaviour.md section 8
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("#.b", "b", True),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.x.y.c", True),
    ("a.*.#", "a.b", True),
    ("a.#.*", "a.b", True),
    ("#", "", True),
    ("#.#", "", True),
    ("*", "", False),
    ("a.*.b", "a..b", True),
    ("A.#", "A.b", True),
    ("A.#", "a.b", False),
    ("#.a.b", "x.a.c.a.b", True),
    ("#.*.*.test", "1.2.test", True),
    # '#' alone
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", ".", True),
    # a.#
    ("a.#", "", False),
    ("a.#", "b", False),
    ("a.#", "b.a", False),
    ("a.#", "a.", True),
    # #.a
    ("#.a", "a", True),
    ("#.a", "b.a", True),
    ("#.a", "b.c.a", True),
    ("#.a", "a.b", False),
    ("#.a", "", False),
    # a.#.b
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a", False),
    ("a.#.b", "a.b.c", False),
    ("a.#.b", "b.a.b", False),
    # #.#
    ("#.#", "a", True),
    ("#.#", "a.b", True),
    # *.#: needs at least one word
    ("*.#", "", False),
    ("*.#", "a", True),
    ("*.#", "a.b.c", True),
    ("#.*", "", False),
    ("#.*", "a", True),
    # * and empty words
    ("*", "a", True),
    ("*", "a.b", False),
    ("*", ".", False),
    ("*.*", ".", True),
    ("*.*", "a.", True),
    ("a.*", "a.", True),
    ("a.*", "a", False),
    ("a.*.b", "a.b", False),
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    ("a.", "a.", True),
    ("a.", "a", False),
    ("", "", True),
    ("", "a", False),
    ("a", "", False),
    # literal words, case and odd characters
    ("order.created", "order.created", True),
    ("order.created", "Order.created", False),
    ("ä.*", "ä.x", True),
    ("a b.#", "a b.c", True),
    ("a-b.*", "a-b.c", True),
    ("a*.b", "a*.b", True),
    ("a*.b", "ax.b", False),
    ("a.#", "a.#", True),
    ("*.b", "*.b", True),
]

# (binding arguments, message headers, does the broker deliver?)
HEADERS_CASES: list[tuple[dict[str, Any], dict[str, Any] | None, bool]] = [
    # docs/rabbitmq-behaviour.md section 8
    ({"fmt": "pdf", "type": "report"}, {"fmt": "pdf", "type": "report"}, True),
    ({"fmt": "pdf", "type": "report"}, {"fmt": "pdf", "type": "report", "z": 1}, True),
    ({"fmt": "pdf", "type": "report"}, {"fmt": "pdf"}, False),
    ({"x-match": "any", "fmt": "pdf", "type": "report"}, {"fmt": "pdf"}, True),
    ({"x-match": "any", "fmt": "pdf", "type": "report"}, {"type": "report"}, True),
    ({"x-match": "any", "fmt": "pdf", "type": "report"}, {"fmt": "doc"}, False),
    ({"x-match": "all", "fmt": "pdf", "x-tenant": "t1"}, {"fmt": "pdf"}, True),
    ({"x-match": "all", "fmt": "pdf", "x-tenant": "t1"}, {"fmt": "pdf", "x-tenant": "t2"}, True),
    ({"x-match": "any", "x-tenant": "t1"}, {"x-tenant": "t1"}, False),
    (
        {"x-match": "all-with-x", "fmt": "pdf", "x-tenant": "t1"},
        {"fmt": "pdf", "x-tenant": "t1"},
        True,
    ),
    ({"x-match": "all-with-x", "fmt": "pdf", "x-tenant": "t1"}, {"fmt": "pdf"}, False),
    ({"x-match": "any-with-x", "x-tenant": "t1"}, {"x-tenant": "t1"}, True),
    ({"x-match": "any-with-x", "x-tenant": "t1"}, {"x-tenant": "t2"}, False),
    ({"x-match": "all"}, None, True),
    ({"x-match": "all"}, {"a": 1}, True),
    # probed: empty argument sets
    ({}, None, True),
    ({"x-match": "any"}, {"a": 1}, False),
    ({"x-match": "any-with-x"}, {"a": 1}, False),
    ({"x-match": "all-with-x"}, {"a": 1}, True),
    ({"x-match": "all-with-x", "fmt": "pdf"}, {"fmt": "pdf"}, True),
    ({"x-match": "all", "a": 1}, {"a": 1, "x-match": "any"}, True),
    # probed: types. The broker compares values, and a value's type is part of it.
    ({"n": 5}, {"n": "5"}, False),
    ({"n": "5"}, {"n": 5}, False),
    ({"n": 5}, {"n": 5}, True),
    ({"n": 5}, {"n": long(5)}, True),
    ({"n": 2**40}, {"n": 2**40}, True),
    ({"n": 5}, {"n": Decimal(5)}, False),
    ({"n": Decimal("5.0")}, {"n": Decimal("5")}, True),
    ({"n": 1}, {"n": True}, False),
    ({"n": True}, {"n": 1}, False),
    ({"n": True}, {"n": True}, True),
    ({"n": True}, {"n": False}, False),
    ({"n": "a"}, {"n": b"a"}, True),
    ({"n": ""}, {"n": ""}, True),
    ({"n": ""}, {}, False),
    # probed: a binding value of None (AMQP void) matches on presence only
    ({"n": None}, {"n": "anything"}, True),
    ({"n": None}, {}, False),
    ({"n": "x"}, {"n": None}, False),
    ({"x-match": "any", "n": None}, {"n": 1}, True),
    ({"x-match": "all", "n": None, "m": 1}, {"m": 1}, False),
    ({"x-match": "any-with-x", "x-a": None}, {"x-a": 1}, True),
    # probed: arrays and tables compare element types and (for tables) order
    ({"n": [1, "a"]}, {"n": [1, "a"]}, True),
    ({"n": [1]}, {"n": [long(1)]}, False),
    ({"n": [b"a"]}, {"n": ["a"]}, False),
    ({"n": {"a": 1, "b": 2}}, {"n": {"a": 1, "b": 2}}, True),
    ({"n": {"a": 1, "b": 2}}, {"n": {"b": 2, "a": 1}}, False),
    ({"n": {"a": 1}}, {"n": {"a": long(1)}}, False),
    # probed: CC is visible to the headers exchange, BCC is removed before it routes
    ({"CC": ["z"]}, {"CC": ["z"]}, True),
    ({"BCC": ["z"]}, {"BCC": ["z"]}, False),
    # empty table and empty array both decode to [] on the broker
    ({"n": {}}, {"n": []}, True),
]


_T5 = datetime.datetime(1970, 1, 1, 0, 0, 5, tzinfo=datetime.UTC)  # AMQP timestamp 5 (seconds)

# Rows whose answer depends on the version: (binding, headers, {rule set: delivered?}).
# From 4.0 a top-level timestamp *header* is compared in milliseconds, a binding's in seconds.
VERSIONED_HEADERS_CASES: list[tuple[dict[str, Any], dict[str, Any], dict[RuleSet, bool]]] = [
    ({"n": 5}, {"n": _T5}, {"3.10": True, "4.0": False}),
    ({"n": 5000}, {"n": _T5}, {"3.10": False, "4.0": True}),
    ({"n": _T5}, {"n": _T5}, {"3.10": True, "4.0": False}),
    ({"n": _T5}, {"n": 5}, {"3.10": True, "4.0": True}),
    ({"n": _T5}, {"n": 5000}, {"3.10": False, "4.0": False}),
    ({"n": None}, {"n": _T5}, {"3.10": True, "4.0": True}),
    ({"x-match": "any", "n": _T5, "m": 1}, {"n": _T5, "m": 2}, {"3.10": True, "4.0": False}),
    # inside arrays and tables a timestamp keeps its seconds and its type on both
    ({"n": [_T5]}, {"n": [_T5]}, {"3.10": True, "4.0": True}),
    ({"n": [5]}, {"n": [_T5]}, {"3.10": False, "4.0": False}),
    ({"n": {"t": _T5}}, {"n": {"t": _T5}}, {"3.10": True, "4.0": True}),
]


def headers_cases(rules: RuleSet) -> list[tuple[dict[str, Any], dict[str, Any] | None, bool]]:
    """Every headers row with its answer on RabbitMQ ``rules``."""
    return HEADERS_CASES + [(a, h, by[rules]) for a, h, by in VERSIONED_HEADERS_CASES]


def headers_topology(arguments: dict[str, Any]) -> ExpandedTopology:
    """Exchange ``h`` (headers) -> queue ``q`` with ``arguments``; built directly because
    YAML cannot hold every value type the table uses (bytes, Decimal, pika's long)."""
    return ExpandedTopology(
        vhost=None,
        exchanges={"h": ExchangeSpec("h", "headers")},
        queues={"q": QueueSpec("q", "classic")},
        bindings=[BindingSpec("h", "q", "queue", "", arguments)],
        events={},
        policies={},
        unmanaged=[],
        failure={},
    )


def _topology(text: str) -> Router:
    return Router(parse_topology(textwrap.dedent(text), "t.yaml").expanded)


# Whole topologies: (topology.yaml text, [(exchange, key, headers, queues the broker fills)]).
SCENARIOS: dict[str, tuple[str, list[tuple[str, str, dict[str, Any] | None, set[str]]]]] = {
    "e2e cycle ends, each queue once": (
        """
        version: 1
        exchanges:
          x1: {type: topic}
          x2: {type: fanout}
          x3: {type: direct}
        queues:
          q1: {bindings: [{exchange: x1, routing_key: "a.*"}, {exchange: x1, routing_key: "#"}]}
          q2: {bindings: [{exchange: x2}]}
          q3: {bindings: [{exchange: x3, routing_key: a.b}]}
        exchange_bindings:
          - {source: x1, destination: x2, routing_key: "a.#"}
          - {source: x2, destination: x3}
          - {source: x3, destination: x1, routing_key: a.b}
          - {source: x2, destination: x1}
        """,
        [
            ("x1", "a.b", None, {"q1", "q2", "q3"}),
            ("x2", "a.b", None, {"q1", "q2", "q3"}),
            ("x3", "a.b", None, {"q1", "q2", "q3"}),
            ("x3", "c", None, set()),
            ("x1", "c", None, {"q1"}),
        ],
    ),
    "alternate exchange only when nothing matches": (
        """
        version: 1
        exchanges:
          main: {type: direct, alternate_exchange: ae}
          ae: {type: fanout, alternate_exchange: ae2}
          ae2: {type: fanout}
          nowhere: {type: direct}
          empty_ae: {type: direct, alternate_exchange: empty}
          empty: {type: topic, alternate_exchange: ae2}
        queues:
          hit: {bindings: [{exchange: main, routing_key: k}]}
          caught: {bindings: [{exchange: ae}]}
          last: {bindings: [{exchange: ae2}]}
        exchange_bindings:
          - {source: main, destination: nowhere, routing_key: e2e}
        """,
        [
            ("main", "k", None, {"hit"}),
            ("main", "other", None, {"caught"}),
            # an e2e match counts as routed even though it leads nowhere: no AE
            ("main", "e2e", None, set()),
            # AE chain: empty has no bindings, so its own AE takes over
            ("empty_ae", "k", None, {"last"}),
        ],
    ),
    "internal exchange reached through bindings": (
        """
        version: 1
        exchanges:
          pub: {type: topic}
          inner: {type: fanout, internal: true}
        queues:
          q: {bindings: [{exchange: inner}]}
        exchange_bindings:
          - {source: pub, destination: inner, routing_key: "x.#"}
        """,
        [("pub", "x", None, {"q"}), ("pub", "y", None, set())],
    ),
    "default exchange, built-in exchanges and CC/BCC": (
        """
        version: 1
        exchanges:
          d: {type: direct}
        queues:
          qa:
            bindings:
              - {exchange: d, routing_key: k1}
              - {exchange: amq.topic, routing_key: "t.#"}
          qb:
            bindings:
              - {exchange: d, routing_key: k2}
              - {exchange: amq.headers, arguments: {h: 1}}
        """,
        [
            ("", "qa", None, {"qa"}),
            ("", "nope", None, set()),
            ("", "qa", {"CC": ["qb", "nope"]}, {"qa", "qb"}),
            ("d", "k1", {"CC": ["k2"]}, {"qa", "qb"}),
            ("d", "zz", {"BCC": ["k2"]}, {"qb"}),
            # only string entries of CC route (pika sends bytes as another type)
            ("d", "zz", {"CC": [b"k2", "k1"]}, {"qa"}),
            ("amq.topic", "t", None, {"qa"}),
            ("amq.headers", "", {"h": 1}, {"qb"}),
            ("amq.direct", "qa", None, set()),
        ],
    ),
}


@pytest.mark.parametrize(("pattern", "key", "expected"), TOPIC_CASES)
def test_topic_table(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


@pytest.mark.parametrize("rules", ["3.10", "4.0"])
@pytest.mark.parametrize(("arguments", "headers", "expected"), HEADERS_CASES)
def test_headers_table(
    arguments: dict[str, Any], headers: dict[str, Any] | None, expected: bool, rules: RuleSet
) -> None:
    router = Router(headers_topology(arguments), rabbitmq=rules)
    assert (router.route("h", "", headers).queues == {"q"}) is expected


@pytest.mark.parametrize("rules", ["3.10", "4.0"])
@pytest.mark.parametrize(("arguments", "headers", "expected"), VERSIONED_HEADERS_CASES)
def test_versioned_headers_table(
    arguments: dict[str, Any],
    headers: dict[str, Any],
    expected: dict[RuleSet, bool],
    rules: RuleSet,
) -> None:
    router = Router(headers_topology(arguments), rabbitmq=rules)
    assert (router.route("h", "", headers).queues == {"q"}) is expected[rules]


@pytest.mark.parametrize(
    ("version", "rules"),
    [("3.10.8", "3.10"), ("3.13.7", "3.10"), ("4.0.5", "4.0"), ("4.3", "4.0"), (None, "3.10")],
)
def test_router_takes_the_rules_of_the_newest_proven_version_not_above(
    version: str | None, rules: RuleSet
) -> None:
    assert Router(headers_topology({}), rabbitmq=version).rules == rules


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios(name: str) -> None:
    text, publishes = SCENARIOS[name]
    router = _topology(text)
    for exchange, key, headers, expected in publishes:
        assert router.route(exchange, key, headers).queues == expected, (exchange, key, headers)


def test_trace_names_every_hop() -> None:
    router = _topology(SCENARIOS["e2e cycle ends, each queue once"][0])
    lines = router.route("x1", "a.b").describe_trace()
    assert lines[0] == "publish to exchange x1 key 'a.b'"
    assert "exchange x1 -> exchange x2  [key 'a.#']" in lines
    assert "exchange x2 -> exchange x1  [fanout; already visited]" in lines
    assert "exchange x3 -> queue q3  [key 'a.b']" in lines
    alternate = _topology(SCENARIOS["alternate exchange only when nothing matches"][0])
    assert "exchange main -> alternate exchange ae" in alternate.route("main", "x").describe_trace()


def test_publishing_to_an_internal_exchange_is_refused() -> None:
    router = _topology(SCENARIOS["internal exchange reached through bindings"][0])
    with pytest.raises(RoutingError, match="internal"):
        router.route("inner", "")
    with pytest.raises(RoutingError, match="internal"):
        router.route("amq.rabbitmq.trace", "")


def test_unknown_exchange_is_an_error() -> None:
    router = _topology(SCENARIOS["internal exchange reached through bindings"][0])
    with pytest.raises(RoutingError, match="unknown exchange 'nope'"):
        router.route("nope", "k")


@pytest.mark.parametrize("value", ["k", {"a": "b"}, None, 5])
def test_cc_must_be_an_array(value: object) -> None:
    router = _topology("version: 1\nexchanges: {d: {type: direct}}\n")
    with pytest.raises(RoutingError, match="CC"):
        router.route("d", "k", {"CC": value})


DEAD_LETTER = """
version: 1
exchanges:
  events: {type: topic}
  dlx: {type: direct}
queues:
  work:
    dead_letter: true
    retry: {delays: [1s]}
    bindings: [{exchange: events, routing_key: "order.*"}]
  keyed:
    dead_letter_exchange: dlx
    dead_letter_routing_key: parked
    bindings: [{exchange: events, routing_key: "#"}]
  parked: {bindings: [{exchange: dlx, routing_key: parked}]}
  loop:
    dead_letter_exchange: ""
    bindings: [{exchange: events, routing_key: loop}]
  plain: {bindings: [{exchange: events, routing_key: "order.#"}]}
"""


def test_dead_letter_on_reject() -> None:
    router = _topology(DEAD_LETTER)
    route = router.route("events", "order.created", on="reject")
    assert route.queues == {"work", "keyed", "plain"}
    assert set(route.dead_letters) == {"work", "keyed"}  # plain has no DLX: dropped
    assert route.dead_letters["work"].queues == {"work.dlq"}
    assert route.dead_letters["work"].routing_keys == ("order.created",)
    assert route.dead_letters["keyed"].queues == {"parked"}
    assert route.dead_letters["keyed"].routing_keys == ("parked",)
    assert route.dead_letter_queues == {"work.dlq", "parked"}


def test_retry_queue_expires_back_into_its_owner() -> None:
    router = _topology(DEAD_LETTER)
    route = router.route("", "work.retry.1s", on="expire")
    assert route.dead_letters["work.retry.1s"].queues == {"work"}


def test_expiry_never_lands_back_in_the_same_queue_but_a_reject_does() -> None:
    # DLX "" without a DL routing key: the original key "loop" names the queue itself.
    router = _topology(DEAD_LETTER)
    assert router.route("events", "loop", on="reject").dead_letters["loop"].queues == {"loop"}
    expired = router.route("events", "loop", on="expire").dead_letters["loop"]
    assert expired.queues == set()
    assert "the broker drops it" in expired.trace[-1].detail


def test_dead_letter_headers_reach_a_headers_dlx() -> None:
    router = _topology(
        """
        version: 1
        exchanges:
          h: {type: headers}
        queues:
          src: {dead_letter_exchange: h}
          by_reason:
            bindings:
              - {exchange: h, arguments: {x-match: all-with-x, x-first-death-reason: expired}}
        """
    )
    assert router.route("", "src", on="expire").dead_letter_queues == {"by_reason"}
    assert router.route("", "src", on="reject").dead_letter_queues == set()


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("n=5", ("n", "5")),
        ("n:int=5", ("n", 5)),
        ("n:str=5", ("n", "5")),
        ("flag:bool=True", ("flag", True)),
        ("flag:bool=false", ("flag", False)),
        ("present:null=", ("present", None)),
        ('CC:json=["a","b"]', ("CC", ["a", "b"])),
        ("a:b=c", ("a:b", "c")),
        ("url=http://x?a=b", ("url", "http://x?a=b")),
        ("empty=", ("empty", "")),
    ],
)
def test_parse_header_option(option: str, expected: tuple[str, object]) -> None:
    assert parse_header_option(option) == expected


@pytest.mark.parametrize("option", ["novalue", "=x", "n:int=five", "b:bool=yes", "j:json={"])
def test_parse_header_option_rejects(option: str) -> None:
    with pytest.raises(RoutingError):
        parse_header_option(option)


def test_headers_binding_matches_something() -> None:
    assert not headers_binding_matches_something({"x-match": "any", "x-tenant": "t1"})
    assert not headers_binding_matches_something({"x-match": "any-with-x"})
    assert headers_binding_matches_something({"x-match": "any-with-x", "x-tenant": "t1"})
    assert headers_binding_matches_something({"x-match": "all"})


def test_unencodable_header_value_is_an_error() -> None:
    with pytest.raises(RoutingError, match="no AMQP type"):
        header_term(object())


# --- compiled structures against naive reference matchers ------------------------------------


def _reference_topic(pattern: str, key: str) -> bool:
    """Word-list recursion straight from the definition ('#' = zero or more words)."""
    p = pattern.split(".") if pattern else []
    k = key.split(".") if key else []

    def go(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(go(i + 1, m) for m in range(j, len(k) + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and go(i + 1, j + 1)

    return go(0, 0)


_word = st.sampled_from(["a", "b", "", "ab"])
_pattern_word = st.sampled_from(["a", "b", "", "*", "#"])


@settings(max_examples=500)
@given(
    st.lists(_pattern_word, max_size=5).map(".".join),
    st.lists(_word, max_size=5).map(".".join),
)
def test_trie_agrees_with_reference(pattern: str, key: str) -> None:
    assert topic_matches(pattern, key) is _reference_topic(pattern, key)


@settings(max_examples=300)
@given(
    patterns=st.lists(st.lists(_pattern_word, max_size=4).map(".".join), min_size=1, max_size=8),
    keys=st.lists(st.lists(_word, max_size=4).map(".".join), min_size=1, max_size=12),
    tiny_bounds=st.booleans(),
)
def test_one_trie_with_cached_transitions_agrees_with_reference(
    patterns: list[str], keys: list[str], tiny_bounds: bool
) -> None:
    # The trie keeps the node sets and word transitions it met; results must not depend
    # on what was routed before, nor on the caches being dropped at their bounds.
    bounds = (topic_trie._MAX_STATES, topic_trie._MAX_TRANSITIONS)
    if tiny_bounds:
        topic_trie._MAX_STATES, topic_trie._MAX_TRANSITIONS = 2, 3
    try:
        root = _TopicNode()
        for n, pattern in enumerate(patterns):
            root.insert(pattern, _Dest(f"q{n}", False, ""))
        for key in [*keys, *keys]:
            out: list[_Dest] = []
            root.match(key, out)
            expected = {f"q{n}" for n, p in enumerate(patterns) if _reference_topic(p, key)}
            assert {d.name for d in out} == expected
    finally:
        topic_trie._MAX_STATES, topic_trie._MAX_TRANSITIONS = bounds


def test_trie_with_many_hashes_stays_fast_enough_to_finish() -> None:
    # Without memoising '#' states this is exponential in the key length.
    pattern = ".".join(["#"] * 30) + ".z"
    assert topic_matches(pattern, ".".join(["a"] * 200)) is False
    assert topic_matches(pattern, ".".join(["a"] * 200) + ".z") is True


_value = st.one_of(st.sampled_from(["1", "v", ""]), st.integers(0, 2), st.booleans(), st.none())
_names = st.sampled_from(["a", "b", "x-a"])
_args = st.dictionaries(_names, _value, max_size=3).flatmap(
    lambda d: st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"]).map(
        lambda m: d if m is None else {**d, "x-match": m}
    )
)


@settings(max_examples=300)
@given(st.lists(_args, max_size=6), st.dictionaries(_names, _value, max_size=3))
def test_headers_index_agrees_with_a_scan(
    bindings: list[dict[str, Any]], headers: dict[str, Any]
) -> None:
    index = _HeadersIndex()
    compiled = []
    for n, arguments in enumerate(bindings):
        dest = _Dest(f"q{n}", False, "")
        index.add(arguments, dest)
        is_any, items = _compile_headers(arguments)
        compiled.append(_HeadersBinding(is_any, tuple(items), dest))
    terms = {k: header_term(v) for k, v in headers.items()}
    scanned = {b.dest.name for b in compiled if _headers_match(b, terms)}
    assert {d.name for d in index.match(terms)} == scanned


def test_header_terms_follow_erlang_equality() -> None:
    assert header_term(1) == header_term(1.0)  # Erlang: 1 == 1.0
    assert header_term(1) != header_term(True)
    assert re.fullmatch(r"\('bin', b'a'\)", repr(header_term("a")))


def test_memoised_results_stay_correct_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import bus.routing.exchange

    monkeypatch.setattr(bus.routing.exchange, "_CACHE_SIZE", 2)
    router = _topology(SCENARIOS["e2e cycle ends, each queue once"][0])
    keys = ["a.b", "c", "a.x", "a.b", "c", "a.b.c", "a.b"]
    first = [router.route("x1", k).queues for k in keys]
    again = [router.route("x1", k).queues for k in keys]
    assert first == again
    assert first[0] == {"q1", "q2", "q3"}
    assert first[1] == {"q1"}
    assert all(len(x.cache) <= 2 for x in router._exchanges.values())
