"""The hand encoder of the publish path (bus.publish.frames) against pamqp, byte for byte.

pamqp is the reference: every expected value below is pamqp's ``frame.marshal`` of
``Basic.Publish`` / ``ContentHeader`` / ``ContentBody`` built from the same values, and bodies
are split as aiormq's ``Channel._split_body`` splits them; nothing expected comes from our own
code. The broker reads them back in tests/integration/test_publish_frames_broker.py.
"""

from __future__ import annotations

import enum
import os
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType, SimpleNamespace
from typing import Any

import aiormq
import pytest
from pamqp import frame as pamqp_frame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bus import tracing
from bus.errors import UnsendableMessageError
from bus.publish import KeptProperties, PublisherBase, Resolved
from bus.publish.frames import (
    PROPERTY_NAMES,
    OwnProperties,
    PublishFrames,
    encode_properties,
    encode_table,
)
from bus.publish.message import new_message_id
from bus.settings import BusSettings

NOW = 1_765_000_000
FRAME_MAX = 131_072


class Colour(enum.IntEnum):
    RED = 300


class Name(enum.StrEnum):
    ALICE = "alice"


# Header tables covering every field type pamqp encodes, at every integer width's edges.
HEADERS: dict[str, dict[str, Any]] = {
    "empty": {},
    "text": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
             "unicode": "zß水🍣", "blank": ""},
    "unsorted-keys": {"zebra": 1, "apple": 2, "Mango": 3, "_x": 4, "é": 5},
    "bools-none": {"yes": True, "no": False, "nothing": None},
    "ints": {f"i{n}": value for n, value in enumerate([
        0, 1, -1, 127, 128, -128, -129, 32767, 32768, -32768, -32769, 65535, 65536,
        2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1, 2**32, 2**63 - 1, -(2**63),
    ])},
    "floats": {"half": 0.5, "neg": -1.25, "big": 3.4e38, "tiny": 1e-30, "inf": float("inf")},
    "decimals": {"a": Decimal("1.50"), "b": Decimal("-3"), "c": Decimal("1E+2"),
                 "d": Decimal("0.000001"), "e": Decimal("2147483647"), "f": Decimal("-0.5")},
    "timestamps": {"aware": datetime(2026, 12, 6, 22, 0, 5, tzinfo=UTC),
                   "offset": datetime(2026, 1, 1, 3, 0, tzinfo=timezone(timedelta(hours=3))),
                   "naive": datetime(2001, 9, 9, 1, 46, 40),
                   "struct": time.gmtime(1_000_000_000)},
    "bytearray": {"raw": bytearray(b"\x00\xffabc"), "none": bytearray()},
    "nested": {"t": {"inner": {"deep": [1, "two", {"three": 3.0}], "n": None}},
               "list": [1, -70000, Decimal("9.99"), True, None, [], {}, ["x", [2**40]]],
               "x-death": [{"count": 2, "reason": "rejected", "queue": "q",
                            "time": datetime(2026, 1, 2, tzinfo=UTC),
                            "routing-keys": ["a.b"]}]},
    "enums": {"colour": Colour.RED, "name": Name.ALICE},
    "long-key": {"k" * 200: 1, "é" * 70: "two"},  # cut to 128 bytes, as pamqp does
}  # fmt: skip

# Property sets (pamqp names); timestamps in seconds, given to pamqp as datetimes.
PROPERTIES: dict[str, dict[str, Any]] = {
    "none": {},
    "ours": {"content_type": "application/json", "delivery_mode": 2,
             "correlation_id": "c-1", "message_id": "m-1", "timestamp": NOW,
             "message_type": "order.created", "app_id": "billing"},
    "every": {"content_type": "text/plain", "content_encoding": "gzip",
              "headers": HEADERS["nested"], "delivery_mode": 1, "priority": 9,
              "correlation_id": "c", "reply_to": "amq.rabbitmq.reply-to", "expiration": "60000",
              "message_id": "m", "timestamp": NOW, "message_type": "t", "user_id": "guest",
              "app_id": "a"},
    "empty-strings": {"content_type": "", "correlation_id": "", "message_id": "",
                      "app_id": "", "headers": {}},
    "unicode": {"message_type": "événement", "reply_to": "réponse", "app_id": "水" * 85},
    "priority-0": {"priority": 0, "delivery_mode": 2},
    "datetime-stamp": {"timestamp": datetime(2026, 3, 4, 5, 6, 7)},
}  # fmt: skip


def pamqp_properties(values: Mapping[str, Any]) -> Basic.Properties:
    given = dict(values)
    if isinstance(given.get("timestamp"), int):
        given["timestamp"] = datetime.fromtimestamp(given["timestamp"], UTC)
    return Basic.Properties(**given)


def pamqp_message(
    channel: int, exchange: str, key: str, properties: Basic.Properties, body: bytes, frame_max: int
) -> bytes:
    """The frames aiormq writes for one mandatory publish, every one marshalled by pamqp."""
    splitter = SimpleNamespace(max_content_size=frame_max - aiormq.Channel.CONTENT_FRAME_SIZE)
    frames: list[Any] = [
        Basic.Publish(exchange=exchange, routing_key=key, mandatory=True),
        ContentHeader(body_size=len(body), properties=properties),
        *aiormq.Channel._split_body(splitter, body),  # type: ignore[arg-type]
    ]
    return b"".join(pamqp_frame.marshal(f, channel) for f in frames)


def ordered(values: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(values.get(name) for name in PROPERTY_NAMES)


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_header_tables_match_pamqp(name: str) -> None:
    headers = HEADERS[name]
    expected = Basic.Properties(headers=headers).marshal()
    assert encode_properties(ordered({"headers": headers})) == expected
    assert encode_table(headers) == expected[2:]  # after the property flags


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_properties_match_pamqp(name: str) -> None:
    values = PROPERTIES[name]
    assert encode_properties(ordered(values)) == pamqp_properties(values).marshal()


@pytest.mark.parametrize("channel", [1, 7, 65535])
@pytest.mark.parametrize(
    ("exchange", "key"),
    [("", "q"), ("events", "order.created"), ("amq.topic", "a" * 255), ("x", "é.水")],
)
def test_whole_publish_matches_pamqp(channel: int, exchange: str, key: str) -> None:
    values = PROPERTIES["every"]
    properties = encode_properties(ordered(values))
    frames = PublishFrames(channel, FRAME_MAX)
    for body in (b"", b"{}", os.urandom(300)):
        expected = pamqp_message(channel, exchange, key, pamqp_properties(values), body, FRAME_MAX)
        assert frames.message(exchange, key, properties, body) == expected
        # the cached method frame gives the same bytes the second time
        assert frames.message(exchange, key, properties, body) == expected


@pytest.mark.parametrize("frame_max", [4096, 131_072])
def test_bodies_are_split_at_frame_max_as_aiormq_does(frame_max: int) -> None:
    limit = frame_max - 8
    properties = encode_properties(ordered(PROPERTIES["ours"]))
    frames = PublishFrames(3, frame_max)
    for size in (1, limit - 1, limit, limit + 1, 2 * limit, 3 * limit + 5):
        body = os.urandom(size)
        expected = pamqp_message(3, "e", "k", pamqp_properties(PROPERTIES["ours"]), body, frame_max)
        assert frames.message("e", "k", properties, body) == expected, size


def test_values_pamqp_refuses_are_encoded_as_pika_and_the_broker_take_them() -> None:
    """bytes, tuples and other mappings: pamqp raises TypeError (inside aiormq's write, the
    message lost); they go out as byte array, array and table, pamqp's bytes for the
    bytearray, list and dict of the same content."""
    given = {"b": b"\x01\x02", "t": (1, "a", (2,)), "m": MappingProxyType({"z": 1, "a": b""})}
    reference = {
        "b": bytearray(b"\x01\x02"), "t": [1, "a", [2]], "m": {"z": 1, "a": bytearray()}
    }  # fmt: skip
    assert encode_table(given) == Basic.Properties(headers=reference).marshal()[2:]


def test_property_values_pamqp_refuses_but_rabbitmq_takes() -> None:
    # pamqp: delivery_mode must be 1 or 2 and cluster_id empty; both are octet and shortstr.
    encoded = encode_properties(ordered({"delivery_mode": 0, "cluster_id": "c1"}))
    assert encoded == b"\x10\x04" + b"\x00" + b"\x02c1"


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"n": 2**64}, "does not fit 64 bits"),
        ({"d": Decimal("NaN")}, "no AMQP form"),
        ({"d": Decimal("1E+20")}, "32-bit mantissa"),
        ({"d": Decimal("1.0000000000000001")}, "32-bit mantissa"),
        ({"f": 1e300}, "32-bit float"),
        ({"o": object()}, "cannot be sent"),
        ({"t": {"deep": [{"x": {1, 2}}]}}, "header t.deep[0].x: a set cannot be sent"),
        ({"s": "\ud800"}, "not valid UTF-8"),
    ],
)
def test_values_no_amqp_type_carries_are_refused(headers: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UnsendableMessageError, match="nothing was sent") as caught:
        encode_table(headers)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"priority": 256}, "priority 256 is not an octet"),
        ({"delivery_mode": -1}, "delivery_mode -1 is not an octet"),
        ({"message_id": "m" * 256}, "message_id is 256 bytes"),
        ({"app_id": "é" * 128}, "app_id is 256 bytes"),
        ({"correlation_id": 5}, "correlation_id must be a string"),
    ],
)
def test_properties_that_do_not_fit_are_refused(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UnsendableMessageError, match=fragment):
        encode_properties(ordered(values))


def test_a_method_frame_refuses_names_over_255_bytes() -> None:
    frames = PublishFrames(1, FRAME_MAX)
    with pytest.raises(UnsendableMessageError, match="routing key is 256 bytes"):
        frames.message("x", "k" * 256, encode_properties(ordered({})), b"")
    with pytest.raises(UnsendableMessageError, match="exchange name is 256 bytes"):
        frames.method("é" * 128, "k")


# -- what a publisher puts on the wire ------------------------------------------------------
@pytest.fixture
def publisher() -> PublisherBase[Any]:
    tracing.set_tracing(False)
    return PublisherBase(BusSettings(amqp_url="amqp://guest:guest@localhost/"), app_id="svc")


def reference(message: Resolved, app_id: str, user: str) -> Basic.Properties:
    """The properties a publisher sends, as the README (on the wire) and KeptProperties say,
    built for pamqp."""
    kept = message.kept
    if kept is None:
        return pamqp_properties({
            "content_type": "application/json", "content_encoding": message.content_encoding,
            "headers": message.headers, "delivery_mode": 2 if message.persistent else 1,
            "correlation_id": message.correlation_id, "reply_to": message.reply_to,
            "message_id": message.message_id, "timestamp": NOW,
            "message_type": message.event_type, "app_id": app_id,
        })  # fmt: skip
    return pamqp_properties({
        "content_type": kept.content_type, "content_encoding": kept.content_encoding,
        "headers": message.headers, "delivery_mode": kept.delivery_mode,
        "priority": kept.priority, "correlation_id": kept.correlation_id,
        "reply_to": kept.reply_to, "expiration": kept.expiration,
        "message_id": message.message_id,
        "timestamp": kept.timestamp,
        "message_type": kept.type, "user_id": kept.user_id if kept.user_id == user else None,
        "app_id": kept.app_id,
    })  # fmt: skip


MESSAGES: dict[str, Resolved] = {
    "event": Resolved("events", "order.created", b"{}", "order.created", None, "m-1", "m-1", True),
    "transient-no-type": Resolved("", "q", b"x", None, None, "m-2", "c-2", False),
    "task": Resolved(
        "", "celery", b"[]", None, {"task": "t.add", "id": "i", "retries": 0, "eta": None},
        "i", "i", True, content_encoding="utf-8", reply_to="amq.rabbitmq.reply-to",
    ),
    "traced-headers": Resolved(
        "events", "order.paid", b"{}", "order.paid", dict(HEADERS["text"]), "m-3", "c", True
    ),
    "copy": Resolved(
        "", "work.retry", b"{}", "order.created", {"x-retry": 2, **HEADERS["nested"]},
        "m-4", "c-4", True,
        kept=KeptProperties(
            content_type="application/json", content_encoding="utf-8", delivery_mode=2,
            priority=5, correlation_id="c-4", reply_to="r", expiration="1000",
            timestamp=datetime(2026, 5, 1, tzinfo=UTC), type="order.created",
            user_id="guest", app_id="origin",
        ),
    ),
    "copy-other-user-int-stamp": Resolved(
        "dlx", "k", b"", None, {}, "m-5", "", True,
        kept=KeptProperties(timestamp=NOW - 5, user_id="someone-else", delivery_mode=1),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_publisher_properties_match_pamqp(name: str, publisher: PublisherBase[Any]) -> None:
    message = MESSAGES[name]
    expected = reference(message, "svc", "guest").marshal()
    assert publisher.properties(message, NOW) == expected
    # The values a client's own properties class gets (pika's, for a single sync publish).
    assert encode_properties(publisher.wire_values(message, NOW)) == expected


def test_own_properties_without_app_id_leave_it_out() -> None:
    message = MESSAGES["event"]
    expected = pamqp_properties({
        "content_type": "application/json", "delivery_mode": 2, "correlation_id": "m-1",
        "message_id": "m-1", "timestamp": NOW, "message_type": "order.created",
    }).marshal()  # fmt: skip
    assert OwnProperties("application/json", "").encode(message, None, NOW) == expected


# -- message ids ----------------------------------------------------------------------------
def test_message_ids_are_distinct_uuid4_strings() -> None:
    ids = [new_message_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)


def test_a_forked_child_never_reuses_its_parents_ids() -> None:
    new_message_id()  # the parent holds a batch now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its first id and leave without running pytest's exit
        os.write(write, new_message_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert uuid.UUID(child).version == 4
    assert child != new_message_id()
