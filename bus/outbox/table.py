"""The outbox table: its columns, its creation, and engines set up for it.

One row is one AMQP message waiting to be published. The columns are plain types so that a
service in another language can write rows too (the README's "Publishing from a service with a
database" lists them):

=================  ===========================  ==============================================
column             type                         meaning
=================  ===========================  ==============================================
seq                bigint, identity, key        publish order (and order within ordering_key)
message_id         varchar(255), unique         the AMQP ``message_id`` property
event              varchar(255), null           the event name, sent as the ``type`` property
exchange           varchar(255)                 exchange to publish to (``""`` the default)
routing_key        varchar(255)                 routing key
headers            text, null                   AMQP headers as a JSON object
body               bytea / blob                 the message body, as sent
correlation_id     varchar(255), null           ``correlation_id`` (null: the message_id)
content_encoding   varchar(64), null            ``content_encoding`` (Celery tasks: utf-8)
reply_to           varchar(255), null           ``reply_to``
persistent         boolean, default true        delivery mode 2
ordering_key       varchar(255), null           rows sharing it are published in seq order
created_at         double                       seconds since the epoch (UTC) of the write
attempts           integer, default 0           failed publish attempts so far (relay)
next_attempt_at    double, default 0            not published before this time (relay)
last_error         text, null                   why the last attempt failed (relay)
claimed_by         varchar(64), null            the relay holding the row (relay)
claimed_until      double, null                 end of that relay's lease (relay)
=================  ===========================  ==============================================

Writers fill the first twelve columns and leave the relay's five at their defaults. A published
row is deleted.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
    true,
)
from sqlalchemy.engine import make_url
from sqlalchemy.schema import SchemaItem

from bus.errors import BusError

__all__ = [
    "DEFAULT_TABLE",
    "OutboxError",
    "create_outbox",
    "inbox_table",
    "make_engine",
    "notify_channel",
    "outbox_table",
]

DEFAULT_TABLE = "bus_outbox"
DEFAULT_INBOX_TABLE = "bus_inbox"

# SQLite only treats INTEGER PRIMARY KEY as the auto-incrementing rowid.
_SEQ = BigInteger().with_variant(Integer(), "sqlite")


class OutboxError(BusError):
    """The outbox database cannot be reached or is not set up."""


def outbox_table(
    name: str = DEFAULT_TABLE, *, schema: str | None = None, metadata: MetaData | None = None
) -> Table:
    """The outbox :class:`~sqlalchemy.Table` (add it to your own metadata for migrations)."""
    return _table(
        name,
        schema,
        metadata,
        Column("seq", _SEQ, primary_key=True, autoincrement=True),
        Column("message_id", String(255), nullable=False, unique=True),
        Column("event", String(255)),
        Column("exchange", String(255), nullable=False),
        Column("routing_key", String(255), nullable=False),
        Column("headers", Text),
        Column("body", LargeBinary, nullable=False),
        Column("correlation_id", String(255)),
        Column("content_encoding", String(64)),
        Column("reply_to", String(255)),
        Column("persistent", Boolean, nullable=False, server_default=true()),
        Column("ordering_key", String(255)),
        Column("created_at", Double, nullable=False),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("next_attempt_at", Double, nullable=False, server_default=text("0")),
        Column("last_error", Text),
        Column("claimed_by", String(64)),
        Column("claimed_until", Double),
        # The claim asks "is there an earlier row of this key?" for every candidate.
        Index(f"{name}_ordering", "ordering_key", "seq"),
    )


def inbox_table(
    name: str = DEFAULT_INBOX_TABLE, *, schema: str | None = None, metadata: MetaData | None = None
) -> Table:
    """The inbox: one row per handled message key (``"<queue>:<message_id>"``)."""
    return _table(
        name,
        schema,
        metadata,
        Column("key", String(512), primary_key=True),
        Column("handled_at", Double, nullable=False),
    )


def _table(name: str, schema: str | None, metadata: MetaData | None, *items: SchemaItem) -> Table:
    """A table placed where the caller says: in ``schema``, and in ``metadata`` (else its own)."""
    return Table(name, metadata if metadata is not None else MetaData(), *items, schema=schema)


def notify_channel(table: Table) -> str:
    """The PostgreSQL ``NOTIFY`` channel a commit of new rows of ``table`` signals."""
    return f"{table.schema}.{table.name}" if table.schema else table.name


def create_outbox(bind: Engine | Connection, table: Table | None = None) -> Table:
    """Create the outbox (and inbox) tables if missing; on PostgreSQL also the trigger that
    wakes relays (``NOTIFY``) when rows commit. Safe to run again."""
    table = table if table is not None else outbox_table()
    inbox = inbox_table(schema=table.schema, metadata=table.metadata)
    with _begin(bind) as conn:
        table.create(conn, checkfirst=True)
        inbox.create(conn, checkfirst=True)
        if conn.dialect.name == "postgresql":
            _create_notify_trigger(conn, table)
    return table


def _create_notify_trigger(conn: Connection, table: Table) -> None:
    quote = conn.dialect.identifier_preparer.quote
    qualified = f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)
    function_name = f"{table.name}_notify"
    function = (
        f"{quote(table.schema)}.{quote(function_name)}" if table.schema else quote(function_name)
    )
    channel = notify_channel(table).replace("'", "''")
    conn.execute(
        text(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $$"
        )
    )
    # One notification per inserting statement; PostgreSQL sends it at commit, never for a
    # transaction that rolls back.
    conn.execute(text(f"DROP TRIGGER IF EXISTS {quote(function_name)} ON {qualified}"))
    conn.execute(
        text(
            f"CREATE TRIGGER {quote(function_name)} AFTER INSERT ON {qualified} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    )


class _begin:
    """``engine.begin()`` for an engine, the caller's transaction for a connection."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind
        self._context: Any = None

    def __enter__(self) -> Connection:
        if isinstance(self.bind, Connection):
            return self.bind
        self._context = self.bind.begin()
        conn: Connection = self._context.__enter__()
        return conn

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)


def make_engine(url: str, **options: Any) -> Engine:
    """An engine for the outbox database: PostgreSQL through psycopg 3 when the URL names no
    driver; SQLite in WAL mode with a busy timeout, so that writers and relays wait for each
    other instead of failing with "database is locked"."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        options.setdefault("connect_args", {}).setdefault("timeout", 30.0)
    else:
        # A connection the server closed (restart, pg_terminate_backend) is replaced before
        # use instead of failing the relay's next batch.
        options.setdefault("pool_pre_ping", True)
    engine = create_engine(parsed, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def now() -> float:
    return time.time()
