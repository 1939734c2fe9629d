"""The frames of one publish, encoded by hand: ``basic.publish``, content header, body.

Both publishing flavours write every message through :class:`PublishFrames` instead of their
client's generic marshalling (pamqp's ``Frame.marshal`` walks each method's slots and
properties by name; pika builds a frame object per frame and sends each on its own): what is
constant per exchange and routing key (the method frame) is encoded once, the properties in
one pass (:func:`encode_properties`), and the frames of a message are one ``bytes``.

pamqp is the reference. For every value pamqp encodes, the bytes are pamqp's
(``pamqp.frame.marshal`` of ``Basic.Publish``, ``ContentHeader`` and ``ContentBody``):
``tests/unit/test_publish_frames.py`` compares them over a table of properties and headers,
and ``tests/integration/test_publish_frames_broker.py`` reads every one back from the broker.
So header tables keep pamqp's choices: keys sorted, names over 128 bytes cut to 128 (with a
warning, as pamqp logs), integers in the smallest of ``b s u I i l``, floats as ``f``
(32-bit), decimals as scale and 32-bit mantissa, timestamps in whole seconds (a naive
datetime is UTC).

Where pamqp refuses a value while the broker accepts it, the encoder does what pika does: a
``bytes`` header value is a byte array (``x``, as ``bytearray`` is for pamqp), any mapping a
table, a tuple an array, a delivery mode or priority any octet, a non-empty ``cluster_id`` a
short string, and an exchange name any short string (pamqp allows ``[a-zA-Z0-9-_.:@#,/+ ]``
up to 127 characters only). A value no AMQP type carries raises
:class:`~bus.errors.UnsendableMessageError` before anything is written.
"""

from __future__ import annotations

import calendar
import logging
import struct
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bus.errors import UnsendableMessageError

if TYPE_CHECKING:
    from bus.publish.message import Resolved

__all__ = [
    "PROPERTY_NAMES",
    "OwnProperties",
    "PublishFrames",
    "encode_properties",
    "encode_table",
    "short_string",
]

log = logging.getLogger(__name__)

_FRAME_END = b"\xce"
# Frame type, channel, payload size: the head of every frame.
_FRAME_HEAD = struct.Struct(">BHI")
# A content header frame up to its property flags: frame head, class 60 (basic), weight 0,
# body size.
_HEADER_HEAD = struct.Struct(">BHIHHQ")
_HEADER_FIXED = 12  # class, weight and body size: the header payload before the properties
# The end of the header frame and the head of the (first) body frame, in one pack.
_BODY_HEAD = struct.Struct(">BBHI")
# basic.publish: class 60, method 40, ticket 0.
_PUBLISH_METHOD = struct.pack(">HHH", 60, 40, 0)
_MANDATORY = b"\x01"  # the bits octet: mandatory set, immediate not
_FRAME_OVERHEAD = 8  # frame head (7) + frame end (1): a body frame carries frame_max - 8

# The basic properties in wire order, as pamqp names them, with their flag bits.
PROPERTY_NAMES = (
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "message_type",
    "user_id", "app_id", "cluster_id",
)  # fmt: skip
_FLAGS = tuple(1 << (15 - position) for position in range(len(PROPERTY_NAMES)))

# Field-table names longer than this are cut by pamqp (with a warning): so are ours.
_FIELD_NAME_MAX = 128
_I8, _I16, _U16, _I32, _U32, _I64 = (
    struct.Struct(f">{code}") for code in ("b", "h", "H", "i", "I", "q")
)
_LONG = struct.Struct(">I")
_FLOAT = struct.Struct(">f")
_DECIMAL = struct.Struct(">Bi")
_TIMESTAMP = struct.Struct(">Q")
_FLAG_WORD = struct.Struct(">H")
_OCTET = tuple(bytes((n,)) for n in range(256))


def short_string(value: str, what: str = "value") -> bytes:
    """An AMQP short string: length octet and UTF-8."""
    if type(value) is str and value.isascii() and len(value) <= 255:
        return _OCTET[len(value)] + value.encode()  # the common case, in one test
    if not isinstance(value, str):
        raise UnsendableMessageError(
            f"{what} must be a string, got {type(value).__name__}; nothing was sent"
        )
    data = _utf8(value, what)
    if len(data) > 255:
        raise UnsendableMessageError(
            f"{what} is {len(data)} bytes; AMQP carries at most 255 (UTF-8); nothing was sent"
        )
    return _OCTET[len(data)] + data


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsendableMessageError(f"{what} is not valid UTF-8 text; nothing was sent") from None


def _long_string(tag: bytes, data: bytes) -> bytes:
    return tag + _LONG.pack(len(data)) + data


def _integer(value: int, where: str) -> bytes:
    """pamqp's table integer: the smallest of b, s, u, I, i, l that holds ``value``."""
    if -128 <= value <= 127:
        return b"b" + _I8.pack(value)
    if -32768 <= value <= 32767:
        return b"s" + _I16.pack(value)
    if 0 <= value <= 65535:
        return b"u" + _U16.pack(value)
    if -2147483648 <= value <= 2147483647:
        return b"I" + _I32.pack(value)
    if 0 <= value <= 4294967295:
        return b"i" + _U32.pack(value)
    if -9223372036854775808 <= value <= 9223372036854775807:
        return b"l" + _I64.pack(value)
    raise _unsendable(where, f"integer {value} does not fit 64 bits")


def _decimal(value: Decimal, where: str) -> bytes:
    """pamqp's decimal: a scale octet and a signed 32-bit mantissa."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN, Infinity
        raise _unsendable(where, f"decimal {value} has no AMQP form")
    if exponent > 0:
        scale, mantissa = 0, int(value)
    else:
        scale = -exponent
        mantissa = int(value.scaleb(scale))
    if not 0 <= scale <= 255 or not -2147483648 <= mantissa <= 2147483647:
        raise _unsendable(
            where, f"decimal {value} needs more than a 32-bit mantissa and a scale up to 255"
        )
    return b"D" + _DECIMAL.pack(scale, mantissa)


def _seconds(value: datetime | time.struct_time) -> int:
    """Whole seconds since the epoch, a naive datetime taken as UTC (as pamqp does)."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp())
    return calendar.timegm(value)


def _value(value: Any, where: str) -> bytes:
    """One field value with its type tag, in pamqp's order of checks."""
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        return _integer(value, where)
    if isinstance(value, Decimal):
        return _decimal(value, where)
    if isinstance(value, float):
        try:
            return b"f" + _FLOAT.pack(value)
        except OverflowError:
            raise _unsendable(where, f"float {value!r} exceeds a 32-bit float") from None
    if isinstance(value, str):
        return _long_string(b"S", _utf8(value, f"header {where}: value"))
    if isinstance(value, datetime | time.struct_time):
        return b"T" + _TIMESTAMP.pack(_seconds(value))
    if isinstance(value, Mapping):
        return b"F" + _table(value, where)
    if isinstance(value, list | tuple):
        data = b"".join([_value(item, f"{where}[{i}]") for i, item in enumerate(value)])
        return _long_string(b"A", data)
    if isinstance(value, bytes | bytearray | memoryview):
        return _long_string(b"x", bytes(value))
    if value is None:
        return b"V"
    raise _unsendable(where, f"a {type(value).__name__} cannot be sent in an AMQP header")


def _unsendable(where: str, what: str) -> UnsendableMessageError:
    return UnsendableMessageError(f"header {where}: {what}; nothing was sent")


def _table(table: Mapping[str, Any], where: str) -> bytes:
    if not table:
        return b"\x00\x00\x00\x00"
    parts: list[bytes] = []
    for name, item in sorted(table.items()):
        key = name.encode("utf-8") if name.isascii() else _utf8(name, "header name")
        if len(key) > _FIELD_NAME_MAX:
            log.warning("Truncating header name %s to %d bytes", name, _FIELD_NAME_MAX)
            key = key[:_FIELD_NAME_MAX].decode("utf-8", "ignore").encode("utf-8")
        parts.append(bytes((len(key),)) + key)
        parts.append(_value(item, f"{where}.{name}" if where else name))
    data = b"".join(parts)
    return _LONG.pack(len(data)) + data


def encode_table(table: Mapping[str, Any]) -> bytes:
    """An AMQP field table (``headers``), its 4-byte length first."""
    return _table(table, "")


def _octet(value: Any, name: str) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 255:
        raise UnsendableMessageError(f"{name} {value!r} is not an octet; nothing was sent")
    return _OCTET[value]


def _timestamp(value: int | datetime, _name: str) -> bytes:
    return _TIMESTAMP.pack(value if isinstance(value, int) else _seconds(value))


def _headers(value: Mapping[str, Any], _name: str) -> bytes:
    return _table(value, "")


# How each property is encoded, in the order of PROPERTY_NAMES.
_ENCODERS = tuple(
    _headers if name == "headers"
    else _octet if name in ("delivery_mode", "priority")
    else _timestamp if name == "timestamp"
    else short_string
    for name in PROPERTY_NAMES
)  # fmt: skip


def encode_properties(values: Sequence[Any]) -> bytes:
    """The property flags and values of a content header; ``values`` in the order of
    :data:`PROPERTY_NAMES`. A property is sent unless it is None or ``""`` (as pamqp does:
    an empty ``headers`` table is sent). ``timestamp``: seconds or a datetime."""
    if len(values) != len(PROPERTY_NAMES):
        raise ValueError(f"{len(PROPERTY_NAMES)} property values expected, got {len(values)}")
    flags = 0
    flag = 0x8000
    parts = [b""]
    for encode, name, value in zip(_ENCODERS, PROPERTY_NAMES, values, strict=True):
        if value is not None and value != "":
            flags |= flag
            parts.append(encode(value, name))
        flag >>= 1
    parts[0] = _FLAG_WORD.pack(flags)
    return b"".join(parts)


class OwnProperties:
    """The properties of a publisher's own messages (not copies, see
    :class:`~bus.publish.message.KeptProperties`), as :func:`encode_properties` gives them:
    content type, delivery mode, timestamp and ``app_id`` always, the rest when set; what is
    constant per publisher encoded once."""

    __slots__ = ("_app_id", "_content_type", "_flags")

    def __init__(self, content_type: str, app_id: str) -> None:
        self._content_type = short_string(content_type, "content_type")
        self._app_id = short_string(app_id, "app_id") if app_id else b""
        # content_type, delivery_mode, timestamp (and app_id when there is one)
        self._flags = 0x8000 | 0x1000 | 0x0040 | (0x0008 if app_id else 0)

    def encode(self, message: Resolved, headers: Mapping[str, Any] | None, now: int) -> bytes:
        """The properties of ``message`` with ``headers`` (the traced ones), sent at ``now``
        (seconds since the epoch)."""
        flags = self._flags
        parts = [b"", self._content_type]
        if message.content_encoding:
            flags |= 0x4000
            parts.append(short_string(message.content_encoding, "content_encoding"))
        if headers is not None:
            flags |= 0x2000
            parts.append(_table(headers, ""))
        parts.append(b"\x02" if message.persistent else b"\x01")
        if message.correlation_id:
            flags |= 0x0400
            parts.append(short_string(message.correlation_id, "correlation_id"))
        if message.reply_to:
            flags |= 0x0200
            parts.append(short_string(message.reply_to, "reply_to"))
        if message.message_id:
            flags |= 0x0080
            parts.append(short_string(message.message_id, "message_id"))
        parts.append(_TIMESTAMP.pack(now))
        if message.event_type:
            flags |= 0x0020
            parts.append(short_string(message.event_type, "type"))
        parts.append(self._app_id)
        parts[0] = _FLAG_WORD.pack(flags)
        return b"".join(parts)


class PublishFrames:
    """The frames of publishes on one channel: method frames cached per exchange and routing
    key, bodies split at the connection's ``frame_max`` (0: no limit)."""

    __slots__ = ("_methods", "body_max", "channel")

    # A publisher with more destinations than this starts its cache again: bounded memory.
    _CACHE_MAX = 4096

    def __init__(self, channel: int, frame_max: int) -> None:
        self.channel = channel
        self.body_max = frame_max - _FRAME_OVERHEAD if frame_max else 0
        self._methods: dict[tuple[str, str], bytes] = {}

    def method(self, exchange: str, routing_key: str) -> bytes:
        """The ``basic.publish`` frame (mandatory) to ``exchange`` with ``routing_key``."""
        key = (exchange, routing_key)
        frame = self._methods.get(key)
        if frame is None:
            payload = b"".join((
                _PUBLISH_METHOD,
                short_string(exchange, "exchange name"),
                short_string(routing_key, "routing key"),
                _MANDATORY,
            ))  # fmt: skip
            frame = _FRAME_HEAD.pack(1, self.channel, len(payload)) + payload + _FRAME_END
            if len(self._methods) >= self._CACHE_MAX:
                self._methods.clear()
            self._methods[key] = frame
        return frame

    def message(self, exchange: str, routing_key: str, properties: bytes, body: bytes) -> bytes:
        """Every frame of one publish: method, content header with ``properties`` (as
        :func:`encode_properties` gives them), body frames."""
        channel, size = self.channel, len(body)
        head = _HEADER_HEAD.pack(2, channel, _HEADER_FIXED + len(properties), 60, 0, size)
        method = self.method(exchange, routing_key)
        if not size:
            return b"".join((method, head, properties, _FRAME_END))
        limit = self.body_max
        if not limit or size <= limit:
            return b"".join((
                method, head, properties, _BODY_HEAD.pack(0xCE, 3, channel, size), body,
                _FRAME_END,
            ))  # fmt: skip
        parts = [method, head, properties, _FRAME_END]
        for start in range(0, size, limit):
            chunk = body[start : start + limit]
            parts += (_FRAME_HEAD.pack(3, channel, len(chunk)), chunk, _FRAME_END)
        return b"".join(parts)
