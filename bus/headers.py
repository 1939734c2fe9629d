"""Which headers of a received message a republished copy may carry (retry, dead letter, replay).

A publisher can write any header, including the ones the broker owns. Copying them blindly
into a republished message is how one forged header broke dead-lettering on RabbitMQ 3.10.8:
``x-death: [1, 2, 3]`` (or ``[{}]``, or a ``count`` that is not a number) crashes the broker's
dead-letter code (``function_clause`` in ``rabbit_dead_letter:group_by_queue_and_reason``)
when the copy later expires from a delay queue; at-least-once dead-lettering of quorum queues
then stops on that node until its supervisor is restarted.

:func:`safe_headers` is the one rule, for every republisher:

- ``x-delivery-count`` (the quorum queue's own counter) is dropped: it belongs to the queue
  that delivered the message, and the next queue counts for itself;
- ``x-death`` is kept only when it has the shape the broker writes (a list of tables, each
  with a string ``queue``, a known ``reason``, and a positive integer ``count``, with
  ``exchange`` a string, ``routing-keys`` a list of strings and ``time`` a timestamp when
  present); otherwise it is dropped, together with every ``x-first-death-*`` and
  ``x-last-death-*`` header;
- ``x-first-death-*`` / ``x-last-death-*`` are kept only when they are strings;
- every other header is the publisher's business and is kept as it is.

What was dropped is returned, so callers can log it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["BROKER_OWNED", "DEATH_REASONS", "safe_headers", "valid_x_death"]

BROKER_OWNED = frozenset({"x-delivery-count"})
"""Headers a republished copy never carries (the broker sets them per queue)."""

DEATH_REASONS = frozenset({"rejected", "expired", "maxlen", "delivery_limit"})
"""The ``reason`` values RabbitMQ writes into ``x-death`` entries."""

_DEATH_PREFIXES = ("x-first-death-", "x-last-death-")


def _valid_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    queue, reason, count = entry.get("queue"), entry.get("reason"), entry.get("count")
    if not isinstance(queue, str) or reason not in DEATH_REASONS:
        return False
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count < 2**63 - 1:
        return False
    if "exchange" in entry and not isinstance(entry["exchange"], str):
        return False
    keys = entry.get("routing-keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return False
    return "time" not in entry or isinstance(entry["time"], datetime)


def valid_x_death(value: object) -> bool:
    """True when ``value`` has the shape RabbitMQ gives ``x-death`` (see the module docstring)."""
    return isinstance(value, list) and bool(value) and all(_valid_entry(e) for e in value)


def safe_headers(headers: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The headers a republished copy may carry, and the names of those dropped."""
    if not headers:
        return {}, []
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    death_ok = "x-death" not in headers or valid_x_death(headers["x-death"])
    for name, value in headers.items():
        if name in BROKER_OWNED:
            ok = False
        elif name == "x-death":
            ok = death_ok
        elif name.startswith(_DEATH_PREFIXES):
            ok = death_ok and isinstance(value, str)
        else:
            ok = True
        if ok:
            kept[name] = value
        else:
            dropped.append(name)
    return kept, dropped
