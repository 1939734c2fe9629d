"""The py-amqp decoding guard: same result as py-amqp on valid headers, no exception on bad ones."""

from __future__ import annotations

import random
import struct
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from amqp import serialization
from amqp.basic_message import Message

from bus import _pyamqp_guard as guard
from tests.support.hostile.worker_kinds import NOT_UTF8, Raw, encode_properties

# py-amqp's own decoders (install() keeps them; it may have run already in this process).
guard.install()
ORIGINAL = guard._original_decode
ORIGINAL_LOADS = guard._original_loads


def _random_value(rng: random.Random, depth: int) -> Any:
    choices: list[Any] = [
        lambda: rng.randint(-(2**31), 2**31),
        lambda: rng.randint(-(2**62), 2**62),
        lambda: rng.random(),
        lambda: "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 12))),
        lambda: bool(rng.getrandbits(1)),
        lambda: None,
        lambda: Decimal(rng.randint(-999, 999)) / Decimal(100),
        lambda: datetime(2026, 1, 2, 3, 4, rng.randint(0, 59)),
    ]
    if depth < 4:
        choices.append(lambda: [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))])
        choices.append(lambda: _random_table(rng, depth + 1))
    return rng.choice(choices)()


def _random_table(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    return {f"k{i}-é": _random_value(rng, depth) for i in range(rng.randint(0, 4))}


@pytest.mark.parametrize("seed", range(200))
def test_valid_headers_decode_exactly_as_py_amqp_does(seed: int) -> None:
    rng = random.Random(seed)
    props: dict[str, Any] = {
        "content_type": "application/json",
        "application_headers": _random_table(rng),
        "priority": rng.randint(0, 255),
        "timestamp": 1_780_000_000 + seed,
        "type": "ünïcode",
        "app_id": "x" * rng.randint(0, 255),
    }
    if rng.getrandbits(1):
        props["correlation_id"] = "c-" + str(seed)
    raw = Message(**props)._serialize_properties()
    expected = ORIGINAL(raw, 0)
    assert guard.decode_properties_basic(raw, 0) == expected
    assert guard.UNDECODABLE not in expected[0]


@pytest.mark.parametrize(
    "field", ["content_type", "correlation_id", "reply_to", "message_id", "type", "app_id"]
)
def test_short_string_not_utf8_is_marked_not_raised(field: str) -> None:
    raw = encode_properties({field: NOT_UTF8, "priority": 3, "cluster_id": "after"})
    with pytest.raises(UnicodeDecodeError):
        ORIGINAL(raw, 0)
    props, offset = guard.decode_properties_basic(raw, 0)
    assert offset == len(raw)
    assert props[guard.UNDECODABLE] == f"{field}: not UTF-8"
    assert props[field] == NOT_UTF8.decode("utf-8", "replace")
    # The properties after the bad one are still read.
    assert (props["priority"], props["cluster_id"]) == (3, "after")


def _nested(depth: int) -> Raw:
    value = b"V"
    for _ in range(depth):
        value = b"F" + struct.pack(">I", 2 + len(value)) + b"\x01k" + value
    return Raw(value)


@pytest.mark.parametrize(
    ("value", "original_error", "problem"),
    [
        (_nested(5000), RecursionError, "nested deeper than 64"),
        (_nested(65), None, "nested deeper than 64"),
        (Raw(b"T" + struct.pack(">Q", 2**62)), (OverflowError, ValueError, OSError), "timestamp"),
    ],
)
def test_undecodable_header_table_is_skipped_and_marked(
    value: Raw, original_error: Any, problem: str
) -> None:
    raw = encode_properties({"headers": {"task": "t", "bad": value}, "type": "after"})
    if original_error is not None:
        with pytest.raises(original_error):
            ORIGINAL(raw, 0)
    props, offset = guard.decode_properties_basic(raw, 0)
    assert offset == len(raw)
    assert props["application_headers"] == {}
    assert problem in props[guard.UNDECODABLE]
    assert props["type"] == "after"


def test_depth_64_still_decodes() -> None:
    raw = encode_properties({"headers": {"deep": _nested(63)}})
    assert guard.decode_properties_basic(raw, 0) == ORIGINAL(raw, 0)


def test_field_name_not_utf8_is_kept_as_bytes_and_marked() -> None:
    raw = encode_properties({"headers": {NOT_UTF8: "x", "task": "t"}})
    props, _ = guard.decode_properties_basic(raw, 0)
    assert props["application_headers"] == ORIGINAL(raw, 0)[0]["application_headers"]
    assert "is not UTF-8" in props[guard.UNDECODABLE]


def test_truncated_header_is_marked() -> None:
    raw = encode_properties({"type": "abc", "priority": 1})[:-1]
    props, _ = guard.decode_properties_basic(raw, 0)
    assert "shorter than its flags" in props[guard.UNDECODABLE]


def test_method_arguments_not_utf8_decode_with_replacement() -> None:
    # basic.deliver: consumer tag, delivery tag, redelivered, exchange, routing key.
    payload = serialization.dumps("sLbss", ["ctag", 7, True, "tasks", "ok"])
    payload = payload.replace(b"\x02ok", b"\x02\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        ORIGINAL_LOADS("sLbss", payload, 0)
    assert guard.loads("sLbss", payload, 0) == (
        ["ctag", 7, True, "tasks", "\ufffd\ufffd"],
        len(payload),
    )
    valid = serialization.dumps("BsbbbbF", [1, "q", True, False, True, False, {"a": 1}])
    assert guard.loads("BsbbbbF", valid, 0) == ORIGINAL_LOADS("BsbbbbF", valid, 0)


def test_install_puts_the_guard_where_py_amqp_looks_it_up() -> None:
    from amqp import abstract_channel
    from amqp.spec import Basic

    assert serialization.PROPERTY_CLASSES[Basic.CLASS_ID] is guard.decode_properties_basic
    assert abstract_channel.loads is guard.loads
    guard.install()  # a second time changes nothing
    assert guard._original_decode is ORIGINAL


@pytest.mark.parametrize("owned", ["x-death", "x-first-death-queue", "x-delivery-count"])
def test_broker_owned_header_among_undecodable_ones_is_flagged(owned: str) -> None:
    raw = encode_properties({"headers": {"task": "t", owned: [1], "deep": _nested(500)}})
    props, _ = guard.decode_properties_basic(raw, 0)
    assert props[guard.BROKER_OWNED] is True
    assert f"broker-owned {owned}" in props[guard.UNDECODABLE]


def test_undecodable_headers_without_broker_owned_ones_are_not_flagged() -> None:
    raw = encode_properties({"headers": {"task": "t", "x-other": 1, "deep": _nested(500)}})
    props, _ = guard.decode_properties_basic(raw, 0)
    assert guard.BROKER_OWNED not in props
