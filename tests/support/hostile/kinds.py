"""Malformed messages, one per kind, as a hostile or merely buggy publisher would send them.

Shared by the consumer suite (``test_consumer_*.py``) and the Celery worker suite
(``test_worker_*.py``). Stable API:

- :data:`KINDS`: a list of :class:`Kind` ``(name, area, properties, body)``; ``properties``
  and ``body`` are builders taking a :class:`Template` (the valid message the kind corrupts)
  and returning the pika properties and the body bytes to publish;
- :func:`publish_kind`: publish one kind with a pika channel (``basic_publish``);
- :class:`RawProperties`: pika properties whose encoded bytes are written by hand, for what
  pika refuses or cannot encode (tables nested 5,000 deep, invalid UTF-8 in a table key or a
  long string, unknown field types, a timestamp past year 9999);
- :func:`tag_of`: the template tag a delivered/drained message carries (``message_id``, else
  ``correlation_id``), so a suite can tell where each kind ended.

The broker itself refuses some malformed publishes, so they are not kinds here: an unknown
field type in a table (RabbitMQ 3.10.8 closes the publisher's connection, ``541
INTERNAL_ERROR``), a NaN double in a table (the same) and ``delivery_mode`` outside 1-2
(``406 PRECONDITION_FAILED``).

Every kind keeps the template's tag readable in ``message_id`` or, when it corrupts
``message_id``, in ``correlation_id``.
"""

from __future__ import annotations

import decimal
import gzip
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pika
import pika.spec

__all__ = [
    "KINDS",
    "Kind",
    "RawProperties",
    "Template",
    "encode_properties",
    "publish_kind",
    "tag_of",
]


@dataclass(frozen=True)
class Template:
    """The valid message a kind starts from; ``tag`` identifies it wherever it ends up."""

    tag: str
    type: str = "order.created"
    body: bytes = b'{"order_id": "o-1", "customer_id": "c-1", "total": "1.00"}'
    content_type: str = "application/json"
    headers: dict[str, Any] = field(default_factory=dict)

    def properties(self, **overrides: Any) -> pika.BasicProperties:
        values: dict[str, Any] = {
            "content_type": self.content_type,
            "delivery_mode": 2,
            "message_id": self.tag,
            "correlation_id": self.tag,
            "type": self.type,
            "headers": dict(self.headers) or None,
        }
        values.update(overrides)
        return pika.BasicProperties(**values)


PropertiesBuilder = Callable[[Template], pika.BasicProperties]
BodyBuilder = Callable[[Template], bytes]


class Kind(NamedTuple):
    name: str
    area: str
    """``property``, ``header``, ``body`` or ``size``."""
    properties: PropertiesBuilder
    body: BodyBuilder


# -- raw encoding (what pika will not write) ---------------------------------------------------
_SHORTSTR = {
    "content_type", "content_encoding", "correlation_id", "reply_to", "expiration",
    "message_id", "type", "user_id", "app_id", "cluster_id",
}  # fmt: skip
_ORDER = [
    ("content_type", 1 << 15), ("content_encoding", 1 << 14), ("headers", 1 << 13),
    ("delivery_mode", 1 << 12), ("priority", 1 << 11), ("correlation_id", 1 << 10),
    ("reply_to", 1 << 9), ("expiration", 1 << 8), ("message_id", 1 << 7),
    ("timestamp", 1 << 6), ("type", 1 << 5), ("user_id", 1 << 4), ("app_id", 1 << 3),
    ("cluster_id", 1 << 2),
]  # fmt: skip


def _shortstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">B", len(raw)) + raw


def encode_properties(values: dict[str, Any], raw_headers: bytes | None = None) -> bytes:
    """The property list of a content header frame (flags + values), AMQP 0-9-1 section 4.2.6.

    Short strings may be ``bytes`` (written as they are); ``timestamp`` an int written as an
    unsigned 64-bit number; ``raw_headers`` the encoded *contents* of the headers table
    (without its length), written as they are.
    """
    flags = 0
    pieces: list[bytes] = []
    for name, bit in _ORDER:
        if name == "headers" and raw_headers is not None:
            flags |= bit
            pieces.append(struct.pack(">I", len(raw_headers)) + raw_headers)
            continue
        value = values.get(name)
        if value is None:
            continue
        flags |= bit
        if name in _SHORTSTR:
            pieces.append(_shortstr(value))
        elif name in ("delivery_mode", "priority"):
            pieces.append(struct.pack(">B", value))
        elif name == "timestamp":
            pieces.append(struct.pack(">Q", value))
        else:
            raise ValueError(f"encode_properties: {name} needs raw_headers")
    return struct.pack(">H", flags) + b"".join(pieces)


class RawProperties(pika.spec.BasicProperties):  # type: ignore[misc]
    """pika properties whose wire bytes are given: pika sends them without encoding anything."""

    def __init__(self, encoded: bytes, **shown: Any) -> None:
        super().__init__(**shown)
        self._encoded = encoded

    def encode(self) -> list[bytes]:
        return [self._encoded]


def _raw(t: Template, raw_headers: bytes | None = None, **values: Any) -> RawProperties:
    base: dict[str, Any] = {
        "content_type": t.content_type,
        "delivery_mode": 2,
        "message_id": t.tag,
        "correlation_id": t.tag,
        "type": t.type,
    }
    base.update(values)
    return RawProperties(encode_properties(base, raw_headers))


def _entry(key: bytes, kind: bytes, payload: bytes) -> bytes:
    return _shortstr(key) + kind + payload


def _nested_table(depth: int) -> bytes:
    """Table contents ``{"n": {"n": ... {} ...}}`` nested ``depth`` deep, built iteratively."""
    inner = b""
    for _ in range(depth):
        inner = _entry(b"n", b"F", struct.pack(">I", len(inner)) + inner)
    return inner


def _nested_array(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = b"A" + struct.pack(">I", len(inner)) + inner
    return _entry(b"a", b"A", struct.pack(">I", len(inner)) + inner)


def _longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


# -- the kinds ----------------------------------------------------------------------------
def _props(**overrides: Any) -> PropertiesBuilder:
    return lambda t: t.properties(**overrides)


def _headers(**extra: Any) -> PropertiesBuilder:
    return lambda t: t.properties(headers={**t.headers, **extra})


def _same(t: Template) -> bytes:
    return t.body


def _body(data: bytes) -> BodyBuilder:
    return lambda _t: data


_BAD = b"\xff\xfe\xc3("  # invalid UTF-8 in every position a decoder may look at

KINDS: list[Kind] = [
    # properties that are not UTF-8 (pika passes bytes through as they are)
    Kind("type-not-utf8", "property", _props(type=b"order.\xff\xfe"), _same),
    Kind("app-id-not-utf8", "property", _props(app_id=_BAD), _same),
    Kind("content-type-not-utf8", "property", _props(content_type=b"application/\xffjson"), _same),
    Kind("content-encoding-not-utf8", "property", _props(content_encoding=_BAD), _same),
    Kind("message-id-not-utf8", "property", _props(message_id=_BAD), _same),
    Kind("correlation-id-not-utf8", "property", _props(correlation_id=_BAD), _same),
    Kind("reply-to-not-utf8", "property", _props(reply_to=_BAD), _same),
    Kind("cluster-id-not-utf8", "property", _props(cluster_id=_BAD), _same),
    # properties that decode but are wrong
    Kind("type-missing", "property", _props(type=None), _same),
    Kind("type-empty", "property", _props(type=""), _same),
    Kind("type-unknown", "property", _props(type="no.such.event"), _same),
    Kind("type-255-bytes", "property", _props(type="t" * 255), _same),
    Kind("type-other-event", "property", _props(type="cache.invalidated"), _same),
    Kind("content-type-missing", "property", _props(content_type=None), _same),
    Kind("content-type-text", "property", _props(content_type="text/plain"), _same),
    Kind("content-type-garbage", "property", _props(content_type=";;;=\x00"), _same),
    Kind("message-id-missing", "property", _props(message_id=None), _same),
    Kind("message-id-empty", "property", _props(message_id=""), _same),
    Kind("delivery-mode-transient", "property", _props(delivery_mode=1), _same),
    Kind("priority-255", "property", _props(priority=255), _same),
    Kind("timestamp-max", "property", lambda t: _raw(t, timestamp=2**64 - 1), _same),
    Kind("timestamp-zero", "property", lambda t: _raw(t, timestamp=0), _same),
    # forged broker-owned and runtime headers
    Kind("x-death-ints", "header", _headers(**{"x-death": [1, 2, 3]}), _same),
    Kind("x-death-empty-table", "header", _headers(**{"x-death": [{}]}), _same),
    Kind("x-death-string", "header", _headers(**{"x-death": "boom"}), _same),
    Kind(
        "x-death-wrong-field-types",
        "header",
        _headers(**{"x-death": [{"count": "many", "queue": 5, "reason": 1, "time": "now"}]}),
        _same,
    ),
    Kind("x-first-death-forged", "header", _headers(**{"x-first-death-queue": 42}), _same),
    Kind("x-last-death-forged", "header", _headers(**{"x-last-death-reason": [1]}), _same),
    Kind("x-delivery-count-string", "header", _headers(**{"x-delivery-count": "9"}), _same),
    Kind("x-delivery-count-huge", "header", _headers(**{"x-delivery-count": 2**62}), _same),
    Kind("x-retry-count-string", "header", _headers(**{"x-retry-count": "1"}), _same),
    Kind("x-retry-count-negative", "header", _headers(**{"x-retry-count": -5}), _same),
    Kind("x-retry-count-huge", "header", _headers(**{"x-retry-count": 2**62}), _same),
    Kind("x-retry-count-bool", "header", _headers(**{"x-retry-count": True}), _same),
    Kind(
        "x-retry-count-float",
        "header",
        lambda t: _raw(t, raw_headers=_entry(b"x-retry-count", b"d", struct.pack(">d", 1.5))),
        _same,
    ),
    Kind("header-decimal", "header", _headers(amount=decimal.Decimal("-1.25")), _same),
    Kind("header-value-bytes", "header", _headers(note=b"\x00\xff\xfe"), _same),
    Kind("header-value-none", "header", _headers(note=None), _same),
    Kind("header-name-255-bytes", "header", _headers(**{"h" * 255: 1}), _same),
    Kind("headers-2000-keys", "header", _headers(**{f"k{i}": i for i in range(2000)}), _same),
    Kind(
        "headers-nested-5000",
        "header",
        lambda t: _raw(t, raw_headers=_nested_table(5000)),
        _same,
    ),
    Kind("headers-nested-200", "header", lambda t: _raw(t, raw_headers=_nested_table(200)), _same),
    Kind(
        "headers-array-nested-5000",
        "header",
        lambda t: _raw(t, raw_headers=_nested_array(5000)),
        _same,
    ),
    Kind(
        "header-key-not-utf8",
        "header",
        lambda t: _raw(t, raw_headers=_entry(b"k\xff", b"I", struct.pack(">i", 1))),
        _same,
    ),
    Kind(
        "header-longstr-not-utf8",
        "header",
        lambda t: _raw(t, raw_headers=_entry(b"note", b"S", _longstr(_BAD))),
        _same,
    ),
    Kind(
        "header-timestamp-max",
        "header",
        lambda t: _raw(t, raw_headers=_entry(b"when", b"T", struct.pack(">Q", 2**64 - 1))),
        _same,
    ),
    # bodies
    Kind("body-empty", "body", _props(), _body(b"")),
    Kind("body-not-json", "body", _props(), _body(b"not json at all")),
    Kind("body-not-utf8", "body", _props(), _body(b'{"order_id": "\xff\xfe"}')),
    Kind("body-json-null", "body", _props(), _body(b"null")),
    Kind("body-json-array", "body", _props(), _body(b"[]")),
    Kind("body-wrong-schema", "body", _props(), _body(b'{"unexpected": 1}')),
    Kind("body-nul-bytes", "body", _props(), _body(b"\x00" * 64)),
    Kind("body-json-nested-100k", "body", _props(), _body(b"[" * 100_000 + b"]" * 100_000)),
    Kind(
        "body-huge-number",
        "body",
        _props(),
        _body(b'{"order_id": "o", "customer_id": "c", "total": ' + b"9" * 100_000 + b"}"),
    ),
    Kind(
        "body-gzip-garbage",
        "body",
        _props(content_encoding="gzip"),
        _body(b"\x1f\x8b\x08\x00garbage"),
    ),
    Kind(
        "body-gzip-valid",
        "body",
        _props(content_encoding="gzip"),
        lambda t: gzip.compress(t.body),
    ),
    Kind("body-encoding-unknown", "body", _props(content_encoding="x-zstd-42"), _same),
    # sizes
    Kind("body-4mib-garbage", "size", _props(), _body(b"\xfe" * (4 << 20))),
    Kind(
        "body-4mib-json",
        "size",
        _props(),
        _body(
            json.dumps(
                {"order_id": "o", "customer_id": "c", "total": "1", "pad": "x" * (4 << 20)}
            ).encode()
        ),
    ),
]

_names = [k.name for k in KINDS]
assert len(set(_names)) == len(_names), "kind names must be unique"


def publish_kind(
    channel: Any, kind: Kind, template: Template, *, exchange: str, routing_key: str
) -> None:
    """Publish ``kind`` built from ``template`` on a pika (blocking) channel."""
    channel.basic_publish(exchange, routing_key, kind.body(template), kind.properties(template))


def tag_of(properties: Any) -> str | None:
    """The template tag carried by a delivered message (``message_id``, else ``correlation_id``)."""
    for name in ("message_id", "correlation_id"):
        value = getattr(properties, name, None)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value and "\ufffd" not in value:
            return value
    return None
