"""A three-node cluster of throwaway nodes: the bus's quorum queues span every node."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest

from bus.broker.management import ManagementClient
from bus.node import rabbitmq_installed
from tests.faults.cluster import LocalCluster

pytestmark = pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        yield running


def test_three_nodes_run_as_one_cluster(cluster: LocalCluster) -> None:
    assert sorted(cluster.running_nodes()) == sorted(node.name for node in cluster.nodes)


def test_quorum_queue_has_a_member_on_every_node(cluster: LocalCluster) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(cluster.nodes[1].amqp_url))
    try:
        connection.channel().queue_declare(
            "spread", durable=True, arguments={"x-queue-type": "quorum"}
        )
    finally:
        connection.close()
    with ManagementClient(cluster.nodes[0].management_url, "guest", "guest") as api:
        queue = api.queue("/", "spread")
    assert queue is not None
    assert sorted(queue["members"]) == sorted(node.name for node in cluster.nodes)
