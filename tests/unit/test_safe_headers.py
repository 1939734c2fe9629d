"""bus.headers.safe_headers: what a republished copy may carry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bus.headers import safe_headers, valid_x_death

BROKER_DEATH = [
    {
        "count": 1,
        "reason": "expired",
        "queue": "billing.orders.retry.1s",
        "time": datetime(2026, 12, 6, tzinfo=UTC),
        "exchange": "",
        "routing-keys": ["billing.orders.retry.1s"],
    },
    {"count": 2, "reason": "rejected", "queue": "billing.orders", "exchange": "events",
     "routing-keys": ["order.created"]},
]  # fmt: skip
FIRST = {
    "x-first-death-queue": "billing.orders.retry.1s",
    "x-first-death-reason": "expired",
    "x-first-death-exchange": "",
}


def test_the_brokers_own_x_death_is_kept() -> None:
    headers = {"x-death": BROKER_DEATH, **FIRST, "tenant": "t1"}
    assert safe_headers(headers) == (headers, [])


@pytest.mark.parametrize(
    "forged",
    [
        [1, 2, 3],
        [{}],
        "boom",
        [],
        [{"count": "many", "queue": "q", "reason": "expired"}],
        [{"count": 0, "queue": "q", "reason": "expired"}],
        [{"count": True, "queue": "q", "reason": "expired"}],
        [{"count": 1, "queue": 5, "reason": "expired"}],
        [{"count": 1, "queue": "q", "reason": "bored"}],
        [{"count": 1, "queue": "q", "reason": "expired", "routing-keys": [1]}],
        [{"count": 1, "queue": "q", "reason": "expired", "exchange": None}],
        [{"count": 1, "queue": "q", "reason": "expired", "time": "now"}],
        [BROKER_DEATH[0], 7],
    ],
)
def test_a_forged_x_death_is_dropped_with_its_summary_headers(forged: Any) -> None:
    assert not valid_x_death(forged)
    kept, dropped = safe_headers({"x-death": forged, **FIRST, "tenant": "t1"})
    assert kept == {"tenant": "t1"}
    assert sorted(dropped) == sorted(["x-death", *FIRST])


def test_delivery_count_is_never_forwarded_and_death_summaries_must_be_strings() -> None:
    kept, dropped = safe_headers(
        {"x-delivery-count": 3, "x-first-death-queue": 42, "x-last-death-reason": "expired"}
    )
    assert kept == {"x-last-death-reason": "expired"}
    assert sorted(dropped) == ["x-delivery-count", "x-first-death-queue"]


def test_no_headers() -> None:
    assert safe_headers(None) == ({}, [])
    assert safe_headers({}) == ({}, [])
