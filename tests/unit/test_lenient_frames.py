"""bus.lenient against pamqp's own decoder, on the frames of every malformed kind."""

from __future__ import annotations

import struct
from typing import Any

import pamqp.frame
import pytest
from pamqp import commands, exceptions

from bus import lenient
from tests.support.hostile.kinds import KINDS, Kind, Template

# The kinds whose content header pamqp 4.0.1 cannot decode (the connection would close).
UNDECODABLE = {
    "type-not-utf8", "app-id-not-utf8", "content-type-not-utf8", "content-encoding-not-utf8",
    "message-id-not-utf8", "correlation-id-not-utf8", "reply-to-not-utf8", "cluster-id-not-utf8",
    "timestamp-max", "headers-nested-5000", "headers-array-nested-5000", "header-key-not-utf8",
    "header-timestamp-max",
}  # fmt: skip
# pamqp decodes these, but marked undecodable on purpose: a table 200 deep is past the depth
# guard (it costs the reader, and every copy's encoder, hundreds of stack frames); a long string
# that is not UTF-8 comes back from pamqp as bytes, which pamqp's encoder refuses.
MARKED = {"headers-nested-200": "nested deeper than", "header-longstr-not-utf8": "not UTF-8"}


def header_frame(kind: Kind) -> bytes:
    template = Template(tag=kind.name)
    body = kind.body(template)
    props = b"".join(kind.properties(template).encode())
    payload = struct.pack(">HxxQ", 60, len(body)) + props
    return struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"


def pamqp_decode(frame: bytes) -> Any:
    try:
        return lenient._original_unmarshal(frame)
    except (exceptions.UnmarshalingException, RecursionError) as exc:
        return exc


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_every_kind_decodes_and_decodable_ones_exactly_as_pamqp(kind: Kind) -> None:
    frame = header_frame(kind)
    original = pamqp_decode(frame)
    used, channel, ours = lenient.unmarshal(frame)
    assert (used, channel) == (len(frame), 1)
    headers = ours.properties.headers or {}
    if kind.name in UNDECODABLE:
        assert isinstance(original, Exception), "pamqp decodes it now: update UNDECODABLE"
        assert lenient.UNDECODABLE_HEADER in headers
    elif kind.name in MARKED:
        assert not isinstance(original, Exception)
        assert MARKED[kind.name] in headers[lenient.UNDECODABLE_HEADER]
    else:
        assert not isinstance(original, Exception), original
        assert lenient.UNDECODABLE_HEADER not in headers
        assert ours.body_size == original[2].body_size
        for name in ours.properties.__slots__:
            assert getattr(ours.properties, name) == getattr(original[2].properties, name), name


def test_problems_are_named_and_values_kept_readable() -> None:
    by_name = {k.name: k for k in KINDS}
    _, _, content = lenient.unmarshal(header_frame(by_name["type-not-utf8"]))
    assert content.properties.message_type == "order.\ufffd\ufffd"
    assert "message_type: not UTF-8" in content.properties.headers[lenient.UNDECODABLE_HEADER]
    _, _, content = lenient.unmarshal(header_frame(by_name["headers-nested-5000"]))
    headers = content.properties.headers
    assert f"nested deeper than {lenient.MAX_DEPTH}" in headers[lenient.UNDECODABLE_HEADER]
    assert isinstance(headers[lenient.RAW_HEADERS], bytearray)  # kept for an operator
    depth, node = 0, headers["n"]
    while node is not None:
        depth, node = depth + 1, node["n"]
    assert depth == lenient.MAX_DEPTH


def test_a_forged_marker_is_dropped() -> None:
    kind = Kind(
        "forged",
        "header",
        lambda t: t.properties(headers={lenient.UNDECODABLE_HEADER: "x", "keep": 1}),
        lambda t: t.body,
    )
    _, _, content = lenient.unmarshal(header_frame(kind))
    assert content.properties.headers == {"keep": 1}


def test_method_frame_with_a_routing_key_that_is_not_utf8() -> None:
    deliver = commands.Basic.Deliver("ctag", 7, False, "events", "order.created")
    frame = pamqp.frame.marshal(deliver, 3).replace(b"order.created", b"order.\xff\xfe\xc3(xyz")
    with pytest.raises(exceptions.UnmarshalingException):
        lenient._original_unmarshal(frame)
    used, channel, method = lenient.unmarshal(frame)
    assert (used, channel) == (len(frame), 3)
    assert isinstance(method, commands.Basic.Deliver)
    assert (method.consumer_tag, method.delivery_tag, method.exchange) == ("ctag", 7, "events")
    assert method.routing_key.startswith("order.\ufffd")


def test_install_is_what_aiormq_calls() -> None:
    import aiormq.connection

    before = pamqp.frame.unmarshal
    try:
        lenient.install()
        assert aiormq.connection.pamqp.frame.unmarshal is lenient.unmarshal
    finally:
        pamqp.frame.unmarshal = before


def test_every_decoded_header_table_can_be_encoded_again() -> None:
    """A copy of any kind can be published: pamqp's encoder accepts what lenient decoded."""
    from pamqp import encode

    for kind in KINDS:
        _, _, content = lenient.unmarshal(header_frame(kind))
        encode.field_table(content.properties.headers)
