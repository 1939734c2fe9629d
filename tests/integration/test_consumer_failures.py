"""Failure handling of the consumer runtime against the real broker.

Retry ladder, dead-lettering with exception headers, invalid payloads, queues without a
dead-letter exchange, the idempotency hook and the start-up check. Delays are short (300 ms,
700 ms) so the ladder is exercised end to end; the assertions on them are lower bounds
(a retry must not come back before its delay), never performance figures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest

from bus.broker.management import ManagementClient
from bus.errors import NotFoundError
from bus.settings import BusSettings
from bus.topology import LoadedTopology
from consumers import Backoff, ConsumerApp, Message, RejectMessage
from producers.events import OrderCreated, OrderPaid
from tests.support.consumer import (
    RecordingMetrics,
    drain,
    load_declared,
    must_not_consume,
    publish,
    queue_depth,
    wait_until,
)

TOPOLOGY = """\
version: 1
exchanges:
  events: {type: topic}
  parked: {type: fanout}
queues:
  work.q:
    type: quorum
    delivery_limit: 5
    dead_letter: true
    retry: {delays: [300ms, 700ms]}
    bindings: [{exchange: events, routing_key: "work.#"}]
  work.c:
    dead_letter: true
    retry: {delays: [300ms, 700ms]}
  plain.c: {}
  plain.q:
    type: quorum
    delivery_limit: 2
  own.dlx:
    dead_letter_exchange: parked
  parked.q:
    bindings: [{exchange: parked}]
events:
  order.created:
    {exchange: events, routing_key: order.created, model: "producers.events:OrderCreated"}
  order.paid:
    {exchange: events, routing_key: order.paid, model: "producers.events:OrderPaid"}
"""

CREATED = OrderCreated(order_id="o-1", customer_id="c-1", total=12).model_dump_json()
JSON = "application/json"


class Boom(Exception):
    pass


def created(queue: str, **properties: Any) -> dict[str, Any]:
    return {
        "routing_key": queue,
        "body": CREATED,
        "content_type": JSON,
        "type": "order.created",
        **properties,
    }


@pytest.fixture
def topology(bus_vhost_url: str, tmp_path: Path) -> LoadedTopology:
    return load_declared(bus_vhost_url, tmp_path, TOPOLOGY)


def fast_app() -> ConsumerApp:
    return ConsumerApp("test", backoff=Backoff(base=0.05, cap=0.2), grace=5)


@pytest.mark.parametrize("queue", ["work.q", "work.c"])
async def test_failing_twice_then_succeeding_runs_three_times_after_each_delay(
    queue: str, topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    app = fast_app()
    calls: list[tuple[float, float, Message]] = []

    @app.handler(queue)
    async def handle(event: OrderCreated, message: Message) -> None:
        started = time.monotonic()
        calls.append((started, time.monotonic(), message))
        if len(calls) <= 2:
            raise Boom(f"attempt {len(calls)}")

    async with app.serve(settings, topology=topology):
        (sent_id,) = await publish(bus_vhost_url, [created(queue)])
        await wait_until(lambda: len(calls) >= 3)
    delays = [step.delay_ms / 1000 for step in topology.expanded.failure[queue].retry]
    assert len(calls) == 3
    assert [c[2].retry_count for c in calls] == [0, 1, 2]
    assert {c[2].message_id for c in calls} == {sent_id}
    for attempt in (1, 2):
        # The copy was published after the handler failed, so it cannot return earlier.
        assert calls[attempt][0] - calls[attempt - 1][1] >= delays[attempt - 1]
        death = calls[attempt][2].death
        assert death[0]["reason"] == "expired"
        assert death[0]["queue"] == f"{queue}.retry.{[300, 700][attempt - 1]}ms"
    assert drain(bus_vhost_url, f"{queue}.dlq") == []
    assert queue_depth(bus_vhost_url, queue)[0] == 0


@pytest.mark.parametrize("queue", ["work.q", "work.c"])
async def test_always_failing_ends_in_the_dlq_after_the_configured_attempts(
    queue: str, topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    app, calls = raising_app(queue, lambda: Boom("card declined: insufficient funds"))

    dead: list[Any] = []
    async with app.serve(settings, topology=topology):
        (sent_id,) = await publish(bus_vhost_url, [created(queue, correlation_id="c-9")])

        def dead_lettered() -> bool:
            dead.extend(drain(bus_vhost_url, f"{queue}.dlq"))
            return bool(dead)

        await wait_until(dead_lettered)
    attempts = len(topology.expanded.failure[queue].retry) + 1
    assert len(calls) == attempts
    (method, props, body) = dead[0]
    assert len(dead) == 1
    assert body == CREATED.encode()
    assert props.message_id == sent_id
    assert props.correlation_id == "c-9"
    assert props.type == "order.created"
    assert props.delivery_mode == 2
    assert method.routing_key == queue
    headers = props.headers
    assert headers["x-exception-type"] == f"{__name__}.Boom"
    assert headers["x-exception-message"] == "card declined: insufficient funds"
    assert headers["x-failure-reason"] == "handler"
    assert headers["x-failed-queue"] == queue
    assert headers["x-retry-count"] == attempts - 1
    assert queue_depth(bus_vhost_url, queue)[0] == 0
    for step in topology.expanded.failure[queue].retry:
        assert queue_depth(bus_vhost_url, step.queue)[0] == 0


async def test_invalid_payloads_go_to_the_dlq_once_without_retries(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    app = fast_app()
    handled: list[str | None] = []

    @app.handler("work.q")
    async def handle(event: OrderCreated, message: Message) -> None:
        handled.append(message.message_id)

    bad = {
        "json": created("work.q", body=b"{not json"),
        "schema": created("work.q", body=json.dumps({"order_id": "o-1"})),
        "unknown-type": created("work.q", type="order.exploded"),
        "no-type": created("work.q", type=None),
        "content-type": created("work.q", content_type="application/xml"),
        "not-accepted": created(
            "work.q", type="order.paid", body=OrderPaid(order_id="o", amount=1).model_dump_json()
        ),
    }
    expected_reason = {**{k: k for k in bad}, "no-type": "unknown-type"}
    async with app.serve(settings, topology=topology):
        ids = await publish(bus_vhost_url, list(bad.values()))
        (good,) = await publish(bus_vhost_url, [created("work.q")])
        await wait_until(lambda: good in handled)
        dead: list[Any] = []

        def all_dead() -> bool:
            dead.extend(drain(bus_vhost_url, "work.q.dlq"))
            return len(dead) >= len(bad)

        await wait_until(all_dead)
        # Past the longest delay: a copy sent through the ladder would be back by now.
        await asyncio.sleep(1.0)
        dead.extend(drain(bus_vhost_url, "work.q.dlq"))
    assert handled == [good]
    by_id = {props.message_id: props.headers for _, props, _ in dead}
    assert len(dead) == len(bad) == len(by_id)
    for name, message_id in zip(bad, ids, strict=True):
        headers = by_id[message_id]
        assert headers["x-failure-reason"] == expected_reason[name], name
        assert headers["x-retry-count"] == 0
        assert headers["x-exception-type"] == "consumers.decode.InvalidMessageError"
        assert "x-death" not in headers
    for step in topology.expanded.failure["work.q"].retry:
        assert queue_depth(bus_vhost_url, step.queue)[0] == 0


def raising_app(queue: str, error: Callable[[], Exception]) -> tuple[ConsumerApp, list[Message]]:
    """An app whose handler of ``queue`` raises ``error()`` for every message; the messages
    it saw."""
    app = fast_app()
    calls: list[Message] = []

    @app.handler(queue)
    async def handle(event: OrderCreated, message: Message) -> None:
        calls.append(message)
        raise error()

    return app, calls


def rejecting_app(queue: str) -> tuple[ConsumerApp, list[Message]]:
    """An app whose handler of ``queue`` rejects every message; the messages it saw."""
    return raising_app(queue, lambda: RejectMessage("order from a blocked customer"))


async def test_reject_message_skips_the_ladder(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    app, calls = rejecting_app("work.c")
    dead: list[Any] = []
    async with app.serve(settings, topology=topology):
        await publish(bus_vhost_url, [created("work.c")])

        def arrived() -> bool:
            dead.extend(drain(bus_vhost_url, "work.c.dlq"))
            return bool(dead)

        await wait_until(arrived)
    assert len(calls) == 1
    headers = dead[0][1].headers
    assert headers["x-failure-reason"] == "rejected"
    assert headers["x-exception-type"] == "consumers.policy.RejectMessage"
    assert headers["x-exception-message"] == "order from a blocked customer"


async def test_a_nacked_dead_letter_is_requeued_then_moved_through_a_new_channel(
    topology: LoadedTopology,
    settings: BusSettings,
    bus_vhost_url: str,
    bus_vhost: str,
    bus_management: ManagementClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A full DLQ that rejects publishes: the broker nacks every copy sent to it.
    bus_management.put_policy(
        bus_vhost, "dlq-full", pattern=r"^work\.c\.dlq$", apply_to="queues", priority=10,
        definition={"max-length": 0, "overflow": "reject-publish"},
    )  # fmt: skip
    app, calls = rejecting_app("work.c")
    dead: list[Any] = []
    with caplog.at_level(logging.INFO, logger="consumers.runtime"):
        async with app.serve(settings, topology=topology) as runtime:
            first_channel = runtime.publish_channel
            (sent_id,) = await publish(bus_vhost_url, [created("work.c")])
            await wait_until(lambda: len(calls) >= 2)
            # Nacked, so the delivery went back to its queue (nothing lost) and the next
            # copy goes out on another channel.
            assert runtime.publish_channel is not first_channel
            bus_management.delete_policy(bus_vhost, "dlq-full")

            def arrived() -> bool:
                dead.extend(drain(bus_vhost_url, "work.c.dlq"))
                return bool(dead)

            await wait_until(arrived)
            await asyncio.sleep(0.3)  # a second copy would arrive within the back-off
            dead.extend(drain(bus_vhost_url, "work.c.dlq"))
    assert [d[1].message_id for d in dead] == [sent_id]
    assert queue_depth(bus_vhost_url, "work.c")[0] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not be moved" in m and "requeued" in m for m in messages)
    assert any("on a new channel" in m for m in messages)


async def test_classic_queue_without_dlx_requeues_a_handler_failure_with_backoff(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    app = fast_app()
    calls: list[Message] = []

    @app.handler("plain.c")
    async def handle(message: Message) -> None:
        calls.append(message)
        if len(calls) <= 3:
            raise Boom("transient")

    async with app.serve(settings, topology=topology):
        await publish(bus_vhost_url, [created("plain.c")])
        await wait_until(lambda: len(calls) >= 4)
    assert [m.redelivered for m in calls] == [False, True, True, True]
    assert queue_depth(bus_vhost_url, "plain.c")[0] == 0


async def test_classic_queue_without_dlx_drops_after_max_requeues_even_without_message_id(
    topology: LoadedTopology,
    settings: BusSettings,
    bus_vhost_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = ConsumerApp("test", backoff=Backoff(base=0.1, cap=1.0, max_requeues=3), grace=5)
    calls: list[Message] = []

    @app.handler("plain.c")
    async def handle(message: Message) -> None:
        calls.append(message)
        raise Boom("always")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "consumers.runtime"]

    with caplog.at_level(logging.ERROR, logger="consumers.runtime"):
        async with app.serve(settings, topology=topology) as runtime:
            # pika: aio-pika gives every message an id of its own.
            connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
            props = pika.BasicProperties(content_type=JSON, type="order.created")
            connection.channel().basic_publish("", "plain.c", CREATED, props)
            connection.close()
            await wait_until(lambda: any("DROPPED" in m for m in lines()))
            await asyncio.sleep(0.3)
            dropped = dict(runtime.dropped)
    # The first delivery and max_requeues requeues, then no more: the message is dropped.
    assert [m.message_id for m in calls] == [None] * 4
    assert dropped == {"plain.c": 1}
    assert queue_depth(bus_vhost_url, "plain.c")[0] == 0
    requeues = [m for m in lines() if "requeued in" in m]
    # The back-off grows although the message has no id (it is counted by its digest) ...
    delays = [float(m.rsplit("requeued in ", 1)[1].split(" s")[0]) for m in requeues]
    assert delays == [0.1, 0.2, 0.4]
    # ... and logs name it by that digest, not as "message None".
    assert all("without message_id (sha256:" in m for m in [*requeues, *lines()[-1:]])
    assert not any("message None" in m for m in lines())


async def test_quorum_queue_without_dlx_is_guarded_by_its_delivery_limit(
    topology: LoadedTopology,
    settings: BusSettings,
    bus_vhost_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = fast_app()
    counts: list[int | None] = []

    @app.handler("plain.q")
    async def handle(message: Message) -> None:
        counts.append(message.delivery_count)
        raise Boom("poison")

    limit = topology.expanded.failure["plain.q"].delivery_limit
    assert limit == 2
    with caplog.at_level(logging.ERROR, logger="consumers.runtime"):
        async with app.serve(settings, topology=topology):
            await publish(bus_vhost_url, [created("plain.q")])
            await wait_until(lambda: len(counts) >= limit + 1)
            await wait_until(lambda: queue_depth(bus_vhost_url, "plain.q")[0] == 0)
            await asyncio.sleep(0.5)
    # limit N allows N + 1 deliveries; the last one is announced as dropped by the broker.
    assert len(counts) == limit + 1
    assert counts[-1] == limit
    assert any("DROP" in r.getMessage() for r in caplog.records)


async def test_queue_with_its_own_dlx_rejects_to_it(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    app = fast_app()

    @app.handler("own.dlx")
    async def handle(event: OrderCreated) -> None:
        raise Boom("no")

    parked: list[Any] = []
    async with app.serve(settings, topology=topology):
        (sent_id,) = await publish(bus_vhost_url, [created("own.dlx")])

        def arrived() -> bool:
            parked.extend(drain(bus_vhost_url, "parked.q"))
            return bool(parked)

        await wait_until(arrived)
    props = parked[0][1]
    assert props.message_id == sent_id
    assert props.headers["x-death"][0]["reason"] == "rejected"
    assert props.headers["x-death"][0]["queue"] == "own.dlx"


async def test_idempotent_handler_skips_a_duplicate_message_id(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    app = fast_app()
    seen: list[str | None] = []

    @app.handler("work.c", idempotent=True, concurrency=2, prefetch=10)
    async def handle(event: OrderCreated, message: Message) -> None:
        seen.append(message.message_id)

    async with app.serve(settings, topology=topology):
        await publish(
            bus_vhost_url,
            [
                created("work.c", message_id="dup-1"),
                created("work.c", message_id="dup-1"),
                created("work.c", message_id="other"),
                created("work.c", message_id="dup-1"),
            ],
        )
        await wait_until(lambda: queue_depth(bus_vhost_url, "work.c")[0] == 0 and len(seen) >= 2)
        await asyncio.sleep(0.3)
    assert sorted(seen) == ["dup-1", "other"]
    assert queue_depth(bus_vhost_url, "work.c") == (0, 0)


async def test_start_up_names_a_missing_queue_and_declares_nothing(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    connection.channel().queue_delete("work.q.retry.700ms")
    connection.close()
    app = must_not_consume(fast_app(), "work.q")
    with pytest.raises(NotFoundError, match=r"queue 'work\.q\.retry\.700ms' not found"):
        async with app.serve(settings, topology=topology):
            pass
    with pytest.raises(Exception, match="NOT_FOUND"):
        queue_depth(bus_vhost_url, "work.q.retry.700ms")


async def test_metrics_count_each_outcome(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    metrics = RecordingMetrics()
    app = ConsumerApp("test", metrics=metrics, backoff=Backoff(0.05, 0.2), grace=5)

    @app.handler("work.c")
    async def handle(event: OrderCreated, message: Message) -> None:
        if message.message_id == "fails":
            raise Boom("always")

    async with app.serve(settings, topology=topology):
        await publish(
            bus_vhost_url,
            [
                created("work.c", message_id="ok-1"),
                created("work.c", message_id="fails"),
                created("work.c", message_id="bad", body=b"[]"),
                created("work.c", message_id="ok-2"),
            ],
        )
        # 2 ok + 3 deliveries of "fails" (two retries) + 1 bad = 6 deliveries, all acked.
        await wait_until(lambda: metrics.counts["acked work.c"] >= 6)
    assert metrics.counts == Counter(
        {
            "consumed work.c": 6,
            "acked work.c": 6,
            "retried work.c": 2,
            "dead work.c handler": 1,
            "dead work.c schema": 1,
        }
    )
    # The handler ran for ok-1, ok-2 and three times for "fails"; "bad" never reached it.
    assert len(metrics.seconds) == 5
    assert queue_depth(bus_vhost_url, "work.c.dlq")[0] == 2
