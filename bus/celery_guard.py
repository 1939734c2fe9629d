"""The worker's last line against malformed task messages: reject without requeue, keep serving.

Celery's own task handler rejects most bad messages (unknown task, pickle, invalid JSON body),
but some inputs make it raise instead, and anything raised there ends the worker with
"Unrecoverable error" while the message goes back to the queue for the next worker:

- a delivery whose content header py-amqp could not fully decode (marked by
  :mod:`bus._pyamqp_guard` under :data:`~bus._pyamqp_guard.UNDECODABLE`);
- headers of the wrong types (a ``task`` header that is a list, an ``id`` that is a table,
  ``headers`` that are not a table at all, ...), which raise ``TypeError`` and friends deep
  in Celery's strategy.

:func:`guard_task_handler` wraps Celery's handler: an undecodable delivery is rejected before
Celery sees it; an exception from the handler rejects the message (unless Celery settled it
already) and is logged, never raised. Connection and channel errors still propagate: those
are Celery's to recover from by reconnecting, and the message is redelivered, not lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import signals

from bus._pyamqp_guard import UNDECODABLE

__all__ = ["guard_task_handler"]

log = logging.getLogger("bus.celery_app")


def _reject(consumer: Any, message: Any, reason: str) -> None:
    if message.acknowledged:
        log.error("malformed task message (already settled by Celery): %s", reason)
        return
    log.error(
        "malformed task message rejected without requeue (dead-lettered if the queue has a "
        "DLX): %s; delivery %s",
        reason,
        _where(message),
    )
    message.reject_log_error(log, consumer.connection_errors, requeue=False)
    signals.task_rejected.send(sender=consumer, message=message, exc=None)


def _where(message: Any) -> str:
    info = message.delivery_info or {}
    return f"exchange={info.get('exchange')!r} routing_key={info.get('routing_key')!r}"


def guard_task_handler(consumer: Any, handler: Callable[[Any], None]) -> Callable[[Any], None]:
    """``handler`` (Celery's ``on_task_received``) made safe against malformed messages."""
    recoverable = (*consumer.connection_errors, *consumer.channel_errors)

    def on_task_received(message: Any) -> None:
        problem = (getattr(message, "properties", None) or {}).get(UNDECODABLE)
        if problem:
            _reject(consumer, message, f"undecodable content header: {problem}")
            return
        try:
            handler(message)
        except recoverable:
            raise
        except Exception as exc:
            _reject(consumer, message, f"{type(exc).__name__}: {exc}"[:500])

    return on_task_received
