"""The broker side: connections, live state, plan and apply.

``plan(topology, settings, vhost=..., prune=...)`` compares a topology with a live vhost and
changes nothing; ``apply(...)`` applies the plan (nothing at all while a conflict exists);
``export_topology(settings, vhost=...)`` writes the topology of an existing vhost.
"""

from bus.broker.apply import ApplyResult, apply
from bus.broker.export import Export, export_topology
from bus.broker.inspect import read_live_state
from bus.broker.live import LiveState
from bus.broker.plan import (
    Action,
    Difference,
    Plan,
    PlanConflicts,
    PlanItem,
    PlanOptions,
    diff,
    plan,
)

__all__ = [
    "Action",
    "ApplyResult",
    "Difference",
    "Export",
    "LiveState",
    "Plan",
    "PlanConflicts",
    "PlanItem",
    "PlanOptions",
    "apply",
    "diff",
    "export_topology",
    "plan",
    "read_live_state",
]
