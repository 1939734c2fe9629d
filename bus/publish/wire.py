"""The pre-send wire check: what AMQP 0-9-1 cannot carry is refused before anything is sent.

Every message a publisher or the test double sends is resolved through
:class:`bus.publish.message.Resolver`, which calls :func:`check_wire` (and :func:`check_size`):
one rule, one error (:class:`~bus.errors.UnsendableMessageError`,
:class:`~bus.errors.MessageTooLargeError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bus.errors import MessageTooLargeError, UnsendableMessageError

if TYPE_CHECKING:
    from bus.publish.message import Resolved

__all__ = [
    "MAX_HEADER_DEPTH",
    "SHORT_STRING_MAX",
    "check_short_string",
    "check_size",
    "check_wire",
]


def check_size(body: bytes, limit: int, exchange: str, routing_key: str) -> None:
    if len(body) > limit:
        raise MessageTooLargeError(
            f"message of {len(body)} bytes for exchange {exchange!r} routing key "
            f"{routing_key!r} exceeds the maximum of {limit} bytes; nothing was sent"
        )


# AMQP 0-9-1 short strings (exchange, routing key, header names, most properties) carry at
# most 255 bytes. pamqp truncates a longer header name and sends it; pika and aiormq raise
# from deep inside the send, which reads as a lost connection. Refused here, before sending.
SHORT_STRING_MAX = 255
# Field-table integers are signed 64-bit at most.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# Nested header tables deeper than this are refused: a consumer decoding them recursively
# (pamqp) can fail on deep nesting, and no bus message needs more.
MAX_HEADER_DEPTH = 32
_SCALARS = frozenset({bool, float, bytes, bytearray, datetime, Decimal})


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def check_short_string(value: str | None, what: str) -> None:
    """Raise :class:`UnsendableMessageError` unless ``value`` fits an AMQP short string."""
    if value is None:
        return
    if not isinstance(value, str):
        raise UnsendableMessageError(f"{what} must be a string, got {type(value).__name__}")
    if value.isascii():  # O(1) in CPython: the common case costs no encoding
        if len(value) <= SHORT_STRING_MAX:
            return
        size = len(value)
    else:
        size = _utf8_size(value, what)
    if size > SHORT_STRING_MAX:
        raise UnsendableMessageError(
            f"{what} {_shown(value)} is {size} bytes; AMQP carries at most "
            f"{SHORT_STRING_MAX} (UTF-8)"
        )


def _utf8_size(value: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsendableMessageError(f"{what} {_shown(value)} is not valid UTF-8 text") from None


def _check_value(value: Any, where: str, depth: int) -> None:
    kind = type(value)
    if kind is str:
        if not value.isascii():
            _utf8_size(value, f"header {where}: value")
        return
    if value is None or kind in _SCALARS:
        return
    if kind is int or isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise UnsendableMessageError(f"header {where}: integer {value} does not fit 64 bits")
        return
    if isinstance(value, bool | float | bytes | bytearray | datetime | Decimal | str):
        return
    if depth >= MAX_HEADER_DEPTH:
        raise UnsendableMessageError(
            f"header {where}: tables and arrays nested deeper than {MAX_HEADER_DEPTH}"
        )
    if isinstance(value, Mapping):
        _check_table(value, where, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]", depth + 1)
    else:
        raise UnsendableMessageError(
            f"header {where}: a {type(value).__name__} cannot be sent in an AMQP header"
        )


def _check_table(table: Mapping[Any, Any], where: str, depth: int) -> None:
    for name, value in table.items():
        # Messages are built only on failure: every publish with headers runs this.
        if not (type(name) is str and name.isascii() and len(name) <= SHORT_STRING_MAX):
            if not isinstance(name, str):
                raise UnsendableMessageError(
                    f"header name {name!r} in {where or 'headers'} is not text"
                )
            check_short_string(name, f"header name in {where}" if where else "header name")
        _check_value(value, f"{where}.{name}" if where else name, depth)


_PROPERTY_NAMES = (
    "exchange name",
    "routing key",
    "type property",
    "message_id",
    "correlation_id",
    "content_encoding",
    "reply_to",
)


def check_wire(message: Resolved) -> None:
    """Refuse, before anything is sent, a message AMQP cannot carry as given.

    Both publishers and the test double resolve every message through :class:`Resolver`,
    which calls this: one rule, one error (:class:`~bus.errors.UnsendableMessageError`).
    """
    strings = (
        message.exchange,
        message.routing_key,
        message.event_type,
        message.message_id,
        message.correlation_id,
        message.content_encoding,
        message.reply_to,
    )
    for value, what in zip(strings, _PROPERTY_NAMES, strict=True):
        # Inlined fast path (every publish pays it): None or a short ASCII string.
        if value is not None and not (
            type(value) is str and value.isascii() and len(value) <= SHORT_STRING_MAX
        ):
            check_short_string(value, what)
    if message.headers:
        _check_table(message.headers, "", 0)
