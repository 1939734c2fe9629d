"""Apply a plan: nothing at all while a conflict exists, otherwise every change in order.

Order (docs/rabbitmq-behaviour.md section 6): vhost -> policies (new queues are born under their
policy) -> exchanges -> queues -> bindings (exchange-to-exchange ones too, after both ends
exist) -> binding deletes (new bindings first: no routing gap) -> queue deletes -> exchange
deletes -> policy deletes. AMQP work runs on one connection, one object per call: a refusal
closes one channel and names one object. Policies, the vhost and the if-empty deletes go
through the management API, which is the only place they exist.

After the changes the vhost is planned again; anything but "no changes" is an error, because
a successful declare does not prove the broker holds what was asked (section 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Unpack

from bus.broker.live import LiveBinding, LivePolicy, LiveQueue
from bus.broker.management import ManagementClient
from bus.broker.plan import (
    Action,
    Plan,
    PlanConflicts,
    PlanItem,
    PlanKeywords,
    PolicySpec,
    expanded_of,
    plan,
)
from bus.broker.session import AmqpSession, ChannelRefused
from bus.errors import (
    AccessRefusedError,
    BrokerError,
    BusError,
    ManagementAPIError,
    NotFoundError,
    PlanConflictError,
    parse_access_refused,
)
from bus.settings import BusSettings
from bus.topology.expand import BindingSpec, ExchangeSpec, ExpandedTopology, QueueSpec
from bus.topology.load import LoadedTopology
from bus.topology.model import Vhost

__all__ = ["ApplyResult", "apply"]


def _needed_permission(
    operation: str, kind: str, name: str, refused: tuple[str, str] | None, refers: str | None
) -> str:
    """The permission a 403 on ``operation`` of ``kind name`` says is missing (3.10.8).

    The broker's text names the refused object, not the permission. Declare and delete need
    configure on the object; declaring one that names an alternate or dead-letter exchange
    (``refers``) also needs read on the object (checked after configure, so the text cannot
    tell them apart) and write on that exchange; (un)bind needs write on the destination and
    read on the source.
    """
    same = refused is None or refused == (kind, name)
    if operation == "declare":
        if not same:
            return "write"
        return "configure or read" if refers else "configure"
    if operation in ("bind", "unbind"):
        return "write" if same else "read"
    return "configure"


@dataclass
class ApplyResult:
    """What ``apply`` did, counted per object (vhost, exchange, queue, binding, policy)."""

    plan: Plan
    dry_run: bool = False
    created: int = 0
    """Objects declared that did not exist."""
    updated: int = 0
    """Objects changed in place: the vhost's metadata, a policy's definition."""
    recreated: int = 0
    """Empty queues deleted and declared again (a difference a redeclare cannot change)."""
    deleted: int = 0
    """Objects removed by ``--prune``."""
    # Deletes the broker refused at apply time (a queue that received messages since the plan).
    kept: list[str] = field(default_factory=list)
    verification: Plan | None = None

    @property
    def unchanged(self) -> int:
        return len(self.plan.by_action(Action.UNCHANGED))

    def summary(self) -> str:
        if self.dry_run:
            return "Dry run: nothing was changed."
        text = (
            f"Applied: {self.created} created, {self.updated} updated, {self.recreated} "
            f"recreated, {self.deleted} deleted, {self.unchanged} unchanged."
        )
        if self.kept:
            text += f" Kept (refused by the broker): {', '.join(self.kept)}."
        if self.verification is None:
            text += " Not re-planned (management API unavailable)."
        else:
            text += " Re-plan: no changes."
        return text


@dataclass
class _Executor:
    """Carries out a plan's changes in order, counting them into ``result``; opens the
    management API and the AMQP session only when a change needs them."""

    expanded: ExpandedTopology
    settings: BusSettings
    plan: Plan
    result: ApplyResult
    done: int = 0
    management: ManagementClient | None = None
    session: AmqpSession | None = None

    @property
    def vhost(self) -> str:
        return self.plan.vhost

    @property
    def total(self) -> int:
        return len(self.plan.changes)

    # -- helpers --------------------------------------------------------------------------
    def http(self) -> ManagementClient:
        if self.management is None:
            self.management = ManagementClient.from_settings(self.settings)
        return self.management

    def amqp(self) -> AmqpSession:
        if self.session is None:
            self.session = AmqpSession(self.settings, self.vhost, "amqp-bus apply")
        return self.session

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        if self.management is not None:
            self.management.close()

    def progress(self) -> str:
        return f"after {self.done} of {self.total} changes"

    def refused(self, exc: ChannelRefused, operation: str, kind: str, name: str) -> BusError:
        text = f"{exc.reply_code} {exc.reply_text}"
        user, _ = self.settings.credentials()
        if exc.reply_code == 403:
            refused = parse_access_refused(exc.reply_text)
            spec: ExchangeSpec | QueueSpec | None = (
                self.expanded.exchanges.get(name)
                if kind == "exchange"
                else self.expanded.queues.get(name)
            )
            args = spec.arguments if spec is not None else {}
            refers = args.get("alternate-exchange") or args.get("x-dead-letter-exchange")
            permission = _needed_permission(
                operation, kind, name, refused and (refused[0], refused[1]), refers
            )
            why = f"{operation} {kind} {name!r}"
            if refers and operation == "declare":
                role = "alternate" if kind == "exchange" else "dead-letter"
                why += f" needs configure and read on it, write on {role} exchange {refers!r}"
            return AccessRefusedError.from_reply(
                exc.reply_text, permission, kind=kind, name=name, vhost=self.vhost, user=user,
                detail=f"{why}; stopped {self.progress()}",
            )  # fmt: skip
        if exc.reply_code == 406 and "inequivalent arg" in exc.reply_text:
            return PlanConflictError(
                f"the broker refused to {operation} {kind} {name!r} ({text}): it changed since "
                f"the plan; stopped {self.progress()}"
            )
        if exc.reply_code == 406:
            # invalid arg ... value_too_large / value_zero / max_value_exceeded: the value
            # itself, not a drift; the validator should know every such limit.
            return BrokerError(
                f"the broker refused a value of {kind} {name!r} ({text}); stopped "
                f"{self.progress()}: fix the value in the topology (bus validate knows the "
                "limits it has measured; this one is new)"
            )
        if exc.reply_code == 404:
            return NotFoundError(f"{operation} {kind} {name!r}: {text}; stopped {self.progress()}")
        return BrokerError(f"{operation} {kind} {name!r}: {text}; stopped {self.progress()}")

    # -- phases ---------------------------------------------------------------------------
    def run(self) -> None:
        items = self.plan.items
        for item in items:
            if item.kind == "vhost" and item.action in (Action.CREATE, Action.UPDATE):
                self.vhost_item(item)
        for item in items:
            if item.kind == "policy" and item.action in (Action.CREATE, Action.UPDATE):
                self.policy_put(item)
        for item in items:
            if item.kind == "exchange" and item.action is Action.CREATE:
                self.create_exchange(item)
        bound: set[str] = set()
        for item in items:
            if item.kind != "queue":
                continue
            if item.action is Action.RECREATE:
                self.recreate(item, bound)
            elif item.action is Action.CREATE:
                self.create_queue(item)
        for item in items:
            if item.kind != "binding" or item.name in bound:
                continue
            if item.action in (Action.CREATE, Action.RECREATE, Action.UNVERIFIED):
                self.bind(item)
                if item.action is Action.CREATE:
                    self.result.created += 1
        for kind in ("binding", "queue", "exchange", "policy"):
            for item in items:
                if item.kind == kind and item.action is Action.DELETE:
                    self.delete(item)

    def create_exchange(self, item: PlanItem) -> None:
        assert isinstance(item.desired, ExchangeSpec)
        x = item.desired
        self.do("declare", "exchange", x.name, lambda s: s.declare_exchange(x))
        self.result.created += 1

    def create_queue(self, item: PlanItem) -> None:
        assert isinstance(item.desired, QueueSpec)
        q = item.desired
        self.do("declare", "queue", q.name, lambda s: s.declare_queue(q))
        self.result.created += 1

    def do(self, operation: str, kind: str, name: str, step: Callable[[AmqpSession], None]) -> None:
        try:
            step(self.amqp())
        except ChannelRefused as exc:
            raise self.refused(exc, operation, kind, name) from None
        self.done += 1

    def vhost_item(self, item: PlanItem) -> None:
        spec = item.desired if isinstance(item.desired, Vhost) else None
        http = self.http()
        if item.action is Action.CREATE:
            http.create_vhost(
                self.vhost,
                default_queue_type=spec.default_queue_type if spec else None,
                description=spec.description if spec else None,
            )
            # A new vhost has no permissions: without this the AMQP connection is refused.
            user, _ = self.settings.credentials()
            http.set_permissions(self.vhost, user)
            self.result.created += 1
        else:
            http.update_vhost(self.vhost, description=(spec.description if spec else None) or "")
            self.result.updated += 1
        self.done += 1

    def policy_put(self, item: PlanItem) -> None:
        assert isinstance(item.desired, PolicySpec)
        p = item.desired
        self.http().put_policy(
            self.vhost, p.name, pattern=p.pattern, apply_to=p.apply_to, priority=p.priority,
            definition=p.definition,
        )  # fmt: skip
        if item.action is Action.CREATE:
            self.result.created += 1
        else:
            self.result.updated += 1
        self.done += 1

    def recreate(self, item: PlanItem, bound: set[str]) -> None:
        """Delete an empty queue (the broker checks emptiness atomically), declare it, rebind."""
        assert isinstance(item.desired, QueueSpec)
        q = item.desired
        try:
            self.http().delete_queue(self.vhost, q.name, if_empty=True)
        except ManagementAPIError as exc:
            raise PlanConflictError(
                f"queue {q.name!r} was not recreated: {exc} (it received messages since the "
                f"plan; nothing was deleted); stopped {self.progress()}"
            ) from None
        self.do("declare", "queue", q.name, lambda s: s.declare_queue(q))
        self.result.recreated += 1
        # Its bindings went with it: bind them now, before anything else, to keep the gap short.
        for b_item in self.plan.items:
            b = b_item.desired or b_item.live
            if (
                b_item.kind == "binding"
                and b_item.action in (Action.CREATE, Action.RECREATE)
                and isinstance(b, BindingSpec | LiveBinding)
                and b.destination_type == "queue"
                and b.destination == q.name
            ):
                self.bind(b_item)
                bound.add(b_item.name)
                if b_item.action is Action.CREATE:
                    self.result.created += 1

    def bind(self, item: PlanItem) -> None:
        b = item.desired if item.desired is not None else item.live
        assert isinstance(b, BindingSpec | LiveBinding)
        self.do("bind", f"{b.destination_type}", b.destination, lambda s: s.bind(b))

    def delete(self, item: PlanItem) -> None:
        if item.kind == "binding":
            assert isinstance(item.live, LiveBinding)
            b = item.live
            self.do("unbind", b.destination_type, b.destination, lambda s: s.unbind(b))
        elif item.kind == "queue":
            assert isinstance(item.live, LiveQueue)
            if self.plan.options.allow_data_loss:
                name = item.live.name
                self.do("delete", "queue", name, lambda s: s.delete_queue(name))
            else:
                try:
                    self.http().delete_queue(self.vhost, item.live.name, if_empty=True)
                except ManagementAPIError as exc:
                    if exc.status_code != 400:
                        raise
                    self.result.kept.append(f"queue {item.live.name!r} ({exc})")
                    return
                self.done += 1
        elif item.kind == "exchange":
            name = item.name
            try:
                self.do("delete", "exchange", name, lambda s: s.delete_exchange(name))
            except PlanConflictError:
                # if-unused refused: something was bound to it since the plan.
                self.result.kept.append(f"exchange {name!r} (in use)")
                return
        elif item.kind == "policy":
            assert isinstance(item.live, LivePolicy)
            self.http().delete_policy(self.vhost, item.live.name)
            self.done += 1
        self.result.deleted += 1


def apply(
    topology: LoadedTopology | ExpandedTopology,
    settings: BusSettings | None = None,
    *,
    dry_run: bool = False,
    on_plan: Callable[[Plan], None] | None = None,
    **planning: Unpack[PlanKeywords],
) -> ApplyResult:
    """Plan, then apply every change; raise :class:`PlanConflicts` (nothing applied) on conflict.

    ``planning`` are the keywords of :func:`~bus.broker.plan.plan` (``vhost``, ``prune``,
    ``recreate_empty``, ``allow_data_loss``). The vhost is created only when the topology
    names it (``vhost: {name: ...}``); the connecting user then gets full permissions on it.
    ``on_plan`` sees the plan before any change (the CLI prints it there).
    """
    expanded = expanded_of(topology)
    settings = settings or BusSettings()
    planned = plan(expanded, settings, **planning)
    if on_plan is not None:
        on_plan(planned)
    if planned.conflicts:
        raise PlanConflicts(planned)
    result = ApplyResult(planned, dry_run=dry_run)
    if planned.source == "amqp":
        if planned.options.prune:
            raise BrokerError(
                "--prune needs the management API (AMQP cannot list a vhost): nothing was applied"
            )
        if expanded.policies:
            raise BrokerError(
                "policies can only be applied through the management API: nothing was applied"
            )
    if dry_run:
        return result
    if not planned.has_changes and not planned.by_action(Action.UNVERIFIED):
        result.verification = planned if planned.source == "management" else None
        return result
    executor = _Executor(expanded, settings, planned, result)
    try:
        executor.run()
    finally:
        executor.close()
    if planned.source == "management":
        again = plan(expanded, settings, **planning)
        if again.has_changes or again.conflicts:
            pending = "; ".join(
                f"{i.action} {i.kind} {i.name}" for i in again.changes + again.conflicts
            )
            raise BrokerError(f"apply did not converge: a new plan still shows {pending}")
        result.verification = again
    return result
