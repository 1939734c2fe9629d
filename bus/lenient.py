"""Frame decoding that one hostile message cannot turn into a dropped connection.

The async client stack (aio-pika -> aiormq -> pamqp 4.0.1) decodes every frame in the
connection's reader task. pamqp decodes short strings strictly as UTF-8 and header tables by
unbounded recursion, so a message with a ``type`` or ``app_id`` that is not UTF-8, a routing key
that is not UTF-8, a header timestamp past year 9999 or a header table nested 5,000 deep
raises in the reader (``UnicodeDecodeError``/``ValueError`` wrapped as ``InvalidFrameError``,
or a bare ``RecursionError``), aiormq closes the *connection*, every consumer on it stops, and
the broker redelivers the same message after the reconnect: forever on a classic queue. The
broker itself accepts all of these (short strings are bytes to AMQP 0-9-1).

:func:`install` replaces ``pamqp.frame.unmarshal`` (which aiormq looks up on every frame) with
:func:`unmarshal`. pamqp still decodes every frame first; a content header it cannot decode,
or whose headers are past the bounds below (or hold a value its encoder refuses), is decoded
again by :func:`decode_content_header`, and a method frame with a short string that is not
UTF-8 by a lenient copy of pamqp's method decoding:

- short strings that are not UTF-8 are decoded with U+FFFD replacements;
- header tables and arrays are decoded with a depth bound (:data:`MAX_DEPTH`) and an entry
  budget (:data:`MAX_ENTRIES`); a nested value past the bound becomes ``None``;
- a value pamqp cannot decode (e.g. a timestamp out of range) becomes ``None``;
- a long string that is not UTF-8 becomes a ``bytearray`` (pamqp decodes it to ``bytes``,
  which its encoder then refuses, so no copy of the message could ever be published).

Every such problem of a content header is written, as text, into the header
:data:`UNDECODABLE_HEADER` (and the table's raw bytes into :data:`RAW_HEADERS` when the table
itself was damaged), which the consumer runtime dead-letters with reason ``undecodable``. A
publisher cannot forge that header: any copy of it in the received table is dropped. Frames
that decode normally give exactly what pamqp gives (the tests compare both).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pamqp.frame
from pamqp import commands, constants, decode, exceptions, header
from pamqp.base import Frame

__all__ = [
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "RAW_HEADERS",
    "UNDECODABLE_HEADER",
    "decode_content_header",
    "install",
    "unmarshal",
]

UNDECODABLE_HEADER = "x-bus-undecodable"
"""Set by :func:`unmarshal` on a message whose properties could not be decoded as sent."""

RAW_HEADERS = "x-bus-undecodable-headers"
"""The raw bytes of a damaged headers table (when at most 64 KiB), kept for an operator."""

MAX_DEPTH = 32
"""Nesting of tables/arrays in headers beyond which values are not decoded."""

MAX_ENTRIES = 50_000
"""Table and array entries decoded per content header, in total."""

_MAX_RAW = 64 * 1024
_MAX_NOTE = 1024
_FIXED_WIDTH = {
    b"t": 1, b"b": 1, b"B": 1, b"s": 2, b"u": 2, b"I": 4, b"i": 4, b"l": 8, b"L": 8,
    b"f": 4, b"d": 8, b"D": 5, b"T": 8, b"V": 0, b"\x00": 0,
}  # fmt: skip
_VALUE_ERRORS = (ValueError, OverflowError, OSError, struct.error)

_HEADER_TYPE = bytes([constants.FRAME_HEADER])
_METHOD_TYPE = bytes([constants.FRAME_METHOD])

_original_unmarshal: Callable[[bytes], tuple[int, int, Any]] = pamqp.frame.unmarshal


class _Corrupt(Exception):
    """The bytes cannot be walked any further (unknown type, lengths past the end)."""


class _Walker:
    """Decodes one frame's tables with a shared entry budget, collecting problems."""

    def __init__(self) -> None:
        self.entries = 0
        self.problems: list[str] = []

    def value(self, data: bytes, offset: int, depth: int, where: str) -> tuple[int, Any]:
        kind = data[offset : offset + 1]
        offset += 1
        if kind in (b"F", b"A"):
            if offset + 4 > len(data):
                raise _Corrupt(f"{where}: truncated")
            (length,) = struct.unpack_from(">I", data, offset)
            end = offset + 4 + length
            if end > len(data):
                raise _Corrupt(f"{where}: length past the end")
            if depth >= MAX_DEPTH:
                self.problems.append(f"{where}: nested deeper than {MAX_DEPTH}")
                return end, None
            if kind == b"F":
                return end, self.table(data, offset + 4, end, depth + 1, where)
            return end, self.array(data, offset + 4, end, depth + 1, where)
        if kind in (b"S", b"x"):
            if offset + 4 > len(data):
                raise _Corrupt(f"{where}: truncated")
            (length,) = struct.unpack_from(">I", data, offset)
            width = 4 + length
        else:
            fixed = _FIXED_WIDTH.get(kind)
            if fixed is None:
                raise _Corrupt(f"{where}: unknown field type {kind!r}")
            width = fixed
        end = offset + width
        if end > len(data):
            raise _Corrupt(f"{where}: length past the end")
        try:
            _, result = decode.TABLE_MAPPING[kind](data[offset:end])
        except _VALUE_ERRORS as exc:
            self.problems.append(f"{where}: {exc}")
            return end, None
        if isinstance(result, bytes):
            # pamqp hands back a long string that is not UTF-8 as bytes, which its own encoder
            # refuses: every copy of the message would fail. A bytearray encodes (type 'x').
            self.problems.append(f"{where}: not UTF-8")
            return end, bytearray(result)
        return end, result

    def _count(self, where: str) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise _Corrupt(f"{where}: more than {MAX_ENTRIES} entries")

    def table(self, data: bytes, offset: int, end: int, depth: int, where: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while offset < end:
            self._count(where)
            key_length = data[offset]
            offset += 1
            if offset + key_length > end:
                raise _Corrupt(f"{where}: key length past the end")
            raw_key = data[offset : offset + key_length]
            offset += key_length
            key = _text(raw_key, f"{where} key", self.problems)
            offset, result[key] = self.value(data, offset, depth, f"{where}.{key}")
        if offset != end:
            raise _Corrupt(f"{where}: entries past the table's end")
        return result

    def array(self, data: bytes, offset: int, end: int, depth: int, where: str) -> list[Any]:
        result: list[Any] = []
        while offset < end:
            self._count(where)
            offset, item = self.value(data, offset, depth, f"{where}[{len(result)}]")
            result.append(item)
        if offset != end:
            raise _Corrupt(f"{where}: entries past the array's end")
        return result


def _text(raw: bytes, where: str, problems: list[str]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{where}: not UTF-8 ({raw[:64]!r})")
        return raw.decode("utf-8", "replace")


def _headers(data: bytes, offset: int, walker: _Walker) -> tuple[int, dict[str, Any]]:
    if offset + 4 > len(data):
        raise _Corrupt("headers: truncated")
    (length,) = struct.unpack_from(">I", data, offset)
    start, end = offset + 4, offset + 4 + length
    if end > len(data):
        raise _Corrupt("headers: length past the end")
    before = len(walker.problems)
    try:
        table = walker.table(data, start, end, 0, "headers")
    except _Corrupt as exc:
        walker.problems.append(str(exc))
        table = {}
    table.pop(UNDECODABLE_HEADER, None)  # only this decoder may say so
    table.pop(RAW_HEADERS, None)
    if len(walker.problems) > before and length <= _MAX_RAW:
        table[RAW_HEADERS] = bytearray(data[start:end])  # pamqp encodes bytearray, not bytes
    return end, table


def decode_content_header(frame_data: bytes) -> header.ContentHeader:
    """A content header frame's payload, decoded leniently (see the module docstring)."""
    content = header.ContentHeader()
    try:
        content.class_id, content.weight, content.body_size = struct.unpack(
            ">HHQ", frame_data[0:12]
        )
        offset, flags = header.ContentHeader._get_flags(frame_data[12:])
        data = frame_data[12 + offset :]
        props = content.properties
        walker = _Walker()
        position = 0
        for name in props.__slots__:
            if not flags & props.flags[name]:
                continue
            kind = props.amqp_type(name)
            if kind == "shortstr":
                length = data[position]
                raw = data[position + 1 : position + 1 + length]
                if len(raw) != length:
                    raise _Corrupt(f"{name}: truncated")
                position += 1 + length
                value: Any = _text(raw, name, walker.problems)
            elif kind == "table":
                position, value = _headers(data, position, walker)
            else:
                try:
                    used, value = decode.by_type(data[position:], kind)
                except _VALUE_ERRORS as exc:
                    if kind != "timestamp":
                        raise _Corrupt(f"{name}: {exc}") from exc
                    used, value = 8, None
                    walker.problems.append(f"{name}: {exc}")
                position += used
            setattr(props, name, value)
    except (_Corrupt, IndexError, struct.error, ValueError) as exc:
        raise exceptions.UnmarshalingException("ContentHeader", exc) from exc
    if walker.problems:
        note = "; ".join(walker.problems)
        headers = dict(props.headers or {})
        headers[UNDECODABLE_HEADER] = note if len(note) <= _MAX_NOTE else note[:_MAX_NOTE] + "..."
        props.headers = headers
    return content


def _lenient_method(frame_data: bytes) -> Frame:
    """A method frame whose short strings are not UTF-8 (e.g. a routing key), with U+FFFD."""
    (index,) = struct.unpack(">I", frame_data[0:4])
    method: Frame = commands.INDEX_MAPPING[index]()
    data = frame_data[4:]
    offset, in_bits = 0, False
    ignored: list[str] = []
    for name in method.__slots__:
        kind = method.amqp_type(name)
        if in_bits and (kind != "bit" or offset == 8):
            data, offset, in_bits = data[1:], 0, False
        if kind == "shortstr":
            length = data[0]
            value: Any = _text(data[1 : 1 + length], name, ignored)
            data = data[1 + length :]
        elif kind == "bit":
            _, value = decode.bit(data, offset)
            offset, in_bits = offset + 1, True
        else:
            used, value = decode.by_type(data, kind)
            data = data[used:]
        setattr(method, name, value)
    return method


def _plain(headers: dict[str, Any] | None) -> bool:
    """True when pamqp's decoding of ``headers`` is within the bounds and can be sent again."""
    if not headers:
        return True
    if UNDECODABLE_HEADER in headers or RAW_HEADERS in headers:
        return False
    entries = 0
    stack: list[tuple[Any, int]] = [(headers, 0)]
    while stack:
        node, depth = stack.pop()
        for value in node.values() if isinstance(node, dict) else node:
            entries += 1
            if isinstance(value, dict | list):
                if depth >= MAX_DEPTH:
                    return False
                stack.append((value, depth + 1))
            elif isinstance(value, bytes):
                return False
    return entries <= MAX_ENTRIES


def unmarshal(data_in: bytes) -> tuple[int, int, Any]:
    """``pamqp.frame.unmarshal`` with content headers and method frames decoded leniently.

    pamqp decodes first (the fast path); a content header it cannot decode, or whose headers
    are past the bounds, is decoded again by :func:`decode_content_header`.
    """
    is_header = data_in[:1] == _HEADER_TYPE
    try:
        result = _original_unmarshal(data_in)
    except (exceptions.UnmarshalingException, RecursionError) as exc:
        if is_header:
            return _lenient_header(data_in, exc)
        if data_in[:1] != _METHOD_TYPE or not _is_unicode(exc):
            raise
        _, channel, size = struct.unpack(">BHI", data_in[:7])
        count = constants.FRAME_HEADER_SIZE + size + 1
        return count, channel, _lenient_method(data_in[constants.FRAME_HEADER_SIZE : count - 1])
    if is_header and not _plain(result[2].properties.headers):
        return _lenient_header(data_in, None)
    return result


def _lenient_header(data_in: bytes, error: BaseException | None) -> tuple[int, int, Any]:
    _, channel, size = struct.unpack(">BHI", data_in[:7])
    count = constants.FRAME_HEADER_SIZE + size + 1
    if count > len(data_in) or data_in[count - 1] != constants.FRAME_END:
        raise exceptions.UnmarshalingException("ContentHeader", error or "truncated frame")
    return count, channel, decode_content_header(data_in[constants.FRAME_HEADER_SIZE : count - 1])


def _is_unicode(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, UnicodeDecodeError):
            return True
        cause = cause.__cause__
    return False


def install() -> None:
    """Make every aiormq connection of this process decode frames with :func:`unmarshal`."""
    pamqp.frame.unmarshal = unmarshal
