"""Consume: raw aio-pika and raw pika against the amqp-bus runtime (cases of ``python -m bench``).

Each case drains the same pre-filled durable classic queue: ``messages`` persistent 256-byte
JSON ``order.created`` messages, one consumer with the given prefetch, manual acks. The fill
happens in the case's process before the clock starts.

- ``raw aio-pika``: ``aio_pika.connect_robust``, ``queue.consume(callback)``,
  ``await message.ack()`` per message; the body is not decoded.
- ``raw pika``: ``BlockingConnection``, ``basic_consume`` callback, ``basic_ack`` per message.
- ``ours``: ``ConsumerApp`` with a handler typed ``OrderCreated``: every message is decoded by
  its ``type`` and validated by pydantic before the handler runs; acked after it returns
  (batched as ``multiple=True`` over finished deliveries).

The clock runs from the start of consuming to the last handler completion (raw: its ack
written); afterwards the case checks that the queue holds nothing ready.

    .venv/bin/python -m bench.consume [suite options]   # = python -m bench --only consume
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench._harness import CONTENT_TYPE, cpu_seconds, prepare_queue, queue_depth, record_spans
from producers.events import OrderCreated

QUEUE = "bench.consume"
SIZE = 256
TOPOLOGY = f"""\
version: 1
exchanges:
  events: {{type: topic}}
queues:
  {QUEUE}: {{}}
events:
  order.created:
    {{exchange: events, routing_key: order.created, model: "producers.events:OrderCreated"}}
"""


def body() -> bytes:
    """An OrderCreated JSON body padded with whitespace (valid JSON) to exactly SIZE bytes."""
    raw = OrderCreated(order_id="o-1", customer_id="c-1", total=10).model_dump_json().encode()
    return raw + b" " * (SIZE - len(raw))


def fill(url: str, count: int) -> None:
    """Purge, publish ``count`` persistent messages, wait until the broker holds all of them."""
    import pika

    prepare_queue(url, QUEUE)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        props = pika.BasicProperties(
            content_type=CONTENT_TYPE, delivery_mode=2, type="order.created"
        )
        payload = body()
        for i in range(count):
            props.message_id = str(i)
            channel.basic_publish("", QUEUE, payload, props)
        deadline = time.monotonic() + 120
        while channel.queue_declare(QUEUE, passive=True).method.message_count < count:
            if time.monotonic() > deadline:
                raise RuntimeError("the broker did not report every bench message")
            connection.sleep(0.1)
    finally:
        connection.close()


def _result(case: str, url: str, count: int, elapsed: float, cpu: float) -> dict[str, Any]:
    left = queue_depth(url, QUEUE)
    if left:
        raise RuntimeError(f"{case}: {left} messages left in the queue after the run")
    return {"messages": count, "seconds": elapsed, "msg_s": count / elapsed, "cpu": cpu / elapsed}


async def raw_aio_pika(url: str, messages: int, prefetch: int, loop: str) -> dict[str, Any]:
    import aio_pika

    fill(url, messages)
    connection = await aio_pika.connect_robust(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(QUEUE, ensure=True)
        done = asyncio.Event()
        seen = 0
        finished = 0.0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen, finished
            await message.ack()
            seen += 1
            if seen == messages:
                finished = time.perf_counter()
                done.set()

        cpu = cpu_seconds()
        started = time.perf_counter()
        await queue.consume(on_message)
        await done.wait()
        cpu = cpu_seconds() - cpu
    finally:
        await connection.close()
    return _result("raw aio-pika", url, messages, finished - started, cpu)


def raw_pika(url: str, messages: int, prefetch: int) -> dict[str, Any]:
    import pika

    fill(url, messages)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    seen = 0
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)

        def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
            nonlocal seen
            ch.basic_ack(method.delivery_tag)
            seen += 1
            if seen == messages:
                ch.stop_consuming()

        channel.basic_consume(QUEUE, on_message)
        cpu = cpu_seconds()
        started = time.perf_counter()
        channel.start_consuming()
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
    finally:
        connection.close()
    return _result("raw pika", url, messages, elapsed, cpu)


async def ours(
    url: str, messages: int, prefetch: int, loop: str, traced: bool = False
) -> dict[str, Any]:
    from bus.settings import BusSettings
    from bus.topology import parse_topology
    from consumers import ConsumerApp

    if traced:
        record_spans()  # a process and an ack span per message

    fill(url, messages)
    app = ConsumerApp("bench", grace=10)
    done = asyncio.Event()
    seen = 0
    finished = 0.0

    @app.handler(QUEUE, prefetch=prefetch)
    async def handle(event: OrderCreated) -> None:
        nonlocal seen, finished
        seen += 1
        if seen == messages:
            finished = time.perf_counter()
            done.set()

    topology = parse_topology(TOPOLOGY, "bench-consume.yaml")
    # Start-up (connect, passive checks) is outside the clock, as the raw case's connect is.
    async with app.serve(BusSettings(amqp_url=url), topology=topology):
        cpu = cpu_seconds()
        started = time.perf_counter()
        await done.wait()
        cpu = cpu_seconds() - cpu
    return _result("ours", url, messages, finished - started, cpu)


if __name__ == "__main__":
    from bench.suite import main

    sys.exit(main(["--only", "consume", *sys.argv[1:]]))
