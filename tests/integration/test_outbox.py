"""The transactional outbox end to end: concurrent writers, two relays, the real broker.

``BUS_OUTBOX_N`` sets the number of events of the concurrency test (default 1000); the issue's
figure is 10,000:

    BUS_OUTBOX_N=10000 BUS_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ \
        .venv/bin/pytest tests/integration/test_outbox.py -k concurrent
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pika
import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from bus.outbox import Outbox, Relay, backlog, create_outbox, make_engine, outbox_table
from bus.provision import ProvidedBroker
from bus.publish import Outgoing, PublishResult
from bus.settings import BusSettings
from bus.topology import LoadedTopology, parse_topology
from producers import SyncPublisher
from producers.events import OrderCreated
from tests.support.amqp import declare_with_pika
from tests.support.outbox import TOPOLOGY, order_broken, postgres_database, read_queue

pytestmark = pytest.mark.integration

N = int(os.environ.get("BUS_OUTBOX_N", "1000"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    create_outbox(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def topology(bus_vhost_url: str) -> LoadedTopology:
    loaded = parse_topology(TOPOLOGY)
    declare_with_pika(bus_vhost_url, loaded.expanded)
    return loaded


def _publisher(url: str) -> SyncPublisher:
    return SyncPublisher(BusSettings(amqp_url=url), connection_name="outbox-test").start()


class _MeetingPublisher(SyncPublisher):
    """A relay's publisher that holds the relay's first batch until the other relay has
    claimed a batch too (``meeting``, a barrier of two): both then hold leased rows at once."""

    meeting: threading.Barrier
    met: bool | None = None
    first: frozenset[str] = frozenset()

    def publish_many(
        self, messages: Iterable[Outgoing | BaseModel], **options: Any
    ) -> list[PublishResult]:
        if self.met is None:
            batch = list(messages)
            self.first = frozenset(m.message_id or "" for m in batch if isinstance(m, Outgoing))
            try:
                self.meeting.wait(timeout=60.0)
                self.met = True
            except threading.BrokenBarrierError:
                self.met = False
            messages = batch
        return super().publish_many(messages, **options)


def _wait_empty(engine: Engine, timeout: float) -> None:
    until = time.monotonic() + timeout
    while backlog(engine).pending and time.monotonic() < until:
        time.sleep(0.2)


class _RollBack(Exception):
    """Ends a writer's transaction with a rollback."""


def _writer(
    engine: Engine,
    outbox: Outbox,
    writer: int,
    count: int,
    committed: list[str],
    rolled_back: list[str],
) -> None:
    """``count`` events in transactions of 1-5 events; about one transaction in five rolls
    back. The writer owns its ordering keys, so its commit order is each key's order."""
    rng = random.Random(writer)
    keys = [f"w{writer}-k{k}" for k in range(8)]
    numbers = dict.fromkeys(keys, 0)
    written = 0
    while written < count:
        size = min(rng.randint(1, 5), count - written)
        ids: list[str] = []
        try:
            with Session(engine) as session, session.begin():
                for _ in range(size):
                    if rng.random() < 0.2:  # rows without an ordering key interleave freely
                        order_id, key = f"free-{writer}-{written}-{len(ids)}", None
                    else:
                        order_id = key = rng.choice(keys)
                    numbers[order_id] = numbers.get(order_id, 0) + 1
                    event = OrderCreated(
                        order_id=order_id, customer_id=str(numbers[order_id]), total=Decimal(1)
                    )
                    ids.append(outbox.add(session, event, ordering_key=key))
                if rng.random() < 0.2:
                    raise _RollBack
        except _RollBack:
            rolled_back.extend(ids)
            continue
        committed.extend(ids)
        written += size


def test_concurrent_writers_and_two_relays_deliver_every_committed_event_in_key_order(
    engine: Engine, topology: LoadedTopology, bus_vhost_url: str
) -> None:
    outbox = Outbox(topology)
    committed: list[str] = []
    rolled_back: list[str] = []
    writers = [
        threading.Thread(target=_writer, args=(engine, outbox, w, N // 4, committed, rolled_back))
        for w in range(4)
    ]
    # Each relay publishes its first batch only once the other has claimed one: the two
    # relays share the work whatever the scheduling, and their first batches must not overlap.
    meeting = threading.Barrier(2)
    publishers = [
        _MeetingPublisher(BusSettings(amqp_url=bus_vhost_url), connection_name="outbox-test")
        for _ in range(2)
    ]
    for publisher in publishers:
        publisher.meeting = meeting
        publisher.start()
    # Each relay has its own engine (pool), as two relay processes would.
    url = engine.url.render_as_string(hide_password=False)
    relay_engines = [make_engine(url) for _ in range(2)]
    relays = [
        Relay(e, p, batch_size=100, poll_interval=0.2)
        for e, p in zip(relay_engines, publishers, strict=True)
    ]
    started = time.monotonic()
    for relay in relays:
        relay.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    _wait_empty(engine, timeout=max(60.0, N / 50))
    for relay in relays:
        relay.stop()
    elapsed = time.monotonic() - started
    for publisher in publishers:
        publisher.close()
    for e in relay_engines:
        e.dispose()

    assert backlog(engine).pending == 0
    seen = read_queue(bus_vhost_url, "outbox.all")
    ids = [item.message_id for item in seen]
    assert len(committed) == N // 4 * 4
    assert rolled_back, "the writers roll some transactions back"
    assert set(committed) - set(ids) == set(), "a committed event is missing"
    assert set(rolled_back) & set(ids) == set(), "a rolled-back event was published"
    assert order_broken(seen) == []
    assert sum(relay.stats.published for relay in relays) >= len(committed)
    assert all(p.met for p in publishers), "each relay held a batch while the other claimed one"
    assert publishers[0].first.isdisjoint(publishers[1].first), "a row leased to both relays"
    assert all(relay.stats.published > 0 for relay in relays), "both relays took rows"
    print(
        f"\n{engine.dialect.name}: {len(committed)} committed, {len(rolled_back)} rolled back, "
        f"{len(ids) - len(set(ids))} duplicates, relayed in {elapsed:.1f}s"
    )


def test_unroutable_row_is_kept_with_its_error_and_holds_back_only_its_own_key(
    engine: Engine, topology: LoadedTopology, bus_vhost_url: str
) -> None:
    outbox = Outbox(topology)
    table = outbox_table()
    stray = Outgoing("events", "stray.created", {"order_id": "k1", "customer_id": "1"})
    with Session(engine) as session, session.begin():
        first = outbox.add(session, stray, ordering_key="k1")
        second = outbox.add(
            session, OrderCreated(order_id="k1", customer_id="2", total=Decimal(1)),
            ordering_key="k1",
        )  # fmt: skip
        other = outbox.add(
            session, OrderCreated(order_id="k2", customer_id="1", total=Decimal(1)),
            ordering_key="k2",
        )  # fmt: skip
    publisher = _publisher(bus_vhost_url)
    try:
        relay = Relay(engine, publisher, backoff=30.0)
        assert relay.drain() == 2  # the stray row and k2's row; k1's second row waits
        with engine.connect() as conn:
            rows = {r.message_id: r for r in conn.execute(select(table))}
        assert set(rows) == {first, second}
        assert rows[first].attempts == 1
        assert "312 NO_ROUTE" in rows[first].last_error
        assert rows[first].next_attempt_at > time.time() + 20  # backing off
        assert (rows[second].attempts, rows[second].claimed_by) == (0, None)
        assert [s.message_id for s in read_queue(bus_vhost_url, "outbox.all", idle=1)] == [other]

        # Once a queue takes the stray key and the back-off ends, k1 goes out in order.
        connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
        connection.channel().queue_bind("outbox.all", "events", "stray.#")
        connection.close()
        with engine.begin() as conn:
            conn.execute(update(table).values(next_attempt_at=0))
        relay.drain()
        assert backlog(engine).pending == 0
        seen = read_queue(bus_vhost_url, "outbox.all", idle=1)
        assert [s.message_id for s in seen] == [first, second]
    finally:
        publisher.close()


def test_a_celery_task_row_keeps_the_task_message_properties(
    engine: Engine, topology: LoadedTopology, bus_vhost_url: str
) -> None:
    outbox = Outbox(topology, app_id="outbox-test")
    with Session(engine) as session, session.begin():
        task_id = outbox.add_task(session, "email.send", "consumers.tasks.send_email", ["a@b.c"])
    publisher = _publisher(bus_vhost_url)
    try:
        assert Relay(engine, publisher).drain() == 1
    finally:
        publisher.close()
    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    try:
        method, properties, body = connection.channel().basic_get("email.send", auto_ack=True)
    finally:
        connection.close()
    assert method is not None
    assert properties.correlation_id == task_id == properties.message_id
    assert properties.content_encoding == "utf-8"
    assert properties.headers["task"] == "consumers.tasks.send_email"
    assert properties.headers["id"] == task_id
    assert json.loads(body)[0] == ["a@b.c"]


async def test_add_async_writes_in_the_async_session_transaction(
    db_url: str, topology: LoadedTopology
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    sync_engine = make_engine(db_url)
    create_outbox(sync_engine)
    async_url = db_url.replace("sqlite://", "sqlite+aiosqlite://").replace(
        "postgresql://", "postgresql+psycopg://"
    )
    engine = create_async_engine(async_url)
    outbox = Outbox(topology)
    event = OrderCreated(order_id="a1", customer_id="1", total=Decimal(2))
    try:
        async with AsyncSession(engine) as session, session.begin():
            kept = await outbox.add_async(session, event, ordering_key="a1")
        rolled_back = OrderCreated(order_id="a2", customer_id="1", total=Decimal(2))
        async with AsyncSession(engine) as session:
            await outbox.add_async(session, rolled_back)
            await session.rollback()
        with sync_engine.connect() as conn:
            stored = [r.message_id for r in conn.execute(select(outbox_table()))]
        assert stored == [kept]
    finally:
        await engine.dispose()
        sync_engine.dispose()


def test_cli_creates_the_table_relays_once_and_reports_the_backlog(
    topology: LoadedTopology,
    bus_vhost_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bus.cli import main
    from bus.outbox import outbox_backlog

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["outbox", "init", "--db", url]) == 0
    assert main(["outbox", "init", "--db", url]) == 0  # again: nothing to do
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            ids = [
                Outbox(topology).add(
                    session, OrderCreated(order_id="c", customer_id=str(n), total=Decimal(1))
                )
                for n in range(3)
            ]
    finally:
        engine.dispose()
    pending, oldest = outbox_backlog(url)
    assert pending == 3
    assert oldest >= 0
    capsys.readouterr()
    assert main(["outbox", "status", "--db", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "pending": 3, "oldest_age_s": pytest.approx(oldest, abs=5), "failing": 0
    }  # fmt: skip

    monkeypatch.setenv("BUS_AMQP_URL", bus_vhost_url)
    assert main(["outbox", "relay", "--db", url, "--once"]) == 0
    assert outbox_backlog(url)[0] == 0
    assert [s.message_id for s in read_queue(bus_vhost_url, "outbox.all", idle=1)] == ids

    capsys.readouterr()
    assert main(["outbox", "status", "--db", "nosuchdb://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid --db URL")
    assert len(err.splitlines()) == 1


def test_quick_outbox_bench_runs_next_to_direct_publishing(
    bus_broker: ProvidedBroker, tmp_path: Path
) -> None:
    """Never asserts a figure: only that every case ran and the ratios were paired."""
    pytest.importorskip("psycopg")
    report = tmp_path / "bench.json"
    env = dict(os.environ, BUS_AMQP_URL=bus_broker.amqp_url)
    if bus_broker.management_url:
        env["BUS_MANAGEMENT_URL"] = bus_broker.management_url
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--seconds", "0.5", "--only", "outbox",
         "--json", str(report)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(report.read_text())
    assert set(document["cases"]) == {
        "outbox/pg/ours-sync", "outbox/pg/outbox", "outbox/pg/outbox-k100", "outbox/pg/relay",
    }  # fmt: skip
    assert all(case["spread"]["msg_s"]["median"] > 0 for case in document["cases"].values())
    assert {(r["ours"], r["raw"]) for r in document["ratios"]} == {
        ("outbox", "ours-sync"), ("outbox-k100", "ours-sync"), ("relay", "ours-sync"),
    }  # fmt: skip


def test_a_commit_wakes_an_idle_relay_on_postgresql(
    topology: LoadedTopology, bus_vhost_url: str
) -> None:
    """The relay polls every 10 minutes here: only the insert trigger's NOTIFY can wake it."""
    with postgres_database() as db_url:
        engine = make_engine(db_url)
        create_outbox(engine)
        publisher = _publisher(bus_vhost_url)
        relay = Relay(engine, publisher, poll_interval=600.0)
        try:
            relay.start()
            time.sleep(1.0)  # idle: its first claim found nothing, it waits
            with Session(engine) as session, session.begin():
                event = OrderCreated(order_id="n", customer_id="1", total=Decimal(1))
                sent = Outbox(topology).add(session, event)
            _wait_empty(engine, timeout=60.0)
            assert backlog(engine).pending == 0
            assert relay.stats.published == 1
        finally:
            relay.stop()
            publisher.close()
            engine.dispose()
        seen = read_queue(bus_vhost_url, "outbox.all", idle=1)
        assert [s.message_id for s in seen] == [sent]
