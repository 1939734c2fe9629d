"""From a publish call to the wire message: contracts, bodies, ids and headers, once.

The async and the sync publisher and the in-memory :class:`~bus.fake.FakeBus` turn a call
into the same message (README, "Publishing from another service", on the wire) through
:class:`Resolver`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from bus.celery_message import build_task_message, celery_route
from bus.contracts import Contract, ContractRegistry
from bus.errors import ContractError, MessageTooLargeError, UnsendableMessageError, UsageError
from bus.topology import ExpandedTopology, LoadedTopology

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Body",
    "Outgoing",
    "Resolved",
    "Resolver",
    "TopologyLike",
    "check_short_string",
    "check_wire",
    "encode_body",
]

CONTENT_TYPE = "application/json"

# RabbitMQ 4.x lowered its own max_message_size default to 16 MiB (3.10 allows 128 MiB):
# larger messages stall the connection and the queue, so refuse them before they are sent.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

Body = bytes | bytearray | memoryview | Mapping[str, Any] | list[Any] | BaseModel
TopologyLike = LoadedTopology | ExpandedTopology


def new_message_id() -> str:
    return str(uuid.uuid4())


def encode_body(body: Body) -> bytes:
    """The wire body: the model's JSON, JSON of plain data, or bytes as given."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, BaseModel):
        # to_json gives bytes directly; model_dump_json would decode and we would re-encode.
        return type(body).__pydantic_serializer__.to_json(body)
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"message body is not JSON-serialisable: {exc}") from None


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
_SCALARS = frozenset({bool, float, bytes, datetime, Decimal})


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
    if isinstance(value, bool | float | bytes | datetime | Decimal | str):
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


@dataclass(slots=True)
class Outgoing:
    """One explicit message for :meth:`publish_many` (typed events are passed as models)."""

    exchange: str
    routing_key: str
    body: Body
    headers: Mapping[str, Any] | None = None
    event_type: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    traceparent: str | None = None
    persistent: bool = True
    # Set for a message stored earlier (a Celery task kept in the transactional outbox).
    content_encoding: str | None = None
    reply_to: str | None = None


@dataclass(slots=True)
class Resolved:
    exchange: str
    routing_key: str
    body: bytes
    event_type: str | None
    headers: dict[str, Any] | None
    message_id: str
    correlation_id: str
    persistent: bool
    content_encoding: str | None = None
    reply_to: str | None = None


class Resolver:
    """Contracts of a topology and the mapping of publish calls onto wire messages."""

    def __init__(
        self,
        topology: TopologyLike | None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        *,
        contracts: ContractRegistry | None = None,
    ) -> None:
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        expanded = topology.expanded if isinstance(topology, LoadedTopology) else topology
        self.expanded = expanded
        if contracts is None:
            contracts = ContractRegistry(expanded.events if expanded is not None else {})
        self.contracts = contracts
        self.max_message_size = max_message_size
        self._by_type: dict[type[BaseModel], Contract] = {}

    def contract_for(self, event: BaseModel, name: str | None = None) -> Contract:
        if name is not None:
            contract = self.contracts.by_name(name)
            if not isinstance(event, contract.model):
                raise ContractError(
                    f"event {name!r} expects {contract.model.__qualname__}, "
                    f"got {type(event).__qualname__}"
                )
            return contract
        cls = type(event)
        cached = self._by_type.get(cls)
        if cached is None:
            cached = self._by_type[cls] = self.contracts.for_model(cls)
        return cached

    def exchanges(self, extra: Iterable[str] = ()) -> list[str]:
        """Every exchange a start-up check covers: the contracts' and ``extra`` (not ``""``)."""
        extra = list(extra)
        for name in extra:
            check_short_string(name, "exchange name")
        names = {c.exchange for c in self.contracts} | set(extra)
        names.discard("")
        return sorted(names)

    def event(
        self,
        event: BaseModel,
        *,
        name: str | None,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        correlation_id: str | None,
        traceparent: str | None,
        persistent: bool,
    ) -> Resolved:
        contract = self.contract_for(event, name)
        return self._finish(
            contract.exchange,
            contract.routing_key,
            encode_body(event),
            contract.name,
            _merge(contract.headers, headers, traceparent),
            message_id,
            correlation_id,
            persistent,
        )

    def call(
        self,
        target: BaseModel | str,
        routing_key: str | None,
        body: Body | None,
        *,
        event_name: str | None,
        event_type: str | None,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        correlation_id: str | None,
        traceparent: str | None,
        persistent: bool,
    ) -> Resolved:
        """One ``publish`` call of either publisher: ``(event)`` or ``(exchange, key, body)``."""
        if isinstance(target, BaseModel):
            return self.event(
                target,
                name=event_name,
                headers=headers,
                message_id=message_id,
                correlation_id=correlation_id,
                traceparent=traceparent,
                persistent=persistent,
            )
        if routing_key is None or body is None:
            raise TypeError("publish(exchange, routing_key, body) needs all three")
        return self.explicit(
            target,
            routing_key,
            body,
            event_type=event_type,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            traceparent=traceparent,
            persistent=persistent,
        )

    def explicit(
        self,
        exchange: str,
        routing_key: str,
        body: Body,
        *,
        event_type: str | None,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        correlation_id: str | None,
        traceparent: str | None,
        persistent: bool,
    ) -> Resolved:
        if event_type is None and isinstance(body, BaseModel):
            # A model body still says what it is when the topology knows the model.
            try:
                event_type = self.contract_for(body).name
            except ContractError:
                event_type = None
        return self._finish(
            exchange,
            routing_key,
            encode_body(body),
            event_type,
            _merge(None, headers, traceparent),
            message_id,
            correlation_id,
            persistent,
        )

    def task(
        self,
        queue: str,
        task: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        *,
        task_id: str | None,
        origin: str,
        ignore_result: bool,
        reply_to: str | None,
        expires: datetime | None,
    ) -> Resolved:
        """A Celery protocol-2 task message for a topology queue marked ``celery:``."""
        if self.expanded is None:
            raise UsageError("send_task needs the topology (to find the Celery queue's route)")
        route = celery_route(self.expanded, queue)
        message = build_task_message(
            task,
            args,
            kwargs,
            task_id=task_id,
            origin=origin,
            ignore_result=ignore_result,
            reply_to=reply_to,
            expires=expires,
        )
        check_size(message.body, self.max_message_size, route.exchange, route.routing_key)
        # Celery reads the task id from correlation_id; message_id carries it too so the
        # id a caller logs is the one it sees on the wire.
        resolved = Resolved(
            route.exchange,
            route.routing_key,
            message.body,
            None,
            message.headers,
            message.task_id,
            message.task_id,
            True,
            content_encoding=message.content_encoding,
            reply_to=message.reply_to,
        )
        check_wire(resolved)
        return resolved

    def item(self, item: Outgoing | BaseModel) -> Resolved:
        if isinstance(item, BaseModel):
            return self.event(
                item,
                name=None,
                headers=None,
                message_id=None,
                correlation_id=None,
                traceparent=None,
                persistent=True,
            )
        resolved = self.explicit(
            item.exchange,
            item.routing_key,
            item.body,
            event_type=item.event_type,
            headers=item.headers,
            message_id=item.message_id,
            correlation_id=item.correlation_id,
            traceparent=item.traceparent,
            persistent=item.persistent,
        )
        resolved.content_encoding = item.content_encoding
        resolved.reply_to = item.reply_to
        return resolved

    def _finish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        event_type: str | None,
        headers: dict[str, Any] | None,
        message_id: str | None,
        correlation_id: str | None,
        persistent: bool,
    ) -> Resolved:
        check_size(body, self.max_message_size, exchange, routing_key)
        mid = message_id or new_message_id()
        # A message that starts a conversation correlates with itself; replies and
        # follow-ups pass the correlation_id on.
        resolved = Resolved(
            exchange, routing_key, body, event_type, headers, mid, correlation_id or mid, persistent
        )
        check_wire(resolved)
        return resolved


def _merge(
    contract_headers: Mapping[str, Any] | None,
    headers: Mapping[str, Any] | None,
    traceparent: str | None,
) -> dict[str, Any] | None:
    if not contract_headers and not headers and traceparent is None:
        return None
    merged: dict[str, Any] = dict(contract_headers or {})
    if headers:
        merged.update(headers)
    if traceparent is not None:
        merged["traceparent"] = traceparent
    return merged
