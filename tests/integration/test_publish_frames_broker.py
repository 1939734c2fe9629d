"""What the hand encoder (bus.publish.frames) writes, read back from the real broker.

Every property and header type goes out through each path that encodes by hand (the async
publish and publish_many, a copy with kept properties, the sync publish_many) and is read back
with aiormq (pamqp decodes it): the delivered properties equal pamqp's own decoding of pamqp's
own encoding of the same values, so the broker took every byte as pamqp would have written it.
Bodies larger than the negotiated frame_max go out in several body frames. The sync single
publish, which pika encodes, is read back by value.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiormq
import pika
import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bus.publish import KeptProperties, Resolved
from bus.settings import BusSettings
from producers import Outgoing, Publisher, SyncPublisher

pytestmark = pytest.mark.integration

QUEUE = "frames.readback"
APP_ID = "frames-test"
# One of every field type pamqp encodes, nested, with integers at each width.
HEADERS: dict[str, Any] = {
    "text": "zß水🍣",
    "empty": "",
    "yes": True,
    "no": False,
    "nothing": None,
    "ints": [0, -1, 127, 128, -129, 32768, -32769, 65535, 65536, 2**31, -(2**31) - 1,
             2**32 - 1, 2**32, 2**63 - 1, -(2**63)],
    "float": 0.1,
    "decimals": [Decimal("1.50"), Decimal("-3"), Decimal("0.000001"), Decimal("1E+2")],
    "stamp": datetime(2026, 12, 6, 22, 0, 5, tzinfo=UTC),
    "naive": datetime(2001, 9, 9, 1, 46, 40),
    "raw": b"\x00\xff",
    "table": {"inner": {"deep": [1, "two", {"three": 3.5}]}, "empty": {}, "list": []},
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}  # fmt: skip
# The same for pamqp, which takes a byte array as bytearray only.
REFERENCE = {**HEADERS, "raw": bytearray(b"\x00\xff")}


def pamqp_round_trip(properties: Basic.Properties) -> Basic.Properties:
    """pamqp's decoding of pamqp's encoding: what a consumer must see."""
    data = ContentHeader(body_size=0, properties=properties).marshal()
    decoded = ContentHeader()
    decoded.unmarshal(data)
    return decoded.properties


@pytest.fixture
def url(bus_vhost_url: str) -> str:
    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    try:
        connection.channel().queue_declare(QUEUE, durable=True)
    finally:
        connection.close()
    return bus_vhost_url


async def read_back(url: str, count: int) -> list[aiormq.abc.DeliveredMessage]:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        got = []
        for _ in range(count):
            delivered = await channel.basic_get(QUEUE, no_ack=True)
            assert delivered.body is not None, f"only {len(got)} of {count} messages in {QUEUE}"
            got.append(delivered)
        assert (await channel.basic_get(QUEUE, no_ack=True)).delivery.name == "Basic.GetEmpty"
        return got
    finally:
        await connection.close()


def expected_own(message_id: str, stamp: datetime, event_type: str | None) -> Basic.Properties:
    return pamqp_round_trip(
        Basic.Properties(
            content_type="application/json", headers=REFERENCE, delivery_mode=2,
            correlation_id=message_id, message_id=message_id, timestamp=stamp,
            message_type=event_type, app_id=APP_ID,
        )
    )  # fmt: skip


def assert_own(delivered: aiormq.abc.DeliveredMessage, body: bytes, event_type: str) -> None:
    props = delivered.header.properties
    assert props.message_id is not None
    assert props.timestamp is not None
    assert props == expected_own(props.message_id, props.timestamp, event_type)
    assert delivered.body == body


async def test_async_publishes_carry_every_property_and_header(url: str) -> None:
    settings = BusSettings(amqp_url=url)
    big = os.urandom(300_000)  # over the broker's frame_max (131072): three body frames
    async with Publisher.connect(settings, app_id=APP_ID) as publisher:
        await publisher.publish("", QUEUE, b'{"n":1}', headers=HEADERS, event_type="t.one")
        await publisher.publish("", QUEUE, big, headers=HEADERS, event_type="t.big")
        results = await publisher.publish_many(
            [Outgoing("", QUEUE, {"n": i}, headers=HEADERS, event_type="t.many") for i in range(3)]
        )
        assert all(r.ok for r in results), results
    got = await read_back(url, 5)
    assert_own(got[0], b'{"n":1}', "t.one")
    assert_own(got[1], big, "t.big")
    for i, delivered in enumerate(got[2:]):
        assert_own(delivered, f'{{"n":{i}}}'.encode(), "t.many")


async def test_a_copy_keeps_every_property(url: str) -> None:
    kept = KeptProperties(
        content_type="text/plain", content_encoding="utf-8", delivery_mode=2, priority=7,
        correlation_id="c-9", reply_to="replies", expiration="600000",
        timestamp=datetime(2026, 5, 1, 12, 0, tzinfo=UTC), type="order.created",
        user_id="guest", app_id="origin",
    )  # fmt: skip
    copy = Resolved("", QUEUE, b"copied", None, dict(HEADERS), "m-copy", "c-9", True, kept=kept)
    settings = BusSettings(amqp_url=url)
    async with Publisher.connect(settings) as publisher:
        assert await publisher.publish_resolved(copy) == "m-copy"
    (delivered,) = await read_back(url, 1)
    assert delivered.header.properties == pamqp_round_trip(
        Basic.Properties(
            content_type="text/plain", content_encoding="utf-8", headers=REFERENCE,
            delivery_mode=2, priority=7, correlation_id="c-9", reply_to="replies",
            expiration="600000", message_id="m-copy", timestamp=kept.timestamp,
            message_type="order.created", user_id="guest", app_id="origin",
        )
    )  # fmt: skip
    assert delivered.body == b"copied"


async def test_sync_publish_many_carries_every_property_and_header(url: str) -> None:
    big = os.urandom(300_000)
    with SyncPublisher.connect(BusSettings(amqp_url=url), app_id=APP_ID) as publisher:
        results = publisher.publish_many(
            [Outgoing("", QUEUE, {"n": 0}, headers=HEADERS, event_type="t.many"),
             Outgoing("", QUEUE, big, headers=HEADERS, event_type="t.big")],
            window=10,
        )  # fmt: skip
        assert all(r.ok for r in results), results
    got = await read_back(url, 2)
    assert_own(got[0], b'{"n":0}', "t.many")
    assert_own(got[1], big, "t.big")


async def test_sync_single_publish_is_read_back_by_value(url: str) -> None:
    # pika encodes this one (its BlockingChannel waits for the confirm); pika has no float.
    headers = {k: v for k, v in HEADERS.items() if k not in ("float", "table", "raw")}
    with SyncPublisher.connect(BusSettings(amqp_url=url), app_id=APP_ID) as publisher:
        message_id = publisher.publish("", QUEUE, b"{}", headers=headers, event_type="t.one")
    (delivered,) = await read_back(url, 1)
    props = delivered.header.properties
    assert (props.message_id, props.correlation_id, props.message_type, props.app_id) == (
        message_id, message_id, "t.one", APP_ID,
    )  # fmt: skip
    assert (props.content_type, props.delivery_mode) == ("application/json", 2)
    assert props.headers is not None
    assert props.headers["naive"] == HEADERS["naive"].replace(tzinfo=UTC)
    assert {k: v for k, v in props.headers.items() if k != "naive"} == {
        k: v for k, v in headers.items() if k != "naive"
    }
