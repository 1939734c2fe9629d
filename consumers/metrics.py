"""Consumer metrics: a small protocol, and a Prometheus implementation loaded only on request.

``prometheus-client`` is an optional dependency (extra ``prometheus``): it is imported when
:class:`PrometheusMetrics` is created, never by the runtime itself.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from bus.errors import UsageError

__all__ = ["ConsumerMetrics", "PrometheusMetrics"]


class ConsumerMetrics(Protocol):
    """Counters the runtime reports; every method is called on the event loop, never blocks."""

    def consumed(self, queue: str) -> None: ...

    def acked(self, queue: str, count: int) -> None: ...

    def retried(self, queue: str) -> None: ...

    def dead_lettered(self, queue: str, reason: str) -> None: ...

    def requeued(self, queue: str) -> None: ...

    def dropped(self, queue: str, reason: str) -> None: ...

    def duplicate(self, queue: str) -> None: ...

    def handler_seconds(self, queue: str, seconds: float) -> None: ...


def _prometheus() -> Any:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        raise UsageError(
            "Prometheus metrics need the prometheus-client package: "
            "pip install 'amqp-bus[prometheus]' (or pip install prometheus-client)"
        ) from None


# name -> (help, labels) of each ``bus_consumer_*`` counter.
_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "messages_consumed": ("Deliveries received.", ("queue",)),
    "messages_acked": ("Deliveries acked.", ("queue",)),
    "messages_retried": ("Deliveries sent to a retry delay queue.", ("queue",)),
    "messages_dead_lettered": (
        "Deliveries dead-lettered (republished to the DLX or rejected to it).",
        ("queue", "reason"),
    ),
    "messages_requeued": ("Deliveries requeued (no dead-letter exchange).", ("queue",)),
    "messages_dropped": (
        "Deliveries rejected without a dead-letter exchange (the broker drops them).",
        ("queue", "reason"),
    ),
    "messages_duplicate": ("Deliveries skipped by the idempotency hook.", ("queue",)),
}


class PrometheusMetrics:
    """``bus_consumer_*`` counters and a handler-duration histogram, labelled by queue."""

    def __init__(self, registry: Any = None, namespace: str = "bus") -> None:
        prom = _prometheus()
        kwargs: dict[str, Any] = {"namespace": namespace, "subsystem": "consumer"}
        if registry is not None:
            kwargs["registry"] = registry
        self._counters = {
            name: prom.Counter(name, text, list(labels), **kwargs)
            for name, (text, labels) in _COUNTERS.items()
        }
        self._seconds = prom.Histogram("handler_seconds", "Handler run time.", ["queue"], **kwargs)

    def _count(self, name: str, *labels: str, amount: int = 1) -> None:
        self._counters[name].labels(*labels).inc(amount)

    def consumed(self, queue: str) -> None:
        self._count("messages_consumed", queue)

    def acked(self, queue: str, count: int) -> None:
        self._count("messages_acked", queue, amount=count)

    def retried(self, queue: str) -> None:
        self._count("messages_retried", queue)

    def dead_lettered(self, queue: str, reason: str) -> None:
        self._count("messages_dead_lettered", queue, reason)

    def requeued(self, queue: str) -> None:
        self._count("messages_requeued", queue)

    def dropped(self, queue: str, reason: str) -> None:
        self._count("messages_dropped", queue, reason)

    def duplicate(self, queue: str) -> None:
        self._count("messages_duplicate", queue)

    def handler_seconds(self, queue: str, seconds: float) -> None:
        self._seconds.labels(queue).observe(seconds)
