"""What the broker's version adds to a plan (:mod:`bus.versions` has the rules).

- A quorum queue without ``delivery_limit`` shows its effective limit: none on 3.x, 20 on 4.x
  (RabbitMQ 4.0's default; the management API of 4.0.5 shows ``delivery_limit: 20``).
- An object the version refuses and the plan would create or update becomes a conflict (for
  example a policy with ``ha-mode`` on 4.x, which 4.0.5 refuses with 400): apply then changes
  nothing, instead of failing halfway.
- What the version ignores or deprecates is a warning line under the object.
"""

from __future__ import annotations

import dataclasses
import logging

from bus.broker.management import ManagementClient
from bus.broker.plan_model import Action, BrokerText, Difference, Plan, PlanItem
from bus.errors import BusError
from bus.settings import BusSettings
from bus.topology.expand import ExpandedTopology, QueueSpec
from bus.versions import (
    RabbitVersion,
    broker_version,
    effective_delivery_limit,
    policy_for,
    version_issues,
)

__all__ = ["annotate_plan", "read_version"]

log = logging.getLogger(__name__)


def read_version(settings: BusSettings) -> RabbitVersion | None:
    """The broker's version from the management API; None when it cannot be read."""
    try:
        with ManagementClient.from_settings(settings) as management:
            return broker_version(management.overview())
    except BusError as exc:
        log.debug("RabbitMQ version unknown: %s", exc)
        return None


def _policy_keys(spec: QueueSpec, expanded: ExpandedTopology) -> set[str]:
    policy = policy_for(spec, expanded.policies)
    return set(policy.definition) if policy is not None else set()


def _delivery_limit_remark(
    spec: QueueSpec, expanded: ExpandedTopology, version: RabbitVersion
) -> str | None:
    if spec.type != "quorum" or "x-delivery-limit" in spec.arguments:
        return None
    limit = effective_delivery_limit(spec, expanded.policies, version)
    if limit is None or "delivery-limit" in _policy_keys(spec, expanded):
        return None  # no limit (3.x), or the policy's own: nothing the version adds
    return (
        f"delivery limit: {limit} (RabbitMQ {version}'s default for quorum queues without "
        "delivery_limit)"
    )


def annotate_plan(plan: Plan, expanded: ExpandedTopology, version: RabbitVersion | None) -> Plan:
    """``plan`` with the version's conflicts, warnings and effective delivery limits."""
    if version is None:
        return plan
    plan.rabbitmq = str(version)
    issues: dict[tuple[str, str], list[Difference | str]] = {}
    for issue in version_issues(expanded, version):
        entry: Difference | str = f"{issue.severity}: {issue.message}"
        if issue.severity == "error":
            refused = BrokerText(f"(refused by RabbitMQ {version})")
            entry = Difference(issue.field, issue.value, refused, issue.message)
        issues.setdefault((issue.kind, issue.name), []).append(entry)
    items: list[PlanItem] = []
    for item in plan.items:
        found = issues.get((item.kind, item.name), [])
        remarks = [f for f in found if isinstance(f, str)]
        refusals = [f for f in found if isinstance(f, Difference)]
        if isinstance(item.desired, QueueSpec) and item.kind == "queue":
            limit = _delivery_limit_remark(item.desired, expanded, version)
            if limit is not None:
                remarks.insert(0, limit)
        if refusals and item.action in (Action.CREATE, Action.UPDATE, Action.RECREATE):
            item = dataclasses.replace(
                item, action=Action.CONFLICT, differences=(*item.differences, *refusals)
            )
        else:
            remarks += [f"error: {d.reason}" for d in refusals]
        if remarks:
            item = dataclasses.replace(item, remarks=(*item.remarks, *remarks))
        items.append(item)
    plan.items = items
    return plan
