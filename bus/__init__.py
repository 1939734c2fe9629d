"""amqp-bus: a raw-AMQP message bus on RabbitMQ, declared in topology.yaml."""

from bus.errors import (
    BrokerError,
    BusError,
    ContractError,
    PlanConflictError,
    PublishError,
    PublishNackedError,
    PublishTimeoutError,
    TopologyError,
    UnroutableError,
)
from bus.settings import BusSettings
from bus.topology import ExpandedTopology, LoadedTopology, Topology, load_topology, parse_topology

__all__ = [
    "BrokerError",
    "BusError",
    "BusSettings",
    "ContractError",
    "ExpandedTopology",
    "LoadedTopology",
    "PlanConflictError",
    "PublishError",
    "PublishNackedError",
    "PublishTimeoutError",
    "Topology",
    "TopologyError",
    "UnroutableError",
    "load_topology",
    "parse_topology",
]
