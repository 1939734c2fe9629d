"""The consumer's read path (consumers.frames, consumers.wire) against aiormq and pamqp.

The fast decoder must give exactly what pamqp gives (and, for hostile input, exactly what
bus.lenient gives); the bulk frame reader the same frames and errors as aiormq's; the delivery
tap every delivery of its consumer in wire order and every other frame to the channel's queue.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
from typing import Any

import aiormq.connection
import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, header
from pamqp.body import ContentBody
from pamqp.heartbeat import Heartbeat

from bus import lenient
from consumers import frames, wire
from tests.support.hostile.kinds import KINDS, Kind
from tests.unit.test_lenient_frames import header_frame

Deliver = commands.Basic.Deliver
Properties = commands.Basic.Properties


def fast(frame: bytes) -> Any:
    """What the frame reader decodes from one whole frame: consumers.frames, else bus.lenient."""
    decoded = frames.decode(frame[0], frame, 7, len(frame) - 1)
    return decoded if decoded is not None else lenient.unmarshal(frame)[2]


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, header.ContentHeader):
        return (a.class_id, a.weight, a.body_size) == (b.class_id, b.weight, b.body_size) and all(
            getattr(a.properties, n) == getattr(b.properties, n) for n in Properties.__slots__
        )
    if isinstance(a, ContentBody):
        return bool(a.value == b.value)
    return all(getattr(a, n) == getattr(b, n) for n in a.__slots__)


# -- the fast decoder -------------------------------------------------------------------------
shortstr = st.text(max_size=40).filter(lambda s: len(s.encode()) < 256)
scalars = (
    st.text(max_size=30)
    | st.integers(-(2**63), 2**63 - 1)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False, width=32)
    | st.datetimes(
        min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC))
    | st.decimals(places=2, min_value=-1000, max_value=1000, allow_nan=False)
    | st.binary(max_size=8).map(bytearray)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(shortstr, inner, max_size=3),
    max_leaves=12,
)
tables = st.dictionaries(shortstr, values, max_size=6)
properties = st.builds(
    Properties,
    content_type=st.none() | shortstr,
    content_encoding=st.none() | shortstr,
    headers=st.none() | tables,
    delivery_mode=st.none() | st.integers(1, 2),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | shortstr,
    reply_to=st.none() | shortstr,
    expiration=st.none() | st.integers(0, 10**6).map(str),
    message_id=st.none() | shortstr,
    timestamp=st.none() | st.integers(0, 2**32 - 1).map(
        lambda s: datetime.datetime.fromtimestamp(s, tz=datetime.UTC)
    ),
    message_type=st.none() | shortstr,
    user_id=st.none() | shortstr,
    app_id=st.none() | shortstr,
)


@settings(max_examples=300, deadline=None)
@given(
    tag=shortstr, delivery_tag=st.integers(0, 2**63 - 1), redelivered=st.booleans(),
    exchange=st.from_regex(r"[a-zA-Z0-9._:-]{0,127}", fullmatch=True), routing_key=shortstr,
)  # fmt: skip
def test_deliver_frames_decode_as_pamqp(
    tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
) -> None:
    raw = pamqp.frame.marshal(Deliver(tag, delivery_tag, redelivered, exchange, routing_key), 5)
    assert frames.decode(raw[0], raw, 7, len(raw) - 1) is not None
    assert same(fast(raw), pamqp.frame.unmarshal(raw)[2])


@settings(max_examples=300, deadline=None)
@given(props=properties, size=st.integers(0, 2**40))
def test_content_headers_decode_as_pamqp_and_lenient(props: Properties, size: int) -> None:
    raw = pamqp.frame.marshal(header.ContentHeader(0, size, props), 2)
    assert same(fast(raw), pamqp.frame.unmarshal(raw)[2])
    assert same(fast(raw), lenient.unmarshal(raw)[2])


def test_common_headers_take_the_fast_path() -> None:
    props = Properties(
        content_type="application/json", delivery_mode=2, message_id="m-1",
        message_type="order.created", app_id="billing",
        timestamp=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC),
        headers={"x-retry-count": 1, "traceparent": "00-ab-cd-01", "n": {"ok": True, "big": 2**40},
                 "v": None, "f": 1.5, "when": datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)},
    )  # fmt: skip
    raw = pamqp.frame.marshal(header.ContentHeader(0, 256, props), 1)
    decoded = frames.decode(raw[0], raw, 7, len(raw) - 1)
    assert decoded is not None
    assert same(decoded, pamqp.frame.unmarshal(raw)[2])


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_hostile_headers_decode_as_lenient(kind: Kind) -> None:
    raw = header_frame(kind)
    assert same(fast(raw), lenient.unmarshal(raw)[2])


def test_a_forged_lenient_marker_takes_the_slow_path() -> None:
    props = Properties(headers={lenient.UNDECODABLE_HEADER: "forged", "keep": 1})
    raw = pamqp.frame.marshal(header.ContentHeader(0, 1, props), 1)
    assert frames.decode(raw[0], raw, 7, len(raw) - 1) is None
    assert fast(raw).properties.headers == {"keep": 1}


def test_a_routing_key_that_is_not_utf8_takes_the_slow_path() -> None:
    raw = pamqp.frame.marshal(Deliver("ctag", 7, False, "events", "order.created"), 3)
    raw = raw.replace(b"order.created", b"order.\xff\xfe\xc3(xyz")
    assert frames.decode(raw[0], raw, 7, len(raw) - 1) is None
    assert fast(raw).routing_key.startswith("order.\ufffd")


# -- the frame reader -------------------------------------------------------------------------
CONVERSATION = [
    (0, commands.Connection.Start(server_properties={"product": "RabbitMQ"})),
    (0, commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=60)),
    (1, commands.Basic.ConsumeOk("ctag")),
    (1, Deliver("ctag", 1, False, "events", "order.created")),
    (1, header.ContentHeader(0, 5, Properties(message_id="a", headers={"k": "v"}))),
    (1, ContentBody(b"hello")),
    (0, Heartbeat()),
    (1, Deliver("ctag", 2, True, "", "q")),
    (1, header.ContentHeader(0, 0, Properties())),
    (2, commands.Basic.Ack(delivery_tag=9, multiple=True)),
    (1, commands.Channel.Close(406, "PRECONDITION_FAILED", 60, 80)),
]


def wire_bytes(frames_: list[tuple[int, Any]]) -> bytes:
    return b"".join(pamqp.frame.marshal(frame, channel) for channel, frame in frames_)


async def read_all(data: bytes, cuts: list[int]) -> list[tuple[int, int, Any]]:
    reader = asyncio.StreamReader()
    position = 0
    for cut in sorted(cuts):
        reader.feed_data(data[position:cut])
        position = cut
    reader.feed_data(data[position:])
    reader.feed_eof()
    receiver = wire.FrameReader(reader)
    return [frame async for frame in receiver]


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(1, len(wire_bytes(CONVERSATION)) - 1), max_size=8))
def test_the_reader_gives_pamqp_frames_wherever_the_reads_end(cuts: list[int]) -> None:
    data = wire_bytes(CONVERSATION)
    got = asyncio.run(read_all(data, cuts))
    expected = []
    position = 0
    while position < len(data):
        used, channel, frame = pamqp.frame.unmarshal(data[position:])
        expected.append((used, channel, frame))
        position += used
    assert [(u, c) for u, c, _ in got] == [(u, c) for u, c, _ in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        assert type(a) is type(b)
        if not isinstance(a, Heartbeat):
            assert same(a, b)


async def test_the_reader_fails_like_aiormqs() -> None:
    data = wire_bytes(CONVERSATION[:2])
    reader = asyncio.StreamReader()
    reader.feed_data(data[:-3])
    reader.feed_eof()
    receiver = wire.FrameReader(reader)
    await receiver.get_frame()
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await receiver.get_frame()

    reader = asyncio.StreamReader()
    reader.feed_data(b"AMQP\x00\x00\x09\x01")
    with pytest.raises(ProtocolSyntaxError, match="protocol header"):
        await wire.FrameReader(reader).get_frame()

    reader = asyncio.StreamReader()
    bad = bytearray(data)
    bad[len(pamqp.frame.marshal(CONVERSATION[0][1], 0)) - 1] = 0
    reader.feed_data(bytes(bad))
    with pytest.raises(InvalidFrameError):
        await wire.FrameReader(reader).get_frame()


def test_aiormq_still_builds_its_receiver_and_routes_frames_as_the_patch_expects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What consumers.wire relies on: connect() looks FrameReceiver up in its module at call
    # time, and the connection's reader puts every channel frame with `ch.frames.put`.
    connection = inspect.getsource(aiormq.connection.Connection)
    assert "frame_receiver = FrameReceiver(reader)" in connection
    assert "await ch.frames.put((weight, frame))" in connection
    assert "self.frames.put" not in inspect.getsource(aiormq.channel.Channel)
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", aiormq.connection.FrameReceiver)
    wire.install()
    assert aiormq.connection.FrameReceiver is wire.FrameReader


# -- the delivery tap -------------------------------------------------------------------------
class FakeChannel:
    def __init__(self) -> None:
        self.frames: asyncio.Queue[Any] = asyncio.Queue()


def delivery(tag: int, body: bytes, consumer: str = "ctag") -> list[Any]:
    return [
        Deliver(consumer, tag, False, "events", "order.created"),
        header.ContentHeader(0, len(body), Properties(message_id=str(tag))),
        *[ContentBody(body[i : i + 4]) for i in range(0, len(body), 4)],
    ]


async def test_the_tap_hands_over_its_deliveries_and_queues_everything_else() -> None:
    channel = FakeChannel()
    got: list[DeliveredMessage] = []
    wire.DeliveryTap.attach(channel, "ctag", got.append)  # type: ignore[arg-type]
    cancel = commands.Basic.Cancel("ctag")
    other = delivery(9, b"other", consumer="someone-else")
    sequence = [*delivery(1, b"first body"), *other, *delivery(2, b""), cancel,
                *delivery(3, b"abcd")]  # fmt: skip
    for frame in sequence:
        await channel.frames.put((1, frame))
    assert [(m.delivery.delivery_tag, m.body) for m in got] == [
        (1, b"first body"), (2, b""), (3, b"abcd"),
    ]  # fmt: skip
    assert all(m.channel is channel for m in got)
    assert got[0].header.properties.message_id == "1"
    queued = [channel.frames.get_nowait()[1] for _ in range(channel.frames.qsize())]
    assert queued == [*other, cancel]


async def test_a_second_attach_retargets_the_same_tap() -> None:
    channel = FakeChannel()
    first: list[DeliveredMessage] = []
    second: list[DeliveredMessage] = []
    tap = wire.DeliveryTap.attach(channel, "ctag", first.append)  # type: ignore[arg-type]
    again = wire.DeliveryTap.attach(channel, "ctag-2", second.append)  # type: ignore[arg-type]
    assert again is tap
    for frame in [*delivery(1, b"x", consumer="ctag-2"), *delivery(2, b"y", consumer="ctag")]:
        await channel.frames.put((1, frame))
    assert [m.body for m in second] == [b"x"]
    assert first == []
    assert channel.frames.qsize() == 3  # the old tag's delivery went the ordinary way


async def test_a_frame_out_of_place_inside_a_delivery_is_a_protocol_error() -> None:
    channel = FakeChannel()
    wire.DeliveryTap.attach(channel, "ctag", lambda m: None)  # type: ignore[arg-type]
    await channel.frames.put((1, delivery(1, b"body")[0]))
    with pytest.raises(InvalidFrameError, match="content header"):
        await channel.frames.put((1, commands.Basic.Cancel("ctag")))
