"""Celery task messages (protocol 2) as plain AMQP, without importing Celery.

A service that only has aio-pika or pika can enqueue a task for a Celery worker by publishing
the message built here to the Celery queue's exchange with its routing key
(:func:`celery_route`). The format is the one verified in
``docs/celery-on-topology.md`` section 3: JSON body ``[args, kwargs, embed]``, the
task id as ``correlation_id``, and the headers a Celery 5 worker reads.

Delays (``eta`` / ``countdown``) are deliberately not offered: with the delayed-delivery
bootstep dropped, a worker would hold such a message unacknowledged in memory until its time,
where it counts against ``consumer_timeout`` (see :mod:`bus.celery_app`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bus.errors import UsageError
from bus.routing import topic_matches
from bus.topology.expand import ExpandedTopology

if TYPE_CHECKING:
    import aio_pika
    import pika

__all__ = [
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "SAFE_TASK_SETTINGS",
    "CeleryRoute",
    "TaskMessage",
    "binding_routes",
    "build_task_message",
    "celery_route",
    "celery_routes",
]

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"

_REPR_MAX = 1024
_EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


# The Celery settings every app on the bus runs with, ours and a plain one: JSON only (a
# pickle is never accepted), acks after the task, a task that fails for good or whose worker
# was lost rejected (so it dead-letters) instead of acknowledged away.
SAFE_TASK_SETTINGS: Mapping[str, Any] = {
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "task_acks_on_failure": False,
}

@dataclass(frozen=True)
class TaskMessage:
    """One Celery task message: publish ``body`` with these properties and headers."""

    task_id: str
    body: bytes
    headers: dict[str, Any]
    content_type: str = CONTENT_TYPE
    content_encoding: str = CONTENT_ENCODING
    delivery_mode: int = 2
    reply_to: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def correlation_id(self) -> str:
        # Celery's result backends key the reply on correlation_id, which must be the task id.
        return self.task_id

    def amqp_properties(self) -> dict[str, Any]:
        """The AMQP basic properties (without headers) as a plain mapping."""
        props: dict[str, Any] = {
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "delivery_mode": self.delivery_mode,
            "correlation_id": self.correlation_id,
        }
        if self.reply_to is not None:
            props["reply_to"] = self.reply_to
        props.update(self.properties)
        return props

    def pika_properties(self) -> pika.BasicProperties:
        """``pika.BasicProperties`` for ``channel.basic_publish``."""
        import pika

        return pika.BasicProperties(headers=dict(self.headers), **self.amqp_properties())

    def aio_pika_message(self) -> aio_pika.Message:
        """An ``aio_pika.Message`` for ``exchange.publish``."""
        import aio_pika

        props = self.amqp_properties()
        return aio_pika.Message(
            self.body,
            headers=dict(self.headers),
            content_type=props.pop("content_type"),
            content_encoding=props.pop("content_encoding"),
            delivery_mode=aio_pika.DeliveryMode(props.pop("delivery_mode")),
            correlation_id=props.pop("correlation_id"),
            **props,
        )


def build_task_message(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    task_id: str | None = None,
    origin: str = "amqp-bus",
    ignore_result: bool = True,
    reply_to: str | None = None,
    expires: datetime | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
) -> TaskMessage:
    """A protocol-2 Celery task message for ``task`` (its registered name).

    ``args`` and ``kwargs`` must be JSON-serialisable: the worker accepts JSON only.
    ``expires`` must be timezone-aware (the worker compares it with its own clock).
    ``reply_to`` is only needed when the caller waits for a result through ``rpc://``.
    """
    if not task:
        raise UsageError("task name must not be empty")
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise UsageError(f"task args must be a list or tuple, got {type(args).__name__}")
    kw = dict(kwargs or {})
    if expires is not None and expires.tzinfo is None:
        raise UsageError("expires must be a timezone-aware datetime")
    try:
        body = json.dumps([list(args), kw, _EMBED]).encode(CONTENT_ENCODING)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"task {task}: arguments are not JSON-serialisable: {exc}") from None
    tid = task_id or str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": tid,
        "root_id": tid,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": expires.isoformat() if expires is not None else None,
        "timelimit": [time_limit, soft_time_limit],
        # Display only (Flower, logs); Celery caps them at 1024 characters too.
        "argsrepr": repr(args)[:_REPR_MAX],
        "kwargsrepr": repr(kw)[:_REPR_MAX],
        "origin": origin,
        "ignore_result": ignore_result,
    }
    return TaskMessage(task_id=tid, body=body, headers=headers, reply_to=reply_to)


@dataclass(frozen=True)
class CeleryRoute:
    """Where Celery publishes the tasks of one topology queue."""

    queue: str
    exchange: str
    exchange_type: str
    routing_key: str


def _reaches(exchange_type: str, binding_key: str, key: str) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "topic":
        return topic_matches(binding_key, key)
    return binding_key == key


def binding_routes(exchange_type: str, binding_keys: Iterable[str], key: str) -> bool:
    """Whether a message published with ``key`` crosses one of these bindings."""
    return any(_reaches(exchange_type, b, key) for b in binding_keys)


def celery_routes(topology: ExpandedTopology) -> dict[str, CeleryRoute]:
    """Queue name -> route, for every queue marked ``celery:`` in the topology."""
    routes: dict[str, CeleryRoute] = {}
    for q in topology.queues.values():
        key = q.celery_routing_key
        if key is None:
            continue
        candidates = [
            b
            for b in topology.bindings
            if b.destination_type == "queue" and b.destination == q.name and b.source
        ]
        # Exact key first: it is the binding a reader of topology.yaml expects the tasks to use.
        candidates.sort(key=lambda b: b.routing_key != key)
        for b in candidates:
            x = topology.exchanges.get(b.source)
            if x is None or x.type == "headers":
                continue
            if _reaches(x.type, b.routing_key, key):
                routes[q.name] = CeleryRoute(q.name, x.name, x.type, key)
                break
        else:
            raise UsageError(
                f"Celery queue {q.name!r}: no binding of a direct, topic or fanout exchange "
                f"routes key {key!r} to it"
            )
    return routes


def celery_route(topology: ExpandedTopology, queue: str) -> CeleryRoute:
    """The exchange and routing key to publish a task for ``queue`` with."""
    routes = celery_routes(topology)
    try:
        return routes[queue]
    except KeyError:
        known = ", ".join(sorted(routes)) or "none"
        raise UsageError(
            f"queue {queue!r} is not a Celery queue of the topology (Celery queues: {known})"
        ) from None
