"""The routing simulator against tables of broker behaviour.

The tables live in ``tests/support/routing_tables.py`` (every expected value observed on
RabbitMQ 3.10.8 and 4.0.5; rows where the two versions differ are in
``VERSIONED_HEADERS_CASES``, docs/rabbitmq-versions.md). ``tests/integration/
test_routing_table.py`` replays these same tables on the real broker (whichever version the
session uses), so a wrong row fails there, not only here. The property tests at the end
check the compiled structures (trie, headers index) against naive reference matchers.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from tests.support.routing_tables import (
    DEAD_LETTER,
    HEADERS_CASES,
    SCENARIOS,
    TOPIC_CASES,
    VERSIONED_HEADERS_CASES,
)


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
