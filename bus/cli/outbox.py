"""``bus outbox``: create the outbox table, run a relay, show the backlog."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import click

__all__ = ["COMMANDS", "outbox"]

_db_option = click.option(
    "--db",
    "db_url",
    envvar="BUS_OUTBOX_DB",
    required=True,
    help="SQLAlchemy database URL ($BUS_OUTBOX_DB), e.g. postgresql://user@host/db or "
    "sqlite:///outbox.db.",
)
_table_option = click.option(
    "--table", default="bus_outbox", show_default=True, help="Outbox table name."
)
_schema_option = click.option("--schema", default=None, help="Database schema of the table.")


def _table(table: str, schema: str | None) -> Any:
    from bus.outbox.table import outbox_table

    return outbox_table(table, schema=schema)


def _engine(db_url: str) -> Any:
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from bus.errors import UsageError
    from bus.outbox.table import make_engine

    try:
        return make_engine(db_url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise UsageError(f"invalid --db URL: {exc}") from None


@click.group()
def outbox() -> None:
    """Transactional outbox: events written with the database change, published after it."""


@outbox.command()
@_db_option
@_table_option
@_schema_option
def init(db_url: str, table: str, schema: str | None) -> None:
    """Create the outbox and inbox tables (and the NOTIFY trigger on PostgreSQL)."""
    from sqlalchemy.exc import SQLAlchemyError

    from bus.outbox.table import OutboxError, create_outbox

    engine = _engine(db_url)
    try:
        created = create_outbox(engine, _table(table, schema))
    except SQLAlchemyError as exc:
        raise OutboxError(f"cannot create the outbox table: {_reason(exc)}") from None
    finally:
        engine.dispose()
    click.echo(f"outbox table {created.fullname!r} ready")


@outbox.command()
@_db_option
@_table_option
@_schema_option
@click.option("--batch", default=500, show_default=True, help="Rows per claimed batch.")
@click.option(
    "--lease", default=60.0, show_default=True,
    help="Seconds a claimed batch stays this relay's (longer than a batch takes).",
)  # fmt: skip
@click.option(
    "--poll", default=1.0, show_default=True, help="Seconds between polls (NOTIFY wakes sooner)."
)
@click.option("--once", is_flag=True, help="Relay what is due now, then exit.")
@click.option(
    "--stats-every", default=30.0, show_default=True,
    help="Seconds between backlog lines on stderr (0: none).",
)  # fmt: skip
def relay(
    db_url: str,
    table: str,
    schema: str | None,
    batch: int,
    lease: float,
    poll: float,
    once: bool,
    stats_every: float,
) -> None:
    """Publish committed outbox rows with confirms; SIGTERM/SIGINT finish the batch, exit."""
    from sqlalchemy.exc import SQLAlchemyError

    from bus.cli.support import broker_settings
    from bus.outbox.relay import Relay
    from bus.outbox.table import OutboxError

    settings = broker_settings()
    engine = _engine(db_url)
    from producers import SyncPublisher

    publisher = SyncPublisher(settings, connection_name="amqp-bus-outbox-relay").start()
    try:
        worker = Relay(
            engine, publisher, table=_table(table, schema), batch_size=batch, lease=lease,
            poll_interval=poll,
        )  # fmt: skip
        if once:
            try:
                handled = worker.drain()
            except SQLAlchemyError as exc:
                raise OutboxError(f"relaying failed: {_reason(exc)}") from None
            click.echo(f"relayed {worker.stats.published} rows ({handled} handled)")
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        runner = threading.Thread(target=worker.run, args=(stop,), name="outbox-relay")
        runner.start()
        last = time.monotonic()
        while runner.is_alive():
            runner.join(0.5)
            if stats_every > 0 and time.monotonic() - last >= stats_every:
                last = time.monotonic()
                _report(worker)
    finally:
        publisher.close()
        engine.dispose()


def _reason(exc: BaseException) -> str:
    """The driver's first line, without SQLAlchemy's statement dump."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _report(worker: Any) -> None:
    try:
        found = worker.backlog()
    except Exception as exc:  # the database is away: the relay loop says so too
        click.echo(f"outbox: backlog unknown ({type(exc).__name__})", err=True)
        return
    click.echo(
        f"outbox: published {worker.stats.published} ({worker.stats.rate:.0f}/s), "
        f"failed {worker.stats.failed}, pending {found.pending}, "
        f"oldest {found.oldest_age_s:.1f}s",
        err=True,
    )


@outbox.command()
@_db_option
@_table_option
@_schema_option
@click.option("--json", "as_json", is_flag=True, help="Print the backlog as JSON.")
def status(db_url: str, table: str, schema: str | None, as_json: bool) -> None:
    """Rows pending, the oldest one's age and the rows whose publishing failed."""
    from bus.outbox.relay import backlog

    engine = _engine(db_url)
    try:
        found = backlog(engine, _table(table, schema))
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(found.to_data()))
    else:
        click.echo(
            f"pending {found.pending}, oldest {found.oldest_age_s:.1f}s, failing {found.failing}"
        )


COMMANDS: tuple[click.Command, ...] = (outbox,)
