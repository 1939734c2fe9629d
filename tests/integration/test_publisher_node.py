"""Publishing through node-wide faults: memory and disk alarms, connections cut by the broker.

A blocked connection makes publish raise at its deadline, never hang; a cut connection fails
only the messages in flight, and nothing confirmed is lost. These faults change a whole node,
so they hit a throwaway node of our own (never the shared broker), stopped by pid afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import pika
import pytest

from bus.errors import PublishError, PublishTimeoutError
from bus.node import LocalNode, rabbitmq_installed
from bus.settings import BusSettings
from producers import Outgoing, Publisher, PublishResult, SyncPublisher

pytestmark = pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")

# A hang past this is a failure of the test, not a slow pass: the deadline under test is 2 s.
HANG = 60.0


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with LocalNode(prefix="bus-pub-blocked") as local:
        connection = pika.BlockingConnection(pika.URLParameters(local.amqp_url))
        try:
            connection.channel().queue_declare("blocked.q", durable=True)
        finally:
            connection.close()
        yield local


def _alarms(node: LocalNode) -> str:
    return node.ctl("eval", "rabbit_alarm:get_alarms().")


# A resource alarm blocks every publishing connection of the node: (set, clear) arguments.
ALARMS = {
    "memory": (("set_vm_memory_high_watermark", "0"), ("set_vm_memory_high_watermark", "0.4")),
    "disk": (("set_disk_free_limit", "100000GB"), ("set_disk_free_limit", "50MB")),
}


class Alarm:
    """One kind of resource alarm on the throwaway node, raised and cleared on demand."""

    def __init__(self, node: LocalNode, kind: str) -> None:
        self.node, self.kind = node, kind

    def raise_(self) -> None:
        self.node.ctl(*ALARMS[self.kind][0])
        self._until(lambda alarms: self.kind in alarms, "went up")

    def clear(self) -> None:
        self.node.ctl(*ALARMS[self.kind][1])
        self._until(lambda alarms: self.kind not in alarms, "cleared")

    def _until(self, done: Callable[[str], bool], what: str) -> None:
        deadline = time.monotonic() + HANG
        while not done(_alarms(self.node)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the {self.kind} alarm never {what}")
            time.sleep(0.2)


@pytest.fixture(params=sorted(ALARMS))
def alarm(request: pytest.FixtureRequest, node: LocalNode) -> Iterator[Alarm]:
    """A memory or a disk alarm the test raises; always cleared afterwards."""
    alarm = Alarm(node, request.param)
    yield alarm
    alarm.clear()


def queue_bodies(node: LocalNode) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
    try:
        channel = connection.channel()
        bodies: list[bytes] = []
        while True:
            method, _, body = channel.basic_get("blocked.q", auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


async def test_async_publish_times_out_while_blocked_then_recovers(
    alarm: Alarm,
) -> None:
    node = alarm.node
    settings = BusSettings(amqp_url=node.amqp_url, connect_timeout=10)
    async with Publisher.connect(settings, confirm_timeout=2.0) as publisher:
        await publisher.publish("", "blocked.q", b'{"n":1}')
        alarm.raise_()
        async with asyncio.timeout(HANG):
            with pytest.raises(PublishTimeoutError, match="no confirm within 2s"):
                await publisher.publish("", "blocked.q", b'{"n":2}')
        alarm.clear()
        async with asyncio.timeout(HANG):
            await publisher.publish("", "blocked.q", b'{"n":3}', confirm_timeout=HANG)
    bodies = queue_bodies(node)
    # n=2 timed out: it may or may not have been delivered once the alarm cleared.
    assert bodies[0] == b'{"n":1}'
    assert bodies[-1] == b'{"n":3}'


async def test_sync_publish_times_out_while_blocked_then_recovers(
    alarm: Alarm,
) -> None:
    node = alarm.node
    settings = BusSettings(amqp_url=node.amqp_url, connect_timeout=10)
    with SyncPublisher.connect(settings, confirm_timeout=2.0) as publisher:
        publisher.publish("", "blocked.q", b'{"n":1}')
        alarm.raise_()
        with pytest.raises(PublishTimeoutError, match="no confirm within 2s"):
            publisher.publish("", "blocked.q", b'{"n":2}')
        alarm.clear()
        publisher.publish("", "blocked.q", b'{"n":3}')
    bodies = queue_bodies(node)
    assert bodies[0] == b'{"n":1}'
    assert bodies[-1] == b'{"n":3}'


def wait_for_depth(node: LocalNode, minimum: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
    try:
        channel = connection.channel()
        deadline = time.monotonic() + HANG
        while channel.queue_declare("blocked.q", passive=True).method.message_count < minimum:
            if time.monotonic() > deadline:
                raise AssertionError(f"blocked.q never reached {minimum} messages")
            time.sleep(0.02)
    finally:
        connection.close()


def check_cut(node: LocalNode, results: list[PublishResult], window: int) -> None:
    """Only what was written and unconfirmed when the connection died may have failed,
    nothing confirmed is lost, and the publish made after the cut ("after") arrived last."""
    failed = [r.error for r in results if not r.ok]
    assert len(failed) <= window
    assert all(isinstance(error, PublishError) for error in failed)
    received = [json.loads(body)["n"] for body in queue_bodies(node)]
    confirmed = {n for n, r in enumerate(results) if r.ok}
    assert confirmed <= set(received)
    assert received[-1] == "after"


async def test_async_cut_fails_only_messages_in_flight_and_loses_nothing(node: LocalNode) -> None:
    queue_bodies(node)  # start empty
    settings = BusSettings(amqp_url=node.amqp_url, connect_timeout=10)
    window = 200
    messages = [Outgoing("", "blocked.q", {"n": n}) for n in range(20_000)]
    async with Publisher.connect(settings, window=window, confirm_timeout=30.0) as publisher:
        stream = asyncio.create_task(publisher.publish_many(messages))
        await asyncio.to_thread(wait_for_depth, node, 100)
        await asyncio.to_thread(node.ctl, "close_all_connections", "publisher test cut")
        async with asyncio.timeout(HANG):
            results = await stream
        # The messages not in flight waited for the robust connection to come back.
        await publisher.publish("", "blocked.q", {"n": "after"})
    check_cut(node, results, window)


def test_sync_cut_fails_at_most_the_next_publish(node: LocalNode) -> None:
    queue_bodies(node)
    settings = BusSettings(amqp_url=node.amqp_url, connect_timeout=10)
    with SyncPublisher.connect(settings) as publisher:
        publisher.publish("", "blocked.q", {"n": 0})
        node.ctl("close_all_connections", "publisher test cut")
        results = publisher.publish_many([Outgoing("", "blocked.q", {"n": n}) for n in (1, 2, 3)])
    assert all(r.ok for r in results[1:])
    assert results[0].ok or isinstance(results[0].error, PublishError)
    received = [json.loads(body)["n"] for body in queue_bodies(node)]
    assert {0, 2, 3} <= set(received)


async def test_sync_cut_during_publish_many_fails_only_messages_in_flight(
    node: LocalNode,
) -> None:
    queue_bodies(node)  # start empty
    settings = BusSettings(amqp_url=node.amqp_url, connect_timeout=10)
    window = 200
    messages = [Outgoing("", "blocked.q", {"n": n}) for n in range(20_000)]
    with SyncPublisher.connect(settings, confirm_timeout=30.0) as publisher:
        # pika is single-threaded: the publisher runs in one thread, the cut in this one.
        stream = asyncio.create_task(
            asyncio.to_thread(publisher.publish_many, messages, window=window)
        )
        await asyncio.to_thread(wait_for_depth, node, 100)
        await asyncio.to_thread(node.ctl, "close_all_connections", "publisher test cut")
        async with asyncio.timeout(HANG):
            results = await stream
        # The messages not in flight went out on a new connection.
        publisher.publish("", "blocked.q", {"n": "after"})
    assert all("may or may not" in str(r.error) for r in results if not r.ok)
    check_cut(node, results, window)


def test_sync_publish_many_times_out_while_blocked_then_recovers(
    alarm: Alarm,
) -> None:
    node = alarm.node
    queue_bodies(node)
    settings = BusSettings(amqp_url=node.amqp_url, connect_timeout=10)
    with SyncPublisher.connect(settings, confirm_timeout=2.0) as publisher:
        alarm.raise_()
        results = publisher.publish_many([Outgoing("", "blocked.q", {"n": n}) for n in range(5)])
        assert all(isinstance(r.error, PublishTimeoutError) for r in results)
        alarm.clear()
        after = publisher.publish_many([Outgoing("", "blocked.q", {"n": "after"})])
        assert after[0].ok
    received = [json.loads(body)["n"] for body in queue_bodies(node)]
    # The timed-out ones may or may not have arrived once the alarm cleared.
    assert received[-1] == "after"
