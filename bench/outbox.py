"""Transactional outbox throughput on PostgreSQL, next to direct publishing (``python -m bench``).

Same message as the publish group (256-byte JSON, persistent, confirms, mandatory, a durable
classic queue through the default exchange). The outbox case runs in a fresh process with a
fresh PostgreSQL database (created on ``$BUS_BENCH_OUTBOX_DB``, default the local ``test``
database's server, and dropped after):

  ours sync   producers.SyncPublisher.publish_many, window 1000: publishing with no database
  outbox      4 writer threads commit transactions of 10 ``Outbox.add`` rows for ``seconds``
              while a Relay (its own thread, batches of 500) publishes them; the clock stops
              when the table is empty. msg_s = events committed and relayed per second, end to
              end; commit_s = events committed per second while writing
  outbox k100 the same, the events spread over 100 ordering keys (one row per key in flight)
  relay       the relay alone: 4,000 x ``seconds`` rows committed first, timed until published

    .venv/bin/python -m bench --only outbox [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from typing import Any

from bench._harness import BODY, WARMUP, cpu_seconds, prepare_queue, until

QUEUE = "bench.outbox"
ADMIN_DB = os.environ.get("BUS_BENCH_OUTBOX_DB", "postgresql://postgres@127.0.0.1:5432/test")
PER_TRANSACTION = 10
WRITERS = 4


def group(opts: argparse.Namespace) -> Any:
    from bench.suite import Group

    return Group(
        "outbox",
        f"transactional outbox on PostgreSQL, events/s ({len(BODY)}-byte JSON; {WRITERS} "
        f"writers commit {PER_TRANSACTION} rows per transaction for {opts.seconds:g} s, counted "
        "until the relay has published them all; ours sync publishes the same directly)",
        "msg_s",
        "msg/s",
        ratios=(("outbox", "ours-sync"), ("outbox-k100", "ours-sync"), ("relay", "ours-sync")),
    )


def cases(opts: argparse.Namespace) -> list[Any]:
    from bench.suite import Case

    params = {"seconds": opts.seconds}
    return [
        Case("outbox", "pg", "ours-sync", "bench.publish:ours_sync", {**params, "window": 1000}),
        Case("outbox", "pg", "outbox", "bench.outbox:relayed", {**params, "keys": 0}),
        Case("outbox", "pg", "outbox-k100", "bench.outbox:relayed", {**params, "keys": 100}),
        Case("outbox", "pg", "relay", "bench.outbox:relayed",
             {**params, "keys": 0, "backlog_rows": int(4000 * opts.seconds)}),
    ]  # fmt: skip


def relayed(url: str, seconds: float, keys: int, backlog_rows: int = 0) -> dict[str, Any]:
    """``backlog_rows`` > 0: commit that many rows first, then time the relay alone."""
    import psycopg
    from sqlalchemy.orm import Session

    from bus.outbox import Outbox, Relay, backlog, create_outbox, make_engine
    from bus.outgoing import Outgoing
    from bus.settings import BusSettings
    from producers import SyncPublisher

    prepare_queue(url, QUEUE)
    name = f"bench_outbox_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DB, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db_url = ADMIN_DB.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(db_url, pool_size=WRITERS + 2)
    message = Outgoing("", QUEUE, BODY)
    outbox = Outbox()
    try:
        create_outbox(engine)

        def write(stop: Any, writer: int = 0, counts: list[int] | None = None) -> int:
            count = 0
            for _ in stop:
                with Session(engine) as session, session.begin():
                    for _ in range(PER_TRANSACTION):
                        key = f"k{(count + writer) % keys}" if keys else None
                        outbox.add(session, message, ordering_key=key)
                        count += 1
            if counts is not None:
                counts[writer] = count
            return count

        def write_all(deadline: float) -> int:
            counts = [0] * WRITERS
            threads = [
                threading.Thread(target=write, args=(until(deadline), w, counts))
                for w in range(WRITERS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return sum(counts)

        def drained(deadline: float) -> None:
            while backlog(engine).pending and time.perf_counter() < deadline:
                time.sleep(0.05)

        with SyncPublisher.connect(BusSettings(amqp_url=url)) as publisher:
            relay = Relay(make_engine(db_url), publisher, batch_size=500, poll_interval=0.05)
            relay.start()
            try:
                write(range(WARMUP // PER_TRANSACTION))
                drained(time.perf_counter() + 60)
                prepare_queue(url, QUEUE)
                if backlog_rows:
                    relay.stop()
                    with Session(engine) as session, session.begin():
                        for n in range(backlog_rows):
                            key = f"k{n % keys}" if keys else None
                            outbox.add(session, message, ordering_key=key)
                published = relay.stats.published
                cpu = cpu_seconds()
                start = time.perf_counter()
                if backlog_rows:
                    relay.start()
                    committed = backlog_rows
                else:
                    committed = write_all(start + seconds)
                writing = time.perf_counter() - start
                drained(start + seconds + 300)
                elapsed = time.perf_counter() - start
                cpu = cpu_seconds() - cpu
                left = backlog(engine).pending
            finally:
                relay.stop()
                relay.engine.dispose()
        if left:
            raise SystemExit(f"outbox: {left} rows still pending after the relay's deadline")
        result = {
            "messages": committed,
            "seconds": elapsed,
            "msg_s": committed / elapsed,
            "relayed": float(relay.stats.published - published),
            "cpu": cpu / elapsed,
        }
        if not backlog_rows:
            result["commit_s"] = committed / writing
        return result
    finally:
        engine.dispose()
        prepare_queue(url, QUEUE)
        with psycopg.connect(ADMIN_DB, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
