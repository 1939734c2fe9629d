"""The AMQP fallback: what plan can still tell when the management API cannot be used.

Over AMQP nothing can be listed. Each desired exchange and queue is probed instead
(:func:`bus.broker.inspect.probe_objects`): a passive declare says whether it exists, and an
active redeclare of an existing one is either accepted (the fields the broker compares match)
or refused with a 406 naming the first mismatch, which :func:`refusal_difference` reads back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bus.broker.equality import IMMUTABLE
from bus.broker.inspect import probe_objects
from bus.broker.live import LiveState, LiveVhost, Probe
from bus.broker.plan_model import (
    ABSENT,
    Action,
    BrokerText,
    Difference,
    Kind,
    PlanItem,
    binding_name,
    policy_specs,
)
from bus.broker.session import AmqpSession
from bus.settings import BusSettings
from bus.topology.expand import ExchangeSpec, ExpandedTopology, QueueSpec

__all__ = ["probe_state", "probed_items", "refusal_difference", "unverified_over_amqp"]


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


def probe_state(
    expanded: ExpandedTopology, settings: BusSettings, vhost: str, reason: str
) -> LiveState:
    """The live state as far as AMQP probes of the desired objects tell it."""
    with AmqpSession(settings, vhost, "amqp-bus plan") as session:
        probes = probe_objects(session, expanded.exchanges.values(), expanded.queues.values())
    info = LiveVhost(vhost, "", "classic")  # the connection proves it exists; nothing more
    return LiveState(vhost, "amqp", info, probes=probes, fallback_reason=reason)


def probed_items(desired: ExpandedTopology, live: LiveState) -> list[PlanItem]:
    """Existence, and the first compared mismatch, per desired object (no live listing)."""
    items: list[PlanItem] = []
    for name, policy in policy_specs(desired).items():
        note = "policies can only be read through the management API"
        items.append(PlanItem(Action.UNVERIFIED, "policy", name, note=note, desired=policy))
    created: set[tuple[str, str]] = set()
    objects: Iterable[tuple[Kind, ExchangeSpec | QueueSpec]] = [
        *(("exchange", x) for x in desired.exchanges.values()),
        *(("queue", q) for q in desired.queues.values()),
    ]
    for kind, spec in objects:
        probe = live.probes.get((kind, spec.name), Probe(exists=False))
        if not probe.exists:
            created.add((kind, spec.name))
            items.append(PlanItem(Action.CREATE, kind, spec.name, desired=spec))
        elif probe.refusal is not None:
            diff = refusal_difference(spec, probe.refusal)
            items.append(PlanItem(Action.CONFLICT, kind, spec.name, (diff,), desired=spec))
        else:
            note = probe.unverified or (
                "exists; the fields the broker compares match "
                "(other arguments cannot be read over AMQP)"
            )
            items.append(PlanItem(Action.UNVERIFIED, kind, spec.name, note=note, desired=spec))
    for b in desired.bindings:
        ends = {("exchange", b.source), (b.destination_type, b.destination)}
        if ends & created:
            items.append(PlanItem(Action.CREATE, "binding", binding_name(b), desired=b))
        else:
            note = "cannot be listed over AMQP; apply binds it again (idempotent)"
            items.append(
                PlanItem(Action.UNVERIFIED, "binding", binding_name(b), note=note, desired=b)
            )
    return items


def unverified_over_amqp(live: LiveState) -> list[str]:
    """What a plan made from probes could not check, for the plan's "Not verified" lines."""
    reason = f" ({live.fallback_reason})" if live.fallback_reason else ""
    return [
        f"the management API could not be used{reason}; AMQP probes only",
        "arguments the broker does not compare on redeclare (exchange arguments other "
        "than alternate-exchange, queue arguments such as x-custom)",
        "bindings (apply binds every binding again, which is idempotent)",
        "policies and the vhost's settings",
        "objects the topology does not declare (no listing over AMQP: prune is impossible)",
    ]
