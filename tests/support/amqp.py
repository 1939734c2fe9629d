"""Test helpers shared by the integration suites: declaring and draining with plain pika."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pika

from bus.topology.expand import ExpandedTopology


def declare_with_pika(url: str, topology: ExpandedTopology) -> None:
    """Declare every object of an expanded topology with plain pika.

    A stand-in independent of ``bus apply``: tests of producers, consumers and routing use it
    so that they do not depend on the code of plan/apply.
    """
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for x in topology.exchanges.values():
            channel.exchange_declare(
                x.name, x.type, durable=x.durable, auto_delete=x.auto_delete,
                internal=x.internal, arguments=x.arguments or None,
            )  # fmt: skip
        for q in topology.queues.values():
            channel.queue_declare(
                q.name, durable=q.durable, auto_delete=q.auto_delete, arguments=q.arguments
            )
        for b in topology.bindings:
            if b.destination_type == "queue":
                channel.queue_bind(b.destination, b.source, b.routing_key, b.arguments or None)
            else:
                channel.exchange_bind(b.destination, b.source, b.routing_key, b.arguments or None)
    finally:
        connection.close()


def shipped_topology_with(**sections: object) -> str:
    """The shipped topology.yaml with top-level ``sections`` replaced (comments dropped)."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "topology.yaml").read_text())
    data.update(sections)
    return yaml.safe_dump(data, sort_keys=False)


def drain(url: str, queue: str) -> list[tuple[Any, Any, bytes]]:
    """Every message of ``queue`` (method, properties, body), removed from the broker."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        found = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found.append((method, properties, body))
    finally:
        connection.close()
