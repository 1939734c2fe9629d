"""The one pre-send check both publishers and the test double share (``bus.publish.wire``).

The broker-facing proof is tests/security/test_hostile_publish.py; here the rule itself, with
the edges a real publish would hit: multibyte names, nesting, types, 64-bit integers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from bus.errors import PublishError, UnsendableMessageError
from bus.fake import FakeBus
from bus.publish import PublishOptions, Resolver
from bus.publish.wire import MAX_HEADER_DEPTH
from bus.topology import parse_topology

TOPOLOGY = """\
version: 1
exchanges:
  events: {type: topic}
queues:
  q:
    bindings: [{exchange: events, routing_key: "#"}]
"""


def _resolve(
    exchange: str = "events", key: str = "k", headers: dict[str, Any] | None = None, **kw: Any
) -> Any:
    options: PublishOptions = {"headers": headers, **kw}
    return Resolver(None).call(exchange, key, {"a": 1}, options)


def _nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        table = {"t": table}
    return table


def test_values_amqp_carries_pass() -> None:
    headers = {
        "s": "é" * 1000,  # long strings are AMQP long strings: no 255 limit on values
        "i": 2**63 - 1,
        "neg": -(2**63),
        "b": True,
        "f": 1.5,
        "d": Decimal("1.25"),
        "raw": b"\x00\xff",
        "when": datetime(2026, 1, 1, tzinfo=UTC),
        "none": None,
        "list": [1, "x", {"k": [None]}],
        "k" * 255: 1,
        "n": _nested(MAX_HEADER_DEPTH - 2),
    }
    message = _resolve("e" * 255, "r" * 255, headers, event_type="t" * 255)
    assert message.headers == headers


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"exchange": "é" * 128}, "exchange name"),
        ({"key": "k" * 256}, "routing key 'kkkk"),
        ({"event_type": "t" * 256}, "type property"),
        ({"message_id": "m" * 256}, "message_id"),
        ({"correlation_id": "c" * 256}, "correlation_id"),
        ({"headers": {"h" * 256: 1}}, "header name 'hhhh"),
        ({"headers": {"t": {"l": [{"h" * 256: 1}]}}}, "header name in t.l[0]"),
        ({"headers": {"n": 2**63}}, "header n: integer 9223372036854775808"),
        ({"headers": {"s": "\udc80"}}, "header s: value"),
        ({"headers": {"o": object()}}, "a object cannot be sent"),
        ({"headers": {"o": {1, 2}}}, "a set cannot be sent"),
        ({"headers": {1: "x"}}, "header name 1 in headers is not text"),
        ({"headers": _nested(MAX_HEADER_DEPTH + 1)}, "nested deeper than 32"),
    ],
)
def test_values_amqp_cannot_carry_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UnsendableMessageError) as caught:
        _resolve(**kwargs)
    text = str(caught.value)
    assert fragment in text
    assert text.endswith("nothing was sent")
    assert isinstance(caught.value, PublishError)
    assert caught.value.exit_code == 2
    # A 300-byte value is shown clipped, never whole, in the one error line.
    assert len(text) < 200


def test_start_up_exchange_names_are_checked_too() -> None:
    with pytest.raises(UnsendableMessageError, match="exchange name"):
        Resolver(None).exchanges(["x" * 256])


async def test_the_test_double_refuses_the_same_message() -> None:
    bus = FakeBus(parse_topology(TOPOLOGY))
    with pytest.raises(UnsendableMessageError, match="header name"):
        await bus.publish("events", "k", {"a": 1}, headers={"h" * 256: 1})
