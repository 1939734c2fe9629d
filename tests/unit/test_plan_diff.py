"""The pure part of plan: value comparison, normalisation and classification (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from bus.broker.live import LiveBinding, LiveExchange, LivePolicy, LiveQueue, Probe, QueueUsage
from bus.broker.plan import (
    Action,
    PlanOptions,
    binding_key,
    diff,
    queue_differences,
    refusal_difference,
    same_value,
)
from bus.topology import parse_topology
from bus.topology.expand import ExpandedTopology, QueueSpec
from tests.support.live import live_state

TOPOLOGY = """
version: 1
exchanges:
  ev: {type: topic}
queues:
  q1:
    message_ttl: 1000
    bindings: [{exchange: ev, routing_key: "a.#"}]
unmanaged: ['^legacy']
"""


def _expanded(text: str = TOPOLOGY) -> ExpandedTopology:
    return parse_topology(text).expanded


def _converged() -> dict[str, Any]:
    """Live objects exactly matching TOPOLOGY."""
    return {
        "exchanges": {"ev": LiveExchange("ev", "topic", True, False, False, {})},
        "queues": {
            "q1": LiveQueue(
                "q1",
                "classic",
                True,
                False,
                False,
                {"x-queue-type": "classic", "x-message-ttl": 1000},
            )
        },
        "bindings": [LiveBinding("ev", "q1", "queue", "a.#", {})],
    }


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1000, 1000, True),
        (1000, "1000", False),
        (1, True, False),
        (0, False, False),
        (True, True, True),
        (1.0, 1, False),
        ("a", "a", True),
        ([1, "x"], [1, "x"], True),
        ([1], [True], False),
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": "1"}, False),
    ],
)
def test_same_value_compares_types_like_the_broker(a: object, b: object, equal: bool) -> None:
    assert same_value(a, b) is equal


def test_binding_key_is_typed_and_order_free() -> None:
    one = binding_key("h", "queue", "q", "", {"x-match": "any", "a": 1, "b": "x"})
    same = binding_key("h", "queue", "q", "", {"b": "x", "a": 1, "x-match": "any"})
    other = binding_key("h", "queue", "q", "", {"x-match": "any", "a": True, "b": "x"})
    assert one == same
    assert one != other


def test_converged_state_is_all_unchanged() -> None:
    plan = diff(_expanded(), live_state(**_converged()))
    assert {i.action for i in plan.items} == {Action.UNCHANGED}
    assert not plan.has_changes


def test_missing_x_queue_type_means_the_live_type() -> None:
    spec = QueueSpec("q", "classic", arguments={"x-queue-type": "classic"})
    live = LiveQueue("q", "classic", True, False, False, {"x-queue-type": "classic"})
    assert queue_differences(spec, live) == []
    quorum = LiveQueue("q", "quorum", True, False, False, {"x-queue-type": "quorum"})
    assert [d.field for d in queue_differences(spec, quorum)] == ["type"]


def test_string_and_integer_values_differ() -> None:
    live = _converged()
    live["queues"]["q1"] = LiveQueue(
        "q1", "classic", True, False, False, {"x-queue-type": "classic", "x-message-ttl": "1000"}
    )
    plan = diff(_expanded(), live_state(**live))
    item = plan.conflicts[0]
    assert item.differences[0].field == "arguments.x-message-ttl"
    assert "'1000' (string)" in str(item.differences[0])
    assert "1000 (integer)" in str(item.differences[0])


def test_uncompared_queue_argument_is_an_ineffective_conflict() -> None:
    live = _converged()
    live["queues"]["q1"].arguments["x-custom"] = "a"
    item = diff(_expanded(), live_state(**live)).conflicts[0]
    assert item.differences[0].reason.startswith("ineffective")


def test_unknown_exchange_type_is_a_conflict() -> None:
    text = TOPOLOGY.replace("type: topic", "type: headers")
    plan = diff(_expanded(text), live_state(exchange_types=frozenset({"direct", "topic"})))
    item = next(i for i in plan.items if i.kind == "exchange")
    assert item.action is Action.CONFLICT
    assert "unknown exchange type" in item.differences[0].reason


def test_extra_objects_are_unmanaged_without_prune_and_deleted_with_it() -> None:
    live = _converged()
    live["queues"]["old"] = LiveQueue("old", "classic", True, False, False, {})
    live["queues"]["legacy.q"] = LiveQueue("legacy.q", "classic", True, False, False, {})
    live["policies"] = {"p": LivePolicy("p", ".*", "all", 0, {"max-length": 1})}
    state = live_state(**live)
    usage = {"old": QueueUsage(0, 0), "legacy.q": QueueUsage(0, 0)}

    plain = diff(_expanded(), state, PlanOptions(), usage)
    assert {(i.kind, i.name) for i in plain.by_action(Action.UNMANAGED)} == {
        ("queue", "old"), ("queue", "legacy.q"), ("policy", "p")
    }  # fmt: skip
    pruned = diff(_expanded(), state, PlanOptions(prune=True), usage)
    assert {(i.kind, i.name) for i in pruned.by_action(Action.DELETE)} == {
        ("queue", "old"), ("policy", "p")
    }  # fmt: skip


def test_prune_keeps_queues_with_messages_or_unknown_counts() -> None:
    live = _converged()
    live["queues"]["full"] = LiveQueue("full", "classic", True, False, False, {})
    live["queues"]["unknown"] = LiveQueue("unknown", "classic", True, False, False, {})
    state = live_state(**live)
    plan = diff(_expanded(), state, PlanOptions(prune=True), {"full": QueueUsage(3, 0)})
    assert not plan.by_action(Action.DELETE)
    lossy = diff(
        _expanded(),
        state,
        PlanOptions(prune=True, allow_data_loss=True),
        {"full": QueueUsage(3, 0)},
    )
    assert {i.name for i in lossy.by_action(Action.DELETE)} == {"full", "unknown"}


def test_recreate_empty_turns_a_conflict_into_recreate_with_bindings() -> None:
    live = _converged()
    live["queues"]["q1"].arguments["x-message-ttl"] = 5
    live["bindings"].append(LiveBinding("ev", "q1", "queue", "by-hand", {}))
    state = live_state(**live)
    options = PlanOptions(recreate_empty=True)
    plan = diff(_expanded(), state, options, {"q1": QueueUsage(0, 0)})
    assert [(i.kind, i.name) for i in plan.by_action(Action.RECREATE)] == [
        ("queue", "q1"),
        ("binding", "ev -> queue q1 key 'a.#'"),
        ("binding", "ev -> queue q1 key 'by-hand'"),
    ]
    busy = diff(_expanded(), state, options, {"q1": QueueUsage(0, 2)})
    assert busy.conflicts[0].note == (
        "not recreated: has 2 consumers (unacknowledged messages possible)"
    )


def test_policy_difference_is_an_update() -> None:
    text = TOPOLOGY + "policies:\n  p: {pattern: '^q', definition: {max-length: 5}}\n"
    live = _converged()
    live["policies"] = {"p": LivePolicy("p", "^q", "all", 0, {"max-length": 9})}
    plan = diff(_expanded(text), live_state(**live))
    item = plan.by_action(Action.UPDATE)[0]
    assert (item.kind, item.name) == ("policy", "p")
    assert not plan.conflicts


def test_refusal_text_names_the_field() -> None:
    spec = QueueSpec("q1", "classic", arguments={"x-queue-type": "classic", "x-message-ttl": 2000})
    text = (
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q1' in vhost 'v': "
        "received '2000' but current is '1000'"
    )
    difference = refusal_difference(spec, text)
    assert difference.field == "arguments.x-message-ttl"
    assert difference.desired == 2000
    assert str(difference.live) == "'1000'"
    durable = refusal_difference(
        spec,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q1' in vhost 'v': "
        "received 'true' but current is 'false'",
    )
    assert (durable.field, durable.desired) == ("durable", True)


def test_probe_results_in_amqp_mode() -> None:
    state = live_state(
        "amqp",
        probes={("exchange", "ev"): Probe(exists=True), ("queue", "q1"): Probe(exists=False)},
    )
    plan = diff(_expanded(), state)
    actions = {(i.kind, i.name): i.action for i in plan.items}
    assert actions[("exchange", "ev")] is Action.UNVERIFIED
    assert actions[("queue", "q1")] is Action.CREATE
    assert actions[("binding", "ev -> queue q1 key 'a.#'")] is Action.CREATE
    assert not plan.verified


def test_a_binding_spec_identity_is_the_plan_binding_key() -> None:
    """One definition: BindingSpec.identity() and the key plan matches live bindings by."""
    from bus.broker.equality import key_of
    from bus.topology.expand import BindingSpec

    spec = BindingSpec("ev", "q1", "queue", "a.#", {"x-match": "all", "n": 1})
    live = LiveBinding("ev", "q1", "queue", "a.#", {"n": 1, "x-match": "all"})
    assert spec.identity() == key_of(live) == key_of(spec)
    # Typed: 1 and "1" are different arguments to the broker.
    assert (
        spec.identity()
        != BindingSpec("ev", "q1", "queue", "a.#", {"x-match": "all", "n": "1"}).identity()
    )


def test_argument_differences_use_the_broker_equality() -> None:
    """The Celery pre-flight's comparison: typed, integer widths equal, absent on one side."""
    from bus.broker.equality import argument_differences
    from bus.broker.plan_model import ABSENT

    desired = {"x-max-length": 10, "x-overflow": "reject-publish", "x-expires": 1000}
    live = {"x-max-length": "10", "x-overflow": "reject-publish", "x-custom": True}
    assert argument_differences(desired, live) == [
        ("x-custom", ABSENT, True),
        ("x-expires", 1000, ABSENT),
        ("x-max-length", 10, "10"),
    ]
    assert argument_differences({"x-max-length": 10}, {"x-max-length": 10}) == []
