"""Live migration of queues whose immutable properties changed: the blue/green move, resumable.

For queue ``Q`` and its temporary queue ``T = Q.migrating`` (docs/queue-migration.md):

1. declare ``T`` with the new properties, bind it like ``Q`` (new messages land in both);
2. unbind ``Q`` (new messages land only in ``T``);
3. move ``Q``'s messages into ``T`` (:mod:`bus.migrate_move`: confirmed, then acked);
4. once ``Q`` holds nothing (ready or unacknowledged), delete it (if-empty), declare it with
   the new properties and bind it (bindings of ``T``, which copied ``Q``'s, and the topology's);
5. unbind ``T``, move its messages back into ``Q``, delete ``T`` (if-empty).

Every step is idempotent and the stage is read from the broker each time, so a run that stops
anywhere (crash, Ctrl-C, lost connection) is finished by running again: ``T`` existing means
a migration is under way; ``Q`` then either still has its old properties (steps 1-4), is
missing (inside step 4) or has its new ones (step 5).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import cast

from bus.broker import apply as apply_plan
from bus.broker.inspect import read_live_state
from bus.broker.live import LiveBinding, LiveQueue
from bus.broker.management import ManagementClient
from bus.broker.plan import Plan, PlanConflicts, expanded_of, plan, queue_differences
from bus.broker.plan_migrations import Migration, annotate_migrations, find_migrations
from bus.broker.session import AmqpSession, ChannelRefused
from bus.errors import BrokerError, ManagementAPIError, UsageError
from bus.migrate_move import MoveReport, move_messages
from bus.settings import BusSettings
from bus.topology.expand import BindingSpec, ExpandedTopology, QueueSpec
from bus.topology.load import LoadedTopology
from bus.topology.model import QueueType

__all__ = ["MigrationReport", "MigrationRun", "migrate", "migrate_queue"]

Say = Callable[[str], None]
# How long step 4 waits for the application's consumers to settle what they hold.
UNACKED_TIMEOUT = 300.0


@dataclass
class MigrationReport:
    queue: str
    resumed: bool = False
    moved_out: int = 0
    moved_back: int = 0
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        how = " (resumed)" if self.resumed else ""
        return (
            f"migrated {self.queue!r}{how}: {self.moved_out} messages moved out, "
            f"{self.moved_back} moved back, {self.seconds:.1f} s"
        )


@dataclass
class MigrationRun:
    plan: Plan
    migrations: list[Migration]
    dry_run: bool = False
    reports: list[MigrationReport] = field(default_factory=list)

    def summary(self) -> str:
        if self.dry_run:
            return f"Dry run: {len(self.migrations)} queue(s) to migrate, nothing was changed."
        moved = sum(r.moved_out + r.moved_back for r in self.reports)
        seconds = sum(r.seconds for r in self.reports)
        return (
            f"Migrated {len(self.reports)} queue(s): {moved} message moves in {seconds:.1f} s. "
            "Messages may have been reordered and duplicated (at least once)."
        )


def _binding_to(b: BindingSpec | LiveBinding, queue: str) -> BindingSpec:
    return BindingSpec(b.source, queue, "queue", b.routing_key, dict(b.arguments))


class _Mover:
    """One queue's migration against the broker, stage by stage."""

    def __init__(self, settings: BusSettings, vhost: str, m: Migration, say: Say) -> None:
        self.settings, self.vhost, self.m, self.say = settings, vhost, m, say
        self.q, self.t = m.queue, m.temp
        d = m.desired
        self.temp_spec = QueueSpec(self.t, d.type, d.durable, d.auto_delete, dict(d.arguments))
        self.http = ManagementClient.from_settings(settings)
        self.session = AmqpSession(settings, vhost, f"amqp-bus migrate {self.q}")
        self.report = MigrationReport(self.q, warnings=m.warnings)

    def close(self) -> None:
        self.session.close()
        self.http.close()

    def live(self) -> tuple[LiveQueue | None, LiveQueue | None, list[LiveBinding]]:
        state = read_live_state(self.http, self.vhost)
        bindings = [b for b in state.bindings if b.source and b.destination_type == "queue"]
        return state.queues.get(self.q), state.queues.get(self.t), bindings

    def bindings_of(self, name: str, bindings: list[LiveBinding]) -> list[LiveBinding]:
        return [b for b in bindings if b.destination == name]

    def run(self) -> MigrationReport:
        started = time.monotonic()
        q, t, bindings = self.live()
        self.report.resumed = t is not None
        if t is None:
            if q is None:
                raise BrokerError(f"queue {self.q!r} does not exist: bus apply creates it")
            if not queue_differences(self.m.desired, q):
                self.say(f"{self.q}: already as the topology says: nothing to migrate")
                return self.report
        elif q is not None:
            stage = "steps 1-4" if queue_differences(self.m.desired, q) else "step 5"
            self.say(f"{self.q}: resuming an unfinished migration ({stage}): {self.t!r} exists")
        else:
            self.say(f"{self.q}: resuming an unfinished migration (step 4): {self.q!r} is missing")
        if q is not None and queue_differences(self.m.desired, q):
            self.blue(bindings)
        q, t, bindings = self.live()
        if q is None:
            self.say(f"{self.q}: step 4: declare {self.q!r} with the new properties and bind it")
            self.session.declare_queue(self.m.desired)
        sources: list[BindingSpec | LiveBinding] = [
            *self.bindings_of(self.t, bindings),
            *self.m.bindings,
        ]
        targets = {_binding_to(b, self.q).identity(): _binding_to(b, self.q) for b in sources}
        for b in targets.values():
            self.session.bind(b)
        self.green(bindings)
        self.report.seconds = round(time.monotonic() - started, 3)
        self.say(self.report.summary())
        return self.report

    def blue(self, bindings: list[LiveBinding]) -> None:
        """Steps 1-4 up to the delete: everything reaches ``T``, ``Q`` drains into it."""
        old = self.bindings_of(self.q, bindings)
        self.say(f"{self.q}: step 1: declare {self.t!r} and bind it like {self.q!r}")
        self.session.declare_queue(self.temp_spec)
        sources: list[BindingSpec | LiveBinding] = [*old, *self.m.bindings]
        wanted = {_binding_to(b, self.t).identity(): _binding_to(b, self.t) for b in sources}
        for b in wanted.values():
            self.session.bind(b)
        self.say(f"{self.q}: step 2: unbind {self.q!r} ({len(old)} bindings)")
        for live_b in old:
            self.session.unbind(live_b)
        self.say(f"{self.q}: step 3: move the messages of {self.q!r} into {self.t!r}")
        while True:
            moved = self.move(self.q, self.t)
            self.report.moved_out += moved.moved
            if self.settled(self.q) and self.delete_if_empty(self.q):
                return
            self.say(f"{self.q}: messages arrived meanwhile: moving again")

    def green(self, bindings: list[LiveBinding]) -> None:
        """Step 5: ``T`` stops receiving, its messages go back into ``Q``, ``T`` goes."""
        temp_bindings = self.bindings_of(self.t, bindings)
        self.say(f"{self.q}: step 5: unbind {self.t!r}, move its messages back, delete it")
        for b in temp_bindings:
            self.session.unbind(b)
        while True:
            moved = self.move(self.t, self.q)
            self.report.moved_back += moved.moved
            if self.delete_if_empty(self.t):
                return

    def move(self, source: str, target: str) -> MoveReport:
        last = [0.0]

        def progress(r: MoveReport) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0:
                last[0] = now
                self.say(f"  {source} -> {target}: {r.moved} moved")

        report = move_messages(self.settings, self.vhost, source, target, progress=progress)
        self.say(f"  {source} -> {target}: {report.moved} moved in {report.seconds:.1f} s")
        return report

    def settled(self, name: str) -> bool:
        """No message held by a consumer either: deleting then loses nothing.

        The unbound queue only shrinks, so the management API's figure (which lags by its
        statistics interval) can only be too high, never too low.
        """
        deadline = time.monotonic() + UNACKED_TIMEOUT
        while True:
            usage = self.session.passive_queue(name)
            if usage.messages:
                return False
            if not usage.consumers:
                return True
            info = self.http.queue(self.vhost, name) or {}
            if info.get("messages") == 0 and info.get("messages_unacknowledged") == 0:
                return True
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"queue {name!r}: its consumers still hold unacknowledged messages after "
                    f"{UNACKED_TIMEOUT:.0f} s; run again to finish the migration"
                )
            time.sleep(1.0)

    def delete_if_empty(self, name: str) -> bool:
        try:
            self.http.delete_queue(self.vhost, name, if_empty=True)
        except ManagementAPIError as exc:
            if exc.status_code != 400:
                raise
            if "not supported by quorum queues" not in str(exc):
                return False  # a message arrived since the check: move it first
            # Quorum queues refuse if-empty (3.10): check, then delete. The queue is unbound
            # and drained; only a publish naming it on the default exchange could slip in.
            if self.session.passive_queue(name).messages:
                return False
            self.session.delete_queue(name)
        return True


def migrate_queue(
    settings: BusSettings, vhost: str, migration: Migration, say: Say = print
) -> MigrationReport:
    """Run (or finish) one queue's migration."""
    mover = _Mover(settings, vhost, migration, say)
    try:
        for warning in migration.warnings:
            say(f"{migration.queue}: {warning}")
        try:
            return mover.run()
        except ChannelRefused as exc:
            raise BrokerError(
                f"migrating {migration.queue!r}: {exc}; run again to finish"
            ) from None
    finally:
        mover.close()


def _pinned(expanded: ExpandedTopology, migrations: list[Migration]) -> ExpandedTopology:
    """The topology with each migrating queue as it is live: apply leaves those alone."""
    queues = dict(expanded.queues)
    for m in migrations:
        if m.live is not None:
            spec = queues[m.queue]
            live_type = cast(QueueType, m.live.type)
            queues[m.queue] = replace(
                spec, type=live_type, durable=m.live.durable, auto_delete=m.live.auto_delete,
                arguments=dict(m.live.arguments),
            )  # fmt: skip
    return replace(expanded, queues=queues)


def _check_queue_names(expanded: ExpandedTopology, queues: list[str]) -> None:
    """Refuse, before any broker is contacted, a queue name the topology does not declare."""
    unknown = [q for q in queues if q not in expanded.queues]
    if not unknown:
        return
    known = sorted(expanded.queues)
    nearest = sorted({n for q in unknown for n in difflib.get_close_matches(q, known, n=3)})
    hint = f"; nearest known: {', '.join(nearest)}" if nearest else ""
    raise UsageError(f"queue not in the topology: {', '.join(unknown)}{hint}")


def migrate(
    topology: LoadedTopology | ExpandedTopology,
    settings: BusSettings | None = None,
    *,
    vhost: str | None = None,
    queues: list[str] | None = None,
    prune: bool = False,
    dry_run: bool = False,
    on_plan: Callable[[Plan], None] | None = None,
    say: Say = print,
) -> MigrationRun:
    """``bus apply --migrate`` (``queues`` None) or ``bus migrate Q`` (``queues=[Q]``).

    Unfinished migrations are finished first; then the rest of the plan is applied with the
    migrating queues left as they are (new dead-letter exchanges exist before a queue names
    them); then each queue is migrated; then the vhost is planned again.
    """
    expanded = expanded_of(topology)
    if queues is not None:
        _check_queue_names(expanded, queues)
    settings = settings or BusSettings()
    planned = annotate_migrations(plan(expanded, settings, vhost=vhost, prune=prune), expanded,
                                   migrate=True)  # fmt: skip
    all_migrations = find_migrations(planned, expanded)
    chosen = find_migrations(planned, expanded, queues) if queues is not None else all_migrations
    if on_plan is not None:
        on_plan(planned)
    migrating = {m.queue for m in all_migrations} | {m.temp for m in all_migrations}
    others = [i for i in planned.conflicts if i.name not in migrating]
    if others:
        raise PlanConflicts(replace(planned, items=others), "they cannot be migrated")
    run = MigrationRun(planned, chosen, dry_run=dry_run)
    if dry_run:
        for m in chosen if on_plan is None else ():  # a rendered plan lists the steps already
            say(f"{m.queue} -> {m.temp} -> {m.queue}:")
            for line in (*m.steps(), *m.warnings):
                say(f"  {line}")
        return run
    name = planned.vhost
    for m in chosen:
        if m.in_progress:
            run.reports.append(migrate_queue(settings, name, m, say))
    if queues is None or planned.has_changes:
        finished = {m.queue for m in chosen if m.in_progress}
        pinned = [m for m in all_migrations if m.queue not in finished]
        apply_plan(_pinned(expanded, pinned), settings, vhost=name, prune=prune)
    for m in chosen:
        if not m.in_progress:
            run.reports.append(migrate_queue(settings, name, m, say))
    again = annotate_migrations(plan(expanded, settings, vhost=name, prune=prune), expanded)
    done = {m.queue for m in chosen}
    left = [i for i in again.conflicts if i.name in done or i.name in {m.temp for m in chosen}]
    if left or (queues is None and (again.has_changes or again.conflicts)):
        pending = "; ".join(f"{i.action} {i.kind} {i.name}" for i in left or again.items
                            if i in again.changes + again.conflicts)  # fmt: skip
        raise BrokerError(f"migration did not converge: a new plan still shows {pending}")
    say(run.summary())
    return run
