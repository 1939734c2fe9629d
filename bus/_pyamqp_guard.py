"""A guard around py-amqp's decoding of delivered messages, for ``bus worker`` (Celery).

py-amqp (the ``amqp`` package under kombu and Celery, 5.x) decodes the content header of every
delivery inside its frame reader. Three inputs a publisher controls make that decoding raise,
and the exception escapes from ``drain_events``, where Celery takes it for an unrecoverable
error: the worker process exits (``CRITICAL Unrecoverable error: UnicodeDecodeError``), and the
message, still unacknowledged, comes back to the next worker, which exits too.

- A short-string property (``type``, ``app_id``, ``message_id``, ``correlation_id``,
  ``reply_to``, ``content_type``, ...) that is not UTF-8: decoded strictly, UnicodeDecodeError.
  RabbitMQ forwards these bytes unchecked.
- A header table nested deeper than Python's recursion limit (a few thousand levels fit in
  a frame): the recursive table reader raises RecursionError.
- A table value py-amqp cannot represent, e.g. a ``T`` timestamp beyond year 9999:
  OverflowError / ValueError from ``datetime``.

:func:`install` replaces py-amqp's decoder of basic properties (the ``PROPERTY_CLASSES`` entry
its ``_load_properties`` looks up on every delivery) and its method-argument decoder
(``loads``, for the short strings of ``basic.deliver``) with versions that never raise on
such input: a short string that is not UTF-8 is decoded with U+FFFD replacements, a header
table deeper than :data:`MAX_TABLE_DEPTH` or not decodable is replaced by an empty table
(skipped by its length prefix, so the rest of the header still decodes). Either way the
problem is recorded in the message's properties under :data:`UNDECODABLE`, and the worker
(:class:`bus.celery_app.TopologyConsumer`) rejects such a message without requeue: it
dead-letters through the queue's DLX with the original bytes, and the worker keeps serving.

Valid input decodes exactly as py-amqp decodes it (same types, e.g. ``s`` in a table is a
16-bit signed integer as RabbitMQ writes it); a unit test compares the two.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "BROKER_OWNED",
    "MAX_TABLE_DEPTH",
    "UNDECODABLE",
    "decode_properties_basic",
    "install",
    "loads",
]

#: Key added to a delivery's properties when part of its content header could not be decoded;
#: its value lists what was wrong (e.g. ``"type: not UTF-8"``).
UNDECODABLE = "x-bus-undecodable"

#: Key added (``True``) when such an undecodable header table carries a broker-owned header
#: (``x-death``, ``x-first-death-*``, ...) at its top level: rejecting the message to a DLX
#: would hand that header to RabbitMQ's dead-lettering unchecked.
BROKER_OWNED = "x-bus-broker-owned-header"

_BROKER_OWNED_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")

#: Deepest nesting of tables/arrays decoded in headers (RabbitMQ's own ``x-death`` needs 3).
MAX_TABLE_DEPTH = 64

_unpack_from = struct.unpack_from


class _BadTable(Exception):
    """A table that cannot be decoded: too deep, unknown type, value out of range."""


def _read_item(buf: Any, offset: int, depth: int, problems: list[str]) -> tuple[Any, int]:
    # The same value types as amqp.serialization._read_item (py-amqp 5.4), without recursion
    # past MAX_TABLE_DEPTH and with strict bounds on lengths.
    ftype = chr(buf[offset])
    offset += 1
    if ftype == "S":
        (slen,) = _unpack_from(">I", buf, offset)
        offset += 4
        raw = _take(buf, offset, slen)
        try:
            val: Any = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            val = raw  # py-amqp's own fallback for long strings: the bytes
        return val, offset + slen
    if ftype == "x":
        (blen,) = _unpack_from(">I", buf, offset)
        offset += 4
        return _take(buf, offset, blen), offset + blen
    if ftype in _FIXED:
        fmt, size = _FIXED[ftype]
        (val,) = _unpack_from(fmt, buf, offset)
        return val, offset + size
    if ftype == "D":
        (places,) = _unpack_from(">B", buf, offset)
        (n,) = _unpack_from(">i", buf, offset + 1)
        return Decimal(n) / Decimal(10**places), offset + 5
    if ftype == "t":
        (b,) = _unpack_from(">B", buf, offset)
        return bool(b), offset + 1
    if ftype == "T":
        (seconds,) = _unpack_from(">Q", buf, offset)
        try:
            stamp = datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError) as exc:
            raise _BadTable(f"timestamp {seconds} out of range") from exc
        return stamp, offset + 8
    if ftype == "V":
        return None, offset
    if ftype == "F":
        return _read_table(buf, offset, depth + 1, problems)
    if ftype == "A":
        if depth + 1 > MAX_TABLE_DEPTH:
            raise _BadTable(f"nested deeper than {MAX_TABLE_DEPTH}")
        (alen,) = _unpack_from(">I", buf, offset)
        offset += 4
        limit = _limit(buf, offset, alen)
        items: list[Any] = []
        while offset < limit:
            item, offset = _read_item(buf, offset, depth + 1, problems)
            items.append(item)
        return items, offset
    raise _BadTable(f"unknown field type {ftype!r}")


_FIXED: dict[str, tuple[str, int]] = {
    "s": (">h", 2),  # RabbitMQ's 16-bit signed int, as py-amqp reads it
    "b": (">b", 1),
    "B": (">B", 1),
    "U": (">h", 2),
    "u": (">H", 2),
    "I": (">i", 4),
    "i": (">I", 4),
    "L": (">q", 8),
    "l": (">q", 8),
    "f": (">f", 4),
    "d": (">d", 8),
}


def _take(buf: Any, offset: int, length: int) -> bytes:
    raw = bytes(buf[offset : offset + length])
    if len(raw) != length:
        raise _BadTable("length beyond the end of the header")
    return raw


def _limit(buf: Any, offset: int, length: int) -> int:
    if offset + length > len(buf):
        raise _BadTable("length beyond the end of the header")
    return offset + length


def _read_table(
    buf: Any, offset: int, depth: int, problems: list[str]
) -> tuple[dict[Any, Any], int]:
    if depth > MAX_TABLE_DEPTH:
        raise _BadTable(f"nested deeper than {MAX_TABLE_DEPTH}")
    (tlen,) = _unpack_from(">I", buf, offset)
    offset += 4
    limit = _limit(buf, offset, tlen)
    table: dict[Any, Any] = {}
    while offset < limit:
        (keylen,) = _unpack_from(">B", buf, offset)
        raw = _take(buf, offset + 1, keylen)
        offset += 1 + keylen
        try:
            key: Any = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            # py-amqp's own fallback for table keys is the bytes; field names are short
            # strings, which AMQP requires to be UTF-8: kept, but the message is marked.
            key = raw
            problems.append(f"headers: field name {raw[:32]!r} is not UTF-8")
        table[key], offset = _read_item(buf, offset, depth, problems)
    return table, offset


_SKIP = {"s": 2, "b": 1, "B": 1, "U": 2, "u": 2, "I": 4, "i": 4, "L": 8, "l": 8, "f": 4}
_SKIP.update({"d": 8, "D": 5, "t": 1, "T": 8, "V": 0})


def _top_level_keys(buf: Any, offset: int, end: int) -> list[bytes]:
    """The field names of a table's first level, values skipped by size (no recursion)."""
    keys: list[bytes] = []
    while offset < end:
        keylen = buf[offset]
        keys.append(bytes(buf[offset + 1 : offset + 1 + keylen]))
        offset += 1 + keylen
        ftype = chr(buf[offset])
        offset += 1
        if ftype in _SKIP:
            offset += _SKIP[ftype]
        elif ftype in "SxFA":
            (length,) = _unpack_from(">I", buf, offset)
            offset += 4 + length
        else:
            break
    return keys


def _headers(
    buf: Any, offset: int, problems: list[str], properties: dict[str, Any]
) -> tuple[dict[Any, Any], int]:
    """The header table, or ``{}`` (skipped by its length) with the reason in ``problems``."""
    (tlen,) = _unpack_from(">I", buf, offset)
    end = offset + 4 + tlen
    try:
        table, after = _read_table(buf, offset, 1, problems)
    except (_BadTable, struct.error, IndexError) as exc:
        problems.append(f"headers: {exc}")
        try:
            keys = _top_level_keys(buf, offset + 4, end)
        except (struct.error, IndexError):
            keys = []
        owned = [k for k in keys if k.decode("utf-8", "replace").startswith(_BROKER_OWNED_PREFIXES)]
        if owned:
            properties[BROKER_OWNED] = True
            problems.append(f"headers: broker-owned {b', '.join(owned).decode(errors='replace')}")
        return {}, end
    if after != end:
        problems.append("headers: table length does not match its content")
        return {}, end
    return table, end


def _short(buf: Any, offset: int, name: str, problems: list[str]) -> tuple[str, int]:
    (slen,) = _unpack_from(">B", buf, offset)
    offset += 1
    raw = bytes(buf[offset : offset + slen])
    if len(raw) != slen:
        raise IndexError("short string beyond the end of the header")
    try:
        return raw.decode("utf-8", "surrogatepass"), offset + slen
    except UnicodeDecodeError:
        problems.append(f"{name}: not UTF-8")
        return raw.decode("utf-8", "replace"), offset + slen


# (flag bit, property name, kind) in the order of the AMQP 0-9-1 basic class.
_PROPERTIES = (
    (0x8000, "content_type", "s"),
    (0x4000, "content_encoding", "s"),
    (0x2000, "application_headers", "F"),
    (0x1000, "delivery_mode", "o"),
    (0x0800, "priority", "o"),
    (0x0400, "correlation_id", "s"),
    (0x0200, "reply_to", "s"),
    (0x0100, "expiration", "s"),
    (0x0080, "message_id", "s"),
    (0x0040, "timestamp", "T"),
    (0x0020, "type", "s"),
    (0x0010, "user_id", "s"),
    (0x0008, "app_id", "s"),
    (0x0004, "cluster_id", "s"),
)


def decode_properties_basic(buf: Any, offset: int) -> tuple[dict[str, Any], int]:
    """``amqp.serialization.decode_properties_basic`` that never raises on a bad property.

    Same result as py-amqp for a valid header; otherwise the decodable properties plus
    :data:`UNDECODABLE` naming the others.
    """
    properties: dict[str, Any] = {}
    problems: list[str] = []
    (flags,) = _unpack_from(">H", buf, offset)
    offset += 2
    try:
        for bit, name, kind in _PROPERTIES:
            if not flags & bit:
                continue
            if kind == "s":
                properties[name], offset = _short(buf, offset, name, problems)
            elif kind == "F":
                properties[name], offset = _headers(buf, offset, problems, properties)
            elif kind == "o":
                (properties[name],) = _unpack_from(">B", buf, offset)
                offset += 1
            else:
                (properties[name],) = _unpack_from(">Q", buf, offset)
                offset += 8
    except (struct.error, IndexError):
        # A header shorter than its flags say: the body size was read before, so the framing
        # of the message is intact; the properties are not trustworthy.
        problems.append("properties: header shorter than its flags announce")
    if problems:
        properties[UNDECODABLE] = "; ".join(problems)
    return properties, offset


def loads(spec: Any, buf: Any, offset: int) -> tuple[list[Any], int]:
    """``amqp.serialization.loads`` whose short strings never raise on non-UTF-8 bytes.

    Method frames (``basic.deliver``, ``basic.return``, ...) carry the exchange name and the
    routing key as short strings; a key that is not UTF-8 is decoded with U+FFFD replacements
    instead of breaking the connection. Everything else is py-amqp's own decoder.
    """
    fmt = spec.decode() if isinstance(spec, bytes) else spec
    if "s" not in fmt:
        return _original_loads(spec, buf, offset)
    values: list[Any] = []
    # Decode runs of non-'s' fields with py-amqp, 's' here; bits only ever precede 's' fields
    # in a new octet, so splitting at 's' keeps py-amqp's bit packing intact.
    run = ""
    for p in fmt:
        if p != "s":
            run += p
            continue
        if run:
            part, offset = _original_loads(run, buf, offset)
            values.extend(part)
            run = ""
        text, offset = _short(buf, offset, "method argument", [])
        values.append(text)
    if run:
        part, offset = _original_loads(run, buf, offset)
        values.extend(part)
    return values, offset


# py-amqp's own decoders, kept by install(): loads for what the guard does not change, both
# for comparison in the tests.
_original_loads: Callable[..., tuple[list[Any], int]]
_original_decode: Callable[..., tuple[dict[str, Any], int]]


def install() -> None:
    """Put the guarded decoders in place of py-amqp's, once per process (idempotent)."""
    global _original_loads, _original_decode
    # Through import_module: py-amqp ships no type information (Any is honest here).
    serialization: Any = importlib.import_module("amqp.serialization")
    abstract_channel: Any = importlib.import_module("amqp.abstract_channel")
    basic_class_id = importlib.import_module("amqp.spec").Basic.CLASS_ID
    if serialization.PROPERTY_CLASSES.get(basic_class_id) is decode_properties_basic:
        return
    _original_loads = serialization.loads
    _original_decode = serialization.PROPERTY_CLASSES[basic_class_id]
    serialization.PROPERTY_CLASSES[basic_class_id] = decode_properties_basic
    serialization.decode_properties_basic = decode_properties_basic
    # abstract_channel imported loads by name: that is the reference method frames use.
    abstract_channel.loads = loads
