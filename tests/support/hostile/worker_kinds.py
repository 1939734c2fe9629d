"""Malformed Celery task messages, written byte by byte, for the worker's hostile-input tests.

Each :class:`Kind` builds one message from a valid protocol-2 task (``consumers.tasks.record``
writing ``token`` to a file) and breaks one thing: a property, a header, the body, a size. The
content header is encoded here, not by a client library, so it can hold what no library would
write (short strings that are not UTF-8, tables nested 5,000 deep, unknown field types) but
what RabbitMQ forwards to consumers as it is.

``expect`` is what the requirement says must happen, not what the code does:

- ``dead-lettered``: the worker rejects it without requeue, it reaches the queue's DLQ;
- ``handled``: a valid task with odd but legal properties: it runs;
- ``refused``: the broker refuses the publish itself (nothing reaches the worker).

Each message carries its kind's tag (``k<index>``) in ``message_id`` (or, for the kind that
breaks ``message_id``, in ``correlation_id``), so that it can be found in the DLQ.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KINDS",
    "Kind",
    "Raw",
    "Sent",
    "encode_properties",
    "encode_table",
    "valid_task",
]


class Raw(bytes):
    """An already encoded table value (type letter included)."""


def _short(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">B", len(raw)) + raw


def encode_value(value: Any) -> bytes:
    """One table value the way RabbitMQ's clients write it."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, str):
        raw = value.encode()
        return b"S" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, bool):
        return b"t" + struct.pack(">B", int(value))
    if isinstance(value, int):
        return b"l" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if value is None:
        return b"V"
    if isinstance(value, list | tuple):
        inner = b"".join(encode_value(v) for v in value)
        return b"A" + struct.pack(">I", len(inner)) + inner
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_table(table: dict[Any, Any]) -> bytes:
    """A field table (length prefix included); keys may be bytes that are not UTF-8."""
    inner = b"".join(_short(k) + encode_value(v) for k, v in table.items())
    return struct.pack(">I", len(inner)) + inner


_FLAGS: Sequence[tuple[str, int, str]] = (
    ("content_type", 0x8000, "s"),
    ("content_encoding", 0x4000, "s"),
    ("headers", 0x2000, "F"),
    ("delivery_mode", 0x1000, "o"),
    ("priority", 0x0800, "o"),
    ("correlation_id", 0x0400, "s"),
    ("reply_to", 0x0200, "s"),
    ("expiration", 0x0100, "s"),
    ("message_id", 0x0080, "s"),
    ("timestamp", 0x0040, "T"),
    ("type", 0x0020, "s"),
    ("user_id", 0x0010, "s"),
    ("app_id", 0x0008, "s"),
    ("cluster_id", 0x0004, "s"),
)


def encode_properties(props: dict[str, Any]) -> bytes:
    """Basic-class property flags and list; ``headers`` may be a dict or encoded bytes."""
    flags = 0
    out = b""
    for name, bit, kind in _FLAGS:
        value = props.get(name)
        if value is None:
            continue
        flags |= bit
        if kind == "s":
            out += _short(value)
        elif kind == "F":
            out += value if isinstance(value, bytes) else encode_table(value)
        elif kind == "o":
            out += struct.pack(">B", value)
        else:
            out += struct.pack(">Q", value)
    return struct.pack(">H", flags) + out


@dataclass
class Sent:
    """The message of one kind: its properties (before encoding) and body."""

    props: dict[str, Any]
    body: bytes

    def encoded(self) -> bytes:
        return encode_properties(self.props)


def valid_task(path: str, token: str, tag: str) -> Sent:
    """The valid protocol-2 ``record`` task every kind starts from."""
    task_id = str(uuid.uuid4())
    headers: dict[Any, Any] = {
        "lang": "py",
        "task": "consumers.tasks.record",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": repr([path, token]),
        "kwargsrepr": "{}",
        "origin": "hostile-test",
        "ignore_result": True,
    }
    body = json.dumps([[path, token], {}, {"callbacks": None, "errbacks": None}]).encode()
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": headers,
        "delivery_mode": 2,
        "correlation_id": task_id,
        "message_id": tag,
    }
    return Sent(props, body)


Mutation = Callable[[Sent], None]


@dataclass(frozen=True)
class Kind:
    name: str
    mutate: Mutation
    expect: str = "dead-lettered"
    queue: str = "reports.build"
    # Where the tag goes when the kind breaks message_id itself.
    tag_in: str = "message_id"
    # Forged broker-owned headers: only on a throwaway node (they can break dead-lettering).
    needs_throwaway_node: bool = False
    note: str = field(default="", compare=False)

    def build(self, path: str, token: str, tag: str) -> Sent:
        sent = valid_task(path, token, tag)
        if self.tag_in != "message_id":
            sent.props[self.tag_in] = tag
        self.mutate(sent)
        return sent


def _prop(name: str, value: Any) -> Mutation:
    def mutate(sent: Sent) -> None:
        sent.props[name] = value

    return mutate


def _header(name: Any, value: Any) -> Mutation:
    def mutate(sent: Sent) -> None:
        sent.props["headers"][name] = value

    return mutate


def _drop_header(name: str) -> Mutation:
    def mutate(sent: Sent) -> None:
        del sent.props["headers"][name]

    return mutate


def _body(body: bytes, content_type: str | None = "application/json") -> Mutation:
    def mutate(sent: Sent) -> None:
        sent.body = body
        sent.props["content_type"] = content_type

    return mutate


def _nested_table(depth: int) -> Raw:
    value = b"V"
    for _ in range(depth):
        value = b"F" + struct.pack(">I", 2 + len(value)) + b"\x01k" + value
    return Raw(value)


def _nested_array(depth: int) -> Raw:
    value = b"V"
    for _ in range(depth):
        value = b"A" + struct.pack(">I", len(value)) + value
    return Raw(value)


def _headers_raw(raw: bytes) -> Mutation:
    def mutate(sent: Sent) -> None:
        sent.props["headers"] = raw

    return mutate


def _with_body_args(args: Any, kwargs: Any = None, embed: Any = None) -> Mutation:
    def mutate(sent: Sent) -> None:
        embed_ = {"callbacks": None, "errbacks": None} if embed is None else embed
        sent.body = json.dumps([args, {} if kwargs is None else kwargs, embed_]).encode()

    return mutate


def _big_token(size: int) -> Mutation:
    def mutate(sent: Sent) -> None:
        args, kwargs, embed = json.loads(sent.body)
        args[1] += "x" * size
        sent.body = json.dumps([args, kwargs, embed]).encode()

    return mutate


def _mutations(*steps: Mutation) -> Mutation:
    def mutate(sent: Sent) -> None:
        for step in steps:
            step(sent)

    return mutate


NOT_UTF8 = b"\xff\xfe\xc3("
PICKLE = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94."  # pickle of []

KINDS: list[Kind] = [
    # -- properties py-amqp cannot decode (the worker used to exit on each) -----------------
    Kind("type-not-utf8", _prop("type", NOT_UTF8)),
    Kind("app-id-not-utf8", _prop("app_id", NOT_UTF8)),
    Kind("message-id-not-utf8", _prop("message_id", NOT_UTF8), tag_in="correlation_id"),
    Kind("correlation-id-not-utf8", _prop("correlation_id", NOT_UTF8)),
    Kind("reply-to-not-utf8", _prop("reply_to", NOT_UTF8)),
    Kind("content-type-not-utf8", _prop("content_type", NOT_UTF8)),
    Kind("content-encoding-not-utf8", _prop("content_encoding", NOT_UTF8)),
    Kind("cluster-id-not-utf8", _prop("cluster_id", NOT_UTF8)),
    Kind("type-not-utf8-quorum", _prop("type", NOT_UTF8), queue="email.send"),
    Kind("app-id-not-utf8-quorum", _prop("app_id", NOT_UTF8), queue="email.send"),
    # -- header tables py-amqp cannot decode ---------------------------------------------------
    Kind("headers-nested-5000", _header("deep", _nested_table(5000))),
    Kind("headers-nested-5000-quorum", _header("deep", _nested_table(5000)), queue="email.send"),
    Kind("headers-nested-100", _header("deep", _nested_table(100))),
    Kind("headers-array-nested-3000", _header("deep", _nested_array(3000))),
    Kind(
        "header-timestamp-beyond-9999",
        _header("when", Raw(b"T" + struct.pack(">Q", 2**62))),
    ),
    Kind("header-key-not-utf8", _header(NOT_UTF8, "x")),
    # -- headers Celery cannot use ---------------------------------------------------------------
    Kind("no-headers", _prop("headers", None)),
    Kind("task-header-missing", _drop_header("task")),
    Kind("task-header-unknown", _header("task", "consumers.tasks.nope")),
    Kind("task-header-empty", _header("task", "")),
    Kind("task-header-int", _header("task", 42)),
    Kind("task-header-list", _header("task", ["consumers.tasks.record"])),
    Kind("task-header-table", _header("task", {"name": "consumers.tasks.record"})),
    Kind("task-header-bytes", _header("task", Raw(b"x" + struct.pack(">I", 3) + b"abc"))),
    Kind("task-header-not-utf8", _header("task", Raw(b"S" + struct.pack(">I", 4) + NOT_UTF8))),
    Kind("id-header-missing", _drop_header("id")),
    Kind("id-header-table", _header("id", {"a": 1})),
    Kind("id-header-list", _header("id", [1, 2])),
    Kind("eta-header-garbage", _header("eta", "not a date")),
    Kind("eta-header-table", _header("eta", {"at": 1})),
    Kind("expires-header-garbage", _header("expires", "tomorrow-ish")),
    Kind("retries-header-string", _header("retries", "many")),
    Kind("timelimit-header-string", _header("timelimit", "forever")),
    Kind("timelimit-header-strings", _header("timelimit", ["a", "b"])),
    Kind("group-header-table", _header("group", {"g": [1]})),
    Kind("root-id-header-list", _header("root_id", [1])),
    # -- bodies ------------------------------------------------------------------------------------
    Kind("body-not-json", _body(b"{not json")),
    Kind("body-empty", _body(b"")),
    Kind("body-binary-garbage", _body(bytes(range(256)))),
    Kind("body-json-number", _body(b"42")),
    Kind("body-json-object", _body(b'{"args": []}')),
    Kind("body-utf16-json", _body('[["a"], {}, {}]'.encode("utf-16"))),
    Kind("body-pickle", _body(PICKLE, "application/x-python-serialize")),
    Kind("body-yaml", _body(b"- [a]\n- {}\n", "application/x-yaml")),
    Kind("body-text-plain", _body(b"hello", "text/plain")),
    Kind("body-no-content-type", _body(b"[[], {}, {}]", None)),
    Kind(
        "body-unknown-encoding",
        _mutations(_prop("content_encoding", "rot13"), _body(b"\x00\xff\x00", "application/json")),
    ),
    Kind("args-not-a-list", _with_body_args("abc")),
    Kind("args-wrong-arity", _with_body_args([1, 2, 3, 4, 5])),
    Kind("kwargs-not-a-dict", _with_body_args([], kwargs=[1])),
    Kind("embed-not-a-dict", _with_body_args([], embed=5)),
    # -- forged broker-owned headers: rejecting them would crash the queue (RabbitMQ 3.10.8) --
    Kind(
        "x-death-forged-ints",
        _mutations(_header("x-death", [1, 2, 3]), _header("task", "consumers.tasks.nope")),
        needs_throwaway_node=True,
    ),
    Kind(
        "x-death-forged-empty-table",
        _mutations(_header("x-death", [{}]), _header("task", "consumers.tasks.nope")),
        needs_throwaway_node=True,
    ),
    Kind("x-death-forged-on-valid-task", _header("x-death", [1, 2, 3]), needs_throwaway_node=True),
    Kind(
        "x-death-forged-quorum",
        _header("x-death", [{}]),
        queue="email.send",
        needs_throwaway_node=True,
    ),
    Kind("x-death-not-a-list", _header("x-death", "died"), needs_throwaway_node=True),
    Kind(
        "x-death-forged-among-headers-nested-5000",
        _mutations(_header("x-death", [1, 2, 3]), _header("deep", _nested_table(5000))),
        needs_throwaway_node=True,
    ),
    Kind(
        "x-death-forged-with-field-name-not-utf8",
        _mutations(_header("x-death", [1, 2, 3]), _header(NOT_UTF8, "x")),
        needs_throwaway_node=True,
    ),
    Kind(
        "x-death-nested-5000",
        _header("x-death", [_nested_table(5000)]),
        queue="email.send",
        needs_throwaway_node=True,
    ),
    Kind(
        "x-death-well-formed",
        _header(
            "x-death",
            [
                {
                    "count": 1,
                    "reason": "expired",
                    "queue": "elsewhere",
                    "exchange": "",
                    "routing-keys": ["elsewhere"],
                }
            ],
        ),
        expect="handled",
    ),
    # -- refused by RabbitMQ at publish: never reaches a worker ---------------------------------
    Kind(
        "header-unknown-field-type",
        _headers_raw(struct.pack(">I", 3) + b"\x01kZ"),
        expect="refused",
    ),
    Kind(
        "header-table-length-lies",
        _headers_raw(struct.pack(">I", 100) + b"\x01kV"),
        expect="refused",
    ),
    Kind("expiration-not-a-number", _prop("expiration", "abc"), expect="refused"),
    # -- odd but legal: the task runs ----------------------------------------------------------
    Kind("priority-255", _prop("priority", 255), expect="handled"),
    Kind("timestamp-max", _prop("timestamp", 2**64 - 1), expect="handled"),
    Kind("type-255-bytes", _prop("type", "t" * 255), expect="handled"),
    Kind(
        "extra-headers-of-every-type",
        _header(
            "extra",
            {
                "s16": Raw(b"s" + struct.pack(">h", -2)),
                "decimal": Raw(b"D" + struct.pack(">Bi", 2, 12345)),
                "bytes": Raw(b"x" + struct.pack(">I", 2) + b"\x00\xff"),
                "float": Raw(b"f" + struct.pack(">f", 1.5)),
                "nested": {"a": [1, "b", None, True]},
            },
        ),
        expect="handled",
    ),
    Kind("headers-nested-20", _header("deep", _nested_table(20)), expect="handled"),
    Kind(
        "long-string-header-not-utf8",
        _header("blob", Raw(b"S" + struct.pack(">I", 4) + NOT_UTF8)),
        expect="handled",
    ),
    Kind("body-1mb-argument", _big_token(1_000_000), expect="handled"),
]
