"""The broker's equality rules: when a desired value and a live one are the same to RabbitMQ.

Written once, used by ``bus plan`` (:mod:`bus.broker.differ`) and by the Celery pre-flight
(:mod:`bus.celery_app.preflight`). The rules follow docs/rabbitmq-behaviour.md: values are
compared with their types (integer widths are equal; ``1000`` and ``"1000"`` and ``True`` are
three different values), the broker's compared queue arguments depend on the queue type, and
an exchange compares only ``alternate-exchange`` among its arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bus.broker.live import LiveBinding, LiveExchange, LivePolicy, LiveQueue
from bus.broker.plan_model import ABSENT, Difference, PolicySpec
from bus.topology.expand import BindingKey, BindingSpec, ExchangeSpec, QueueSpec, binding_key

__all__ = [
    "COMPARED_QUEUE_ARGUMENTS",
    "IMMUTABLE",
    "INEFFECTIVE",
    "MUTABLE",
    "VHOST_DEFAULT_TYPE",
    "BindingKey",
    "argument_differences",
    "binding_key",
    "compared_field",
    "exchange_differences",
    "key_of",
    "policy_differences",
    "queue_differences",
    "same_value",
]

# Arguments each queue type compares on redeclare (docs/rabbitmq-behaviour.md section 1, from the
# 3.10 source). Any other argument is stored and never compared: changing it is ineffective.
COMPARED_QUEUE_ARGUMENTS: dict[str, frozenset[str]] = {
    "classic": frozenset({
        "x-queue-type", "x-message-ttl", "x-expires", "x-dead-letter-exchange",
        "x-dead-letter-routing-key", "x-max-length", "x-max-length-bytes", "x-overflow",
        "x-single-active-consumer", "x-max-priority", "x-queue-mode", "x-queue-version",
        "x-queue-master-locator",
    }),
    "quorum": frozenset({
        "x-queue-type", "x-message-ttl", "x-expires", "x-dead-letter-exchange",
        "x-dead-letter-routing-key", "x-dead-letter-strategy", "x-max-length",
        "x-max-length-bytes", "x-overflow", "x-single-active-consumer",
        "x-queue-leader-locator", "x-quorum-initial-group-size", "x-delivery-limit",
        "x-max-in-memory-length", "x-max-in-memory-bytes",
    }),
    "stream": frozenset({
        "x-queue-type", "x-max-length-bytes", "x-queue-leader-locator", "x-max-age",
        "x-stream-max-segment-size-bytes", "x-initial-cluster-size",
    }),
}  # fmt: skip

IMMUTABLE = (
    "immutable: a redeclare fails with PRECONDITION_FAILED; only delete + recreate changes it"
)
INEFFECTIVE = "ineffective: the broker ignores this; only delete + recreate changes it"
VHOST_DEFAULT_TYPE = "immutable: the broker keeps a vhost's default queue type once it is set"
MUTABLE = "mutable: updated in place"


def same_value(a: object, b: object) -> bool:
    """Equality as the broker sees it: integer widths equal, other types never equal."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def key_of(b: BindingSpec | LiveBinding) -> BindingKey:
    """The identity of a desired or a live binding (:func:`binding_key`)."""
    return binding_key(b.source, b.destination_type, b.destination, b.routing_key, b.arguments)


def argument_differences(
    desired: Mapping[str, object], live: Mapping[str, object]
) -> list[tuple[str, object, object]]:
    """``(key, desired, live)`` for every argument that is not the same value on both sides.

    A key missing on one side is :data:`~bus.broker.plan_model.ABSENT` there.
    """
    return [
        (key, desired.get(key, ABSENT), live.get(key, ABSENT))
        for key in sorted(set(desired) | set(live))
        if key not in desired or key not in live or not same_value(desired[key], live[key])
    ]


def compared_field(name: str, desired: object, live: object, reason: str) -> list[Difference]:
    """One :class:`Difference` when ``desired`` and ``live`` differ as the broker sees them."""
    return [] if same_value(desired, live) else [Difference(name, desired, live, reason)]


def _compared_fields(
    names: tuple[str, ...], desired: object, live: object, reason: str
) -> list[Difference]:
    """:func:`compared_field` for each attribute in ``names`` of ``desired`` and ``live``."""
    return [
        difference
        for name in names
        for difference in compared_field(name, getattr(desired, name), getattr(live, name), reason)
    ]


def _compared_entries(
    prefix: str,
    desired: Mapping[str, object],
    live: Mapping[str, object],
    reason: Callable[[str], str],
) -> list[Difference]:
    """A :class:`Difference` ``prefix.key`` for each key whose values differ (sorted by key);
    ``reason(key)`` says what changing it means."""
    return [
        Difference(f"{prefix}.{key}", want, have, reason(key))
        for key, want, have in argument_differences(desired, live)
    ]


def exchange_differences(
    d: ExchangeSpec, live: LiveExchange, exchange_types: frozenset[str] | None = None
) -> list[Difference]:
    return [
        *_compared_fields(("type", "durable", "auto_delete", "internal"), d, live, IMMUTABLE),
        *_compared_entries(
            "arguments", d.arguments, live.arguments,
            lambda key: IMMUTABLE if key == "alternate-exchange" else INEFFECTIVE,
        ),
    ]  # fmt: skip


def queue_differences(d: QueueSpec, live: LiveQueue) -> list[Difference]:
    diffs = _compared_fields(("type", "durable", "auto_delete"), d, live, IMMUTABLE)
    if live.exclusive:
        diffs.append(
            Difference("exclusive", False, True, "the queue is exclusive to another connection")
        )
    compared = COMPARED_QUEUE_ARGUMENTS.get(live.type, frozenset())

    def without_type(arguments: Mapping[str, object]) -> dict[str, object]:
        return {k: v for k, v in arguments.items() if k != "x-queue-type"}  # reported as "type"

    return diffs + _compared_entries(
        "arguments", without_type(d.arguments), without_type(live.arguments),
        lambda key: IMMUTABLE if key in compared else INEFFECTIVE,
    )  # fmt: skip


def policy_differences(d: PolicySpec, live: LivePolicy) -> list[Difference]:
    return [
        *_compared_fields(("pattern", "apply_to", "priority"), d, live, MUTABLE),
        *_compared_entries("definition", d.definition, live.definition, lambda _: MUTABLE),
    ]
