"""Confirmed publishing: amqp-bus against the raw clients, in the same run, ratios printed.

Method (performance-baseline.md): 256-byte JSON body, persistent, publisher confirms, a
durable classic queue reached through the default exchange, in a vhost the bench creates and
deletes through the management API. Each case runs in a fresh process: connect, declare and
purge, 300 untimed warm-up messages, purge, then publish for ``--seconds``; the clock stops
when the last confirm has arrived. Rounds are interleaved in a shuffled order and ratios are
paired within a round.

Cases:
  raw-aio-pika  aio-pika, at most WINDOW unconfirmed publishes (semaphore + one task each)
  bus-async     producers.Publisher.publish_many with the same window
  raw-pika      pika BlockingChannel with confirm_delivery (one confirm at a time)
  bus-sync      producers.SyncPublisher.publish_many (one confirm at a time)

    .venv/bin/python -m bench.publish [--rounds 3] [--seconds 5] [--window 1000] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

QUEUE = "bench.publish"
WARMUP = 300
CASES = ("raw-aio-pika", "bus-async", "raw-pika", "bus-sync")
PAIRS = (("bus-async", "raw-aio-pika"), ("bus-sync", "raw-pika"))


def body_256() -> bytes:
    """A 256-byte JSON object, like the baseline's message."""
    head = b'{"event":"bench","pad":"'
    tail = b'"}'
    body = head + b"x" * (256 - len(head) - len(tail)) + tail
    assert len(body) == 256
    json.loads(body)
    return body


BODY = body_256()


# -- setup shared by the pika and aio-pika cases ---------------------------------------------
def prepare_queue(url: str) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "classic"})
        channel.queue_purge(QUEUE)
    finally:
        connection.close()


def until(deadline: float) -> Iterator[None]:
    while time.perf_counter() < deadline:
        yield None


# -- the four cases: each returns (messages confirmed, seconds) ------------------------------
async def raw_aio_pika(url: str, seconds: float, window: int) -> tuple[int, float]:
    import aio_pika

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
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    QUEUE,
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
        prepare_queue(url)
        start = time.perf_counter()
        deadline = start + seconds
        count = await run(lambda: time.perf_counter() >= deadline)
        return count, time.perf_counter() - start
    finally:
        await connection.close()


async def bus_async(url: str, seconds: float, window: int) -> tuple[int, float]:
    from bus.settings import BusSettings
    from producers import Outgoing, Publisher

    message = Outgoing("", QUEUE, BODY)
    async with Publisher.connect(BusSettings(amqp_url=url), window=window) as publisher:
        warm = await publisher.publish_many([message] * WARMUP)
        assert all(r.ok for r in warm)
        prepare_queue(url)
        start = time.perf_counter()
        results = await publisher.publish_many(message for _ in until(start + seconds))
        elapsed = time.perf_counter() - start
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"bus-async: {len(failed)} failed, first: {failed[0]}")
    return len(results), elapsed


def raw_pika(url: str, seconds: float, window: int) -> tuple[int, float]:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)

        def publish() -> None:
            channel.basic_publish("", QUEUE, BODY, properties, mandatory=True)

        for _ in range(WARMUP):
            publish()
        prepare_queue(url)
        start = time.perf_counter()
        count = 0
        for _ in until(start + seconds):
            publish()
            count += 1
        return count, time.perf_counter() - start
    finally:
        connection.close()


def bus_sync(url: str, seconds: float, window: int) -> tuple[int, float]:
    from bus.settings import BusSettings
    from producers import Outgoing, SyncPublisher

    message = Outgoing("", QUEUE, BODY)
    with SyncPublisher.connect(BusSettings(amqp_url=url)) as publisher:
        warm = publisher.publish_many([message] * WARMUP)
        assert all(r.ok for r in warm)
        prepare_queue(url)
        start = time.perf_counter()
        results = publisher.publish_many(message for _ in until(start + seconds))
        elapsed = time.perf_counter() - start
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"bus-sync: {len(failed)} failed, first: {failed[0]}")
    return len(results), elapsed


AsyncCase = Callable[[str, float, int], Coroutine[Any, Any, tuple[int, float]]]
SyncCase = Callable[[str, float, int], tuple[int, float]]
ASYNC_CASES: dict[str, AsyncCase] = {"raw-aio-pika": raw_aio_pika, "bus-async": bus_async}
SYNC_CASES: dict[str, SyncCase] = {"raw-pika": raw_pika, "bus-sync": bus_sync}


def run_case(case: str, url: str, seconds: float, window: int, use_uvloop: bool) -> None:
    """One case in this (fresh) process; prints one JSON line."""
    prepare_queue(url)
    if case in ASYNC_CASES:
        coroutine = ASYNC_CASES[case](url, seconds, window)
        if use_uvloop:
            import uvloop

            count, elapsed = uvloop.run(coroutine)
        else:
            count, elapsed = asyncio.run(coroutine)
    else:
        count, elapsed = SYNC_CASES[case](url, seconds, window)
    prepare_queue(url)  # leave nothing behind for the next case
    print(json.dumps({"case": case, "messages": count, "seconds": elapsed}))


# -- orchestration ---------------------------------------------------------------------------
def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def ratio_spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--uvloop", action="store_true", help="run the async cases on uvloop")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_case:
        run_case(args.run_case, args.url, args.seconds, args.window, args.uvloop)
        return 0

    from bus.broker.management import ManagementClient
    from bus.settings import BusSettings, with_vhost

    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    settings = BusSettings()
    vhost = f"bus-bench-{uuid.uuid4().hex[:10]}"
    url = with_vhost(settings.amqp_url, vhost)
    rates: dict[str, list[float]] = {case: [] for case in cases}
    ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in PAIRS}
    with ManagementClient.from_settings(settings) as management:
        user, _ = settings.credentials()
        management.create_vhost(vhost, description="amqp-bus publish bench (safe to delete)")
        try:
            management.set_permissions(vhost, user)
            for round_no in range(1, args.rounds + 1):
                order = random.sample(cases, len(cases))
                this_round: dict[str, float] = {}
                for case in order:
                    command = [
                        sys.executable, "-m", "bench.publish", "--run-case", case, "--url", url,
                        "--seconds", str(args.seconds), "--window", str(args.window),
                    ]  # fmt: skip
                    if args.uvloop:
                        command.append("--uvloop")
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        print(f"case {case} failed:\n{done.stderr}", file=sys.stderr)
                        return 1
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    this_round[case] = result["messages"] / result["seconds"]
                    rates[case].append(this_round[case])
                    print(
                        f"round {round_no} {case:>13}: {this_round[case]:>8,.0f} msg/s "
                        f"({result['messages']} messages in {result['seconds']:.2f} s)",
                        flush=True,
                    )
                for ours, raw in PAIRS:
                    if ours in this_round and raw in this_round:
                        ratios[(ours, raw)].append(this_round[ours] / this_round[raw])
        finally:
            management.delete_vhost(vhost)

    loop = "uvloop" if args.uvloop else "asyncio"
    print()
    print(
        f"message: {len(BODY)}-byte JSON, persistent, confirms, mandatory; durable classic "
        f"queue via the default exchange; window {args.window} (async cases, {loop}); "
        f"{args.seconds:g} s per case; {args.rounds} interleaved rounds, fresh process per case"
    )
    print("| case | msg/s median [min-max] |")
    print("|---|---|")
    for case in cases:
        print(f"| {case} | {spread(rates[case])} |")
    print()
    print("| ratio (paired per round) | median [min-max] |")
    print("|---|---|")
    for (ours, raw), values in ratios.items():
        if values:
            print(f"| {ours} / {raw} | {ratio_spread(values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
