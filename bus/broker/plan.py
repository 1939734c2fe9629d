"""Desired (the expanded topology) against live (one vhost): every object gets an action.

``create`` / ``unchanged`` / ``update`` (policies, vhost description: mutable in place) /
``conflict`` (an immutable field differs, or a difference the broker would silently ignore) /
``recreate`` (a conflicting queue that is empty, with ``recreate_empty``) / ``delete`` (with
``prune``) / ``unmanaged`` (live, not in the topology, and left alone) / ``unverified`` (the
management API was unreachable and AMQP cannot tell).

The comparison follows docs/rabbitmq-behaviour.md: values are compared with their types (integer
widths are equal; ``1000`` and ``"1000"`` and ``True`` are three different values), the
broker's compared queue arguments depend on the queue type, and an exchange compares only
``alternate-exchange`` among its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from bus.broker.inspect import (
    LiveBinding,
    LiveExchange,
    LivePolicy,
    LiveQueue,
    LiveState,
    LiveVhost,
    Probe,
    QueueUsage,
    normalise_queue_type,
    probe_objects,
    queue_usage,
    read_live_state,
)
from bus.broker.management import ManagementClient
from bus.broker.session import AmqpSession
from bus.errors import AccessRefusedError, BrokerUnavailableError, NotFoundError, PlanConflictError
from bus.patterns import compile_name_pattern
from bus.settings import BusSettings, mask_url, with_vhost
from bus.topology.expand import BindingSpec, ExchangeSpec, ExpandedTopology, QueueSpec
from bus.topology.load import LoadedTopology
from bus.topology.model import Vhost

__all__ = [
    "COMPARED_QUEUE_ARGUMENTS",
    "Action",
    "Difference",
    "Plan",
    "PlanConflicts",
    "PlanItem",
    "PlanOptions",
    "PolicySpec",
    "binding_key",
    "diff",
    "expanded_of",
    "plan",
    "resolve_vhost",
    "same_value",
]


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    RECREATE = "recreate"
    DELETE = "delete"
    CONFLICT = "conflict"
    UNCHANGED = "unchanged"
    UNMANAGED = "unmanaged"
    UNVERIFIED = "unverified"


CHANGES = frozenset({Action.CREATE, Action.UPDATE, Action.RECREATE, Action.DELETE})
Kind = Literal["vhost", "policy", "exchange", "queue", "binding"]
_SYMBOL = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.RECREATE: "*",
    Action.DELETE: "-",
    Action.CONFLICT: "!",
    Action.UNCHANGED: "=",
    Action.UNMANAGED: ".",
    Action.UNVERIFIED: "?",
}

# Arguments each queue type compares on redeclare (docs/rabbitmq-behaviour.md section 1, from the
# 3.10 source). Any other argument is stored and never compared: changing it is ineffective.
COMPARED_QUEUE_ARGUMENTS: dict[str, frozenset[str]] = {
    "classic": frozenset({
        "x-queue-type", "x-message-ttl", "x-expires", "x-dead-letter-exchange",
        "x-dead-letter-routing-key", "x-max-length", "x-max-length-bytes", "x-overflow",
        "x-single-active-consumer", "x-max-priority", "x-queue-mode", "x-queue-version",
        "x-queue-master-locator",
    }),
    "quorum": frozenset({
        "x-queue-type", "x-message-ttl", "x-expires", "x-dead-letter-exchange",
        "x-dead-letter-routing-key", "x-dead-letter-strategy", "x-max-length",
        "x-max-length-bytes", "x-overflow", "x-single-active-consumer",
        "x-queue-leader-locator", "x-quorum-initial-group-size", "x-delivery-limit",
        "x-max-in-memory-length", "x-max-in-memory-bytes",
    }),
    "stream": frozenset({
        "x-queue-type", "x-max-length-bytes", "x-queue-leader-locator", "x-max-age",
        "x-stream-max-segment-size-bytes", "x-initial-cluster-size",
    }),
}  # fmt: skip

IMMUTABLE = (
    "immutable: a redeclare fails with PRECONDITION_FAILED; only delete + recreate changes it"
)
INEFFECTIVE = "ineffective: the broker ignores this; only delete + recreate changes it"
VHOST_DEFAULT_TYPE = "immutable: the broker keeps a vhost's default queue type once it is set"
MUTABLE = "mutable: updated in place"


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


class BrokerText(str):
    """A value as the broker's error text spelled it (AMQP fallback): shown verbatim."""

    __slots__ = ()


def same_value(a: object, b: object) -> bool:
    """Equality as the broker sees it: integer widths equal, other types never equal."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _canonical(value: object) -> object:
    if isinstance(value, dict):
        return ("table", tuple(sorted((str(k), _canonical(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    return (type(value).__name__, value)


BindingKey = tuple[str, str, str, str, object]


def binding_key(
    source: str, destination_type: str, destination: str, routing_key: str, arguments: Any
) -> BindingKey:
    """What makes two bindings the same binding on the broker (typed, order-free arguments)."""
    return (source, destination_type, destination, routing_key, _canonical(dict(arguments)))


def _key_of(b: BindingSpec | LiveBinding) -> BindingKey:
    return binding_key(b.source, b.destination_type, b.destination, b.routing_key, b.arguments)


def describe(value: object) -> str:
    if value is ABSENT:
        return "(absent)"
    if isinstance(value, BrokerText):
        return str(value)
    if isinstance(value, bool):
        return f"{str(value).lower()} (boolean)"
    if isinstance(value, int):
        return f"{value} (integer)"
    if isinstance(value, float):
        return f"{value} (float)"
    if isinstance(value, str):
        return f"{value!r} (string)"
    return repr(value)


@dataclass(frozen=True)
class PolicySpec:
    name: str
    pattern: str
    apply_to: str
    priority: int
    definition: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Difference:
    field: str
    desired: Any
    live: Any
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.field}: desired {describe(self.desired)}, live {describe(self.live)} "
            f"({self.reason})"
        )


Desired = Vhost | PolicySpec | ExchangeSpec | QueueSpec | BindingSpec
Live = LiveVhost | LivePolicy | LiveExchange | LiveQueue | LiveBinding


@dataclass(frozen=True)
class PlanItem:
    action: Action
    kind: Kind
    name: str
    differences: tuple[Difference, ...] = ()
    note: str = ""
    desired: Desired | None = None
    live: Live | None = None
    # What the broker's version adds: effective delivery limit, warnings (plan_versions).
    remarks: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        head = f"  {_SYMBOL[self.action]} {self.action.value:<10} {self.kind} {self.name}"
        if self.note:
            head += f" {self.note}" if self.note.startswith("(") else f": {self.note}"
        return [head] + [f"      {d}" for d in (*self.differences, *self.remarks)]


@dataclass(frozen=True)
class PlanOptions:
    prune: bool = False
    recreate_empty: bool = False
    allow_data_loss: bool = False


@dataclass
class Plan:
    vhost: str
    items: list[PlanItem]
    options: PlanOptions
    source: Literal["management", "amqp"] = "management"
    unverified: list[str] = field(default_factory=list)
    broker: str = ""
    rabbitmq: str = ""  # the broker's version, when the management API told it

    def by_action(self, *actions: Action) -> list[PlanItem]:
        return [item for item in self.items if item.action in actions]

    @property
    def conflicts(self) -> list[PlanItem]:
        return self.by_action(Action.CONFLICT)

    @property
    def changes(self) -> list[PlanItem]:
        return [item for item in self.items if item.action in CHANGES]

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def verified(self) -> bool:
        """True when every object could be compared field by field."""
        return self.source == "management" and not self.unverified

    def counts(self) -> dict[Action, int]:
        counts = dict.fromkeys(Action, 0)
        for item in self.items:
            counts[item.action] += 1
        return counts

    def summary(self) -> str:
        counts = self.counts()
        parts = [
            f"{counts[Action.CREATE]} to create",
            f"{counts[Action.UPDATE]} to update",
            f"{counts[Action.RECREATE]} to recreate",
            f"{counts[Action.DELETE]} to delete",
            f"{counts[Action.UNCHANGED]} unchanged",
            f"{counts[Action.CONFLICT]} conflict{'s' if counts[Action.CONFLICT] != 1 else ''}",
            f"{counts[Action.UNMANAGED]} unmanaged",
        ]
        if counts[Action.UNVERIFIED]:
            parts.append(f"{counts[Action.UNVERIFIED]} unverified")
        return "Plan: " + ", ".join(parts) + "."

    def render(self, *, show_unchanged: bool = True) -> str:
        how = (
            "read through the management API"
            if self.source == "management"
            else "checked over AMQP only"
        )
        where = f" on {self.broker}" if self.broker else ""
        if self.rabbitmq:
            how += f", RabbitMQ {self.rabbitmq}"
        lines = [f"Plan for vhost {self.vhost!r}{where} ({how})"]
        for item in self.items:
            if show_unchanged or item.action is not Action.UNCHANGED:
                lines.extend(item.lines())
        for note in self.unverified:
            lines.append(f"Not verified: {note}")
        lines.append(self.summary())
        return "\n".join(lines) + "\n"


class PlanConflicts(PlanConflictError):
    """Conflicts found: nothing was applied. ``plan`` holds the full plan."""

    def __init__(self, plan: Plan, consequence: str = "nothing was applied") -> None:
        self.plan = plan
        names = ", ".join(f"{i.kind} {i.name}" for i in plan.conflicts[:5])
        more = f" and {len(plan.conflicts) - 5} more" if len(plan.conflicts) > 5 else ""
        super().__init__(
            f"{len(plan.conflicts)} conflict{'s' if len(plan.conflicts) != 1 else ''} in vhost "
            f"{plan.vhost!r} ({names}{more}): {consequence}"
        )


def expanded_of(topology: LoadedTopology | ExpandedTopology) -> ExpandedTopology:
    return topology.expanded if isinstance(topology, LoadedTopology) else topology


def binding_name(b: BindingSpec | LiveBinding) -> str:
    text = f"{b.source} -> {b.destination_type} {b.destination}"
    if b.routing_key:
        text += f" key {b.routing_key!r}"
    if b.arguments:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(b.arguments.items()))
        text += f" args {{{args}}}"
    return text


def policy_specs(expanded: ExpandedTopology) -> dict[str, PolicySpec]:
    return {
        name: PolicySpec(name, p.pattern, p.apply_to, p.priority, dict(p.definition))
        for name, p in expanded.policies.items()
    }


# -- field-by-field comparisons ---------------------------------------------------------------


def _field(name: str, desired: object, live: object, reason: str) -> list[Difference]:
    return [] if same_value(desired, live) else [Difference(name, desired, live, reason)]


def exchange_differences(
    d: ExchangeSpec, live: LiveExchange, exchange_types: frozenset[str] | None = None
) -> list[Difference]:
    diffs: list[Difference] = []
    diffs += _field("type", d.type, live.type, IMMUTABLE)
    diffs += _field("durable", d.durable, live.durable, IMMUTABLE)
    diffs += _field("auto_delete", d.auto_delete, live.auto_delete, IMMUTABLE)
    diffs += _field("internal", d.internal, live.internal, IMMUTABLE)
    for key in sorted(set(d.arguments) | set(live.arguments)):
        reason = IMMUTABLE if key == "alternate-exchange" else INEFFECTIVE
        diffs += _field(
            f"arguments.{key}",
            d.arguments.get(key, ABSENT),
            live.arguments.get(key, ABSENT),
            reason,
        )
    return diffs


def queue_differences(d: QueueSpec, live: LiveQueue) -> list[Difference]:
    diffs: list[Difference] = []
    diffs += _field("type", d.type, live.type, IMMUTABLE)
    diffs += _field("durable", d.durable, live.durable, IMMUTABLE)
    diffs += _field("auto_delete", d.auto_delete, live.auto_delete, IMMUTABLE)
    if live.exclusive:
        diffs.append(
            Difference("exclusive", False, True, "the queue is exclusive to another connection")
        )
    compared = COMPARED_QUEUE_ARGUMENTS.get(live.type, frozenset())
    desired_args = {"x-queue-type": d.type, **d.arguments}
    for key in sorted(set(desired_args) | set(live.arguments)):
        if key == "x-queue-type":
            continue  # reported as "type"
        reason = IMMUTABLE if key in compared else INEFFECTIVE
        diffs += _field(
            f"arguments.{key}", desired_args.get(key, ABSENT), live.arguments.get(key, ABSENT),
            reason,
        )  # fmt: skip
    return diffs


def policy_differences(d: PolicySpec, live: LivePolicy) -> list[Difference]:
    diffs: list[Difference] = []
    diffs += _field("pattern", d.pattern, live.pattern, MUTABLE)
    diffs += _field("apply_to", d.apply_to, live.apply_to, MUTABLE)
    diffs += _field("priority", d.priority, live.priority, MUTABLE)
    for key in sorted(set(d.definition) | set(live.definition)):
        diffs += _field(
            f"definition.{key}",
            d.definition.get(key, ABSENT),
            live.definition.get(key, ABSENT),
            MUTABLE,
        )
    return diffs


_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for .*: received (.*) but current is (.*)$")


def refusal_difference(d: ExchangeSpec | QueueSpec, text: str) -> Difference:
    """The one mismatch a 406 names (AMQP fallback)."""
    match = _INEQUIVALENT.search(text)
    if match is None:
        return Difference("(redeclare)", ABSENT, BrokerText(text), "refused by the broker")
    name, received, current = match.groups()
    desired: object = getattr(d, name, ABSENT)
    if desired is ABSENT:
        key = name if name in d.arguments else None
        desired = d.arguments[key] if key else BrokerText(received)
    field_name = name if hasattr(d, name) else f"arguments.{name}"
    return Difference(field_name, desired, BrokerText(current), IMMUTABLE)


# -- the diff -------------------------------------------------------------------------------


class _Differ:
    def __init__(
        self,
        desired: ExpandedTopology,
        live: LiveState,
        options: PlanOptions,
        usage: Mapping[str, QueueUsage],
    ) -> None:
        self.d = desired
        self.live = live
        self.options = options
        self.usage = usage
        self.patterns = [compile_name_pattern(p) for p in desired.unmanaged]
        self.items: list[PlanItem] = []
        self.recreated: set[str] = set()

    def add(self, item: PlanItem) -> None:
        self.items.append(item)

    def unmanaged_pattern(self, name: str) -> str | None:
        for pattern in self.patterns:
            if pattern.search(name):
                return pattern.pattern
        return None

    def run(self) -> list[PlanItem]:
        self.vhost()
        if self.live.source == "amqp":
            self.probed()
            return self.items
        self.policies()
        self.exchanges()
        self.queues()
        self.bindings_and_prune()
        return self.items

    def vhost(self) -> None:
        spec = self.d.vhost
        info = self.live.vhost_info
        name = self.live.vhost
        if info is None:
            if self.live.source == "management":
                self.add(PlanItem(Action.CREATE, "vhost", name, desired=spec))
            return
        if spec is None:
            return
        diffs: list[Difference] = []
        if spec.default_queue_type is not None:
            diffs += _field(
                "default_queue_type",
                spec.default_queue_type,
                normalise_queue_type(info.default_queue_type),
                VHOST_DEFAULT_TYPE,
            )
        conflict = bool(diffs)
        if spec.description is not None:
            diffs += _field("description", spec.description, info.description, MUTABLE)
        action = Action.CONFLICT if conflict else Action.UPDATE if diffs else Action.UNCHANGED
        self.add(PlanItem(action, "vhost", name, tuple(diffs), desired=spec, live=info))

    def policies(self) -> None:
        desired = policy_specs(self.d)
        for name, spec in desired.items():
            live = self.live.policies.get(name)
            if live is None:
                self.add(PlanItem(Action.CREATE, "policy", name, desired=spec))
                continue
            diffs = policy_differences(spec, live)
            action = Action.UPDATE if diffs else Action.UNCHANGED
            self.add(PlanItem(action, "policy", name, tuple(diffs), desired=spec, live=live))
        for name, live in sorted(self.live.policies.items()):
            if name in desired:
                continue
            self.add(self.extra("policy", name, live))

    def extra(self, kind: Kind, name: str, live: Live, kept: str | None = None) -> PlanItem:
        """A live object the topology does not declare: delete (prune) or leave alone."""
        pattern = self.unmanaged_pattern(name)
        if pattern is not None:
            note = f"matches unmanaged pattern {pattern!r}: never touched"
            return PlanItem(Action.UNMANAGED, kind, name, note=note, live=live)
        if not self.options.prune:
            note = "not in the topology (bus apply --prune deletes it)"
            return PlanItem(Action.UNMANAGED, kind, name, note=note, live=live)
        if kept is not None:
            return PlanItem(Action.UNMANAGED, kind, name, note=f"kept: {kept}", live=live)
        return PlanItem(Action.DELETE, kind, name, note="not in the topology", live=live)

    def exchanges(self) -> None:
        types = self.live.exchange_types
        for name, spec in self.d.exchanges.items():
            live = self.live.exchanges.get(name)
            diffs: list[Difference] = []
            if types and spec.type not in types:
                diffs.append(
                    Difference(
                        "type",
                        spec.type,
                        BrokerText("(not available on this broker)"),
                        f"unknown exchange type (the broker knows {', '.join(sorted(types))}): "
                        "declaring it would close the whole connection (503 COMMAND_INVALID)",
                    )
                )
            if live is None:
                action = Action.CONFLICT if diffs else Action.CREATE
                self.add(PlanItem(action, "exchange", name, tuple(diffs), f"({spec.type})", spec))
                continue
            diffs += [d for d in exchange_differences(spec, live) if d.field != "type" or not diffs]
            action = Action.CONFLICT if diffs else Action.UNCHANGED
            self.add(PlanItem(action, "exchange", name, tuple(diffs), desired=spec, live=live))

    def queues(self) -> None:
        for name, spec in self.d.queues.items():
            live = self.live.queues.get(name) or self.live.private_queues.get(name)
            if live is None:
                self.add(
                    PlanItem(Action.CREATE, "queue", name, note=f"({spec.type})", desired=spec)
                )
                continue
            diffs = tuple(queue_differences(spec, live))
            if not diffs:
                self.add(PlanItem(Action.UNCHANGED, "queue", name, desired=spec, live=live))
                continue
            note = ""
            if self.options.recreate_empty and not live.exclusive:
                usage = self.usage.get(name)
                if usage is not None and usage.messages == 0 and usage.consumers == 0:
                    self.recreated.add(name)
                    note = "empty: deleted (if-empty) and declared again with all its bindings"
                    self.add(PlanItem(Action.RECREATE, "queue", name, diffs, note, spec, live))
                    continue
                note = f"not recreated: {self.busy(name)}"
            self.add(PlanItem(Action.CONFLICT, "queue", name, diffs, note, spec, live))

    def busy(self, name: str) -> str:
        usage = self.usage.get(name)
        if usage is None:
            return "its message count is unknown"
        parts = []
        if usage.messages:
            parts.append(f"holds {usage.messages} message{'s' if usage.messages != 1 else ''}")
        if usage.consumers:
            parts.append(
                f"has {usage.consumers} consumer{'s' if usage.consumers != 1 else ''} "
                "(unacknowledged messages possible)"
            )
        return " and ".join(parts) if parts else "empty"

    def bindings_and_prune(self) -> None:
        desired_x, desired_q = set(self.d.exchanges), set(self.d.queues)
        private = set(self.live.private_queues)

        def excluded(name: str, kind: str) -> bool:
            if kind == "queue" and name in private:
                return True
            declared = desired_q if kind == "queue" else desired_x
            return name not in declared and self.unmanaged_pattern(name) is not None

        def touches_excluded(b: LiveBinding) -> bool:
            return excluded(b.source, "exchange") or excluded(b.destination, b.destination_type)

        # Queues prune may not delete: holding messages, consumed, or carrying a binding that
        # belongs to an object we must not touch (deleting the queue would drop it).
        kept_queues: dict[str, str] = {}
        for name in self.live.queues:
            if name in desired_q:
                continue
            if not self.options.allow_data_loss:
                state = self.busy(name)
                if state != "empty":
                    kept_queues[name] = f"{state} (--allow-data-loss deletes it)"
                    continue
            for b in self.live.bindings:
                if b.destination_type == "queue" and b.destination == name and touches_excluded(b):
                    kept_queues[name] = f"bound from unmanaged exchange {b.source!r}"
                    break

        def kept_binding(b: LiveBinding) -> str | None:
            if touches_excluded(b):
                return "touches an unmanaged or exclusive object"
            if b.destination_type == "queue" and b.destination in kept_queues:
                return f"its queue {b.destination!r} is kept"
            return None

        # Deleting an exchange drops its bindings both ways: keep it while one must stay.
        kept_exchanges: dict[str, str] = {}
        for b in self.live.bindings:
            if kept_binding(b) is None:
                continue
            ends = [(b.source, b.destination)]
            if b.destination_type == "exchange":
                ends.append((b.destination, b.source))
            for end, other in ends:
                if end not in desired_x and end in self.live.exchanges:
                    kept_exchanges.setdefault(
                        end, f"bound to {other!r}, which is kept or unmanaged"
                    )

        desired_bindings = {_key_of(b): b for b in self.d.bindings}
        live_bindings = {_key_of(b): b for b in self.live.bindings}
        for key, spec in desired_bindings.items():
            live = live_bindings.get(key)
            name = binding_name(spec)
            requeued = spec.destination_type == "queue" and spec.destination in self.recreated
            if live is None:
                self.add(PlanItem(Action.CREATE, "binding", name, desired=spec))
            elif requeued:
                note = "dropped with its queue and bound again"
                self.add(
                    PlanItem(Action.RECREATE, "binding", name, note=note, desired=spec, live=live)
                )
            else:
                self.add(PlanItem(Action.UNCHANGED, "binding", name, desired=spec, live=live))
        for key, live in live_bindings.items():
            if key not in desired_bindings:
                self.add(self.extra_binding(live, kept_binding(live), touches_excluded(live)))

        for name, q in sorted(self.live.queues.items()):
            if name not in desired_q:
                self.add(self.extra("queue", name, q, kept_queues.get(name)))
        for name, q in sorted(self.live.private_queues.items()):
            if name not in desired_q:
                why = "exclusive to a connection" if q.exclusive else "server-named"
                self.add(PlanItem(Action.UNMANAGED, "queue", name, note=f"{why}: never touched"))
        for name, x in sorted(self.live.exchanges.items()):
            if name not in desired_x:
                self.add(self.extra("exchange", name, x, kept_exchanges.get(name)))

    def unmanaged_pattern_of(self, b: LiveBinding) -> str | None:
        for name, declared in (
            (b.source, set(self.d.exchanges)),
            (b.destination, set(self.d.queues) | set(self.d.exchanges)),
        ):
            if name not in declared:
                pattern = self.unmanaged_pattern(name)
                if pattern is not None:
                    return pattern
        return None

    def extra_binding(self, live: LiveBinding, kept: str | None, excluded: bool) -> PlanItem:
        name = binding_name(live)
        if live.destination_type == "queue" and live.destination in self.recreated:
            # Deleting the queue drops this binding too: restore it unless prune removes it.
            if self.options.prune and not excluded:
                note = "not in the topology; dropped with its queue"
                return PlanItem(Action.DELETE, "binding", name, note=note, live=live)
            note = "not in the topology; dropped with its queue and bound again"
            return PlanItem(Action.RECREATE, "binding", name, note=note, live=live)
        pattern = self.unmanaged_pattern_of(live)
        if pattern is not None:
            note = f"touches a name matching unmanaged pattern {pattern!r}: never touched"
            return PlanItem(Action.UNMANAGED, "binding", name, note=note, live=live)
        if live.destination_type == "queue" and live.destination in self.live.private_queues:
            note = "binds an exclusive or server-named queue: never touched"
            return PlanItem(Action.UNMANAGED, "binding", name, note=note, live=live)
        if not self.options.prune:
            note = "not in the topology (bus apply --prune deletes it)"
            return PlanItem(Action.UNMANAGED, "binding", name, note=note, live=live)
        if kept is not None:
            return PlanItem(Action.UNMANAGED, "binding", name, note=f"kept: {kept}", live=live)
        return PlanItem(Action.DELETE, "binding", name, note="not in the topology", live=live)

    def probed(self) -> None:
        """AMQP fallback: existence, and the first compared mismatch, per desired object."""
        for name, policy in policy_specs(self.d).items():
            note = "policies can only be read through the management API"
            self.add(PlanItem(Action.UNVERIFIED, "policy", name, note=note, desired=policy))
        created: set[tuple[str, str]] = set()
        objects: Iterable[tuple[Kind, ExchangeSpec | QueueSpec]] = [
            *(("exchange", x) for x in self.d.exchanges.values()),
            *(("queue", q) for q in self.d.queues.values()),
        ]
        for kind, spec in objects:
            probe = self.live.probes.get((kind, spec.name), Probe(exists=False))
            if not probe.exists:
                created.add((kind, spec.name))
                self.add(PlanItem(Action.CREATE, kind, spec.name, desired=spec))
            elif probe.refusal is not None:
                diff = refusal_difference(spec, probe.refusal)
                self.add(PlanItem(Action.CONFLICT, kind, spec.name, (diff,), desired=spec))
            else:
                note = probe.unverified or (
                    "exists; the fields the broker compares match "
                    "(other arguments cannot be read over AMQP)"
                )
                self.add(PlanItem(Action.UNVERIFIED, kind, spec.name, note=note, desired=spec))
        for b in self.d.bindings:
            ends = {("exchange", b.source), (b.destination_type, b.destination)}
            if ends & created:
                self.add(PlanItem(Action.CREATE, "binding", binding_name(b), desired=b))
            else:
                note = "cannot be listed over AMQP; apply binds it again (idempotent)"
                self.add(
                    PlanItem(Action.UNVERIFIED, "binding", binding_name(b), note=note, desired=b)
                )


def diff(
    desired: ExpandedTopology,
    live: LiveState,
    options: PlanOptions | None = None,
    usage: Mapping[str, QueueUsage] | None = None,
) -> Plan:
    """Classify every desired and live object. Pure: no broker access.

    ``usage`` holds exact message/consumer counts of the queues that prune or
    ``recreate_empty`` might delete; a queue without an entry is treated as not empty.
    """
    options = options or PlanOptions()
    items = _Differ(desired, live, options, usage or {}).run()
    plan = Plan(live.vhost, items, options, source=live.source)
    if live.source == "amqp":
        reason = f" ({live.fallback_reason})" if live.fallback_reason else ""
        plan.unverified += [
            f"the management API could not be used{reason}; AMQP probes only",
            "arguments the broker does not compare on redeclare (exchange arguments other "
            "than alternate-exchange, queue arguments such as x-custom)",
            "bindings (apply binds every binding again, which is idempotent)",
            "policies and the vhost's settings",
            "objects the topology does not declare (no listing over AMQP: prune is impossible)",
        ]
    return plan


def usage_candidates(desired: ExpandedTopology, live: LiveState, options: PlanOptions) -> set[str]:
    """Queues whose exact message count the plan needs (prune or recreate candidates)."""
    names: set[str] = set()
    if options.prune:
        names |= {name for name in live.queues if name not in desired.queues}
    if options.recreate_empty:
        for name, spec in desired.queues.items():
            q = live.queues.get(name)
            if q is not None and queue_differences(spec, q):
                names.add(name)
    return names


# -- against a broker -------------------------------------------------------------------------


def resolve_vhost(expanded: ExpandedTopology, settings: BusSettings, vhost: str | None) -> str:
    """``vhost`` argument, else the topology's ``vhost.name``, else the AMQP URL's vhost."""
    if vhost:
        return vhost
    if expanded.vhost is not None and expanded.vhost.name:
        return expanded.vhost.name
    return settings.vhost


def may_create_vhost(expanded: ExpandedTopology, vhost: str) -> bool:
    """Only a vhost the topology names is created: a typo in a URL must not make one."""
    return expanded.vhost is not None and expanded.vhost.name == vhost


def read_state(expanded: ExpandedTopology, settings: BusSettings, vhost: str) -> LiveState:
    """Live state through the management API, or AMQP probes when the API cannot be used."""
    try:
        with ManagementClient.from_settings(settings) as management:
            return read_live_state(management, vhost)
    except (BrokerUnavailableError, AccessRefusedError) as exc:
        reason = " ".join(str(exc).split())
    with AmqpSession(settings, vhost, "amqp-bus plan") as session:
        probes = probe_objects(session, expanded.exchanges.values(), expanded.queues.values())
    info = LiveVhost(vhost, "", "classic")  # the connection proves it exists; nothing more
    return LiveState(vhost, "amqp", info, probes=probes, fallback_reason=reason)


def plan(
    topology: LoadedTopology | ExpandedTopology,
    settings: BusSettings | None = None,
    *,
    vhost: str | None = None,
    prune: bool = False,
    recreate_empty: bool = False,
    allow_data_loss: bool = False,
) -> Plan:
    """Compare ``topology`` with the live vhost; changes nothing on the broker.

    Raises :class:`~bus.errors.NotFoundError` when the vhost does not exist and the topology
    does not name it (only a named vhost is created by apply).
    """
    expanded = expanded_of(topology)
    settings = settings or BusSettings()
    name = resolve_vhost(expanded, settings, vhost)
    options = PlanOptions(prune, recreate_empty, allow_data_loss)
    live = read_state(expanded, settings, name)
    if not live.vhost_exists and not may_create_vhost(expanded, name):
        raise NotFoundError(
            f"vhost {name!r} does not exist; create it, or name it in the topology "
            f"(vhost: {{name: {name}}}) to let bus apply create it"
        )
    usage: dict[str, QueueUsage] = {}
    candidates = usage_candidates(expanded, live, options) if live.source == "management" else set()
    if candidates:
        with AmqpSession(settings, name, "amqp-bus plan") as session:
            usage = queue_usage(session, sorted(candidates))
    result = diff(expanded, live, options, usage)
    result.broker = mask_url(with_vhost(settings.amqp_url, name))
    if live.source == "management":
        # What the broker's version changes (4.x: delivery limits, refused policy keys).
        from bus.broker.plan_versions import annotate_plan, read_version

        result = annotate_plan(result, expanded, read_version(settings))
    return result
