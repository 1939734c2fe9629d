"""The shipped topology declares cleanly on the real broker (every generated object included)."""

from __future__ import annotations

from bus.broker.management import ManagementClient
from bus.topology import LoadedTopology
from tests.support.amqp import declare_with_pika


def test_shipped_topology_declares_on_the_broker(
    bus_vhost_url: str,
    bus_vhost: str,
    bus_management: ManagementClient,
    bus_topology: LoadedTopology,
) -> None:
    declare_with_pika(bus_vhost_url, bus_topology.expanded)
    live_queues = {q["name"]: q for q in bus_management.queues(bus_vhost)}
    assert set(live_queues) == set(bus_topology.expanded.queues)
    for name, spec in bus_topology.expanded.queues.items():
        assert live_queues[name]["type"] == spec.type
        assert live_queues[name]["arguments"] == spec.arguments
    live_exchanges = {x["name"] for x in bus_management.exchanges(bus_vhost)}
    assert set(bus_topology.expanded.exchanges) <= live_exchanges
