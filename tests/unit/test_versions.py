"""RabbitMQ versions: parsing, effective delivery limits, the version lint (``bus check
--rabbitmq/--target``) and ``bus route --rabbitmq``.

The 4.0 facts the rules encode were measured on RabbitMQ 4.0.5 (docs/rabbitmq-versions.md);
``tests/integration/test_versions_broker.py`` shows them on whichever broker the session uses.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bus.cli import main
from bus.errors import BrokerError, RoutingError, UsageError
from bus.lint import lint
from bus.routing import parse_header_option
from bus.topology import LoadedTopology, parse_topology
from bus.versions import (
    RabbitVersion,
    broker_version,
    effective_delivery_limit,
    version_issues,
)

ROOT = Path(__file__).parents[2]

LEGACY = """
version: 1
exchanges: {h: {type: headers}}
queues:
  work: {type: quorum, bindings: [{exchange: h, arguments: {n: 1}}]}
  guarded: {type: quorum, dead_letter: true, bindings: [{exchange: h, arguments: {n: 2}}]}
  limited: {type: quorum, delivery_limit: 3, bindings: [{exchange: h, arguments: {n: 3}}]}
  lazy:
    queue_mode: lazy
    queue_version: 1
    durable: false
    bindings: [{exchange: h, arguments: {n: 4}}]
policies:
  mirror: {pattern: "^lazy$", definition: {ha-mode: all, queue-mode: lazy}}
"""


def _topology(text: str = LEGACY) -> LoadedTopology:
    return parse_topology(textwrap.dedent(text).lstrip(), "t.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4.0", (4, 0, None)),
        ("4.0.5", (4, 0, 5)),
        ("3.13.7+1.g0abc", (3, 13, 7)),
        (" 3.10 ", (3, 10, None)),
    ],
)
def test_versions_parse(text: str, expected: tuple[int, int, int | None]) -> None:
    v = RabbitVersion.parse(text)
    assert (v.major, v.minor, v.patch) == expected


@pytest.mark.parametrize("text", ["", "four", "4", "v4.0"])
def test_bad_versions_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        RabbitVersion.parse(text)


def test_versions_order_like_releases() -> None:
    assert RabbitVersion.parse("3.9") < RabbitVersion.parse("3.10.8") < RabbitVersion.parse("4.0")


def test_broker_version_comes_from_the_overview() -> None:
    assert broker_version({"rabbitmq_version": "4.0.5"}) == RabbitVersion(4, 0, 5)
    with pytest.raises(BrokerError):
        broker_version({})


@pytest.mark.parametrize(
    ("queue", "version", "limit"),
    [
        ("work", "3.10", None),  # 3.x: no limit unless one is set
        ("work", "4.0", 20),  # 4.0.5's management API shows delivery_limit 20 for it
        ("guarded", "4.0", 20),
        ("limited", "3.10", 3),
        ("limited", "4.0", 3),
        ("lazy", "4.0", None),  # classic queues have no delivery limit
    ],
)
def test_effective_delivery_limit(queue: str, version: str, limit: int | None) -> None:
    x = _topology().expanded
    assert effective_delivery_limit(x.queues[queue], x.policies, version) == limit


def test_a_policy_limit_counts_and_the_lower_one_wins() -> None:
    x = _topology(
        """
        version: 1
        queues:
          a: {type: quorum}
          b: {type: quorum, delivery_limit: 2}
        policies:
          low: {pattern: "^a$", priority: 1, definition: {delivery-limit: 7}}
          lower: {pattern: "^a$", priority: 0, definition: {delivery-limit: 1}}
          all: {pattern: "^b$", definition: {delivery-limit: 9}}
        """
    ).expanded
    # Only the highest-priority policy applies (7, not 1); argument and policy: the lower.
    assert effective_delivery_limit(x.queues["a"], x.policies, "4.0") == 7
    assert effective_delivery_limit(x.queues["b"], x.policies, "4.0") == 2


def test_nothing_to_report_on_3_10() -> None:
    assert version_issues(_topology().expanded, "3.10.8") == []


def _found(version: str) -> dict[tuple[str, str, str], str]:
    return {
        (i.kind, i.name, i.field): i.severity for i in version_issues(_topology().expanded, version)
    }


def test_what_4_0_refuses_ignores_and_deprecates() -> None:
    assert _found("4.0") == {
        ("policy", "mirror", "definition.ha-mode"): "error",  # refused: 400 on 4.0.5
        ("policy", "mirror", "definition.queue-mode"): "warning",
        ("queue", "lazy", "queue_mode"): "warning",
        ("queue", "lazy", "queue_version"): "warning",
        ("queue", "lazy", "durable"): "warning",
        # quorum without delivery_limit nor DLX: dropped at 20 (guarded dead-letters instead)
        ("queue", "work", "delivery_limit"): "warning",
    }


def test_what_4_3_refuses() -> None:
    found = _found("4.3")
    assert found[("queue", "lazy", "queue_mode")] == "error"
    assert found[("queue", "lazy", "durable")] == "error"
    assert found[("policy", "mirror", "definition.queue-mode")] == "error"


def test_check_with_the_broker_version_warns_about_the_drop_at_20(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(textwrap.dedent(LEGACY).lstrip())
    assert main(["check", "-f", str(path)]) == 0  # 3.10 rules by default: nothing to say
    assert capsys.readouterr().out == ""
    assert main(["check", "-f", str(path), "--rabbitmq", "4.0"]) == 1  # ha-mode refused
    lines = capsys.readouterr().out.splitlines()
    work = [line for line in lines if "queues.work.delivery_limit" in line]
    assert len(work) == 1
    assert work[0].startswith(f"{path}:4:9: warning: ")
    assert "20" in work[0]
    assert "DROPPED" in work[0]
    assert any("error: policies.mirror.definition.ha-mode" in line for line in lines)


def test_check_target_names_only_what_the_move_adds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(textwrap.dedent(LEGACY).lstrip())
    main(["check", "-f", str(path), "--rabbitmq", "4.0", "--target", "4.3"])
    moving = [
        line for line in capsys.readouterr().out.splitlines() if "moving to RabbitMQ 4.3" in line
    ]
    fields = sorted(line.split(": ")[2] for line in moving)
    assert fields == [
        "policies.mirror.definition.queue-mode",
        "queues.lazy.durable",
        "queues.lazy.queue_mode",
    ]
    assert all(": error: " in line for line in moving)


def test_shipped_topology_is_ready_for_4_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-f", str(ROOT / "topology.yaml"), "--target", "4.3"]) == 0
    assert "moving to" not in capsys.readouterr().out


def test_lint_with_versions_keeps_reachability_findings() -> None:
    text = LEGACY + "events:\n  lost: {exchange: h, model: 'producers.events:OrderCreated'}\n"
    plain = {str(f) for f in lint(_topology(text))}
    assert any("reaches no queue" in f for f in plain)
    assert plain <= {str(f) for f in lint(_topology(text), rabbitmq="4.0")}


@pytest.mark.parametrize(
    ("version", "queue"), [("3.10", "by.seconds"), ("4.0", "by.millis"), ("4.3.1", "by.millis")]
)
def test_route_takes_the_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str, queue: str
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(
        "version: 1\nexchanges: {h: {type: headers}}\nqueues:\n"
        "  by.seconds: {bindings: [{exchange: h, arguments: {n: 5}}]}\n"
        "  by.millis: {bindings: [{exchange: h, arguments: {n: 5000}}]}\n"
    )
    args = ["route", "-f", str(path), "-e", "h", "-H", "n:timestamp=5", "--rabbitmq", version]
    assert main(args) == 0
    assert capsys.readouterr().out.split() == [queue]


def test_timestamp_header_option() -> None:
    name, value = parse_header_option("n:timestamp=1970-01-01T00:00:05")
    assert (name, value.timestamp()) == ("n", 5)
    assert parse_header_option("n:timestamp=5")[1] == value
    with pytest.raises(RoutingError, match="epoch seconds or an ISO 8601"):
        parse_header_option("n:timestamp=soon")


def test_plan_on_4_0_refuses_ha_policies_and_shows_the_default_limit() -> None:
    from bus.broker.live import LiveState, LiveVhost
    from bus.broker.plan import Action, diff
    from bus.broker.plan_versions import annotate_plan

    x = _topology().expanded
    empty = LiveState("v", "management", LiveVhost("v", "", "classic"))
    on_310 = annotate_plan(diff(x, empty), x, RabbitVersion.parse("3.10.8"))
    assert on_310.conflicts == []
    assert all(item.remarks == () for item in on_310.items)
    on_40 = annotate_plan(diff(x, empty), x, RabbitVersion.parse("4.0.5"))
    assert [(i.kind, i.name) for i in on_40.conflicts] == [("policy", "mirror")]
    (refusal,) = on_40.conflicts[0].differences
    assert refusal.field == "definition.ha-mode"
    items = {(i.kind, i.name): i for i in on_40.items}
    assert items[("queue", "work")].action is Action.CREATE
    assert items[("queue", "work")].remarks[0].startswith("delivery limit: 20 ")
    assert items[("queue", "guarded")].remarks[0].startswith("delivery limit: 20 ")
    assert items[("queue", "limited")].remarks == ()
    assert "RabbitMQ 4.0.5" in on_40.render().splitlines()[0]
    assert any("queue-mode" in r for r in items[("queue", "lazy")].remarks)


_DEATH_ROUTING = """
version: 1
exchanges: {ev: {type: direct}, hx: {type: headers}}
queues:
  work: {dead_letter_exchange: hx, bindings: [{exchange: ev, routing_key: k}]}
  on.x-death: {bindings: [{exchange: hx, arguments: {x-match: any-with-x, x-death: null}}]}
  on.last:
    bindings: [{exchange: hx, arguments: {x-match: all-with-x, x-last-death-reason: rejected}}]
  on.first:
    bindings: [{exchange: hx, arguments: {x-match: all-with-x, x-first-death-queue: work}}]
"""


@pytest.mark.parametrize(
    ("version", "reached"),
    [("3.10", {"on.x-death", "on.first"}), ("4.0", {"on.last", "on.first"})],
)
def test_a_dead_lettered_copy_is_routed_on_the_death_headers_of_the_version(
    version: str, reached: set[str]
) -> None:
    """Measured on both brokers (test_routing_table.py replays it): 4.0.5 adds x-last-death-*
    and routes the copy without its x-death; 3.10.8 has x-death and no x-last-death-*."""
    from bus.routing import Router

    router = Router(_topology(_DEATH_ROUTING).expanded, rabbitmq=version)
    assert router.route("ev", "k", on="reject").dead_letter_queues == reached
