"""Names of the objects the ``dead_letter`` and ``retry`` shorthands generate."""

from __future__ import annotations

from bus.topology.model import Queue

__all__ = [
    "dead_letter_exchange",
    "dead_letter_queue",
    "derived_names",
    "duration_label",
    "retry_queue",
]


def duration_label(ms: int) -> str:
    """``1000`` -> ``1s``, ``90000`` -> ``90s``, ``60000`` -> ``1m``, ``1500`` -> ``1500ms``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def dead_letter_exchange(queue: str) -> str:
    return f"{queue}.dlx"


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"


def retry_queue(queue: str, delay_ms: int) -> str:
    return f"{queue}.retry.{duration_label(delay_ms)}"


def derived_names(name: str, queue: Queue) -> list[str]:
    """Every exchange and queue name the shorthands of ``queue`` generate."""
    names: list[str] = []
    if queue.dead_letter is not None:
        names += [dead_letter_exchange(name), dead_letter_queue(name)]
    if queue.retry is not None:
        for delay in dict.fromkeys(queue.retry.delays):
            names.append(retry_queue(name, delay))
    return names
