"""Every malformed kind of :mod:`tests.support.hostile.kinds` at once, against the demo consumers.

Each kind (and ten valid orders) goes to the ``events`` exchange as ``order.created``, so three
consumers get a copy: ``billing.orders`` (quorum, retry ladder, DLQ), ``analytics.all`` (raw
handler, no dead-letter exchange) and ``audit.log`` (any event model, no dead-letter exchange).
The report says, per kind and queue, what happened: ``handled``, ``dead-lettered:<reason>``
(in ``billing.orders.dlq``) or ``dropped`` (rejected by the runtime, no DLX to keep it).

Checked: every consumer still attached on the channel it started with (no connection ever
dropped), every valid order handled on every queue, and the total-queue count: each copy is
handled, in the DLQ, or counted as dropped by the runtime — nothing else, nothing lost.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bus.lenient import UNDECODABLE_HEADER
from bus.node import LocalNode
from consumers.demo import recorder
from tests.hostile.harness import demo_run, demo_vhost, publish, queue_counts, wait_until
from tests.support.amqp import drain
from tests.support.hostile.kinds import KINDS, Template, tag_of

QUEUES = ("billing.orders", "analytics.all", "audit.log")
VALID = [f"valid-{i}" for i in range(10)]
FLAKY = b'{"order_id": "flaky-%s", "customer_id": "c-1", "total": "1.00"}'

# Kinds whose properties the stock client cannot decode, or decodes into values it cannot
# send again: each must reach the DLQ as `undecodable`, never cost the connection.
UNDECODABLE = {
    "type-not-utf8", "app-id-not-utf8", "content-type-not-utf8", "content-encoding-not-utf8",
    "message-id-not-utf8", "correlation-id-not-utf8", "reply-to-not-utf8", "cluster-id-not-utf8",
    "timestamp-max", "headers-nested-5000", "headers-nested-200", "headers-array-nested-5000",
    "header-key-not-utf8", "header-longstr-not-utf8", "header-timestamp-max",
}  # fmt: skip
# Forged broker-owned or runtime headers on an otherwise valid order that fails once: retried
# through the delay queue (with only safe headers on the copy) and handled.
FORGED_HEADERS_HANDLED = {
    "x-death-ints", "x-death-empty-table", "x-death-string", "x-death-wrong-field-types",
    "x-first-death-forged", "x-last-death-forged", "x-delivery-count-string",
    "x-delivery-count-huge", "x-retry-count-string", "x-retry-count-negative",
    "x-retry-count-bool", "x-retry-count-float",
}  # fmt: skip
# (x-retry-count-huge is handled at once: the demo handler only fails a first attempt.)


KNOWN = {k.name for k in KINDS} | set(VALID)


def received_tag(message_id: str | None, correlation_id: str | None) -> str | None:
    # A copy of a message without an id gets one (retries are matched by it): then the
    # correlation_id still carries the tag.
    return next((t for t in (message_id, correlation_id) if t in KNOWN), None)


def outcomes(dead: list[tuple[Any, Any, bytes]]) -> dict[str, dict[str, str]]:
    """kind or valid tag -> queue -> outcome."""
    report: dict[str, dict[str, str]] = {}
    for queue in QUEUES:
        for item in recorder.received[queue]:
            tag = received_tag(item.message_id, item.correlation_id)
            assert tag is not None, item
            assert queue not in report.setdefault(tag, {}), f"{tag} handled twice on {queue}"
            report[tag][queue] = "handled"
    for _, props, _ in dead:
        tag = received_tag(tag_of(props), props.correlation_id)
        assert tag is not None
        assert props.headers["x-failed-queue"] == "billing.orders"
        assert "billing.orders" not in report.setdefault(tag, {}), f"{tag} handled and dead"
        report[tag]["billing.orders"] = f"dead-lettered:{props.headers['x-failure-reason']}"
    for tag in [k.name for k in KINDS] + VALID:
        for queue in QUEUES[1:]:
            report.setdefault(tag, {}).setdefault(queue, "dropped")
    return report


async def test_every_malformed_kind_at_once(hostile_node: LocalNode) -> None:
    per_queue = len(KINDS) + len(VALID)
    with demo_vhost(hostile_node) as (url, management, topology):
        vhost = url.rsplit("/", 1)[1]
        async with demo_run(url, management, topology, vhost) as run:
            items: list[tuple[str, str | bytes, bytes, Any]] = []
            for kind in KINDS:
                # flaky-*: billing.orders fails it once, so every kind it accepts also goes
                # through a retry copy and the broker's dead-lettering back from the delay queue.
                template = Template(tag=kind.name, body=FLAKY % kind.name.encode())
                items.append(
                    ("events", "order.created", kind.body(template), kind.properties(template))
                )
            for tag in VALID:
                valid = Template(tag=tag)
                items.append(("events", "order.created", valid.body, valid.properties()))
            publish(url, items)

            def accounted() -> bool:
                counts = recorder.counts()
                dlq = queue_counts(url, ["billing.orders.dlq"])["billing.orders.dlq"]
                dropped = run.runtime.dropped
                return counts["billing.orders"] + dlq == per_queue and all(
                    counts[q] + dropped[q] == per_queue for q in QUEUES[1:]
                )

            await wait_until(accounted, 120, "every copy handled, dead-lettered or dropped")
            await wait_until(run.settled, 30, "queues settled")
            problems = run.alive()
            dropped = dict(run.runtime.dropped)
        totals = run.totals()
        assert problems == []
        dead_count = totals.pop("billing.orders.dlq")
        assert sum(totals.values()) == 0, totals
        dead = drain(url, "billing.orders.dlq")
        assert len(dead) == dead_count

    report = outcomes(dead)
    lines = [f"{'kind':32} " + " ".join(f"{q:28}" for q in QUEUES)]
    lines += [f"{k.name:32} " + " ".join(f"{report[k.name][q]:28}" for q in QUEUES) for k in KINDS]
    print("\n".join(lines))
    summary = Counter(v for q in QUEUES for v in (report[k.name][q] for k in KINDS))
    print(f"{len(KINDS)} kinds x {len(QUEUES)} queues: {dict(summary)}; dropped: {dropped}")

    assert len(KINDS) >= 40
    for tag in VALID:
        assert report[tag] == dict.fromkeys(QUEUES, "handled"), tag
    for kind in KINDS:
        assert set(report[kind.name]) == set(QUEUES), kind.name
    # Total-queue count: every copy ended in exactly one place.
    for queue in QUEUES[1:]:
        handled = sum(1 for r in report.values() if r[queue] == "handled")
        assert handled + dropped.get(queue, 0) == per_queue, queue
    undecodable = {
        k for k in UNDECODABLE if report[k]["billing.orders"] != "dead-lettered:undecodable"
    }
    assert undecodable == set()
    assert all(report[k]["billing.orders"] == "handled" for k in FORGED_HEADERS_HANDLED)
    # Retried once, back through the delay queue, except a forged huge x-retry-count, which
    # the demo handler takes for a message already retried (it does not fail it).
    retried = {r.message_id: r.retry_count for r in recorder.received["billing.orders"]}
    assert {k: retried.get(k) for k in FORGED_HEADERS_HANDLED} == dict.fromkeys(
        FORGED_HEADERS_HANDLED, 1
    )
    for _, props, _ in dead:
        # Only the DLQ's own count (quorum: 0 on this first delivery), never a forwarded one.
        assert props.headers.get("x-delivery-count", 0) == 0
        if tag_of(props) in UNDECODABLE:
            assert UNDECODABLE_HEADER in props.headers


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
