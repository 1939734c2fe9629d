"""Which queues a live migration moves, their order, steps and warnings (no broker)."""

from __future__ import annotations

from bus.broker.inspect import LiveBinding, LiveExchange, LiveQueue, LiveState
from bus.broker.plan import Action, diff
from bus.broker.plan_migrations import (
    annotate_migrations,
    find_migrations,
    original_of,
    temp_name,
    warnings_for,
)
from bus.topology import parse_topology
from tests.support.live import live_state

TOPOLOGY = """
version: 1
exchanges:
  ev: {type: topic}
queues:
  q1:
    type: quorum
    delivery_limit: 5
    dead_letter: true
    bindings: [{exchange: ev, routing_key: "a.#"}]
"""


def _classic(name: str, **args: object) -> LiveQueue:
    return LiveQueue(name, "classic", True, False, False, {"x-queue-type": "classic", **args})


def _live(*queues: LiveQueue) -> LiveState:
    return live_state(
        exchanges={"ev": LiveExchange("ev", "topic", True, False, False, {})},
        queues={q.name: q for q in queues},
        bindings=[LiveBinding("ev", "q1", "queue", "a.#", {})],
    )


def test_temp_names_round_trip() -> None:
    assert temp_name("q1") == "q1.migrating"
    assert original_of("q1.migrating") == "q1"
    assert original_of("q1") is None
    assert original_of(".migrating") is None


def test_classic_queue_and_its_dlq_migrate_dlq_first_with_steps() -> None:
    expanded = parse_topology(TOPOLOGY).expanded
    plan = diff(expanded, _live(_classic("q1"), _classic("q1.dlq")))
    found = find_migrations(plan, expanded)
    assert [m.queue for m in found] == ["q1.dlq", "q1"]
    q1 = found[1]
    assert not q1.in_progress
    assert len(q1.steps()) == 5
    assert "q1.migrating" in q1.steps()[0]
    assert any("delivery_limit 5" in w for w in q1.warnings)
    # Asked for q1 alone: its dead-letter queue comes with it.
    assert [m.queue for m in find_migrations(plan, expanded, ["q1"])] == ["q1.dlq", "q1"]


def test_annotate_without_migrate_keeps_conflicts_and_names_the_command() -> None:
    expanded = parse_topology(TOPOLOGY).expanded
    plan = annotate_migrations(diff(expanded, _live(_classic("q1"), _classic("q1.dlq"))), expanded)
    q1 = next(i for i in plan.items if i.name == "q1")
    assert q1.action is Action.CONFLICT
    assert "bus migrate q1" in q1.note


def test_annotate_with_migrate_lists_steps_once() -> None:
    expanded = parse_topology(TOPOLOGY).expanded
    plan = diff(expanded, _live(_classic("q1"), _classic("q1.dlq")))
    plan = annotate_migrations(annotate_migrations(plan, expanded), expanded, migrate=True)
    q1 = next(i for i in plan.items if i.name == "q1")
    assert q1.action is getattr(Action, "MIGRATE", Action.CONFLICT)
    assert "messages may reorder" in q1.note
    assert len(q1.remarks) == len(set(q1.remarks))
    assert any(r.startswith("3. move") for r in q1.remarks)


def test_unfinished_migration_is_a_conflict_until_finished() -> None:
    expanded = parse_topology(TOPOLOGY).expanded
    temp = LiveQueue("q1.migrating", "quorum", True, False, False, {"x-queue-type": "quorum"})
    # q1 already deleted (inside step 4): only the temporary queue is left.
    plan = annotate_migrations(diff(expanded, _live(temp, _classic("q1.dlq"))), expanded)
    temp_item = next(i for i in plan.items if i.name == "q1.migrating")
    assert temp_item.action is Action.CONFLICT
    assert "unfinished migration of 'q1'" in temp_item.note
    found = {m.queue: m for m in find_migrations(plan, expanded)}
    assert found["q1"].in_progress
    assert found["q1"].live is None


def test_quorum_to_classic_is_warned() -> None:
    expanded = parse_topology(TOPOLOGY.replace("type: quorum", "type: classic").replace(
        "    delivery_limit: 5\n", "")).expanded  # fmt: skip
    live_q = LiveQueue("q1", "quorum", True, False, False, {"x-queue-type": "quorum"})
    notes = warnings_for(expanded.queues["q1"], live_q)
    assert any(n.startswith("warning: quorum to classic") for n in notes)
