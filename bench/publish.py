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
    .venv/bin/python -m bench.publish cost [--messages 10000] [--runs 5] [--window 1000]

``cost``: CPU seconds (user + system, ``os.times``) this process spends per 10,000
confirmed publishes of a fixed count, each run in a fresh process, the implementations
interleaved. Unlike msg/s it barely depends on what else loads the machine (the broker's
share of the CPUs does not count), so it shows what a change to the client costs or saves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench._harness import (
    BODY,
    CONTENT_TYPE,
    WARMUP,
    bench_vhost,
    cpu_seconds,
    prepare_queue,
    record_spans,
    run_in_process,
    until,
)

QUEUE = "bench.publish"


def _stream(start: float, seconds: float, count: int) -> Iterator[None]:
    """What a case publishes: ``count`` messages when given, else for ``seconds``."""
    return itertools.repeat(None, count) if count else until(start + seconds)


def _result(count: int, elapsed: float, cpu: float) -> dict[str, Any]:
    return {
        "messages": count,
        "seconds": elapsed,
        "msg_s": count / elapsed,
        "cpu": cpu / elapsed,
        "cpu_s_per_10k": cpu / count * 10_000 if count else 0.0,
    }


async def raw_aio_pika(
    url: str, seconds: float, window: int, loop: str, count: int = 0
) -> dict[str, Any]:
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
        stream = _stream(start, seconds, count)
        sent = await run(lambda: next(stream, True) is True)
        return _result(sent, time.perf_counter() - start, cpu_seconds() - cpu)
    finally:
        await connection.close()
        prepare_queue(url, QUEUE)


async def ours(
    url: str,
    seconds: float,
    window: int,
    loop: str,
    publishers: int = 1,
    traced: bool = False,
    count: int = 0,
) -> dict[str, Any]:
    """``publishers`` > 1: that many Publishers (one connection each) publish side by side,
    each with ``window``; shows how far the broker goes past one publisher's rate.
    ``traced``: with a recorded span per message (``bus.tracing``). ``count``: publish that
    many (each publisher) instead of for ``seconds``."""
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
            *(p.publish_many(message for _ in _stream(start, seconds, count)) for p in opened)
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


def ours_sync(url: str, seconds: float, window: int, count: int = 0) -> dict[str, Any]:
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
        results = publisher.publish_many(
            (message for _ in _stream(start, seconds, count)), window=window
        )
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
    prepare_queue(url, QUEUE)
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"ours sync: {len(failed)} failed, first: {failed[0]}")
    return _result(len(results), elapsed, cpu)


# -- CPU per 10,000 messages -------------------------------------------------------------
COST_CASES = {
    "ours": ("bench.publish:ours", {"loop": "asyncio"}),
    "ours-uvloop": ("bench.publish:ours", {"loop": "uvloop"}),
    "ours-sync": ("bench.publish:ours_sync", {}),
    "raw-aio-pika": ("bench.publish:raw_aio_pika", {"loop": "asyncio"}),
}


def cost(argv: Sequence[str]) -> int:
    """``python -m bench.publish cost``: CPU seconds per 10,000 confirmed publishes."""
    parser = argparse.ArgumentParser(prog="python -m bench.publish cost")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--only", default=",".join(COST_CASES), help="comma-separated cases")
    opts = parser.parse_args(argv)
    names = [name for name in opts.only.split(",") if name]
    figures: dict[str, list[float]] = {name: [] for name in names}
    with bench_vhost("cost") as url:
        for run in range(1, opts.runs + 1):
            for name in names:  # interleaved: each run of every case under similar load
                target, extra = COST_CASES[name]
                params = {"url": url, "seconds": 0.0, "window": opts.window,
                          "count": opts.messages, **extra}  # fmt: skip
                result = run_in_process(target, params)
                figures[name].append(result["cpu_s_per_10k"])
                print(f"run {run} {name}: {result['cpu_s_per_10k']:.3f} CPU s / 10k, "
                      f"{result['msg_s']:,.0f} msg/s", flush=True)  # fmt: skip
    print(f"\nCPU s per 10,000 confirmed publishes ({opts.messages:,} per run, window "
          f"{opts.window}, {opts.runs} runs): median [min-max]")  # fmt: skip
    for name, values in figures.items():
        print(f"  {name:14} {statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["cost"]:
        sys.exit(cost(sys.argv[2:]))
    from bench.suite import main

    sys.exit(main(["--only", "publish", *sys.argv[1:]]))
