"""The inbox: a database-backed idempotency store, written in the handler's own transaction.

The relay publishes at least once, so a consumer can see a message twice (a relay killed
between the broker's confirm and the row's delete). :class:`DatabaseInbox` is an
:class:`consumers.IdempotencyStore` for ``idempotent=True`` handlers whose keys live in a table
(``bus_inbox``: ``key`` primary key, ``handled_at`` epoch seconds). A handler that changes the
same database records the key in its own transaction, so the effect and the "seen" mark commit
together or not at all::

    inbox = DatabaseInbox(engine)
    app = ConsumerApp(topology, settings, idempotency_store=inbox)

    @app.handler("billing.orders", idempotent=True)
    async def on_order(event: OrderCreated, message: Message) -> None:
        async with AsyncSession(engine) as session, session.begin():
            if not await inbox.claim_async(session, message):
                return  # a duplicate: its effect already committed
            session.add(Invoice(order_id=event.order_id))

The runtime's own :meth:`remember` after the handler then finds the key present and does
nothing. Two consumers handling the same message at once both insert the key; the database's
unique key makes the second wait for the first and then report a duplicate.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Connection, Engine, Insert, Table, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bus.outbox.table import inbox_table

if TYPE_CHECKING:  # the asyncio extension needs greenlet: only async users import it
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

__all__ = ["DatabaseInbox", "inbox_key"]


class _Delivery(Protocol):
    @property
    def queue(self) -> str: ...

    @property
    def message_id(self) -> str | None: ...


def inbox_key(queue: str, message_id: str) -> str:
    """The key the consumer runtime uses for a message of ``queue``: ``"<queue>:<id>"``."""
    return f"{queue}:{message_id}"


def _key_of(message: _Delivery | str) -> str:
    if isinstance(message, str):
        return message
    if not message.message_id:
        raise ValueError("a message without message_id cannot be recorded in the inbox")
    return inbox_key(message.queue, message.message_id)


class DatabaseInbox:
    """Handled message keys in a table of ``engine`` (sync or async)."""

    def __init__(self, engine: Engine | AsyncEngine, table: Table | None = None) -> None:
        self.engine = engine
        self.table = table if table is not None else inbox_table()
        self._async = type(engine).__name__ == "AsyncEngine"

    def _insert(self, dialect: str, key: str) -> Insert:
        values = {"key": key, "handled_at": time.time()}
        if dialect == "postgresql":
            return postgresql.insert(self.table).values(values).on_conflict_do_nothing()
        if dialect == "sqlite":
            return sqlite.insert(self.table).values(values).on_conflict_do_nothing()
        return insert(self.table).values(values)

    # -- in the handler's transaction -------------------------------------------------------
    def claim(self, session: Session | Connection, message: _Delivery | str) -> bool:
        """Record ``message`` in ``session``'s transaction; False when it was recorded
        before (skip the effect). Commits with the caller's transaction."""
        key = _key_of(message)
        dialect = (session.get_bind() if isinstance(session, Session) else session).dialect.name
        if dialect in ("postgresql", "sqlite"):
            result: Any = session.execute(self._insert(dialect, key))
            return bool(result.rowcount == 1)
        try:
            with session.begin_nested():
                session.execute(self._insert(dialect, key))
        except IntegrityError:
            return False
        return True

    async def claim_async(
        self, session: AsyncSession | AsyncConnection, message: _Delivery | str
    ) -> bool:
        """:meth:`claim` for an ``AsyncSession`` or ``AsyncConnection``."""
        from sqlalchemy.ext.asyncio import AsyncSession

        key = _key_of(message)
        bind = session.get_bind() if isinstance(session, AsyncSession) else session
        dialect = bind.dialect.name
        if dialect in ("postgresql", "sqlite"):
            result: Any = await session.execute(self._insert(dialect, key))
            return bool(result.rowcount == 1)
        try:
            async with session.begin_nested():
                await session.execute(self._insert(dialect, key))
        except IntegrityError:
            return False
        return True

    # -- the IdempotencyStore protocol ------------------------------------------------------
    async def seen(self, key: str) -> bool:
        query = select(self.table.c.key).where(self.table.c.key == key)
        if self._async:
            async with cast("AsyncEngine", self.engine).connect() as conn:
                return (await conn.execute(query)).first() is not None
        return await asyncio.to_thread(self._seen_sync, cast(Engine, self.engine), query)

    async def remember(self, key: str) -> None:
        if self._async:
            async with cast("AsyncEngine", self.engine).begin() as conn:
                await self.claim_async(conn, key)
            return
        await asyncio.to_thread(self._remember_sync, cast(Engine, self.engine), key)

    @staticmethod
    def _seen_sync(engine: Engine, query: Any) -> bool:
        with engine.connect() as conn:
            return conn.execute(query).first() is not None

    def _remember_sync(self, engine: Engine, key: str) -> None:
        with engine.begin() as conn:
            self.claim(conn, key)
