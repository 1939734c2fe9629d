"""A handler slower than the broker's ``consumer_timeout``: nothing is lost.

RabbitMQ closes a channel whose delivery stays unacknowledged past ``consumer_timeout``
(PRECONDITION_FAILED) and requeues what it held. The runtime must resume consuming on a new
channel, drop the acks of the closed one (a stale tag would close the new channel too) and
handle the requeued messages again. The timeout is a node-wide setting: a throwaway node of
our own gets 1 s (checked every 250 ms) instead of the shared broker's 30 min.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.node import LocalNode, rabbitmq_installed
from bus.settings import BusSettings
from consumers import ConsumerApp, Message
from producers.events import OrderCreated
from tests.support.consumer import load_declared, publish, queue_depth, wait_until
from tests.support.topologies import order_topology

pytestmark = pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")

TOPOLOGY = order_topology(
    """
    slow.q:
      dead_letter: true
      bindings: [{exchange: events, routing_key: "order.#"}]
    """
)


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with LocalNode(prefix="bus-consumer-timeout") as local:
        # Read by each channel when it opens: set before any consumer connects.
        local.ctl("eval", "application:set_env(rabbit, consumer_timeout, 1000).")
        local.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 250).")
        yield local


def _order(order_id: str) -> dict[str, object]:
    body = OrderCreated(order_id=order_id, customer_id="c", total=1).model_dump_json()
    return {"routing_key": "slow.q", "body": body, "content_type": "application/json",
            "type": "order.created"}  # fmt: skip


async def test_a_handler_slower_than_the_consumer_timeout_loses_nothing(
    node: LocalNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = node.amqp_url
    topology = load_declared(url, tmp_path, TOPOLOGY)
    app = ConsumerApp("timeout", grace=5)
    seen: list[tuple[str, bool]] = []

    @app.handler("slow.q", prefetch=10)
    async def handle(event: OrderCreated, message: Message) -> None:
        seen.append((event.order_id, message.redelivered))
        if event.order_id == "slow" and not message.redelivered:
            await asyncio.sleep(3)  # well past the timeout: the broker closes the channel

    ids = ["slow", *(f"quick-{n}" for n in range(5))]
    with caplog.at_level(logging.INFO):
        async with app.serve(BusSettings(amqp_url=url), topology=topology):
            await publish(url, [_order(i) for i in ids])

            def all_handled_and_acked() -> bool:
                handled = {order_id for order_id, _ in seen}
                return handled == set(ids) and ("slow", True) in seen

            await wait_until(all_handled_and_acked, 60)
            await wait_until(lambda: queue_depth(url, "slow.q")[0] == 0, 30)
    # Consumers gone: anything left unacked would be back in the queue now.
    assert queue_depth(url, "slow.q") == (0, 0)
    assert queue_depth(url, "slow.q.dlq")[0] == 0
    assert ("slow", True) in seen  # it came back after the broker closed the channel
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "resumed" in messages or "closed" in messages
