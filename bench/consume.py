"""Consume bench: raw aio-pika (callback, manual ack) vs the amqp-bus runtime, same run.

Each case drains the same pre-filled durable classic queue: 50,000 persistent 256-byte JSON
``order.created`` messages, prefetch 100, one consumer. Rounds are interleaved (order shuffled
per round) and every case runs in a fresh process. Ratios are paired within a round; the
median ratio is the figure to compare with the goal (>= 0.95x raw aio-pika).

- ``raw``: ``aio_pika.connect_robust``, ``queue.consume(callback)``, ``await message.ack()``
  per message; the body is not decoded.
- ``bus``: ``ConsumerApp`` with a handler typed ``OrderCreated``: every message is decoded by
  its ``type`` and validated by pydantic before the handler runs, then acked.

The clock runs from the start of consuming to the 50,000th handler completion (raw: its ack
written); afterwards the case checks that the queue holds nothing ready or unacked.

    .venv/bin/python -m bench.consume [--rounds 3] [--messages 50000] [--prefetch 100]

A dedicated vhost is created and deleted through the management API (``BUS_AMQP_URL``,
``BUS_MANAGEMENT_URL``).
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
from typing import Any

import aio_pika
import pika

from bus.broker.management import ManagementClient
from bus.settings import BusSettings, with_vhost
from bus.topology import parse_topology
from producers.events import OrderCreated

QUEUE = "bench.consume"
SIZE = 256
CASES = ("raw", "bus")
GOAL = 0.95
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
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(QUEUE, durable=True)
        channel.queue_purge(QUEUE)
        props = pika.BasicProperties(
            content_type="application/json", delivery_mode=2, type="order.created"
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


def leftover(url: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        count: int = connection.channel().queue_declare(QUEUE, passive=True).method.message_count
        return count
    finally:
        connection.close()


async def run_raw(url: str, count: int, prefetch: int) -> float:
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
            if seen == count:
                finished = time.perf_counter()
                done.set()

        started = time.perf_counter()
        await queue.consume(on_message)
        await done.wait()
        return count / (finished - started)
    finally:
        await connection.close()


async def run_bus(url: str, count: int, prefetch: int) -> float:
    from consumers import ConsumerApp

    app = ConsumerApp("bench", grace=10)
    done = asyncio.Event()
    seen = 0
    finished = 0.0

    @app.handler(QUEUE, prefetch=prefetch)
    async def handle(event: OrderCreated) -> None:
        nonlocal seen, finished
        seen += 1
        if seen == count:
            finished = time.perf_counter()
            done.set()

    topology = parse_topology(TOPOLOGY, "bench-consume.yaml")
    # Start-up (connect, passive checks) is outside the clock, as the raw case's connect is.
    started = 0.0
    async with app.serve(BusSettings(amqp_url=url), topology=topology):
        started = time.perf_counter()
        await done.wait()
    return count / (finished - started)


def run_case(case: str, url: str, count: int, prefetch: int) -> dict[str, Any]:
    fill(url, count)
    runner = run_raw if case == "raw" else run_bus
    rate = asyncio.run(runner(url, count, prefetch))
    left = leftover(url)
    if left:
        raise RuntimeError(f"{case}: {left} messages left in the queue after the run")
    return {"case": case, "msg_s": rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--run-case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_case:
        print(json.dumps(run_case(args.run_case, args.url, args.messages, args.prefetch)))
        return 0

    settings = BusSettings()
    vhost = f"bench-consume-{uuid.uuid4().hex[:8]}"
    url = with_vhost(settings.amqp_url, vhost)
    user, _ = settings.credentials()
    results: dict[str, list[float]] = {case: [] for case in CASES}
    ratios: list[float] = []
    print(
        f"consume: {args.messages} persistent {SIZE}-byte JSON messages, durable classic queue, "
        f"prefetch {args.prefetch}, manual ack, {args.rounds} interleaved rounds, "
        "fresh process per case"
    )
    with ManagementClient.from_settings(settings) as management:
        management.create_vhost(vhost, description="amqp-bus consume bench (safe to delete)")
        try:
            management.set_permissions(vhost, user)
            for round_number in range(1, args.rounds + 1):
                order = list(CASES)
                random.shuffle(order)
                paired: dict[str, float] = {}
                for case in order:
                    command = [
                        sys.executable, "-m", "bench.consume", "--run-case", case,
                        "--url", url, "--messages", str(args.messages),
                        "--prefetch", str(args.prefetch),
                    ]  # fmt: skip
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        print(done.stderr, file=sys.stderr)
                        return 1
                    paired[case] = json.loads(done.stdout.strip().splitlines()[-1])["msg_s"]
                    results[case].append(paired[case])
                ratio = paired["bus"] / paired["raw"]
                ratios.append(ratio)
                print(
                    f"round {round_number} ({' -> '.join(order)}): raw aio-pika "
                    f"{paired['raw']:,.0f} msg/s, amqp-bus {paired['bus']:,.0f} msg/s, "
                    f"ratio {ratio:.2f}"
                )
        finally:
            management.delete_vhost(vhost)
    for case, label in (("raw", "raw aio-pika callback"), ("bus", "amqp-bus ConsumerApp")):
        values = results[case]
        print(
            f"{label:<24} median {statistics.median(values):,.0f} msg/s "
            f"[{min(values):,.0f}-{max(values):,.0f}]"
        )
    median = statistics.median(ratios)
    verdict = "meets" if median >= GOAL else "misses"
    print(
        f"ratio amqp-bus / raw aio-pika: median {median:.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
        f" ({verdict} the goal >= {GOAL}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
