"""The outbox loses nothing when its relay dies or its database connections are killed.

Both tests count the duplicates the recovery publishes, and run every delivery through a
:class:`DatabaseInbox` as a consumer would: it must drop exactly those duplicates.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from bus.outbox import DatabaseInbox, Outbox, Relay, backlog, create_outbox, make_engine
from bus.outbox.table import outbox_table
from bus.settings import BusSettings
from bus.topology import parse_topology
from consumers import Backoff, ConsumerApp, IdempotencyStore, Message
from producers import SyncPublisher
from producers.events import OrderCreated
from tests.support.amqp import declare_with_pika
from tests.support.outbox import (
    TOPOLOGY,
    Seen,
    order_broken,
    postgres_database,
    read_queue,
    terminate_connections,
)

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("BUS_OUTBOX_FAULT_N", "3000"))


def _fill(engine: Engine, vhost_url: str, count: int) -> list[str]:
    """``count`` committed events over 20 ordering keys, numbered per key."""
    loaded = parse_topology(TOPOLOGY)
    declare_with_pika(vhost_url, loaded.expanded)
    create_outbox(engine)
    outbox = Outbox(loaded)
    ids: list[str] = []
    for start in range(0, count, 500):
        with Session(engine) as session, session.begin():
            for n in range(start, min(start + 500, count)):
                key = f"k{n % 20}"
                event = OrderCreated(order_id=key, customer_id=str(n), total=Decimal(1))
                ids.append(outbox.add(session, event, ordering_key=key))
    return ids


def _relay_until_empty(engine: Engine, vhost_url: str, timeout: float = 60.0) -> None:
    publisher = SyncPublisher(BusSettings(amqp_url=vhost_url)).start()
    try:
        relay = Relay(engine, publisher, lease=2.0, poll_interval=0.2)
        until = time.monotonic() + timeout
        while backlog(engine).pending and time.monotonic() < until:
            if relay.relay_once() == 0:
                time.sleep(0.2)  # the dead relay's lease has not ended yet
    finally:
        publisher.close()


def _through_inbox(seen: list[Seen], tmp_path: Path) -> tuple[int, int]:
    """Handle every delivery with the inbox in the handler's transaction: (ran, dropped)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'consumer.db'}")
    create_outbox(engine)
    inbox = DatabaseInbox(engine)
    ran = dropped = 0
    try:
        for item in seen:
            with Session(engine) as session, session.begin():
                if inbox.claim(session, f"outbox.all:{item.message_id}"):
                    ran += 1
                else:
                    dropped += 1
    finally:
        engine.dispose()
    return ran, dropped


def _check(committed: list[str], vhost_url: str, tmp_path: Path) -> int:
    seen = read_queue(vhost_url, "outbox.all")
    ids = [item.message_id for item in seen]
    assert set(committed) - set(ids) == set(), "a committed event was lost"
    assert len(set(ids)) == len(committed)
    assert order_broken(seen) == []
    duplicates = len(ids) - len(set(ids))
    assert _through_inbox(seen, tmp_path) == (len(committed), duplicates)
    return duplicates


def test_relay_killed_mid_batch_loses_nothing(
    db_url: str, bus_vhost_url: str, tmp_path: Path
) -> None:
    engine = make_engine(db_url)
    table = outbox_table()
    try:
        committed = _fill(engine, bus_vhost_url, EVENTS)
        relay = subprocess.Popen(
            [sys.executable, "-m", "bus", "outbox", "relay", "--db", db_url, "--batch", "500",
             "--lease", "2", "--poll", "0.2", "--stats-every", "0"],
            env={**os.environ, "BUS_AMQP_URL": bus_vhost_url},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            # Kill it once it has published some rows and holds a claimed batch.
            until = time.monotonic() + 60
            held = 0
            while time.monotonic() < until and relay.poll() is None:
                with engine.connect() as conn:
                    pending, held = conn.execute(
                        select(func.count(), func.count(table.c.claimed_by))
                    ).one()
                if pending <= EVENTS - 500 and held:
                    break
                time.sleep(0.01)
            assert relay.poll() is None, relay.stderr.read() if relay.stderr else ""
            relay.send_signal(signal.SIGKILL)
        finally:
            relay.kill()
            _, err = relay.communicate(timeout=30)
        assert relay.returncode == -signal.SIGKILL, err
        left = backlog(engine).pending
        assert 0 < left < EVENTS

        _relay_until_empty(engine, bus_vhost_url)
        assert backlog(engine).pending == 0
        duplicates = _check(committed, bus_vhost_url, tmp_path)
        print(f"\n{engine.dialect.name}: killed with {left} rows left ({held} claimed), "
              f"{duplicates} duplicates dropped by the inbox")  # fmt: skip
    finally:
        engine.dispose()


def test_database_connections_killed_during_batches_lose_nothing(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    with postgres_database() as db_url:
        engine = make_engine(db_url)
        try:
            committed = _fill(engine, bus_vhost_url, EVENTS)
            publisher = SyncPublisher(BusSettings(amqp_url=bus_vhost_url)).start()
            relay_engine = make_engine(db_url)
            relay = Relay(relay_engine, publisher, batch_size=200, lease=2.0, poll_interval=0.2)
            relay.start()
            kills = rounds = 0
            try:
                until = time.monotonic() + 120
                while backlog(engine).pending and time.monotonic() < until:
                    kills += terminate_connections(db_url)
                    rounds += 1
                    time.sleep(0.15)
                assert backlog(engine).pending == 0
            finally:
                relay.stop()
                publisher.close()
                relay_engine.dispose()
            assert rounds >= 2
            assert kills > 0
            duplicates = _check(committed, bus_vhost_url, tmp_path)
            print(f"\npostgresql: {kills} connections killed in {rounds} rounds, "
                  f"{duplicates} duplicates dropped by the inbox")  # fmt: skip
        finally:
            engine.dispose()


def test_inbox_mark_commits_and_rolls_back_with_the_handler_transaction(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'inbox.db'}")
    create_outbox(engine)
    inbox = DatabaseInbox(engine)
    try:
        with Session(engine) as session:
            session.begin()
            assert inbox.claim(session, "q:1")
            session.rollback()  # the handler failed: its effect and its mark go together
        with Session(engine) as session, session.begin():
            assert inbox.claim(session, "q:1"), "the failed run left no mark"
        with Session(engine) as session, session.begin():
            assert not inbox.claim(session, "q:1")
    finally:
        engine.dispose()


async def test_inbox_is_the_runtime_idempotency_store_sync_and_async(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inbox.db'}"
    sync_engine = make_engine(url)
    create_outbox(sync_engine)
    async_engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://"))
    try:
        for inbox in (DatabaseInbox(sync_engine), DatabaseInbox(async_engine)):
            assert isinstance(inbox, IdempotencyStore)
            key = f"q:{id(inbox)}"
            assert not await inbox.seen(key)
            await inbox.remember(key)
            await inbox.remember(key)  # the handler recorded it already: no error
            assert await inbox.seen(key)
        async with AsyncSession(async_engine) as session, session.begin():
            assert await DatabaseInbox(async_engine).claim_async(session, "q:async")
        async with AsyncSession(async_engine) as session, session.begin():
            assert not await DatabaseInbox(async_engine).claim_async(session, "q:async")
    finally:
        await async_engine.dispose()
        sync_engine.dispose()


async def test_inbox_in_the_consumer_runtime_applies_each_event_once(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    """Handlers record the key in their own transaction: a failed run leaves neither effect
    nor mark, and a duplicate arriving at a fresh process (no memory of the first) is dropped."""
    loaded = parse_topology(TOPOLOGY)
    declare_with_pika(bus_vhost_url, loaded.expanded)
    url = f"sqlite:///{tmp_path / 'consumer.db'}"
    sync_engine = make_engine(url)
    create_outbox(sync_engine)
    effects = Table("effects", MetaData(), Column("order_id", String(64)))
    effects.create(sync_engine)
    engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://"))
    inbox = DatabaseInbox(engine)
    failed_once: list[str] = []

    def app() -> ConsumerApp:
        consumer = ConsumerApp("inbox", idempotency_store=inbox, backoff=Backoff(0.05, 0.2))

        @consumer.handler("outbox.all", idempotent=True)
        async def apply(event: OrderCreated, message: Message) -> None:
            async with AsyncSession(engine) as session, session.begin():
                if not await inbox.claim_async(session, message):
                    return
                await session.execute(insert(effects).values(order_id=event.order_id))
                if event.order_id == "flaky" and not failed_once:
                    failed_once.append(event.order_id)
                    raise RuntimeError("fails after its effect: the transaction rolls back")

        return consumer

    def applied() -> list[str]:
        with sync_engine.connect() as conn:
            return sorted(row.order_id for row in conn.execute(select(effects)))

    async def until_applied(expected: list[str]) -> None:
        for _ in range(200):
            if applied() == expected:
                return
            await asyncio.sleep(0.05)

    def send(*order_ids: str) -> None:
        with SyncPublisher.connect(BusSettings(amqp_url=bus_vhost_url), loaded) as publisher:
            for order_id in order_ids:
                event = OrderCreated(order_id=order_id, customer_id="c", total=Decimal(1))
                publisher.publish(event, message_id=f"id-{order_id}")

    settings = BusSettings(amqp_url=bus_vhost_url)
    try:
        async with app().serve(settings, topology=loaded):
            send("a", "flaky", "a")
            await until_applied(["a", "flaky"])
        async with app().serve(settings, topology=loaded):  # a new process: no memory
            send("a", "flaky", "b")
            await until_applied(["a", "b", "flaky"])
            await asyncio.sleep(0.3)
        assert failed_once == ["flaky"]
        assert applied() == ["a", "b", "flaky"]
        assert read_queue(bus_vhost_url, "outbox.all", idle=0.5) == []
    finally:
        await engine.dispose()
        sync_engine.dispose()
