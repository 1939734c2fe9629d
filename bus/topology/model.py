"""Pydantic models of topology.yaml: one model per kind of object, strict about types.

Numbers are strict integers: a quoted ``"1000"`` is an error here, because the broker would
store it as a string and later report ``received '1000' but current is '1000'``.
The models check shapes and types; rules across fields or objects (arguments that do not
belong to a queue type, references, duplicates) live in :mod:`bus.topology.checks`, which
can point at the exact field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
)

__all__ = [
    "CELERY_MONITORING_EXCHANGES",
    "CRON_FIELDS",
    "MAX_AGE",
    "QUEUE_ARGUMENTS",
    "RESERVED_PREFIX",
    "TYPED_X_ARGS",
    "Binding",
    "CeleryQueue",
    "CelerySection",
    "DeadLetter",
    "Duration",
    "EventContract",
    "Exchange",
    "ExchangeBinding",
    "ExchangeType",
    "Policy",
    "Queue",
    "QueueType",
    "Retry",
    "Schedule",
    "Topology",
    "Vhost",
    "parse_cron",
    "parse_duration",
]

RESERVED_PREFIX = "amq."
ExchangeType = Literal["direct", "topic", "fanout", "headers"]
QueueType = Literal["classic", "quorum", "stream"]


def _argument_value(value: object) -> object:
    if isinstance(value, float):
        raise ValueError(
            f"{value!r}: floats are not allowed in arguments (the broker compares them as "
            "doubles and pika cannot encode them); use an integer"
        )
    if value is None or isinstance(value, str | bool | int | list | dict):
        return value
    raise ValueError(f"unsupported argument value of type {type(value).__name__}")


ArgumentValue = Annotated[Any, BeforeValidator(_argument_value)]


def _model_path(value: object) -> object:
    if isinstance(value, str) and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", value):
        raise ValueError(f"model {value!r} must look like 'package.module:ClassName'")
    return value


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_AGE = re.compile(r"^\d+(Y|M|D|h|m|s)$")


def parse_duration(value: object) -> int:
    """Milliseconds from an integer (ms) or a string such as ``500ms``, ``10s``, ``1m``, ``2h``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 1000 (ms) or 10s, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            raise ValueError(
                f"quoted number {value!r}: write {text} without quotes, or a unit such as {text}ms"
            )
        match = _DURATION.match(text)
        if match:
            return int(match.group(1)) * _UNIT_MS[match.group(2)]
        raise ValueError(
            f"invalid duration {value!r}: use milliseconds (1000) or a unit: ms, s, m, h, d"
        )
    raise ValueError(f"expected a duration such as 1000 (ms) or 10s, got {type(value).__name__}")


Duration = Annotated[int, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(min_length=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
Positive = Annotated[StrictInt, Field(gt=0)]


def _check_name(value: str, kind: str) -> str:
    if not value:
        raise ValueError(f"{kind} name must not be empty")
    if len(value.encode("utf-8")) > 255:
        raise ValueError(f"{kind} name is longer than 255 bytes")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Vhost(_Strict):
    """The vhost the topology is applied to (optional; the URL's vhost otherwise)."""

    name: Name | None = None
    description: StrictStr | None = None
    default_queue_type: QueueType | None = None


class Exchange(_Strict):
    type: ExchangeType
    durable: StrictBool = True
    auto_delete: StrictBool = False
    internal: StrictBool = False
    alternate_exchange: Name | None = None
    arguments: dict[str, ArgumentValue] = Field(default_factory=dict)
    description: StrictStr | None = None

    def broker_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = dict(self.arguments)
        if self.alternate_exchange is not None:
            args["alternate-exchange"] = self.alternate_exchange
        return args


class Binding(_Strict):
    """A queue's binding to an exchange."""

    exchange: StrictStr
    routing_key: StrictStr = ""
    arguments: dict[str, ArgumentValue] = Field(default_factory=dict)


class ExchangeBinding(_Strict):
    """An exchange-to-exchange binding: messages routed by ``source`` flow into ``destination``."""

    source: StrictStr
    destination: StrictStr
    routing_key: StrictStr = ""
    arguments: dict[str, ArgumentValue] = Field(default_factory=dict)


class DeadLetter(_Strict):
    """``dead_letter: true`` or a mapping: fanout DLX ``<queue>.dlx`` -> queue ``<queue>.dlq``."""

    queue_type: QueueType | None = None
    message_ttl: Annotated[Duration, Field(ge=0)] | None = None
    max_length: NonNegative | None = None


class Retry(_Strict):
    """``retry: {delays: [1s, 10s]}``: one TTL delay queue per distinct delay."""

    delays: Annotated[list[Annotated[Duration, Field(gt=0)]], Field(min_length=1, max_length=50)]


class CeleryQueue(_Strict):
    """``celery: true`` or a mapping: a Celery worker serves this queue."""

    routing_key: StrictStr | None = None


def _switch_or_settings(value: object) -> object:
    # ``dead_letter:`` and ``celery:`` take true (on, default settings), false (off) or a
    # mapping of settings.
    if value is True:
        return {}
    if value is False:
        return None
    return value


# Typed queue fields and the x-argument each becomes, with the queue types that accept it
# (docs/rabbitmq-behaviour.md section 1).
QUEUE_ARGUMENTS: dict[str, tuple[str, frozenset[str]]] = {
    "message_ttl": ("x-message-ttl", frozenset({"classic", "quorum"})),
    "expires": ("x-expires", frozenset({"classic", "quorum"})),
    "max_length": ("x-max-length", frozenset({"classic", "quorum"})),
    "max_length_bytes": ("x-max-length-bytes", frozenset({"classic", "quorum", "stream"})),
    "overflow": ("x-overflow", frozenset({"classic", "quorum"})),
    "dead_letter_exchange": ("x-dead-letter-exchange", frozenset({"classic", "quorum"})),
    "dead_letter_routing_key": ("x-dead-letter-routing-key", frozenset({"classic", "quorum"})),
    "dead_letter_strategy": ("x-dead-letter-strategy", frozenset({"quorum"})),
    "delivery_limit": ("x-delivery-limit", frozenset({"quorum"})),
    "single_active_consumer": ("x-single-active-consumer", frozenset({"classic", "quorum"})),
    "max_priority": ("x-max-priority", frozenset({"classic"})),
    "queue_mode": ("x-queue-mode", frozenset({"classic"})),
    "queue_version": ("x-queue-version", frozenset({"classic"})),
    "leader_locator": ("x-queue-leader-locator", frozenset({"quorum", "stream"})),
    "initial_cluster_size": ("", frozenset({"quorum", "stream"})),
    "max_in_memory_length": ("x-max-in-memory-length", frozenset({"quorum"})),
    "max_in_memory_bytes": ("x-max-in-memory-bytes", frozenset({"quorum"})),
    "max_age": ("x-max-age", frozenset({"stream"})),
    "stream_max_segment_size_bytes": ("x-stream-max-segment-size-bytes", frozenset({"stream"})),
}
_INITIAL_SIZE_ARG = {"quorum": "x-quorum-initial-group-size", "stream": "x-initial-cluster-size"}
TYPED_X_ARGS = (
    {arg for arg, _ in QUEUE_ARGUMENTS.values() if arg}
    | set(_INITIAL_SIZE_ARG.values())
    | {"x-queue-type"}
)


class Queue(_Strict):
    type: QueueType = "classic"
    durable: StrictBool = True
    auto_delete: StrictBool = False
    exclusive: StrictBool = False
    message_ttl: Annotated[Duration, Field(ge=0)] | None = None
    expires: Annotated[Duration, Field(gt=0)] | None = None
    max_length: NonNegative | None = None
    max_length_bytes: NonNegative | None = None
    overflow: Literal["drop-head", "reject-publish", "reject-publish-dlx"] | None = None
    dead_letter_exchange: StrictStr | None = None
    dead_letter_routing_key: StrictStr | None = None
    dead_letter_strategy: Literal["at-most-once", "at-least-once"] | None = None
    delivery_limit: NonNegative | None = None
    single_active_consumer: StrictBool | None = None
    max_priority: Annotated[StrictInt, Field(ge=1, le=255)] | None = None
    queue_mode: Literal["default", "lazy"] | None = None
    queue_version: Literal[1, 2] | None = None
    # random and least-leaders: the 3.9 names, which 3.10.8 still accepts (observed).
    leader_locator: Literal["client-local", "balanced", "random", "least-leaders"] | None = None
    initial_cluster_size: Positive | None = None
    max_in_memory_length: NonNegative | None = None
    max_in_memory_bytes: NonNegative | None = None
    max_age: StrictStr | None = None
    stream_max_segment_size_bytes: Positive | None = None
    arguments: dict[str, ArgumentValue] = Field(default_factory=dict)
    dead_letter: Annotated[DeadLetter | None, BeforeValidator(_switch_or_settings)] = None
    retry: Retry | None = None
    bindings: list[Binding] = Field(default_factory=list)
    celery: Annotated[CeleryQueue | None, BeforeValidator(_switch_or_settings)] = None
    description: StrictStr | None = None

    def broker_arguments(self) -> dict[str, Any]:
        """The x-arguments this queue is declared with (``x-queue-type`` always explicit)."""
        args: dict[str, Any] = {"x-queue-type": self.type}
        for field_name, (arg, _) in QUEUE_ARGUMENTS.items():
            value = getattr(self, field_name)
            if value is None:
                continue
            if field_name == "initial_cluster_size":
                arg = _INITIAL_SIZE_ARG[self.type]
            args[arg] = value
        args.update(self.arguments)
        return args


class EventContract(_Strict):
    """An event: where it is published, the pydantic model of its body and its version."""

    exchange: StrictStr
    routing_key: StrictStr = ""
    model: Annotated[StrictStr, BeforeValidator(_model_path)]
    headers: dict[str, ArgumentValue] = Field(default_factory=dict)
    # The contract's version in its history (``contracts/<event>/<version>.json``); 1 when absent.
    version: Annotated[StrictInt, Field(ge=1)] | None = None
    description: StrictStr | None = None


class Policy(_Strict):
    pattern: StrictStr
    apply_to: Literal["queues", "exchanges", "all"] = "all"
    priority: StrictInt = 0
    definition: dict[str, ArgumentValue]


# Celery's remote control and events exchanges, as a Celery 5.7 worker declares them on
# RabbitMQ 3.10 (observed): name -> (type, durable); none is auto-delete or internal.
CELERY_MONITORING_EXCHANGES: dict[str, tuple[ExchangeType, bool]] = {
    "celery.pidbox": ("fanout", False),
    "reply.celery.pidbox": ("direct", False),
    "celeryev": ("topic", True),
}

# (name, lowest, highest, names) of the five cron fields, in crontab(5) order. Day of week
# follows Celery: 0-6 with 0 = Sunday (7 is refused rather than silently meaning Sunday).
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i for i, m in enumerate(_MONTHS, start=1)}),
    ("day of week", 0, 6, {d: i for i, d in enumerate(_DAYS)}),
)
_CRON_ITEM = re.compile(r"^(?P<range>\*|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>[^/]*))?$")


def _cron_value(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    if text.isdigit():
        value = int(text)
    elif text.lower() in names:
        return names[text.lower()]
    elif names:
        raise ValueError(f"{field} {text!r} is neither a number nor one of {', '.join(names)}")
    else:
        raise ValueError(f"{field} {text!r} is not a number")
    if not low <= value <= high:
        sunday = " (0 is Sunday)" if field == "day of week" and value == 7 else ""
        raise ValueError(f"{field} {value} is out of range {low}-{high}{sunday}")
    return value


def _cron_field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> None:
    for item in text.split(","):
        match = _CRON_ITEM.match(item)
        if match is None:
            raise ValueError(f"{field} {item!r}: expected *, N, N-M, */S or N-M/S")
        part, step = match.group("range"), match.group("step")
        if step is not None and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"{field} {item!r}: the step must be a positive integer")
        if step is not None and part != "*" and "-" not in part:
            raise ValueError(f"{field} {item!r}: a step needs * or a range (N-M/S)")
        if part == "*":
            continue
        start_text, _, end_text = part.partition("-")
        start = _cron_value(start_text, field, low, high, names)
        if end_text:
            end = _cron_value(end_text, field, low, high, names)
            if end < start:
                # Celery would wrap such a range around the field's end: almost never meant.
                raise ValueError(
                    f"{field} range {part!r} is reversed: write {end_text}-{start_text}"
                )


def parse_cron(value: object) -> object:
    """A five-field cron expression, checked field by field; returned with single spaces."""
    if not isinstance(value, str):
        return value
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron {value!r} has {len(fields)} fields; expected 5: "
            "minute hour day-of-month month day-of-week"
        )
    for text, (field, low, high, names) in zip(fields, CRON_FIELDS, strict=True):
        _cron_field(text, field, low, high, names)
    return " ".join(fields)


class Schedule(_Strict):
    """A periodic task sent by ``bus beat`` to a queue marked ``celery:``.

    Exactly one of ``every`` / ``cron`` is required; the loader checks it on the raw keys so
    that an invalid cron value is not reported a second time as a missing one.
    """

    task: Name
    queue: StrictStr
    every: Annotated[Duration, Field(gt=0)] | None = None
    cron: Annotated[StrictStr, BeforeValidator(parse_cron)] | None = None
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    description: StrictStr | None = None


class CelerySection(_Strict):
    """``celery:``: periodic schedules and whether workers can be monitored."""

    monitoring: StrictBool = False
    # Tasks reserved per worker process. Celery's own default (4): with 1, a worker process
    # idles for an ack/deliver round trip after every task (0.74x plain Celery on short tasks,
    # bench/celery.py). Queues of long tasks set 1, so that one task does not hold others back.
    prefetch_multiplier: Annotated[StrictInt, Field(ge=1)] = 4
    schedules: dict[str, Schedule] = Field(default_factory=dict)


class Topology(_Strict):
    """The whole file."""

    version: Literal[1]
    vhost: Vhost | None = None
    exchanges: dict[str, Exchange] = Field(default_factory=dict)
    queues: dict[str, Queue] = Field(default_factory=dict)
    exchange_bindings: list[ExchangeBinding] = Field(default_factory=list)
    events: dict[str, EventContract] = Field(default_factory=dict)
    policies: dict[str, Policy] = Field(default_factory=dict)
    unmanaged: list[StrictStr] = Field(default_factory=list)
    celery: CelerySection = Field(default_factory=CelerySection)


# Section name -> model of one entry; used by the loader to validate entry by entry so one
# bad queue does not hide the errors of the others.
SECTIONS: dict[str, type[BaseModel]] = {
    "exchanges": Exchange,
    "queues": Queue,
    "events": EventContract,
    "policies": Policy,
}
LIST_SECTIONS: dict[str, type[BaseModel]] = {"exchange_bindings": ExchangeBinding}
