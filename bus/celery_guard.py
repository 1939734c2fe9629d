"""The worker's last line against malformed task messages: reject without requeue, keep serving.

Celery's own task handler rejects most bad messages (unknown task, pickle, invalid JSON body),
but some inputs make it raise instead, and anything raised there ends the worker with
"Unrecoverable error" while the message goes back to the queue for the next worker:

- a delivery whose content header py-amqp could not fully decode (marked by
  :mod:`bus._pyamqp_guard` under :data:`~bus._pyamqp_guard.UNDECODABLE`);
- headers of the wrong types (a ``task`` header that is a list, an ``id`` that is a table,
  ...), which raise ``TypeError`` and friends deep in Celery's strategy, or which Celery
  carries along until the task needs them (a ``retries`` of ``"many"`` breaks its retry);
- a protocol-2 body that is JSON but not ``[args, kwargs, embed]`` (kwargs a list, embed a
  number): Celery 5.7 fails on it in the pool, outside the task ("Exception raised outside
  body"), and the message never reaches the DLQ (observed: neither run nor rejected).

:func:`guard_task_handler` wraps Celery's handler: an undecodable delivery is rejected before
Celery sees it; so is a protocol-2 message whose headers or body do not have the types of
Celery's message protocol (:func:`protocol_problem`). An exception from the handler rejects
the message (unless Celery settled it already) and is logged, never raised. Connection and
channel errors still propagate: those are Celery's to recover from by reconnecting, and the
message is redelivered, not lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import signals

from bus._pyamqp_guard import BROKER_OWNED, UNDECODABLE
from bus.headers import safe_headers, valid_x_death

__all__ = ["forged_death_problem", "guard_task_handler", "protocol_problem"]

log = logging.getLogger("bus.celery_app")


def _reject(consumer: Any, message: Any, reason: str) -> None:
    if message.acknowledged:
        log.error("malformed task message (already settled by Celery): %s", reason)
        return
    log.error(
        "malformed task message rejected without requeue (dead-lettered if the queue has a "
        "DLX): %s; delivery %s",
        reason,
        _delivery_origin(message),
    )
    message.reject_log_error(log, consumer.connection_errors, requeue=False)
    signals.task_rejected.send(sender=consumer, message=message, exc=None)


def _delivery_origin(message: Any) -> str:
    """Where a delivery came from, for the log line about it."""
    info = message.delivery_info or {}
    return f"exchange={info.get('exchange')!r} routing_key={info.get('routing_key')!r}"


_OPTIONAL_TEXT = ("root_id", "parent_id", "group", "eta", "expires", "shadow", "origin", "lang")
_NUMBER = (int, float)


def _header_problem(headers: dict[Any, Any]) -> str | None:
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not task:
        return f"header 'task' must be a non-empty string, not {type(task).__name__}"
    if not isinstance(task_id, str) or not task_id:
        return f"header 'id' must be a non-empty string, not {type(task_id).__name__}"
    for name in _OPTIONAL_TEXT:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"header {name!r} must be a string or null"
    retries = headers.get("retries", 0)
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        return "header 'retries' must be an integer"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(v is None or (isinstance(v, _NUMBER) and not isinstance(v, bool)) for v in limits)
    ):
        return "header 'timelimit' must be [hard, soft] seconds or nulls"
    return None


def protocol_problem(message: Any) -> str | None:
    """Why a protocol-2 task message does not fit Celery's protocol, or ``None``.

    Only messages with a ``task`` header (protocol 2) and a body that decodes are checked
    here; the rest is Celery's own (protocol 1, unknown tasks, refused content types).
    kombu caches the decoded body, so Celery does not decode it a second time.
    """
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return None
    problem = _header_problem(headers)
    if problem is not None:
        return problem
    try:
        payload = message.payload
    except Exception:  # Celery rejects an undecodable body itself, on its own path
        return None
    if not (isinstance(payload, list | tuple) and len(payload) == 3):
        return "body must be [args, kwargs, embed]"
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple):
        return "body: args must be a list"
    if not isinstance(kwargs, dict):
        return "body: kwargs must be an object"
    if embed is not None and not isinstance(embed, dict):
        return "body: embed must be an object or null"
    return None


def forged_death_problem(headers: Any) -> str | None:
    """Why an ``x-death`` header does not have the shape RabbitMQ writes, or ``None``.

    The shape is the project's one rule (:func:`bus.headers.valid_x_death`). RabbitMQ 3.10.8
    reads ``x-death`` back when it dead-letters the message again; ``[1, 2, 3]`` or ``[{}]``
    crash the queue process there (``function_clause`` in ``rabbit_dead_letter``), for classic
    and quorum queues alike: the message is redelivered, rejected, and crashes it again.
    """
    if not isinstance(headers, dict) or "x-death" not in headers:
        return None
    if valid_x_death(headers["x-death"]):
        return None
    return "header 'x-death' is not in RabbitMQ's shape (forged by the publisher)"


def _dead_letter_copy(consumer: Any, message: Any, reason: str) -> None:
    """Publish a copy without broker-owned headers to the queue's DLX, then ack the original.

    Rejecting the original would make RabbitMQ dead-letter it with the forged header. Without
    a DLX the reject drops the message and reads no header: then it is simply rejected.
    """
    queue = _queue_of(consumer, message)
    arguments = (queue.queue_arguments or {}) if queue is not None else {}
    dlx = arguments.get("x-dead-letter-exchange")
    if dlx is None:
        _reject(consumer, message, reason)
        return
    original = message.headers or {}
    # Field names that were not UTF-8 stay bytes (never a broker-owned name): kept as they are.
    headers, _ = safe_headers({k: v for k, v in original.items() if isinstance(k, str)})
    headers.update({k: v for k, v in original.items() if not isinstance(k, str)})
    headers["x-bus-rejected"] = reason
    headers["x-bus-original-queue"] = queue.name
    props = message.properties or {}
    keep = ("correlation_id", "reply_to", "message_id", "priority", "type", "app_id")
    with consumer.app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange=dlx,
            routing_key=arguments.get(
                "x-dead-letter-routing-key", message.delivery_info.get("routing_key", "")
            ),
            headers=headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            delivery_mode=props.get("delivery_mode", 2),
            retry=True,
            **{k: props[k] for k in keep if props.get(k) is not None},
        )
    log.error(
        "malformed task message dead-lettered by the worker to exchange %r (a copy without "
        "broker-owned headers; the original acknowledged): %s; delivery %s",
        dlx,
        reason,
        _delivery_origin(message),
    )
    message.ack_log_error(log, consumer.connection_errors)
    signals.task_rejected.send(sender=consumer, message=message, exc=None)


def _queue_of(consumer: Any, message: Any) -> Any:
    tag = (message.delivery_info or {}).get("consumer_tag")
    task_consumer = getattr(consumer, "task_consumer", None)
    active = getattr(task_consumer, "_active_tags", None) or {}
    names = [name for name, t in active.items() if t == tag]
    queues = consumer.app.amqp.queues
    return queues.get(names[0]) if names else None


def _screen_then(handler: Callable[[Any], None], consumer: Any, message: Any) -> None:
    properties = getattr(message, "properties", None) or {}
    problem = properties.get(UNDECODABLE)
    if problem and (properties.get(BROKER_OWNED) or forged_death_problem(message.headers)):
        # Headers unreadable here but an x-death among them: RabbitMQ would read it.
        _dead_letter_copy(consumer, message, f"undecodable content header: {problem}")
    elif problem:
        _reject(consumer, message, f"undecodable content header: {problem}")
    elif forged := forged_death_problem(message.headers):
        _dead_letter_copy(consumer, message, forged)
    elif invalid := protocol_problem(message):
        _reject(consumer, message, f"not a Celery task message: {invalid}")
    else:
        handler(message)


def guard_task_handler(consumer: Any, handler: Callable[[Any], None]) -> Callable[[Any], None]:
    """``handler`` (Celery's ``on_task_received``) made safe against malformed messages."""
    recoverable = (*consumer.connection_errors, *consumer.channel_errors)

    def on_task_received(message: Any) -> None:
        try:
            _screen_then(handler, consumer, message)
        except recoverable:
            raise
        except Exception as exc:
            # A copy that could not be published lands here too; its reject hands a forged
            # x-death to RabbitMQ after all: the lesser evil next to a worker that exits.
            _reject(consumer, message, f"{type(exc).__name__}: {exc}"[:500])

    return on_task_received
