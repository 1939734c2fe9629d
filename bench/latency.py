"""End-to-end latency at a fixed rate, publisher and consumer in separate processes.

A case (a process of its own) declares a durable topic exchange and a durable classic queue
bound to it, starts the consumer in another process, waits until it consumes, then publishes
``rate`` messages per second for ``seconds`` (confirms, persistent, mandatory, at most 1,000
unconfirmed). Message *i* is scheduled at ``start + i / rate`` and carries that time; the
consumer records ``receive time - scheduled time`` (CLOCK_MONOTONIC is shared by every process
of the host), so a publisher that falls behind its schedule adds to the latency and there is
no coordinated omission. The first second is dropped. The consumer acks manually with
prefetch 100.

- ``raw aio-pika``: an aio-pika publisher (one task per publish) and an aio-pika callback
  consumer that decodes the JSON body and acks each message.
- ``ours``: ``producers.Publisher.publish`` of a typed event (one task per publish) and a
  ``ConsumerApp`` handler typed with the event's model.

    .venv/bin/python -m bench.latency [suite options]   # = python -m bench --only latency
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from pydantic import BaseModel

from bench._harness import CONTENT_TYPE, latency_summary, run_loop

EXCHANGE = "bench.latency"
QUEUE = "bench.latency"
ROUTING_KEY = "probe.sent"
WINDOW = 1000
PREFETCH = 100
DROP_FIRST = 1.0
TOPOLOGY = f"""\
version: 1
exchanges:
  {EXCHANGE}: {{type: topic}}
queues:
  {QUEUE}:
    bindings: [{{exchange: {EXCHANGE}, routing_key: "probe.#"}}]
events:
  probe.sent: {{exchange: {EXCHANGE}, routing_key: {ROUTING_KEY}, model: "bench.latency:Probe"}}
"""


class Probe(BaseModel):
    """The latency message: its sequence number and the time it was scheduled to be sent."""

    seq: int
    scheduled: float
    pad: str = "x" * 160


def _declare(url: str) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        channel.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "classic"})
        channel.queue_bind(QUEUE, EXCHANGE, "probe.#")
        channel.queue_purge(QUEUE)
    finally:
        connection.close()


# -- consumers (run in their own process) ----------------------------------------------------
async def _consume_raw(url: str, count: int) -> list[float]:
    import aio_pika

    latencies: list[float] = []
    done = asyncio.Event()
    connection = await aio_pika.connect_robust(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(QUEUE, ensure=True)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            scheduled = json.loads(message.body)["scheduled"]
            latencies.append(time.monotonic() - scheduled)
            await message.ack()
            if len(latencies) == count:
                done.set()

        await queue.consume(on_message)
        print("ready", flush=True)
        await done.wait()
    finally:
        await connection.close()
    return latencies


async def _consume_ours(url: str, count: int) -> list[float]:
    from bus.settings import BusSettings
    from bus.topology import parse_topology
    from consumers import ConsumerApp

    latencies: list[float] = []
    done = asyncio.Event()
    app = ConsumerApp("bench-latency", grace=5)

    @app.handler(QUEUE, prefetch=PREFETCH)
    async def handle(event: Probe) -> None:
        latencies.append(time.monotonic() - event.scheduled)
        if len(latencies) == count:
            done.set()

    topology = parse_topology(TOPOLOGY, "bench-latency.yaml")
    async with app.serve(BusSettings(amqp_url=url), topology=topology):
        print("ready", flush=True)
        await done.wait()
    return latencies


def consumer(impl: str, url: str, count: int, loop: str) -> dict[str, Any]:
    """The consumer process (run through the harness, so that ``Probe`` is one class)."""
    consume = _consume_ours if impl == "ours" else _consume_raw
    return {"latencies": run_loop(consume(url, count), loop)}


# -- publishers (in the case's process) ------------------------------------------------------
async def _fixed_rate(send: Any, rate: int, seconds: float) -> tuple[int, float]:
    """Call ``send(seq, scheduled)`` as a task per message on schedule; returns (sent, max lag)."""
    total = int(rate * seconds)
    semaphore = asyncio.Semaphore(WINDOW)
    tasks: set[asyncio.Task[None]] = set()
    lag = 0.0

    async def one(seq: int, scheduled: float) -> None:
        try:
            await send(seq, scheduled)
        finally:
            semaphore.release()

    start = time.monotonic() + 0.05
    seq = 0
    while seq < total:
        now = time.monotonic()
        due = min(total, int((now - start) * rate) + 1)
        if seq >= due:
            # At least 1 ms: uvloop's timers have millisecond resolution, a shorter sleep
            # returns at once and the publisher would spin, starving the consumer's core.
            await asyncio.sleep(max(0.001, start + seq / rate - now))
            continue
        while seq < due:
            scheduled = start + seq / rate
            await semaphore.acquire()
            lag = max(lag, time.monotonic() - scheduled)
            task = asyncio.create_task(one(seq, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            seq += 1
    await asyncio.gather(*tasks)
    return total, lag


async def _publish_raw(url: str, rate: int, seconds: float) -> tuple[int, float]:
    import aio_pika

    connection = await aio_pika.connect_robust(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)

        async def send(seq: int, scheduled: float) -> None:
            body = Probe(seq=seq, scheduled=scheduled).model_dump_json().encode()
            await exchange.publish(
                aio_pika.Message(
                    body,
                    content_type=CONTENT_TYPE,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type="probe.sent",
                ),
                ROUTING_KEY,
                mandatory=True,
            )

        return await _fixed_rate(send, rate, seconds)
    finally:
        await connection.close()


async def _publish_ours(url: str, rate: int, seconds: float) -> tuple[int, float]:
    from bus.settings import BusSettings
    from bus.topology import parse_topology
    from producers import Publisher

    topology = parse_topology(TOPOLOGY, "bench-latency.yaml")
    async with Publisher.connect(BusSettings(amqp_url=url), topology) as publisher:

        async def send(seq: int, scheduled: float) -> None:
            await publisher.publish(Probe(seq=seq, scheduled=scheduled))

        return await _fixed_rate(send, rate, seconds)


def run(url: str, impl: str, rate: int, seconds: float, loop: str) -> dict[str, Any]:
    """One latency case: consumer process + fixed-rate publisher here; percentiles in ms."""
    _declare(url)
    total = int(rate * seconds)
    params = {"impl": impl, "url": url, "count": total, "loop": loop}
    with tempfile.TemporaryFile("w+") as errors:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "bench._harness", "bench.latency:consumer", json.dumps(params)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        try:
            assert consumer.stdout is not None
            if consumer.stdout.readline().strip() != "ready":
                consumer.wait(10)
                errors.seek(0)
                tail = "\n".join(errors.read().strip().splitlines()[-10:])
                raise RuntimeError(f"latency consumer did not start:\n{tail}")
            publish = _publish_ours if impl == "ours" else _publish_raw
            sent, lag = run_loop(publish(url, rate, seconds), loop)
            # Not communicate(): it reads the raw pipe and would lose what readline() above
            # has already buffered. A timer ends a consumer that never gets every message.
            watchdog = threading.Timer(120, consumer.kill)
            watchdog.start()
            try:
                out = consumer.stdout.read()
                consumer.wait()
            finally:
                watchdog.cancel()
            if consumer.returncode != 0:
                errors.seek(0)
                tail = "\n".join(errors.read().strip().splitlines()[-10:])
                raise RuntimeError(f"latency consumer exited {consumer.returncode}:\n{tail}")
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait()
    latencies: list[float] = json.loads(out.strip().splitlines()[-1])["latencies"]
    if len(latencies) != sent:
        raise RuntimeError(f"sent {sent}, received {len(latencies)}")
    # Message i was scheduled i/rate after the first: drop the first second by position.
    kept = latencies[int(rate * DROP_FIRST) :] if len(latencies) > rate * DROP_FIRST else latencies
    return {"messages": sent, "publisher_lag_max_ms": lag * 1000, **latency_summary(kept)}


if __name__ == "__main__":
    from bench.suite import main

    sys.exit(main(["--only", "latency", *sys.argv[1:]]))
