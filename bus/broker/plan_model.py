"""The plan as data and as text: what ``bus plan`` shows and ``bus apply`` executes.

Pure: no broker access and no comparison rules (those are :mod:`bus.broker.equality`). Every
object gets one :class:`Action`:

``create`` / ``unchanged`` / ``update`` (policies, vhost description: mutable in place) /
``conflict`` (an immutable field differs, or a difference the broker would silently ignore) /
``recreate`` (a conflicting queue that is empty, with ``recreate_empty``) / ``delete`` (with
``prune``) / ``unmanaged`` (live, not in the topology, and left alone) / ``unverified`` (the
management API was unreachable and AMQP cannot tell).

A new kind of action is one member of :class:`Action`, its symbol in ``_SYMBOL``, its entry
in ``CHANGES`` when apply must act on it, and its count in :meth:`Plan.summary`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from bus.broker.live import (
    LiveBinding,
    LiveExchange,
    LivePolicy,
    LiveQueue,
    LiveVhost,
    PolicyFields,
)
from bus.errors import PlanConflictError
from bus.topology.expand import BindingSpec, ExchangeSpec, ExpandedTopology, QueueSpec
from bus.topology.model import Vhost

__all__ = [
    "ABSENT",
    "CHANGES",
    "Action",
    "BrokerText",
    "Desired",
    "Difference",
    "Kind",
    "Live",
    "Plan",
    "PlanConflicts",
    "PlanItem",
    "PlanOptions",
    "PolicySpec",
    "binding_name",
    "describe",
    "policy_specs",
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
    MIGRATE = "migrate"  # bus apply --migrate: a blue/green move (bus.migrate)


# The actions apply carries out; the others are shown and left alone.
CHANGES = frozenset(
    {Action.CREATE, Action.UPDATE, Action.RECREATE, Action.DELETE, Action.MIGRATE}
)
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
    Action.MIGRATE: ">",
}


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


class BrokerText(str):
    """A value as the broker's error text spelled it (AMQP fallback): shown verbatim."""

    __slots__ = ()


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
class PolicySpec(PolicyFields):
    """A policy as the topology wants it."""


@dataclass(frozen=True)
class Difference:
    """One field where the broker and the topology disagree, and why it matters."""

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
    migrate: bool = False


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
        if counts[Action.MIGRATE]:
            parts.insert(3, f"{counts[Action.MIGRATE]} to migrate")
        if counts[Action.UNVERIFIED]:
            parts.append(f"{counts[Action.UNVERIFIED]} unverified")
        return "Plan: " + ", ".join(parts) + "."

    def render(self, *, show_unchanged: bool = True) -> str:
        how = (
            "read through the management API"
            if self.source == "management"
            else "checked over AMQP only"
        )
        on_broker = f" on {self.broker}" if self.broker else ""
        if self.rabbitmq:
            how += f", RabbitMQ {self.rabbitmq}"
        lines = [f"Plan for vhost {self.vhost!r}{on_broker} ({how})"]
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
