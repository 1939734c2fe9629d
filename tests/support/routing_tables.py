"""Tables of broker routing behaviour, shared by the simulator's unit tests
(``tests/unit/test_routing.py``) and their replay on the real broker
(``tests/integration/test_routing_table.py``).

Every expected value was observed on RabbitMQ 3.10.8 and 4.0.5: the section 8 cases of
docs/rabbitmq-behaviour.md, the rest probed for the simulator; rows where the two versions
differ are in ``VERSIONED_HEADERS_CASES`` (docs/rabbitmq-versions.md).
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from pika.compat import long

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
