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


class PrometheusMetrics:
    """``bus_consumer_*`` counters and a handler-duration histogram, labelled by queue."""

    def __init__(self, registry: Any = None, namespace: str = "bus") -> None:
        prom = _prometheus()
        kwargs: dict[str, Any] = {"namespace": namespace, "subsystem": "consumer"}
        if registry is not None:
            kwargs["registry"] = registry
        self._consumed = prom.Counter(
            "messages_consumed", "Deliveries received.", ["queue"], **kwargs
        )
        self._acked = prom.Counter("messages_acked", "Deliveries acked.", ["queue"], **kwargs)
        self._retried = prom.Counter(
            "messages_retried", "Deliveries sent to a retry delay queue.", ["queue"], **kwargs
        )
        self._dead = prom.Counter(
            "messages_dead_lettered",
            "Deliveries dead-lettered (republished to the DLX or rejected to it).",
            ["queue", "reason"],
            **kwargs,
        )
        self._requeued = prom.Counter(
            "messages_requeued", "Deliveries requeued (no dead-letter exchange).", ["queue"],
            **kwargs,
        )  # fmt: skip
        self._dropped = prom.Counter(
            "messages_dropped",
            "Deliveries rejected without a dead-letter exchange (the broker drops them).",
            ["queue", "reason"],
            **kwargs,
        )
        self._duplicates = prom.Counter(
            "messages_duplicate", "Deliveries skipped by the idempotency hook.", ["queue"],
            **kwargs,
        )  # fmt: skip
        self._seconds = prom.Histogram("handler_seconds", "Handler run time.", ["queue"], **kwargs)

    def consumed(self, queue: str) -> None:
        self._consumed.labels(queue).inc()

    def acked(self, queue: str, count: int) -> None:
        self._acked.labels(queue).inc(count)

    def retried(self, queue: str) -> None:
        self._retried.labels(queue).inc()

    def dead_lettered(self, queue: str, reason: str) -> None:
        self._dead.labels(queue, reason).inc()

    def requeued(self, queue: str) -> None:
        self._requeued.labels(queue).inc()

    def dropped(self, queue: str, reason: str) -> None:
        self._dropped.labels(queue, reason).inc()

    def duplicate(self, queue: str) -> None:
        self._duplicates.labels(queue).inc()

    def handler_seconds(self, queue: str, seconds: float) -> None:
        self._seconds.labels(queue).observe(seconds)
