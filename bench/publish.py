"""Confirmed publishing: amqp-bus against the raw clients (cases of ``python -m bench``).

Method (docs/performance-baseline.md): 256-byte JSON body, persistent, publisher confirms, a
durable classic queue reached through the default exchange. Each case runs in a fresh
process: connect, declare and purge, 300 untimed warm-up messages, purge, then publish for
``seconds``; the clock stops when the last confirm has arrived.

Cases:
  raw aio-pika  aio-pika, at most WINDOW unconfirmed publishes (semaphore + one task each)
  ours          producers.Publisher.publish_many with the same window
  ours xN       N such publishers (connections) in one process (``--publishers N``)
  raw pika      pika BlockingChannel with confirm_delivery (one confirm at a time: window 1)
  ours sync     producers.SyncPublisher.publish_many with the same window (pika, pipelined)

    .venv/bin/python -m bench.publish [suite options]   # = python -m bench --only publish
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._harness import (
    BODY,
    CONTENT_TYPE,
    WARMUP,
    cpu_seconds,
    prepare_queue,
    record_spans,
    until,
)

QUEUE = "bench.publish"


def _result(count: int, elapsed: float, cpu: float) -> dict[str, Any]:
    return {
        "messages": count,
        "seconds": elapsed,
        "msg_s": count / elapsed,
        "cpu": cpu / elapsed,
    }


async def raw_aio_pika(url: str, seconds: float, window: int, loop: str) -> dict[str, Any]:
    import aio_pika

    prepare_queue(url, QUEUE)
    connection = await aio_pika.connect_robust(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        semaphore = asyncio.Semaphore(window)
        tasks: set[asyncio.Task[Any]] = set()

        async def one() -> None:
            try:
                await exchange.publish(
                    aio_pika.Message(
                        BODY,
                        content_type=CONTENT_TYPE,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    QUEUE,
                    mandatory=True,
                )
            finally:
                semaphore.release()

        async def run(stop: Callable[[], bool]) -> int:
            count = 0
            while not stop():
                await semaphore.acquire()
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                count += 1
            await asyncio.gather(*tasks)
            return count

        warm = iter(range(WARMUP))
        await run(lambda: next(warm, None) is None)
        prepare_queue(url, QUEUE)
        cpu = cpu_seconds()
        start = time.perf_counter()
        deadline = start + seconds
        count = await run(lambda: time.perf_counter() >= deadline)
        return _result(count, time.perf_counter() - start, cpu_seconds() - cpu)
    finally:
        await connection.close()
        prepare_queue(url, QUEUE)


async def ours(
    url: str, seconds: float, window: int, loop: str, publishers: int = 1, traced: bool = False
) -> dict[str, Any]:
    """``publishers`` > 1: that many Publishers (one connection each) publish side by side,
    each with ``window``; shows how far the broker goes past one publisher's rate.
    ``traced``: with a recorded span per message (``bus.tracing``)."""
    from bus.settings import BusSettings
    from producers import Outgoing, Publisher

    if traced:
        record_spans()

    prepare_queue(url, QUEUE)
    message = Outgoing("", QUEUE, BODY)
    settings = BusSettings(amqp_url=url)
    async with contextlib.AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(Publisher.connect(settings, window=window))
            for _ in range(publishers)
        ]
        for publisher in opened:
            warm = await publisher.publish_many([message] * WARMUP)
            assert all(r.ok for r in warm)
        prepare_queue(url, QUEUE)
        cpu = cpu_seconds()
        start = time.perf_counter()
        runs = await asyncio.gather(
            *(p.publish_many(message for _ in until(start + seconds)) for p in opened)
        )
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
    prepare_queue(url, QUEUE)
    results = [r for run in runs for r in run]
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"ours: {len(failed)} failed, first: {failed[0]}")
    return _result(len(results), elapsed, cpu)


def raw_pika(url: str, seconds: float, window: int) -> dict[str, Any]:
    import pika

    prepare_queue(url, QUEUE)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2)

        def publish() -> None:
            channel.basic_publish("", QUEUE, BODY, properties, mandatory=True)

        for _ in range(WARMUP):
            publish()
        prepare_queue(url, QUEUE)
        cpu = cpu_seconds()
        start = time.perf_counter()
        count = 0
        for _ in until(start + seconds):
            publish()
            count += 1
        return _result(count, time.perf_counter() - start, cpu_seconds() - cpu)
    finally:
        connection.close()
        prepare_queue(url, QUEUE)


def ours_sync(url: str, seconds: float, window: int) -> dict[str, Any]:
    from bus.settings import BusSettings
    from producers import Outgoing, SyncPublisher

    prepare_queue(url, QUEUE)
    message = Outgoing("", QUEUE, BODY)
    with SyncPublisher.connect(BusSettings(amqp_url=url)) as publisher:
        warm = publisher.publish_many([message] * WARMUP)
        assert all(r.ok for r in warm)
        prepare_queue(url, QUEUE)
        cpu = cpu_seconds()
        start = time.perf_counter()
        results = publisher.publish_many((message for _ in until(start + seconds)), window=window)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
    prepare_queue(url, QUEUE)
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"ours sync: {len(failed)} failed, first: {failed[0]}")
    return _result(len(results), elapsed, cpu)


if __name__ == "__main__":
    from bench.suite import main

    sys.exit(main(["--only", "publish", *sys.argv[1:]]))
