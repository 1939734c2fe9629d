"""``bus check``: reachability findings, their positions and the exit codes."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

from bus.cli import main
from bus.lint import lint, patterns_overlap
from bus.routing import topic_matches
from bus.topology import parse_topology

ROOT = Path(__file__).parents[2]


def _lint(text: str) -> list[str]:
    return [str(f) for f in lint(parse_topology(textwrap.dedent(text).lstrip(), "t.yaml"))]


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "topology.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    code = main(["check", "-f", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_shipped_topology_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-f", str(ROOT / "topology.yaml")]) == 0
    out = capsys.readouterr().out
    assert "error" not in out


UNROUTABLE_EVENT = """
version: 1
exchanges:
  events: {type: topic}
queues:
  orders:
    bindings: [{exchange: events, routing_key: "order.*"}]
events:
  order.created: {exchange: events, routing_key: order.created, model: "m:M"}
  invoice.sent: {exchange: events, routing_key: invoice.sent, model: "m:M"}
"""


def test_unroutable_event_exits_1_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _check(tmp_path, UNROUTABLE_EVENT, capsys)
    assert code == 1
    assert out.splitlines() == [
        f'{tmp_path / "topology.yaml"}:9:3: error: events["invoice.sent"]: event '
        "'invoice.sent' reaches no queue: exchange 'events' routes key 'invoice.sent' "
        "nowhere, so every publish is returned as unroutable"
    ]


def test_invalid_topology_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _check(
        tmp_path, "version: 1\nqueues: {q: {bindings: [{exchange: nope}]}}\n", capsys
    )
    assert code == 2
    assert "exchange 'nope' is not declared" in out


def test_warnings_alone_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _check(tmp_path, "version: 1\nqueues: {lonely: {}}\n", capsys)
    assert code == 0
    assert ":2:10: warning: queues.lonely: queue 'lonely' is not reachable" in out


# (topology, the findings of lint, in order): one case a finding kind, or a kind of
# topology that must raise none.
LINT_CASES = [
    pytest.param(
        """
        version: 1
        exchanges:
          events: {type: direct, alternate_exchange: unrouted}
          unrouted: {type: fanout}
        queues:
          unrouted.events: {bindings: [{exchange: unrouted}]}
        events:
          lost: {exchange: events, routing_key: lost, model: "m:M"}
        """,
        [
            "t.yaml:8:3: warning: events.lost: event 'lost' matches no binding of exchange "
            "'events'; it only reaches the alternate exchange's queues (unrouted.events)"
        ],
        id="event-caught-only-by-the-alternate-exchange-is-a-warning",
    ),
    pytest.param(
        """
        version: 1
        exchanges:
          events: {type: topic}
          dlx: {type: direct}
        queues:
          work:
            dead_letter_exchange: dlx
            dead_letter_routing_key: parked
            bindings: [{exchange: events, routing_key: "#"}]
          parked: {bindings: [{exchange: dlx, routing_key: parkd}]}
          fine:
            dead_letter_exchange: ""
            dead_letter_routing_key: parked
            bindings: [{exchange: events, routing_key: "#"}]
          broken:
            dead_letter_exchange: ""
            dead_letter_routing_key: nowhere
            bindings: [{exchange: events, routing_key: "#"}]
        """,
        [
            "t.yaml:7:27: error: queues.work.dead_letter_exchange: dead-letter exchange 'dlx' "
            "routes with key 'parked' to no queue: dead-lettered messages are dropped",
            "t.yaml:17:30: error: queues.broken.dead_letter_routing_key: dead-lettered messages "
            "go to the default exchange with key 'nowhere', which names no queue: they are dropped",
        ],
        id="dead-letter-exchange-reaching-nothing-is-an-error",
    ),
    pytest.param(
        """
        version: 1
        exchanges:
          events: {type: direct, alternate_exchange: ae}
          ae: {type: headers, alternate_exchange: ae2}
          ae2: {type: topic}
        queues:
          q: {bindings: [{exchange: events, routing_key: k}]}
          never: {bindings: [{exchange: ae, arguments: {x-match: any, x-tenant: t1}}]}
        """,
        [
            "t.yaml:3:46: error: exchanges.events.alternate_exchange: alternate exchange 'ae' "
            "routes to no queue: unroutable messages are dropped instead of kept",
            "t.yaml:4:43: error: exchanges.ae.alternate_exchange: alternate exchange 'ae2' "
            "routes to no queue: unroutable messages are dropped instead of kept",
            "t.yaml:8:3: warning: queues.never: queue 'never' is not reachable from any exchange: "
            "only a publish by name through the default exchange gets a message into it",
            "t.yaml:8:48: warning: queues.never.bindings[0].arguments: binding can never match: "
            "x-match any ignores x- arguments, so there is nothing to compare (use any-with-x "
            "to match on x- headers)",
        ],
        id="alternate-exchange-reaching-nothing-is-an-error",
    ),
    pytest.param(
        """
        version: 1
        exchanges:
          events: {type: topic, alternate_exchange: ae}
          ae: {type: fanout}
        queues:
          all: {bindings: [{exchange: events, routing_key: "#"}]}
          caught: {bindings: [{exchange: ae}]}
        """,
        [
            "t.yaml:3:45: warning: exchanges.events.alternate_exchange: alternate exchange 'ae' "
            "is never used: the binding to 'all' matches every message",
        ],
        id="unused-alternate-exchange-is-a-warning",
    ),
    pytest.param(
        """
        version: 1
        exchanges:
          events: {type: topic}
        queues:
          work:
            dead_letter: true
            retry: {delays: [1s, 10s]}
            bindings: [{exchange: events, routing_key: "a.*"}]
        """,
        [],
        id="retry-and-dead-letter-queues-are-not-flagged",
    ),
    pytest.param(
        """
        version: 1
        queues:
          jobs: {}
        events:
          job: {exchange: "", routing_key: jobs, model: "m:M"}
        """,
        [],
        id="queue-reached-only-by-name-through-an-event-is-not-flagged",
    ),
    pytest.param(
        """
        version: 1
        exchanges:
          events: {type: topic}
          audit: {type: topic, internal: true}
          island: {type: fanout, internal: true}
        queues:
          audit.orders: {bindings: [{exchange: audit, routing_key: "order.#"}]}
          audit.invoices: {bindings: [{exchange: audit, routing_key: "invoice.*"}]}
          lost: {bindings: [{exchange: island}]}
        exchange_bindings:
          - {source: events, destination: audit, routing_key: "order.*"}
          - {source: island, destination: audit}
        """,
        [
            't.yaml:8:62: warning: queues["audit.invoices"].bindings[0].routing_key: binding '
            "can never match: no key that reaches internal exchange 'audit' matches 'invoice.*'",
            "t.yaml:9:3: warning: queues.lost: queue 'lost' is not reachable from any exchange: "
            "only a publish by name through the default exchange gets a message into it",
            "t.yaml:9:21: warning: queues.lost.bindings[0]: binding can never match: exchange "
            "'island' is internal and no binding, alternate exchange or dead-letter exchange "
            "leads to it",
            "t.yaml:12:5: warning: exchange_bindings[1]: binding can never match: exchange "
            "'island' is internal and no binding, alternate exchange or dead-letter exchange "
            "leads to it",
        ],
        id="bindings-of-an-internal-exchange-nothing-feeds",
    ),
    pytest.param(
        """
        version: 1
        exchanges:
          f: {type: fanout}
          h: {type: headers}
        queues:
          a: {bindings: [{exchange: f, routing_key: ignored}]}
          b: {bindings: [{exchange: h, routing_key: ignored, arguments: {k: v}}]}
        """,
        [],
        id="routing-key-on-fanout-or-headers-binding-is-not-never-matching",
    ),
]


@pytest.mark.parametrize(("text", "findings"), LINT_CASES)
def test_lint_findings(text: str, findings: list[str]) -> None:
    assert _lint(text) == findings


_WORDS = ["a", "b", "", "*", "#"]
_KEYS = [".".join(w) for n in range(4) for w in itertools.product(["a", "b", ""], repeat=n)]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (".".join(x), ".".join(y))
        for x in itertools.product(_WORDS, repeat=2)
        for y in itertools.product(_WORDS, repeat=2)
    ][::7],
)
def test_patterns_overlap_agrees_with_brute_force(a: str, b: str) -> None:
    # Keys of up to 3 words over {a, b, ""} witness every overlap of 2-word patterns.
    witness = any(topic_matches(a, k) and topic_matches(b, k) for k in _KEYS)
    assert patterns_overlap(a, b) is witness
