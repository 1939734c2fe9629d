"""From a publish call to the wire message: contracts, bodies, ids and headers, once.

Resolving (an event to its contract's exchange, routing key and headers) and encoding (the
body) for the async and the sync publisher, the outbox and the in-memory
:class:`~bus.fake.FakeBus`: each turns a call into the same message (README, "Publishing from
another service", on the wire) through :class:`Resolver`, which also applies the pre-send wire
check (:mod:`bus.publish.wire`). The keywords of a publish call are defined here once
(:class:`PublishOptions`, :class:`TaskOptions`) and every ``publish``/``send_task`` takes them.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from pydantic import BaseModel

from bus.celery_message import build_task_message, celery_route
from bus.contracts import Contract, ContractRegistry
from bus.errors import ContractError, UsageError
from bus.publish.wire import check_short_string, check_size, check_wire
from bus.topology import ExpandedTopology, LoadedTopology

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Body",
    "KeptProperties",
    "MessageOptions",
    "Outgoing",
    "PublishOptions",
    "Resolved",
    "Resolver",
    "TaskOptions",
    "TopologyLike",
    "encode_body",
    "new_message_id",
]

CONTENT_TYPE = "application/json"

# RabbitMQ 4.x lowered its own max_message_size default to 16 MiB (3.10 allows 128 MiB):
# larger messages stall the connection and the queue, so refuse them before they are sent.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

Body = bytes | bytearray | memoryview | Mapping[str, Any] | list[Any] | BaseModel
TopologyLike = LoadedTopology | ExpandedTopology


class MessageOptions(TypedDict, total=False):
    """The keywords of one typed event's message, shared by ``publish`` and the outbox's
    ``add``: ``event_name`` picks the event's contract."""

    event_name: str | None
    headers: Mapping[str, Any] | None
    message_id: str | None
    correlation_id: str | None
    traceparent: str | None
    persistent: bool


class PublishOptions(MessageOptions, total=False):
    """The keywords of ``publish`` (both publishers and the fake bus), defined once:
    :class:`MessageOptions`, and ``event_type``, the AMQP ``type`` of an explicit
    ``(exchange, routing_key, body)`` message."""

    event_type: str | None


class TaskOptions(TypedDict, total=False):
    """The keywords of ``send_task`` (a Celery task as plain AMQP), defined once."""

    task_id: str | None
    ignore_result: bool
    reply_to: str | None
    expires: datetime | None


_PUBLISH_OPTIONS = frozenset(PublishOptions.__optional_keys__)


# Message ids are made in batches from one read of the OS's randomness (os.urandom) instead
# of one system call per id (uuid.uuid4). A deque hands them out: popleft is atomic, so
# threads never share an id, and a forked child drops the ids its parent made.
_IDS_PER_BATCH = 256
_ids: deque[str] = deque()
# The hex digit of the variant nibble: RFC 4122 (binary 10xx), its two low bits random.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _id_batch() -> list[str]:
    """Random version-4 UUIDs as ``str(uuid.uuid4())`` gives them: 122 random bits, the
    version nibble 4 and the variant bits 10."""
    hexes = os.urandom(16 * _IDS_PER_BATCH).hex()
    return [
        f"{h[0:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"
        for h in (hexes[i : i + 32] for i in range(0, len(hexes), 32))
    ]


def new_message_id() -> str:
    """A new random ``message_id`` (a UUID4 string)."""
    while True:
        try:
            return _ids.popleft()
        except IndexError:
            _ids.extend(_id_batch())


os.register_at_fork(after_in_child=_ids.clear)


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
class KeptProperties:
    """The properties of a message sent again as it was received (a retry or dead-letter copy
    of the consumer runtime, a DLQ replay): put on the wire as they are, instead of the ones a
    publisher builds (``timestamp`` now, its ``app_id``, ``application/json``)."""

    content_type: str | None = None
    content_encoding: str | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    # pika gives seconds since the epoch, aiormq a datetime: each publisher takes either.
    timestamp: datetime | int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


@dataclass(slots=True)
class Resolved:
    """A message ready for the wire; ``kept`` replaces every property but the headers and
    the ``message_id`` (see :class:`KeptProperties`)."""

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
    kept: KeptProperties | None = None


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
        options: MessageOptions,
        *,
        default_traceparent: str | None = None,
    ) -> Resolved:
        """A typed event's message: its contract's exchange, key and headers, then ``options``
        (``default_traceparent`` when they carry none)."""
        contract = self.contract_for(event, options.get("event_name"))
        return self._finish(
            contract.exchange,
            contract.routing_key,
            encode_body(event),
            contract.name,
            _merge(
                contract.headers,
                options.get("headers"),
                options.get("traceparent") or default_traceparent,
            ),
            options.get("message_id"),
            options.get("correlation_id"),
            options.get("persistent", True),
        )

    def call(
        self,
        target: BaseModel | str,
        routing_key: str | None,
        body: Body | None,
        options: PublishOptions,
    ) -> Resolved:
        """One ``publish`` call of either publisher or the fake bus, its keywords as given:
        ``(event)`` or ``(exchange, key, body)``."""
        if not _PUBLISH_OPTIONS.issuperset(options):
            unknown = ", ".join(sorted(set(options) - _PUBLISH_OPTIONS))
            raise TypeError(f"publish() got unexpected keyword argument(s): {unknown}")
        if isinstance(target, BaseModel):
            return self.event(target, options)
        if routing_key is None or body is None:
            raise TypeError("publish(exchange, routing_key, body) needs all three")
        return self.item(
            Outgoing(
                target,
                routing_key,
                body,
                headers=options.get("headers"),
                event_type=options.get("event_type"),
                message_id=options.get("message_id"),
                correlation_id=options.get("correlation_id"),
                traceparent=options.get("traceparent"),
                persistent=options.get("persistent", True),
            )
        )

    def task_with(
        self,
        queue: str,
        task: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        origin: str,
        options: TaskOptions,
    ) -> Resolved:
        """:meth:`task` with the ``send_task`` keywords as given (absent: their defaults)."""
        return self.task(
            queue,
            task,
            args,
            kwargs,
            task_id=options.get("task_id"),
            origin=origin,
            ignore_result=options.get("ignore_result", True),
            reply_to=options.get("reply_to"),
            expires=options.get("expires"),
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
        """One message of ``publish_many`` or the outbox: a typed event with no options, or
        an explicit :class:`Outgoing`."""
        if isinstance(item, BaseModel):
            return self.event(item, {})
        event_type = item.event_type
        if event_type is None and isinstance(item.body, BaseModel):
            # A model body still says what it is when the topology knows the model.
            try:
                event_type = self.contract_for(item.body).name
            except ContractError:
                event_type = None
        resolved = self._finish(
            item.exchange,
            item.routing_key,
            encode_body(item.body),
            event_type,
            _merge(None, item.headers, item.traceparent),
            item.message_id,
            item.correlation_id,
            item.persistent,
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
