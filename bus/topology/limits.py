"""The broker's and the wire's limits, checked at validation so apply never stops half-way.

Measured on RabbitMQ 3.10.8 (tests/integration/test_broker_limits.py proves each one against
the broker; docs/broker-limits.md lists them):

- ``x-message-ttl`` and ``x-expires`` (so ``message_ttl``, ``expires``, ``dead_letter.message_ttl``
  and every ``retry`` delay, which becomes a delay queue's ``x-message-ttl``) accept at most
  315,360,000,000 ms (3650 days); above it the declare fails with ``406 value_too_large``.
  ``x-expires`` must be positive (``value_zero``).
- ``x-max-priority``: 1..255 (``max_value_exceeded`` above), checked by the model.
- Exchange and queue names, routing keys and the names in argument and header tables are
  AMQP short strings: at most 255 bytes of UTF-8 (a client cannot even encode more).
- Integers in arguments and headers are signed 64-bit on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from bus.topology.checks import Finding
from bus.topology.model import Topology
from bus.topology.names import derived_names, duration_label
from bus.topology.source import Path

__all__ = ["MAX_TTL_MS", "SHORT_STRING_MAX", "check_limits"]

# 10 years: RabbitMQ's largest x-message-ttl / x-expires (value_too_large above, measured).
MAX_TTL_MS = 315_360_000_000
SHORT_STRING_MAX = 255
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _ttl(at: Path, ms: int | None, what: str) -> Iterator[Finding]:
    if ms is not None and ms > MAX_TTL_MS:
        yield Finding(
            at,
            f"{what} of {duration_label(ms)} ({ms} ms) exceeds RabbitMQ's maximum of "
            f"{MAX_TTL_MS} ms (3650d): the broker refuses the declare (value_too_large)",
        )


def _short(at: Path, value: str | None, what: str, *, at_key: bool = False) -> Iterator[Finding]:
    if value is not None and len(value.encode("utf-8")) > SHORT_STRING_MAX:
        size = len(value.encode("utf-8"))
        yield Finding(
            at, f"{what} is {size} bytes; AMQP carries at most {SHORT_STRING_MAX}", at_key
        )


def _table(at: Path, table: Mapping[str, Any], what: str) -> Iterator[Finding]:
    """Names (at any depth) and integers of an argument or header table."""
    for name, value in table.items():
        yield from _short((*at, name), name, f"{what} name", at_key=True)
        yield from _value((*at, name), value, what)


def _value(at: Path, value: Any, what: str) -> Iterator[Finding]:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
        yield Finding(at, f"integer {value} does not fit the 64 bits AMQP carries")
    elif isinstance(value, dict):
        yield from _table(at, value, what)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _value((*at, index), item, what)


def _int64(at: Path, value: int | None) -> Iterator[Finding]:
    if value is not None and value > _INT_MAX:
        yield Finding(at, f"{value} does not fit the 64 bits AMQP carries")


_INTEGER_FIELDS = (
    "max_length",
    "max_length_bytes",
    "delivery_limit",
    "initial_cluster_size",
    "max_in_memory_length",
    "max_in_memory_bytes",
    "stream_max_segment_size_bytes",
)


def check_limits(topology: Topology) -> Iterator[Finding]:
    """Every value the broker or the wire would refuse, at the field that holds it."""
    for name, exchange in topology.exchanges.items():
        yield from _table(("exchanges", name, "arguments"), exchange.arguments, "argument")
    for name, queue in topology.queues.items():
        at: Path = ("queues", name)
        yield from _ttl((*at, "message_ttl"), queue.message_ttl, "message_ttl")
        yield from _ttl((*at, "expires"), queue.expires, "expires")
        if queue.dead_letter is not None:
            yield from _ttl(
                (*at, "dead_letter", "message_ttl"), queue.dead_letter.message_ttl, "message_ttl"
            )
        if queue.retry is not None:
            for index, delay in enumerate(queue.retry.delays):
                yield from _ttl((*at, "retry", "delays", index), delay, "retry delay")
        for field in _INTEGER_FIELDS:
            yield from _int64((*at, field), getattr(queue, field))
        yield from _table((*at, "arguments"), queue.arguments, "argument")
        if len(name.encode("utf-8")) <= SHORT_STRING_MAX:
            for derived in derived_names(name, queue):
                owner = "dead_letter" if derived.endswith((".dlq", ".dlx")) else "retry"
                shown = derived if len(derived) <= 40 else derived[:37] + "..."
                yield from _short((*at, owner), derived, f"generated name {shown!r}")
        for index, binding in enumerate(queue.bindings):
            b_at: Path = (*at, "bindings", index)
            yield from _short((*b_at, "routing_key"), binding.routing_key, "routing key")
            yield from _table((*b_at, "arguments"), binding.arguments, "header")
        if queue.celery is not None:
            yield from _short(
                (*at, "celery", "routing_key"), queue.celery.routing_key, "routing key"
            )
    for index, eb in enumerate(topology.exchange_bindings):
        e_at: Path = ("exchange_bindings", index)
        yield from _short((*e_at, "routing_key"), eb.routing_key, "routing key")
        yield from _table((*e_at, "arguments"), eb.arguments, "header")
    for name, event in topology.events.items():
        v_at: Path = ("events", name)
        yield from _short((*v_at, "routing_key"), event.routing_key, "routing key")
        yield from _table((*v_at, "headers"), event.headers, "header")
