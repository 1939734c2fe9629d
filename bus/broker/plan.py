"""``bus plan``: the live vhost read (management API, else AMQP probes) and compared.

The I/O entry point. What a plan is and how it reads: :mod:`bus.broker.plan_model`; the
broker's equality rules: :mod:`bus.broker.equality`; the classification: :mod:`bus.broker.differ`;
the AMQP-only path: :mod:`bus.broker.fallback`. The names callers imported from here before the
split are re-exported.

A pass over a finished plan (like :func:`bus.broker.plan_versions.annotate_plan`) is added at
the end of :func:`plan`, after :func:`~bus.broker.differ.diff`.
"""

from __future__ import annotations

from typing import TypedDict

from bus.broker.differ import diff, usage_candidates
from bus.broker.equality import (
    COMPARED_QUEUE_ARGUMENTS,
    BindingKey,
    binding_key,
    exchange_differences,
    policy_differences,
    queue_differences,
    same_value,
)
from bus.broker.fallback import probe_state, refusal_difference
from bus.broker.inspect import queue_usage, read_live_state
from bus.broker.live import LiveState, QueueUsage
from bus.broker.management import ManagementClient
from bus.broker.plan_migrations import annotate_migrations
from bus.broker.plan_model import (
    CHANGES,
    Action,
    BrokerText,
    Difference,
    Plan,
    PlanConflicts,
    PlanItem,
    PlanOptions,
    PolicySpec,
    binding_name,
    describe,
    policy_specs,
)
from bus.broker.plan_versions import annotate_plan, read_version
from bus.broker.session import AmqpSession
from bus.errors import AccessRefusedError, BrokerUnavailableError, NotFoundError
from bus.settings import BusSettings, mask_url, with_vhost
from bus.topology.expand import ExpandedTopology
from bus.topology.load import LoadedTopology

__all__ = [
    "CHANGES",
    "COMPARED_QUEUE_ARGUMENTS",
    "Action",
    "BindingKey",
    "BrokerText",
    "Difference",
    "Plan",
    "PlanConflicts",
    "PlanItem",
    "PlanKeywords",
    "PlanOptions",
    "PolicySpec",
    "binding_key",
    "binding_name",
    "describe",
    "diff",
    "exchange_differences",
    "expanded_of",
    "may_create_vhost",
    "plan",
    "policy_differences",
    "policy_specs",
    "queue_differences",
    "read_state",
    "refusal_difference",
    "resolve_vhost",
    "same_value",
    "usage_candidates",
]


def expanded_of(topology: LoadedTopology | ExpandedTopology) -> ExpandedTopology:
    return topology.expanded if isinstance(topology, LoadedTopology) else topology


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
    return probe_state(expanded, settings, vhost, reason)


class PlanKeywords(TypedDict, total=False):
    """The keywords of :func:`plan`, which :func:`~bus.broker.apply.apply` passes on."""

    vhost: str | None
    prune: bool
    recreate_empty: bool
    allow_data_loss: bool


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
        result = annotate_plan(result, expanded, read_version(settings))
        # Queue conflicts a live migration can resolve name the command; a half-done
        # migration (its QUEUE.migrating) shows as such.
        result = annotate_migrations(result, expanded)
    return result
