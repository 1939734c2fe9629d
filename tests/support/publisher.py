"""The publisher suites' topology, and reading a queue back with plain pika (not our code)."""

from __future__ import annotations

from dataclasses import dataclass

import pika

TOPOLOGY = """
version: 1
exchanges:
  events: {type: topic}
  commands: {type: direct}
  limited: {type: direct}
queues:
  orders.all:
    bindings: [{exchange: events, routing_key: "order.#"}]
  orders.commands:
    bindings: [{exchange: commands, routing_key: order.cancel}]
  tiny:
    max_length: 1
    overflow: reject-publish
    bindings: [{exchange: limited, routing_key: tiny}]
events:
  order.created:
    {exchange: events, routing_key: order.created, model: "producers.events:OrderCreated"}
  order.cancel:
    {exchange: commands, routing_key: order.cancel, model: "producers.events:CancelOrder"}
"""


@dataclass
class Delivery:
    routing_key: str
    properties: pika.BasicProperties
    body: bytes


def drain(url: str, queue: str, expected: int, idle: float = 5.0) -> list[Delivery]:
    """Everything in ``queue`` (up to ``expected``), read with a plain pika consumer."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        got: list[Delivery] = []
        if expected == 0:
            return got
        for method, properties, body in channel.consume(queue, inactivity_timeout=idle):
            if method is None:
                break
            got.append(Delivery(method.routing_key, properties, body))
            channel.basic_ack(method.delivery_tag)
            if len(got) >= expected:
                break
        channel.cancel()
        return got
    finally:
        connection.close()


def depth(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        result = connection.channel().queue_declare(queue, passive=True)
        return int(result.method.message_count)
    finally:
        connection.close()
