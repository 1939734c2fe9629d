"""Writing events into the outbox, in the caller's own database transaction.

``outbox.add(session, event)`` checks the event against its contract and turns it into the
wire message exactly as the publishers do (:class:`bus.outgoing.Resolver`), then inserts one
row with the session the business change uses. Nothing is sent: the row commits or rolls back
with that change, and a relay (:mod:`bus.outbox.relay`) publishes it after the commit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, Unpack

from pydantic import BaseModel
from sqlalchemy import Connection, Table, insert
from sqlalchemy.orm import Session

from bus.outbox.table import outbox_table
from bus.outgoing import DEFAULT_MAX_MESSAGE_SIZE, Outgoing, Resolved, Resolver, TopologyLike
from bus.publish.message import MessageOptions
from bus.publish.message import TaskOptions as SendTaskOptions
from bus.tracing import current_traceparent

if TYPE_CHECKING:  # the asyncio extension needs greenlet: only async callers import it
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["AsyncBind", "EventOptions", "Outbox", "SyncBind", "TaskOptions"]

SyncBind: TypeAlias = Session | Connection
AsyncBind: TypeAlias = "AsyncSession | AsyncConnection"


class EventOptions(MessageOptions, total=False):
    """The keywords of :meth:`Outbox.add`, :meth:`~Outbox.add_async` and
    :meth:`~Outbox.event_row`: an event's message keywords (those of ``publish``) and
    ``ordering_key``. Absent means None, except ``persistent`` (True)."""

    ordering_key: str | None


class TaskOptions(SendTaskOptions, total=False):
    """The keywords of :meth:`Outbox.add_task`, :meth:`~Outbox.add_task_async` and
    :meth:`~Outbox.task_row`: those of ``send_task`` and ``ordering_key``. Absent means None,
    except ``ignore_result`` (True)."""

    ordering_key: str | None


_EVENT_KEYWORDS = frozenset(EventOptions.__optional_keys__)
_TASK_KEYWORDS = frozenset(TaskOptions.__optional_keys__)


class Outbox:
    """Adds messages to the outbox table; one per service, like a publisher.

    ``topology`` gives the contracts (events) and the Celery queues (tasks); ``table`` is
    :func:`bus.outbox.outbox_table` unless the service named or placed it otherwise.
    """

    def __init__(
        self,
        topology: TopologyLike | None = None,
        *,
        table: Table | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        app_id: str = "amqp-bus",
    ) -> None:
        self.resolver = Resolver(topology, max_message_size)
        self.table = table if table is not None else outbox_table()
        self.app_id = app_id

    # -- building rows ----------------------------------------------------------------------
    def event_row(
        self, event: BaseModel | Outgoing, **options: Unpack[EventOptions]
    ) -> dict[str, Any]:
        """The row of one event (validated against its contract) or explicit message."""
        _refuse_unknown(options, _EVENT_KEYWORDS)
        if isinstance(event, Outgoing):
            resolved = self.resolver.item(event)
        else:
            # The relay publishes later, outside this span: the row keeps its context.
            resolved = self.resolver.event(
                event, options, default_traceparent=current_traceparent()
            )
        return _row(resolved, options.get("ordering_key"))

    def task_row(
        self,
        queue: str,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[TaskOptions],
    ) -> dict[str, Any]:
        """The row of a Celery task for a topology queue marked ``celery:``."""
        _refuse_unknown(options, _TASK_KEYWORDS)
        resolved = self.resolver.task_with(queue, task, args, kwargs, self.app_id, options)
        return _row(resolved, options.get("ordering_key"))

    # -- sync sessions ----------------------------------------------------------------------
    def add(
        self, session: SyncBind, event: BaseModel | Outgoing, **options: Unpack[EventOptions]
    ) -> str:
        """Insert ``event`` into the outbox within ``session``'s transaction; returns its
        ``message_id``. It is published after (and only if) that transaction commits."""
        row = self.event_row(event, **options)
        session.execute(insert(self.table).values(row))
        return str(row["message_id"])

    def add_task(
        self,
        session: SyncBind,
        queue: str,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[TaskOptions],
    ) -> str:
        """Insert a Celery task message (raw AMQP, protocol 2); returns the task id."""
        row = self.task_row(queue, task, args, kwargs, **options)
        session.execute(insert(self.table).values(row))
        return str(row["message_id"])

    # -- async sessions ---------------------------------------------------------------------
    async def add_async(
        self, session: AsyncBind, event: BaseModel | Outgoing, **options: Unpack[EventOptions]
    ) -> str:
        """:meth:`add` for an ``AsyncSession`` or ``AsyncConnection``."""
        row = self.event_row(event, **options)
        await session.execute(insert(self.table).values(row))
        return str(row["message_id"])

    async def add_task_async(
        self,
        session: AsyncBind,
        queue: str,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[TaskOptions],
    ) -> str:
        """:meth:`add_task` for an ``AsyncSession`` or ``AsyncConnection``."""
        row = self.task_row(queue, task, args, kwargs, **options)
        await session.execute(insert(self.table).values(row))
        return str(row["message_id"])


def _refuse_unknown(options: Mapping[str, object], known: frozenset[str]) -> None:
    # ``**options`` would swallow a misspelt keyword that a spelt-out signature refuses.
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")


def _row(message: Resolved, ordering_key: str | None) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "event": message.event_type,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "headers": None if message.headers is None else json.dumps(message.headers),
        "body": message.body,
        "correlation_id": message.correlation_id,
        "content_encoding": message.content_encoding,
        "reply_to": message.reply_to,
        "persistent": message.persistent,
        "ordering_key": ordering_key,
        "created_at": time.time(),
    }


def outgoing_from_row(row: Mapping[str, Any]) -> Outgoing:
    """The message a stored row publishes (the relay's side of :func:`_row`)."""
    headers = row["headers"]
    return Outgoing(
        exchange=row["exchange"],
        routing_key=row["routing_key"],
        body=bytes(row["body"]),
        headers=json.loads(headers) if headers else None,
        event_type=row["event"],
        message_id=row["message_id"],
        correlation_id=row["correlation_id"],
        persistent=bool(row["persistent"]),
        content_encoding=row["content_encoding"],
        reply_to=row["reply_to"],
    )
