"""The differ: desired (the expanded topology) against live (one vhost), every object classified.

Pure: no broker access. The comparison rules are :mod:`bus.broker.equality`; what the plan
holds and how it reads is :mod:`bus.broker.plan_model`; the AMQP-only classification (no
management API) is :mod:`bus.broker.fallback`.

A pass that adds to a finished plan (e.g. :func:`bus.broker.plan_versions.annotate_plan`) takes
the :class:`Plan` :func:`diff` returns and gives back a new one; it belongs after :func:`diff`
in :func:`bus.broker.plan.plan`, not in here.
"""

from __future__ import annotations

from collections.abc import Mapping

from bus.broker.equality import (
    MUTABLE,
    VHOST_DEFAULT_TYPE,
    compared_field,
    exchange_differences,
    key_of,
    policy_differences,
    queue_differences,
)
from bus.broker.fallback import probed_items, unverified_over_amqp
from bus.broker.live import LiveBinding, LiveState, QueueUsage, normalise_queue_type
from bus.broker.plan_model import (
    Action,
    BrokerText,
    Difference,
    Kind,
    Live,
    Plan,
    PlanItem,
    PlanOptions,
    binding_name,
    policy_specs,
)
from bus.patterns import compile_name_pattern
from bus.topology.expand import ExpandedTopology

__all__ = ["diff", "usage_candidates"]


class _Classifier:
    """Gives every desired and every live object of one vhost its :class:`PlanItem`."""

    def __init__(
        self,
        desired: ExpandedTopology,
        live: LiveState,
        options: PlanOptions,
        usage: Mapping[str, QueueUsage],
    ) -> None:
        self.desired = desired
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
            self.items += probed_items(self.desired, self.live)
            return self.items
        self.policies()
        self.exchanges()
        self.queues()
        self.bindings_and_prune()
        return self.items

    def vhost(self) -> None:
        spec = self.desired.vhost
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
            diffs += compared_field(
                "default_queue_type",
                spec.default_queue_type,
                normalise_queue_type(info.default_queue_type),
                VHOST_DEFAULT_TYPE,
            )
        conflict = bool(diffs)
        if spec.description is not None:
            diffs += compared_field("description", spec.description, info.description, MUTABLE)
        action = Action.CONFLICT if conflict else Action.UPDATE if diffs else Action.UNCHANGED
        self.add(PlanItem(action, "vhost", name, tuple(diffs), desired=spec, live=info))

    def policies(self) -> None:
        desired_policies = policy_specs(self.desired)
        for name, spec in desired_policies.items():
            live = self.live.policies.get(name)
            if live is None:
                self.add(PlanItem(Action.CREATE, "policy", name, desired=spec))
                continue
            diffs = policy_differences(spec, live)
            action = Action.UPDATE if diffs else Action.UNCHANGED
            self.add(PlanItem(action, "policy", name, tuple(diffs), desired=spec, live=live))
        for name, live in sorted(self.live.policies.items()):
            if name in desired_policies:
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
        for name, spec in self.desired.exchanges.items():
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
        for name, spec in self.desired.queues.items():
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
        desired_x, desired_q = set(self.desired.exchanges), set(self.desired.queues)
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

        desired_bindings = {key_of(b): b for b in self.desired.bindings}
        live_bindings = {key_of(b): b for b in self.live.bindings}
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
            (b.source, set(self.desired.exchanges)),
            (b.destination, set(self.desired.queues) | set(self.desired.exchanges)),
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
    items = _Classifier(desired, live, options, usage or {}).run()
    plan = Plan(live.vhost, items, options, source=live.source)
    if live.source == "amqp":
        plan.unverified += unverified_over_amqp(live)
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
