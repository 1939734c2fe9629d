"""The pure rules of ``bus dlq``: selection, where a copy goes, which headers it keeps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pika
import pytest

from bus.dlq import Selection, dead_letter_queues, replay_headers, replay_target
from bus.dlq_publish import NotSentError, is_definite
from bus.dlq_read import DeadLetter
from bus.errors import BusError, PublishError, PublishTimeoutError, UnroutableError
from bus.topology.load import parse_topology

OURS = {
    "x-failed-queue": "billing.orders",
    "x-failure-reason": "handler",
    "x-exception-type": "billing.errors.CardDeclined",
    "x-exception-message": "declined",
    "x-retry-count": 3,
    "x-death": [{"queue": "billing.orders.retry.1s", "reason": "expired", "exchange": "",
                 "routing-keys": ["billing.orders.retry.1s"], "count": 1}],
    "x-first-death-queue": "billing.orders.retry.1s",
    "traceparent": "00-abc-def-01",
}  # fmt: skip
BROKER = {
    "x-death": [{"queue": "orders.q", "reason": "rejected", "exchange": "events",
                 "routing-keys": ["order.created"], "count": 1,
                 "time": datetime(2026, 1, 1, tzinfo=UTC)}],
    "x-first-death-reason": "rejected",
    "x-delivery-count": 2,
}  # fmt: skip


def letter(headers: dict[str, Any], message_id: str = "m-1") -> DeadLetter:
    props = pika.BasicProperties(message_id=message_id, headers=headers)
    return DeadLetter(0, 1, props, b"{}", "", "x", dict(headers))


def test_selection_matches_reason_exception_type_by_full_or_class_name_and_id() -> None:
    ours = letter(OURS)
    assert Selection().matches(ours)
    assert Selection(reasons=("handler",)).matches(ours)
    assert not Selection(reasons=("json",)).matches(ours)
    assert Selection(exception_types=("CardDeclined",)).matches(ours)
    assert Selection(exception_types=("billing.errors.CardDeclined",)).matches(ours)
    assert not Selection(exception_types=("Declined",)).matches(ours)
    assert not Selection(message_ids=("other",)).matches(ours)
    assert Selection(reasons=("rejected",)).matches(letter(BROKER))


def test_ours_go_back_to_the_failed_queue_through_the_default_exchange() -> None:
    assert replay_target(letter(OURS), to_exchange=False) == ("", "billing.orders")
    # The x-death entries of retry hops do not say where it was first published.
    with pytest.raises(BusError, match="x-original-exchange"):
        replay_target(letter(OURS), to_exchange=True)
    original = {**OURS, "x-original-exchange": "events", "x-original-routing-key": "order.paid"}
    assert replay_target(letter(original), to_exchange=True) == ("events", "order.paid")


def test_broker_dead_letters_go_back_to_their_x_death_queue_or_exchange() -> None:
    dead = letter(BROKER)
    assert replay_target(dead, to_exchange=False) == ("", "orders.q")
    assert replay_target(dead, to_exchange=True) == ("events", "order.created")
    with pytest.raises(BusError):
        replay_target(letter({}), to_exchange=False)


def test_the_copy_drops_failure_and_broker_headers_and_counts_replays() -> None:
    headers = replay_headers(letter(OURS))
    assert headers == {"traceparent": "00-abc-def-01", "x-replayed": 1}
    again = replay_headers(letter({**BROKER, "x-replayed": 2}))
    assert again == {"x-replayed": 3}


def test_identity_ignores_the_delivery_count_the_broker_adds_on_a_return() -> None:
    assert letter(BROKER).identity() == letter({**BROKER, "x-delivery-count": 7}).identity()
    assert letter(BROKER).identity() != letter({**BROKER, "x-replayed": 1}).identity()


def test_dead_letter_queues_are_the_generated_ones_and_those_a_dlx_routes_to() -> None:
    loaded = parse_topology(
        "version: 1\n"
        "exchanges: {parked: {type: fanout}, side: {type: fanout}}\n"
        "exchange_bindings: [{source: parked, destination: side}]\n"
        "queues:\n"
        "  a: {dead_letter: true}\n"
        "  b: {dead_letter_exchange: parked}\n"
        "  parked.q: {bindings: [{exchange: parked}]}\n"
        "  side.q: {bindings: [{exchange: side}]}\n"
        "  plain: {}\n"
    )
    assert dead_letter_queues(loaded.expanded) == {"a.dlq": "a", "parked.q": "b", "side.q": "b"}


def test_only_copies_the_broker_certainly_did_not_take_are_definite() -> None:
    assert is_definite(UnroutableError("", "q", "312 NO_ROUTE"))
    assert is_definite(NotSentError("not sent"))
    assert not is_definite(PublishError("connection lost; may or may not"))
    assert not is_definite(PublishTimeoutError("no confirm"))
