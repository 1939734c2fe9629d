"""Celery tasks of the demo domain, served from the queues topology.yaml marks ``celery:``.

Run a worker with ``bus worker -Q email.send,reports.build`` or
``celery -A consumers.tasks worker -Q email.send,reports.build``. The app reads
``$BUS_TOPOLOGY`` (else ``./topology.yaml``) and ``BUS_*`` settings on first use, so importing
this module neither reads the topology nor connects.

``record``, ``slow``, ``reject``, ``fail`` and ``flaky`` exist for the integration tests: they leave
their trace in a file named by the caller, because the app keeps no result backend.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.exceptions import Reject

from bus.celery_app import build_app

__all__ = [
    "ROUTES",
    "app",
    "build_report",
    "fail",
    "flaky",
    "record",
    "reject",
    "send_email",
    "slow",
]

log = logging.getLogger(__name__)

ROUTES = {
    "consumers.tasks.send_email": "email.send",
    "consumers.tasks.build_report": "reports.build",
}

app = build_app(routes=ROUTES, main="consumers.tasks")


def task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with a type: Celery ships no annotations."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(**options)
    return decorator


def _append(path: str, **entry: Any) -> None:
    # O_APPEND writes of one short line are atomic, so concurrent pool processes do not interleave.
    line = json.dumps({"pid": os.getpid(), "at": time.time(), **entry}) + "\n"
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(line)


@task(name="consumers.tasks.send_email", acks_on_failure=False)
def send_email(to: str, subject: str = "", body: str = "") -> str:
    """Send an email (demo: logged). Failures dead-letter to email.send.dlq."""
    if "@" not in to:
        raise ValueError(f"not an email address: {to!r}")
    log.info("email to %s: %s", to, subject)
    return f"sent to {to}"


@task(name="consumers.tasks.build_report", acks_on_failure=False)
def build_report(report: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build a report (demo: a summary of its parameters)."""
    return {"report": report, "params": params or {}, "built_at": time.time()}


@task(name="consumers.tasks.record", bind=True)
def record(self: Any, path: str, token: str) -> str:
    """Append ``token`` with the delivery details to ``path``."""
    info = self.request.delivery_info or {}
    _append(path, token=token, task_id=self.request.id, routing_key=info.get("routing_key"))
    return token


@task(name="consumers.tasks.slow", bind=True)
def slow(self: Any, path: str, token: str, seconds: float) -> str:
    """Log a start line, sleep, log a done line: a task to kill mid-way."""
    _append(path, token=token, event="start", task_id=self.request.id)
    time.sleep(seconds)
    _append(path, token=token, event="done", task_id=self.request.id)
    return token


@task(name="consumers.tasks.reject")
def reject(reason: str) -> None:
    """Refuse the message: rejected without requeue, so it dead-letters."""
    raise Reject(reason, requeue=False)


@task(name="consumers.tasks.fail", acks_on_failure_or_timeout=False)
def fail(reason: str) -> None:
    """Fail for good: with acks_on_failure_or_timeout off the message is rejected to the DLQ."""
    raise RuntimeError(reason)


@task(name="consumers.tasks.flaky", bind=True, max_retries=5)
def flaky(self: Any, path: str, token: str, failures: int) -> str:
    """Retry ``failures`` times, then succeed; each attempt leaves a line in ``path``.

    ``countdown=0`` republishes at once: delayed retries need Celery's delayed-delivery
    exchanges, which topology workers do without.
    """
    _append(path, token=token, event="attempt", retries=self.request.retries)
    if self.request.retries < failures:
        raise self.retry(countdown=0)
    return token
