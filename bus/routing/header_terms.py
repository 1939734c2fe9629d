"""Header values as the broker compares them: Erlang terms, and the AMQP type pika sends.

The headers exchange compares the decoded Erlang terms with ``==``, so ``5`` != ``"5"``,
``1`` != ``True``, int widths are equal at the top level, ``str`` == ``bytes`` with the same
UTF-8 and a ``datetime`` equals its epoch seconds; inside arrays and tables the AMQP type tag
counts too and table order matters. RabbitMQ 4.0 reads a message's top-level timestamp in
milliseconds (:func:`message_header_term`).
"""

from __future__ import annotations

import calendar
from collections.abc import Hashable, Mapping
from datetime import datetime
from decimal import Decimal
from types import NoneType, UnionType

from pika.compat import long as pika_long

from bus.errors import RoutingError
from bus.versions import RuleSet

__all__ = ["amqp_tag", "header_term", "message_header_term"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


# The AMQP field type of every other value pika encodes: the first type that matches.
_AMQP_TAGS: tuple[tuple[type | UnionType, str], ...] = (
    (float, "double"),
    (str, "longstr"),
    (bytes | bytearray, "binary"),
    (NoneType, "void"),
    (Decimal, "decimal"),
    (datetime, "timestamp"),
    (Mapping, "table"),
    (list | tuple, "array"),
)


def amqp_tag(value: object) -> str:
    """The AMQP field type pika encodes ``value`` as (it matters inside arrays/tables)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, pika_long):
        return "long"
    if isinstance(value, int):
        return "signedint" if _INT32_MIN <= value <= _INT32_MAX else "long"
    for kind, tag in _AMQP_TAGS:
        if isinstance(value, kind):
            return tag
    raise RoutingError(f"header value {value!r} of type {type(value).__name__} has no AMQP type")


def header_term(value: object) -> Hashable:
    """A key equal for two values exactly when the broker's ``==`` on the decoded Erlang
    terms is true (the headers exchange compares values, not their AMQP types)."""
    if isinstance(value, bool):
        return ("atom", value)
    if isinstance(value, int | float):
        # Erlang's == is numeric across int and float; Python's is too, hashes included.
        return ("num", value)
    if isinstance(value, str):
        return ("bin", value.encode("utf-8"))
    if isinstance(value, bytes | bytearray):
        return ("bin", bytes(value))
    if value is None:
        return ("atom", "undefined")
    if isinstance(value, Decimal):
        return ("dec", *_decimal_wire(value))
    if isinstance(value, datetime):
        return ("num", calendar.timegm(value.utctimetuple()))
    if isinstance(value, Mapping):
        return ("list", tuple((str(k), amqp_tag(v), header_term(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("list", tuple((amqp_tag(v), header_term(v)) for v in value))
    raise RoutingError(f"header value {value!r} of type {type(value).__name__} has no AMQP type")


def message_header_term(value: object, rules: RuleSet = "3.10") -> Hashable:
    """The term a *message* header is compared as. Like :func:`header_term`, except that
    RabbitMQ 4.0 reads a top-level AMQP timestamp header as milliseconds (its message
    container converts it; values inside arrays and tables keep seconds), measured on 4.0.5."""
    if rules == "4.0" and isinstance(value, datetime):
        return ("num", calendar.timegm(value.utctimetuple()) * 1000)
    return header_term(value)


def _decimal_wire(value: Decimal) -> tuple[int, int]:
    """(scale, unscaled) as pika puts a Decimal on the wire (normalised first)."""
    value = value.normalize()
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < 0:
        return (-exponent, int(value * (Decimal(10) ** -exponent)))
    return (0, int(value))
