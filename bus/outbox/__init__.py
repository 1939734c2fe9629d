"""Transactional outbox and inbox: publish exactly when the database commits.

``Outbox.add(session, event)`` writes the event in the caller's transaction; a :class:`Relay`
(``bus outbox relay``) publishes committed rows with confirms and deletes them; a
:class:`DatabaseInbox` drops the duplicates at-least-once delivery brings, in the consuming
handler's own transaction. Needs the ``outbox`` extra (SQLAlchemy 2, psycopg 3, aiosqlite);
the names load on first use, so ``bus`` runs without the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bus.outbox.add import Outbox
    from bus.outbox.inbox import DatabaseInbox, inbox_key
    from bus.outbox.relay import Backlog, Relay, RelayStats, backlog, outbox_backlog
    from bus.outbox.table import (
        DEFAULT_TABLE,
        OutboxError,
        create_outbox,
        inbox_table,
        make_engine,
        outbox_table,
    )

__all__ = [
    "DEFAULT_TABLE",
    "Backlog",
    "DatabaseInbox",
    "Outbox",
    "OutboxError",
    "Relay",
    "RelayStats",
    "backlog",
    "create_outbox",
    "inbox_key",
    "inbox_table",
    "make_engine",
    "outbox_backlog",
    "outbox_table",
]

_MODULES = {
    "Outbox": "add",
    "DatabaseInbox": "inbox",
    "inbox_key": "inbox",
    "Backlog": "relay",
    "Relay": "relay",
    "RelayStats": "relay",
    "backlog": "relay",
    "outbox_backlog": "relay",
    "DEFAULT_TABLE": "table",
    "OutboxError": "table",
    "create_outbox": "table",
    "inbox_table": "table",
    "make_engine": "table",
    "outbox_table": "table",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'bus.outbox' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bus.outbox.{module}"), name)
