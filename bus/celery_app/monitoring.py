"""Watching topology workers: remote inspection (:func:`inspect_active`) and task metrics."""

from __future__ import annotations

import importlib
import threading
import time
from typing import Any

from celery import Celery, signals

from bus.celery_app.app_settings import connection_errors, settings_for
from bus.errors import AccessRefusedError, BrokerUnavailableError, NotFoundError, UsageError
from bus.settings import mask_url

__all__ = [
    "INSPECT_CONFIGURE_REGEX",
    "WORKER_CONFIGURE_REGEX",
    "WorkerMetrics",
    "inspect_active",
    "serve_worker_metrics",
]

# Configure permission with monitoring on (names observed on RabbitMQ 3.10 / Celery 5.7): a
# worker declares only its exclusive pidbox queue "<name>@<host>.celery.pidbox", an
# inspecting client only its exclusive reply queue "<uuid>.reply.celery.pidbox". Neither
# pattern matches the exchanges celery.pidbox, reply.celery.pidbox or celeryev.
WORKER_CONFIGURE_REGEX = r"^[^@]+@.+\.celery\.pidbox$"
INSPECT_CONFIGURE_REGEX = (
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.reply\.celery\.pidbox$"
)


def inspect_active(app: Celery, timeout: float = 1.0) -> dict[str, list[dict[str, Any]]]:
    """Active tasks per worker node that replied within ``timeout`` seconds (remote control).

    The client declares its own exclusive reply queue; with the topology's monitoring
    exchanges it needs configure permission for :data:`INSPECT_CONFIGURE_REGEX` only.
    """
    settings = settings_for(app)
    errors = connection_errors(app)
    try:
        replies = app.control.inspect(timeout=timeout).active()
    except errors as exc:
        text = " ".join(str(exc).split())
        if "ACCESS_REFUSED" in text:
            raise AccessRefusedError(
                f"inspecting workers: {text} (the user needs configure permission on its "
                f"reply queue: {INSPECT_CONFIGURE_REGEX})"
            ) from None
        if "NOT_FOUND" in text:
            raise NotFoundError(
                f"inspecting workers: {text} (monitoring exchanges missing: run `bus apply` "
                "with celery: {monitoring: true})"
            ) from None
        raise BrokerUnavailableError(
            f"inspecting workers on {mask_url(settings.amqp_url)} failed: {text}"
        ) from None
    return {str(node): list(tasks or []) for node, tasks in (replies or {}).items()}


class WorkerMetrics:
    """Prometheus metrics of the tasks this process runs, fed by Celery's signals.

    - ``bus_celery_tasks_total{task, state}``: finished runs by final state: SUCCESS,
      FAILURE, RETRY, REJECTED (``Reject``), IGNORED; UNKNOWN for a message naming a task
      this worker does not have; INVALID for a message it cannot decode.
    - ``bus_celery_task_seconds{task}``: run time of each run, whatever its state.

    The signals fire where the task runs: with the prefork pool that is a child process,
    whose counters the main process cannot serve, so :func:`run_worker` refuses metrics with
    prefork. ``prometheus-client`` is imported only when this class is created.
    """

    def __init__(self, registry: Any = None, namespace: str = "bus") -> None:
        try:
            prom = importlib.import_module("prometheus_client")
        except ImportError:
            raise UsageError(
                "worker metrics need the prometheus-client package: "
                "pip install 'amqp-bus[prometheus]' (or pip install prometheus-client)"
            ) from None
        kwargs: dict[str, Any] = {"namespace": namespace, "subsystem": "celery"}
        if registry is not None:
            kwargs["registry"] = registry
        self.tasks = prom.Counter("tasks", "Finished task runs.", ["task", "state"], **kwargs)
        self.seconds = prom.Histogram("task_seconds", "Task run time.", ["task"], **kwargs)
        # Per thread, not per task id: a retry keeps its id and, republished at once, can
        # start on another thread before this run's postrun (observed with --pool threads).
        # A stack, because an eager call runs a task inside another on the same thread.
        self._local = threading.local()

    def connect(self) -> WorkerMetrics:
        # weak=False: bound methods would otherwise be dropped with the last reference.
        signals.task_prerun.connect(self._prerun, weak=False)
        signals.task_postrun.connect(self._postrun, weak=False)
        signals.task_unknown.connect(self._unknown, weak=False)
        signals.task_rejected.connect(self._invalid, weak=False)
        return self

    def disconnect(self) -> None:
        signals.task_prerun.disconnect(self._prerun)
        signals.task_postrun.disconnect(self._postrun)
        signals.task_unknown.disconnect(self._unknown)
        signals.task_rejected.disconnect(self._invalid)

    def _stack(self) -> list[float]:
        stack: list[float] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _prerun(self, **_: Any) -> None:
        self._stack().append(time.perf_counter())

    def _postrun(self, task: Any = None, state: str | None = None, **_: Any) -> None:
        stack = self._stack()
        started = stack.pop() if stack else None
        name = str(getattr(task, "name", None) or "?")
        self.tasks.labels(name, state or "?").inc()
        if started is not None:
            self.seconds.labels(name).observe(time.perf_counter() - started)

    def _unknown(self, name: str | None = None, **_: Any) -> None:
        self.tasks.labels(str(name), "UNKNOWN").inc()

    def _invalid(self, **_: Any) -> None:
        self.tasks.labels("?", "INVALID").inc()


def serve_worker_metrics(port: int, host: str = "0.0.0.0") -> WorkerMetrics:
    """Start the metrics endpoint on ``host:port`` (``/metrics``) and connect the signals."""
    metrics = WorkerMetrics()
    prom = importlib.import_module("prometheus_client")
    try:
        prom.start_http_server(port, addr=host)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return metrics.connect()
