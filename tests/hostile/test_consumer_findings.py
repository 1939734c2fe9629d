"""Issue 25, findings 1, 2 and 4, against the demo consumers on a throwaway node.

1. A forged ``x-death`` on a message that fails once must not reach the broker's dead-letter
   code with the retry copy (it crashed RabbitMQ 3.10.8's at-least-once dead-letter worker:
   the copy never came back, nor did later valid retries).
2. A property the client cannot decode (non-UTF-8 ``type``/``app_id``/routing key, a header
   table nested 5,000 deep) must not drop the connection: the message is dead-lettered
   (``undecodable``) and every other consumer goes on, on its original channel.
3. Poison in a queue without a dead-letter exchange must not starve the valid messages behind
   it until they expire.

Every test ends with a total-queue count: each message is handled, in a DLQ, or counted as
dropped by the runtime; nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import pika
import pytest

from bus.lenient import UNDECODABLE_HEADER
from bus.node import LocalNode
from consumers.demo import DEMO_QUEUES, recorder
from tests.hostile.harness import demo_run, demo_vhost, publish, wait_until
from tests.support.amqp import drain
from tests.support.hostile.kinds import KINDS, Template

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

KIND = {k.name: k for k in KINDS}


def order(order_id: str, **props: Any) -> tuple[str, str | bytes, bytes, Any]:
    body = json.dumps({"order_id": order_id, "customer_id": "c", "total": "1.00"}).encode()
    values: dict[str, Any] = {
        "content_type": "application/json",
        "type": "order.created",
        "message_id": order_id,
        "delivery_mode": 2,
    }
    values.update(props)
    return ("events", "order.created", body, pika.BasicProperties(**values))


def handled(queue: str) -> set[str | None]:
    return {r.message_id for r in recorder.received[queue]}


def vhost_of(url: str) -> str:
    from bus.settings import vhost_from_url

    return vhost_from_url(url)


async def test_forged_x_death_does_not_break_the_brokers_dead_lettering(
    hostile_node: LocalNode,
) -> None:
    with demo_vhost(hostile_node) as (url, management, topology):
        async with demo_run(url, management, topology, vhost_of(url)) as run:
            # flaky-* fail once: the runtime republishes them to billing.orders.retry.1s,
            # whose TTL dead-letters them back through the broker's dead-letter code.
            publish(url, [
                order("flaky-ints", headers={"x-death": [1, 2, 3]}),
                order("flaky-empty", headers={"x-death": [{}]}),
                order("flaky-count", headers={"x-death": [
                    {"count": "many", "queue": "q", "reason": "expired"},
                    {"count": "x", "queue": "q", "reason": "expired"},
                ]}),
            ])  # fmt: skip
            ids = {"flaky-ints", "flaky-empty", "flaky-count"}
            await wait_until(lambda: ids <= handled("billing.orders"), 30, "forged retried back")
            # A valid retry afterwards still comes back: the node's dead-lettering works.
            publish(url, [order("flaky-valid")])
            await wait_until(
                lambda: "flaky-valid" in handled("billing.orders"), 30, "valid retry back"
            )
            await wait_until(run.settled, 30, "queues settled")
            assert run.alive() == []
            retried = {r.message_id: r.retry_count for r in recorder.received["billing.orders"]}
            assert all(retried[i] == 1 for i in ids | {"flaky-valid"})
        totals = run.totals()
        assert sum(totals.values()) == 0, totals


async def test_undecodable_properties_are_dead_lettered_and_the_connection_stays(
    hostile_node: LocalNode,
) -> None:
    bad = ["type-not-utf8", "app-id-not-utf8", "headers-nested-5000", "timestamp-max"]
    with demo_vhost(hostile_node) as (url, management, topology):
        async with demo_run(url, management, topology, vhost_of(url)) as run:
            items = [
                ("events", "order.created", KIND[n].body(t), KIND[n].properties(t))
                for n in bad
                for t in [Template(tag=n)]
            ]
            items.append(order("valid-after"))
            # A routing key that is not UTF-8 is decoded with U+FFFD and handled normally.
            items.append(("events", b"order.\xff\xfe", *order("key-not-utf8")[2:]))
            publish(url, items)
            await wait_until(
                lambda: (
                    {"valid-after", "key-not-utf8"} <= handled("billing.orders")
                    and {"valid-after", "key-not-utf8"} <= handled("analytics.all")
                    and {"valid-after", "key-not-utf8"} <= handled("audit.log")
                ),
                30,
                "valid messages handled on every queue",
            )
            await wait_until(run.settled, 30, "queues settled")
            assert run.alive() == []
            # analytics.all and audit.log have no dead-letter exchange: dropped, counted.
            assert run.runtime.dropped["analytics.all"] == len(bad)
            assert run.runtime.dropped["audit.log"] == len(bad)
        assert handled("billing.orders").isdisjoint(bad)
        totals = run.totals()
        assert {q: n for q, n in totals.items() if n} == {"billing.orders.dlq": len(bad)}, totals
        dead = drain(url, "billing.orders.dlq")
        reasons = {p.message_id or p.correlation_id: p.headers for _, p, _ in dead}
        assert set(reasons) == set(bad)
        for headers in reasons.values():
            assert headers["x-failure-reason"] == "undecodable"
            assert UNDECODABLE_HEADER in headers
        rk = next(r for r in recorder.received["analytics.all"] if r.message_id == "key-not-utf8")
        assert rk.routing_key == "order.\ufffd\ufffd"


async def test_poison_without_a_dlx_does_not_starve_valid_messages(
    hostile_node: LocalNode,
) -> None:
    def email(i: int, valid: bool) -> tuple[str, str, bytes, Any]:
        body = {"to": "a@b.c", "subject": f"s{i}"} if valid else {"subject": 1}
        props = pika.BasicProperties(
            content_type="application/json", type="email.requested",
            message_id=f"{'ok' if valid else 'bad'}-{i}", headers={"kind": "newsletter"},
        )  # fmt: skip
        return ("notifications", "", json.dumps(body).encode(), props)

    def cache(i: int, valid: bool) -> tuple[str, str, bytes, Any]:
        body = {"key": f"k{i}"} if valid else {"key": ""}
        props = pika.BasicProperties(content_type="application/json", type="cache.invalidated")
        return ("broadcast", "", json.dumps(body).encode(), props)  # no message_id at all

    with demo_vhost(hostile_node) as (url, management, topology):
        async with demo_run(url, management, topology, vhost_of(url)) as run:
            # The poison first: it sits at the head of each queue, the valid ones behind it.
            publish(
                url, [email(i, False) for i in range(120)] + [email(i, True) for i in range(10)]
            )
            publish(url, [cache(i, False) for i in range(105)] + [cache(i, True) for i in range(5)])
            # cache.web's TTL is 60 s: handled later than that means expired, never handled.
            await wait_until(
                lambda: (
                    recorder.counts()["email.bulk"] >= 10
                    and recorder.counts()["cache.web"] >= 5
                    and recorder.counts()["cache.api"] >= 5
                ),
                55,
                "valid messages behind the poison handled",
            )
            await wait_until(run.settled, 30, "queues settled")
            assert run.alive() == []
            dropped = dict(run.runtime.dropped)
        assert dropped == {"email.bulk": 120, "cache.web": 105, "cache.api": 105}
        counts = recorder.counts()
        assert (counts["email.bulk"], counts["cache.web"], counts["cache.api"]) == (10, 5, 5)
        totals = run.totals()
        assert sum(totals.values()) == 0, totals
        assert set(DEMO_QUEUES) <= set(totals)
