"""Which queues a live migration moves, in which order, and the steps it takes (pure logic).

A queue whose immutable properties (type, durable, auto_delete, compared or ignored arguments)
differ from the topology can only change by delete and recreate. ``bus apply --migrate`` does
that without losing its messages: a blue/green move through a temporary queue named
``<queue>.migrating`` (docs/queue-migration.md). The temporary queue's presence on the broker is
what makes a half-done migration visible to ``bus plan`` and resumable by running again.

Nothing here touches the broker: the input is a :class:`~bus.broker.plan.Plan` (its items carry
the live objects) and the expanded topology.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bus.broker.live import LiveQueue
from bus.broker.plan_model import Action, Plan, PlanItem
from bus.topology.expand import BindingSpec, ExpandedTopology, QueueSpec

__all__ = [
    "TEMP_SUFFIX",
    "Migration",
    "annotate_migrations",
    "find_migrations",
    "migratable",
    "original_of",
    "temp_name",
]

TEMP_SUFFIX = ".migrating"
# Fields a redeclare cannot change but a delete + declare can (not "exclusive": another
# connection owns such a queue, and it vanishes with that connection anyway).
_MOVABLE_FIELDS = ("type", "durable", "auto_delete")


def temp_name(queue: str) -> str:
    return queue + TEMP_SUFFIX


def original_of(name: str) -> str | None:
    """The queue a temporary queue belongs to, or None when ``name`` is not one."""
    if name.endswith(TEMP_SUFFIX) and len(name) > len(TEMP_SUFFIX):
        return name[: -len(TEMP_SUFFIX)]
    return None


@dataclass(frozen=True)
class Migration:
    """One queue to move: its desired spec, what is live now, and what to warn about."""

    queue: str
    desired: QueueSpec
    live: LiveQueue | None  # None: a resumed migration found the queue deleted (step 4)
    bindings: tuple[BindingSpec, ...]
    in_progress: bool = False  # the temporary queue exists: a run stopped half-way
    warnings: tuple[str, ...] = ()

    @property
    def temp(self) -> str:
        return temp_name(self.queue)

    def steps(self) -> list[str]:
        q, t, d = self.queue, self.temp, self.desired
        args = {k: v for k, v in d.arguments.items() if k != "x-queue-type"}
        props = f"{d.type}" + (f" {args}" if args else "")
        n = len(self.bindings)
        return [
            f"1. declare {t!r} ({props}) and bind it like {q!r} ({n} binding"
            f"{'s' if n != 1 else ''}): new messages land in both",
            f"2. unbind {q!r}: new messages land only in {t!r}",
            f"3. move the messages of {q!r} into {t!r} (each confirmed, then acked)",
            f"4. delete {q!r} once empty; declare it again ({props}) with its bindings",
            f"5. unbind {t!r}, move its messages back into {q!r}, delete {t!r}",
        ]


def migratable(item: PlanItem) -> bool:
    """A queue conflict that delete + declare resolves (not an exclusive queue)."""
    if item.kind != "queue" or item.action not in (Action.CONFLICT, Action.MIGRATE):
        return False
    if not isinstance(item.live, LiveQueue) or item.live.exclusive:
        return False
    if not isinstance(item.desired, QueueSpec) or not item.differences:
        return False
    return all(
        d.field in _MOVABLE_FIELDS or d.field.startswith("arguments.") for d in item.differences
    )


def warnings_for(desired: QueueSpec, live: LiveQueue | None) -> tuple[str, ...]:
    """What the move changes for the messages beyond the queue's own properties."""
    if live is None:
        return ()
    notes: list[str] = []
    limit = desired.arguments.get("x-delivery-limit")
    if live.type == "quorum" and desired.type != "quorum":
        notes.append(
            f"warning: quorum to {desired.type}: the delivery limit and at-least-once "
            "dead-lettering are lost; a message that always fails is redelivered forever"
        )
    elif desired.type == "quorum" and live.type != "quorum":
        if limit is None:
            notes.append(
                "warning: classic to quorum without delivery_limit: 3.x has no limit, 4.x "
                "drops (or dead-letters) a message at its 21st delivery; set delivery_limit"
            )
        else:
            notes.append(f"delivery_limit {limit} applies from the move on (counts start at 0)")
    elif desired.type == "quorum" and live.type == "quorum":
        notes.append("delivery counts start again at 0: every message is published anew")
    if "x-message-ttl" in desired.arguments:
        notes.append("x-message-ttl counts from the move: moved messages live longer")
    return tuple(notes)


def _order(names: list[str], expanded: ExpandedTopology) -> list[str]:
    """A queue's dead-letter and retry queues before the queue itself (its own DLX target
    and the retry queues that feed it are in their final form when it moves)."""

    def rank(name: str) -> tuple[int, str]:
        spec = expanded.queues.get(name)
        return (0 if spec is not None and spec.role != "queue" else 1, name)

    return sorted(names, key=rank)


def find_migrations(
    plan: Plan, expanded: ExpandedTopology, queues: list[str] | None = None
) -> list[Migration]:
    """The migrations the plan calls for (or those of ``queues`` and their DLQ/retry queues).

    A migration in progress (its temporary queue exists) is always included for a queue asked
    for, whatever the queue looks like now.
    """
    live_queues = {i.name: i for i in plan.items if i.kind == "queue"}
    temps = {original_of(n) for n in live_queues if original_of(n) in expanded.queues}
    wanted: set[str] | None = None
    if queues is not None:
        wanted = set(queues)
        for name in queues:
            wanted |= {
                n for n, spec in expanded.queues.items() if spec.owner == name
            }  # its dead-letter and retry queues
    found: list[str] = []
    for name, item in live_queues.items():
        if name not in expanded.queues or (wanted is not None and name not in wanted):
            continue
        if migratable(item) or name in temps:
            found.append(name)
    result = []
    for name in _order(found, expanded):
        item = live_queues[name]
        spec = expanded.queues[name]
        live = item.live if isinstance(item.live, LiveQueue) else None
        bindings = tuple(
            b for b in expanded.bindings if b.destination_type == "queue" and b.destination == name
        )
        result.append(
            Migration(name, spec, live, bindings, name in temps, warnings_for(spec, live))
        )
    return result


def annotate_migrations(
    plan: Plan, expanded: ExpandedTopology, *, migrate: bool | None = None
) -> Plan:
    """Mark migratable queue conflicts (and migrations in progress) in ``plan``.

    With ``migrate`` (default: ``plan.options.migrate``) a migratable conflict becomes a
    ``MIGRATE`` item listing the steps; without, it stays a conflict that names the command.
    A temporary queue of an unfinished migration is always a conflict without ``migrate``:
    ``bus apply`` must not go on as if nothing happened.
    """
    if migrate is None:
        migrate = plan.options.migrate
    target = Action.MIGRATE if migrate else Action.CONFLICT
    by_name = {m.queue: m for m in find_migrations(plan, expanded)}
    items: list[PlanItem] = []
    for item in plan.items:
        if item.kind != "queue":
            items.append(item)
            continue
        owner = original_of(item.name)
        if owner in by_name and item.name not in expanded.queues:
            note = f"temporary queue of an unfinished migration of {owner!r}"
            fix = "" if migrate else f": bus migrate {owner} finishes it"
            items.append(replace(item, action=target, note=note + fix))
            continue
        m = by_name.get(item.name)
        if m is None:
            items.append(item)
            continue
        if migrate:
            how = "in progress: resumed" if m.in_progress else "blue/green move"
            note = f"{how} through {m.temp!r}; messages may reorder"
            remarks = (*item.remarks, *m.steps(), *m.warnings)
        else:
            how = "a migration is in progress: " if m.in_progress else ""
            hint = f"{how}bus apply --migrate (or bus migrate {m.queue}) changes it live"
            # The differ's own note (e.g. why --recreate-empty refused) stays first.
            if item.note and hint in item.note:
                note = item.note
            else:
                note = f"{item.note}; {hint}" if item.note else hint
            remarks = (*item.remarks, *m.warnings)
        # dict.fromkeys: annotating twice (plan() and then migrate) repeats no line.
        remarks = tuple(dict.fromkeys(remarks))
        items.append(replace(item, action=target, note=note, remarks=remarks))
    plan.items = items
    return plan
