"""topology.yaml: models, loader with precise errors, and the expansion of shorthands."""

from bus.topology.expand import (
    BindingSpec,
    ExchangeSpec,
    ExpandedTopology,
    FailurePolicy,
    QueueSpec,
    RetryStep,
    expand,
)
from bus.topology.load import (
    LoadedTopology,
    TopologySource,
    expanded_topology,
    load_topology,
    parse_topology,
)
from bus.topology.model import (
    Binding,
    EventContract,
    Exchange,
    ExchangeBinding,
    Policy,
    Queue,
    Topology,
)

__all__ = [
    "Binding",
    "BindingSpec",
    "EventContract",
    "Exchange",
    "ExchangeBinding",
    "ExchangeSpec",
    "ExpandedTopology",
    "FailurePolicy",
    "LoadedTopology",
    "Policy",
    "Queue",
    "QueueSpec",
    "RetryStep",
    "Topology",
    "TopologySource",
    "expand",
    "expanded_topology",
    "load_topology",
    "parse_topology",
]
