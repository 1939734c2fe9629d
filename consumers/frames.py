"""Decoding the frames of a delivery without pamqp's generic path (the consumer's hot path).

pamqp decodes every frame by walking its class's attribute list and dispatching each value
through ``decode.by_type`` on a fresh slice of the payload: about 15 µs for a ``Basic.Deliver``
and as much again for its content header on the machine of docs/wire-performance.md. The three
frames of a delivery (method, content header, body) are decoded here with fixed offsets
instead, into exactly the objects pamqp builds (same classes, same attribute values).

Only the common shapes are decoded here; :func:`decode` returns None for anything else, and the
caller hands the frame to ``pamqp.frame.unmarshal`` (which :mod:`bus.lenient` may have replaced
with its hostile-input decoder). The shapes decoded here are those where pamqp and
:mod:`bus.lenient` give the same result:

- ``Basic.Deliver`` whose short strings are UTF-8;
- content headers with one flag word, UTF-8 short strings, timestamps ``datetime`` can hold and
  a ``headers`` table of UTF-8 long strings, numbers, booleans, timestamps, voids and nested
  tables, at most :data:`MAX_DEPTH` deep and :data:`MAX_ENTRIES` entries, without the headers
  only :mod:`bus.lenient` may set;
- every body frame.

Anything else (arrays, decimals, bytes, a ``x-death`` history, a value that does not decode)
goes the slow, exact way. ``tests/unit/test_consume_frames.py`` compares both on generated
frames.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from pamqp import commands, header
from pamqp.body import ContentBody

from bus.lenient import RAW_HEADERS, UNDECODABLE_HEADER

__all__ = ["DELIVER_INDEX", "MAX_DEPTH", "MAX_ENTRIES", "content_header", "decode", "deliver"]

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
DELIVER_INDEX = commands.Basic.Deliver.index

MAX_DEPTH = 4
"""Nesting of header tables decoded here (deeper ones go to pamqp / bus.lenient)."""

MAX_ENTRIES = 256
"""Header table entries decoded here, in total per frame."""

_INDEX = struct.Struct(">I")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
# Numeric field types as pamqp decodes them ("L" is read signed, like "l").
_NUMBERS = {
    ord(kind): struct.Struct(fmt)
    for kind, fmt in (("b", ">b"), ("B", ">B"), ("s", ">h"), ("u", ">H"), ("I", ">i"),
                      ("i", ">I"), ("l", ">q"), ("L", ">q"), ("f", ">f"), ("d", ">d"))
}  # fmt: skip
_HEADER = struct.Struct(">HHQH")

_Deliver = commands.Basic.Deliver
_Properties = commands.Basic.Properties
_ContentHeader = header.ContentHeader
_UTC = datetime.UTC
_PRIVATE = frozenset((UNDECODABLE_HEADER, RAW_HEADERS))

# (attribute, flag bit, kind) in wire order; kind: 0 shortstr, 1 octet, 2 timestamp, 3 table.
_KINDS = {"shortstr": 0, "octet": 1, "timestamp": 2, "table": 3}
_PROPERTIES = tuple(
    (name, _Properties.flags[name], _KINDS[_Properties.amqp_type(name)])
    for name in _Properties.__slots__
)


class _Slow(Exception):
    """Not a shape decoded here: pamqp (or bus.lenient) decodes the frame."""


def decode(frame_type: int, data: bytes, start: int, end: int) -> Any:
    """The frame whose payload is ``data[start:end]``, or None when pamqp must decode it."""
    if frame_type == FRAME_BODY:
        return ContentBody(data[start:end])
    if frame_type == FRAME_HEADER:
        return content_header(data, start, end)
    if frame_type == FRAME_METHOD and end - start >= 4:
        (index,) = _INDEX.unpack_from(data, start)
        if index == DELIVER_INDEX:
            return deliver(data, start + 4, end)
    return None


def deliver(data: bytes, start: int, end: int) -> commands.Basic.Deliver | None:
    """``Basic.Deliver`` from its arguments (the payload after the method index)."""
    try:
        length = data[start]
        position = start + 1 + length
        consumer_tag = data[start + 1 : position].decode()
        (delivery_tag,) = _I64.unpack_from(data, position)  # pamqp reads longlong signed
        redelivered = data[position + 8]
        position += 9
        length = data[position]
        exchange = data[position + 1 : position + 1 + length].decode()
        position += 1 + length
        length = data[position]
        routing_key = data[position + 1 : position + 1 + length].decode()
        position += 1 + length
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    if position > end:
        return None
    frame = _Deliver.__new__(_Deliver)
    frame.consumer_tag = consumer_tag
    frame.delivery_tag = delivery_tag
    frame.redelivered = bool(redelivered & 1)
    frame.exchange = exchange
    frame.routing_key = routing_key
    return frame


def content_header(data: bytes, start: int, end: int) -> header.ContentHeader | None:
    """A content header with one flag word and the common property values, else None."""
    if end - start < 14:
        return None
    try:
        class_id, weight, body_size, flags = _HEADER.unpack_from(data, start)
        if flags & 1:
            return None  # a second flag word: pamqp
        props = _Properties.__new__(_Properties)
        position = start + 14
        for name, flag, kind in _PROPERTIES:
            if not flags & flag:
                setattr(props, name, "" if name == "cluster_id" else None)
                continue
            if kind == 0:
                length = data[position]
                raw = data[position + 1 : position + 1 + length]
                if len(raw) != length:
                    return None
                value: Any = raw.decode()
                position += 1 + length
            elif kind == 1:
                value = data[position]
                position += 1
            elif kind == 2:
                value = _timestamp(data, position)
                position += 8
            else:
                value, position = _table(data, position, end, 0, [0])
                if _PRIVATE.intersection(value):
                    return None
            setattr(props, name, value)
    except (_Slow, IndexError, struct.error, UnicodeDecodeError, ValueError, OverflowError,
            OSError):  # fmt: skip
        return None
    if position > end:
        return None
    frame = _ContentHeader(weight, body_size, props)  # as pamqp: its __init__, then class_id
    frame.class_id = class_id
    return frame


def _timestamp(data: bytes, position: int) -> datetime.datetime:
    (value,) = _U64.unpack_from(data, position)
    seconds: float = value / 1000.0 if value > 0xFFFFFFFF else value  # pamqp's rule
    return datetime.datetime.fromtimestamp(seconds, tz=_UTC)


def _table(
    data: bytes, position: int, limit: int, depth: int, entries: list[int]
) -> tuple[dict[str, Any], int]:
    """A field table at ``data[position]`` that ends by ``limit``; raises _Slow otherwise."""
    (length,) = _INDEX.unpack_from(data, position)
    position += 4
    end = position + length
    if end > limit:
        raise _Slow
    result: dict[str, Any] = {}
    while position < end:
        entries[0] += 1
        if entries[0] > MAX_ENTRIES:
            raise _Slow
        key_length = data[position]
        key = data[position + 1 : position + 1 + key_length].decode()
        position += 1 + key_length
        kind = data[position]
        position += 1
        value: Any
        if kind == 0x53:  # S: long string
            (size,) = _INDEX.unpack_from(data, position)
            if position + 4 + size > end:
                raise _Slow
            value = data[position + 4 : position + 4 + size].decode()
            position += 4 + size
        elif kind in _NUMBERS:
            number = _NUMBERS[kind]
            (value,) = number.unpack_from(data, position)
            position += number.size
        elif kind == 0x74:  # t: boolean
            value = bool(data[position])
            position += 1
        elif kind == 0x54:  # T: timestamp
            value = _timestamp(data, position)
            position += 8
        elif kind == 0x56 or kind == 0:  # V (and NUL, seen in the wild): void
            value = None
        elif kind == 0x46 and depth + 1 < MAX_DEPTH:  # F: table
            value, position = _table(data, position, end, depth + 1, entries)
        else:
            raise _Slow
        result[key] = value
    if position != end:
        raise _Slow
    return result, end
