"""The relay: publishes committed outbox rows with confirms, then deletes them.

One cycle claims a batch, publishes it through the publishing core
(:meth:`bus.publish.BlockingPublisher.publish_many`,
pipelined, confirms and ``mandatory`` on), and deletes each row only after its confirm.

*Claiming.* A claim is one ``UPDATE ... RETURNING`` that puts this relay's id and a lease end
on up to ``batch_size`` rows, in ``seq`` order; on PostgreSQL the candidate rows are locked
``FOR UPDATE SKIP LOCKED`` so concurrent relays take different rows without waiting; on SQLite
the write lock serialises claims and the lease does the rest. A row is a candidate when it is
due (``next_attempt_at``), not leased by a live relay, and, when it has an ``ordering_key``, is
the earliest row of that key still in the table. So a key has at most one row in flight, across
every relay: its rows go out in ``seq`` order, one per batch, while other keys and rows without
a key fill the rest of the batch.

*Failures.* A row the broker returned (unroutable), nacked or did not confirm stays, with the
error, ``attempts + 1`` and an exponential back-off; it holds back only the later rows of its own
key. A relay that dies leaves its rows leased: another relay takes them when the lease ends and
publishes them again (a duplicate with the same ``message_id``, which the inbox drops). Hence
the lease must exceed the time a batch takes to publish (the confirm timeout at most).

*Waking up.* On PostgreSQL the relay ``LISTEN``\\s on the channel the table's insert trigger
notifies at commit; it also polls every ``poll_interval`` seconds, which is all it does
elsewhere, and what finds rows whose back-off ended.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Table, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from bus.errors import BusError
from bus.outbox.add import outgoing_from_row
from bus.outbox.table import OutboxError, make_engine, notify_channel, outbox_table
from bus.publish import BlockingPublisher, PublishResult
from bus.settings import BusSettings

__all__ = ["Backlog", "Relay", "RelayStats", "backlog", "outbox_backlog"]

log = logging.getLogger("bus.outbox.relay")

DEFAULT_BATCH = 500
DEFAULT_LEASE = 60.0
DEFAULT_POLL = 1.0


@dataclass(frozen=True)
class Backlog:
    """Rows waiting in the outbox: all of them, the oldest one's age, those that failed."""

    pending: int
    oldest_age_s: float
    failing: int

    def to_data(self) -> dict[str, Any]:
        return {"pending": self.pending, "oldest_age_s": self.oldest_age_s, "failing": self.failing}


@dataclass
class RelayStats:
    """What one relay did; ``rate`` is rows published per second over the last 10 s."""

    published: int = 0
    failed: int = 0
    batches: int = 0
    _recent: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def record(self, published: int, failed: int) -> None:
        self.published += published
        self.failed += failed
        self.batches += 1
        now = time.monotonic()
        self._recent.append((now, published))
        while self._recent and self._recent[0][0] < now - 10.0:
            self._recent.popleft()

    @property
    def rate(self) -> float:
        if not self._recent:
            return 0.0
        span = max(time.monotonic() - self._recent[0][0], 1.0)
        return sum(count for _, count in self._recent) / span


def backlog(engine: Engine, table: Table | None = None) -> Backlog:
    """Pending rows, the age in seconds of the oldest, and how many have failed at least once."""
    table = table if table is not None else outbox_table()
    query = select(
        func.count(), func.min(table.c.created_at), func.count(table.c.last_error)
    ).select_from(table)
    try:
        with engine.connect() as conn:
            pending, oldest, failing = conn.execute(query).one()
    except SQLAlchemyError as exc:
        raise OutboxError(f"cannot read the outbox table {table.name!r}: {_short(exc)}") from None
    age = max(0.0, time.time() - oldest) if oldest is not None else 0.0
    return Backlog(int(pending), age, int(failing))


def outbox_backlog(db_url: str, table: str = "bus_outbox") -> tuple[int, float]:
    """``(pending rows, age in seconds of the oldest)`` of the outbox at ``db_url``."""
    engine = make_engine(db_url)
    try:
        found = backlog(engine, outbox_table(table))
    finally:
        engine.dispose()
    return found.pending, found.oldest_age_s


class Relay:
    """Publishes the outbox of ``engine`` through ``publisher`` (which it does not close).

    ``relay.run(stop)`` loops until ``stop`` is set; ``relay.start()`` runs it in a daemon
    thread of the service (``relay.stop()`` ends it); ``relay.relay_once()`` is one cycle.
    """

    def __init__(
        self,
        engine: Engine,
        publisher: BlockingPublisher,
        *,
        table: Table | None = None,
        batch_size: int = DEFAULT_BATCH,
        lease: float = DEFAULT_LEASE,
        poll_interval: float = DEFAULT_POLL,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        listen: bool = True,
        relay_id: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if lease <= 0 or poll_interval <= 0 or backoff <= 0:
            raise ValueError("lease, poll_interval and backoff must be positive")
        self.engine = engine
        self.publisher = publisher
        self.table = table if table is not None else outbox_table()
        self.batch_size = batch_size
        self.lease = lease
        self.poll_interval = poll_interval
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.listen = listen
        self.relay_id = relay_id or uuid.uuid4().hex
        self.stats = RelayStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owned = False

    @classmethod
    def connect(cls, db_url: str, settings: BusSettings, **options: Any) -> Relay:
        """A relay with its own engine and publisher (connected now; :meth:`close` them)."""
        publisher = BlockingPublisher(settings, connection_name="amqp-bus-outbox-relay").start()
        relay = cls(make_engine(db_url), publisher, **options)
        relay._owned = True
        return relay

    def close(self) -> None:
        """Stop the thread; close the engine and publisher :meth:`connect` opened."""
        self.stop()
        if self._owned:
            self.publisher.close()
            self.engine.dispose()

    # -- one cycle --------------------------------------------------------------------------
    def claim(self) -> list[Mapping[str, Any]]:
        """Lease the next batch to this relay; rows in ``seq`` order."""
        t = self.table
        now = time.time()
        o, p = t.alias("o"), t.alias("p")
        earlier = (
            select(p.c.seq).where(p.c.ordering_key == o.c.ordering_key, p.c.seq < o.c.seq).exists()
        )
        candidates = (
            select(o.c.seq)
            .where(
                o.c.next_attempt_at <= now,
                or_(o.c.claimed_until.is_(None), o.c.claimed_until < now),
                or_(o.c.ordering_key.is_(None), ~earlier),
            )
            .order_by(o.c.seq)
            .limit(self.batch_size)
        )
        if self.engine.dialect.name == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True, of=o)
        claim = (
            update(t)
            .where(t.c.seq.in_(candidates.scalar_subquery()))
            .values(claimed_by=self.relay_id, claimed_until=now + self.lease)
            .returning(*t.c)
        )
        with self.engine.begin() as conn:
            rows: list[Mapping[str, Any]] = [dict(row._mapping) for row in conn.execute(claim)]
        rows.sort(key=lambda row: int(row["seq"]))
        return rows

    def relay_once(self) -> int:
        """Claim, publish and settle one batch; returns how many rows it handled."""
        rows = self.claim()
        if not rows:
            return 0
        results = self.publisher.publish_many([outgoing_from_row(row) for row in rows])
        self._settle(rows, results)
        return len(rows)

    def drain(self, timeout: float = 60.0) -> int:
        """Relay until no row is due (back-off rows wait); returns the rows handled."""
        handled, until = 0, time.monotonic() + timeout
        while time.monotonic() < until:
            done = self.relay_once()
            if done == 0:
                break
            handled += done
        return handled

    def _settle(self, rows: Sequence[Mapping[str, Any]], results: Sequence[PublishResult]) -> None:
        t = self.table
        confirmed = [row["seq"] for row, result in zip(rows, results, strict=True) if result.ok]
        failed = [
            (row, result.error)
            for row, result in zip(rows, results, strict=True)
            if result.error is not None
        ]
        now = time.time()
        # The rows are published: keep trying to record that until the lease runs out, so a
        # database hiccup costs a retry here, not a duplicate on the broker.
        until = time.monotonic() + self.lease
        while True:
            try:
                with self.engine.begin() as conn:
                    if confirmed:
                        conn.execute(
                            delete(t).where(t.c.seq.in_(confirmed), t.c.claimed_by == self.relay_id)
                        )
                    for row, error in failed:
                        attempts = int(row["attempts"]) + 1
                        delay = min(self.max_backoff, self.backoff * 2 ** (attempts - 1))
                        conn.execute(
                            update(t)
                            .where(t.c.seq == row["seq"], t.c.claimed_by == self.relay_id)
                            .values(
                                attempts=attempts,
                                last_error=f"{type(error).__name__}: {error}"[:2000],
                                next_attempt_at=now + delay,
                                claimed_by=None,
                                claimed_until=None,
                            )
                        )
                break
            except SQLAlchemyError as exc:
                if time.monotonic() >= until or self._stop.is_set():
                    raise
                log.warning("outbox relay: recording a batch failed, retrying: %s", _short(exc))
                time.sleep(min(self.poll_interval, 1.0))
        self.stats.record(len(confirmed), len(failed))
        for row, error in failed:
            log.warning(
                "outbox row %s (message_id %s) not published, attempt %s: %s",
                row["seq"], row["message_id"], int(row["attempts"]) + 1, error,
            )  # fmt: skip

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Relay until ``stop`` (or :meth:`stop`) is set; database errors are logged and
        retried after ``poll_interval``."""
        stop = stop if stop is not None else self._stop
        waiter = _Waiter(self, stop)
        try:
            while not stop.is_set():
                try:
                    handled = self.relay_once()
                except (SQLAlchemyError, BusError) as exc:
                    log.warning("outbox relay: %s, retrying: %s", type(exc).__name__, _short(exc))
                    waiter.close()
                    stop.wait(self.poll_interval)
                    continue
                if handled == 0:
                    waiter.wait(self.poll_interval)
        finally:
            waiter.close()

    def start(self) -> Relay:
        """Run :meth:`run` in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self.run, name=f"outbox-relay-{self.relay_id[:8]}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Let the current batch finish and end the thread."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def backlog(self) -> Backlog:
        return backlog(self.engine, self.table)


class _Waiter:
    """Sleeps until ``NOTIFY`` (PostgreSQL, psycopg 3), ``poll_interval`` or ``stop``."""

    def __init__(self, relay: Relay, stop: threading.Event) -> None:
        self.relay = relay
        self.stop = stop
        self.conn: Any = None
        self.usable = relay.listen and relay.engine.dialect.name == "postgresql"

    def _listen(self) -> Any:
        if self.conn is None and self.usable:
            try:
                import psycopg

                url = self.relay.engine.url.set(drivername="postgresql")
                conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
                channel = notify_channel(self.relay.table).replace('"', '""')
                conn.execute(f'LISTEN "{channel}"')
                self.conn = conn
            except Exception as exc:  # no psycopg, no connection: polling still works
                log.info("outbox relay: LISTEN unavailable, polling only: %s", _short(exc))
                self.usable = False
        return self.conn

    def wait(self, seconds: float) -> None:
        conn = self._listen()
        if conn is None:
            self.stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        try:
            # In slices, so that a stop request (SIGTERM) is seen within half a second.
            while not self.stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                for _ in conn.notifies(timeout=min(left, 0.5), stop_after=1):
                    return
        except Exception as exc:  # a lost connection: listen again next time
            log.info("outbox relay: LISTEN connection lost: %s", _short(exc))
            self.close()
            self.stop.wait(min(seconds, 1.0))

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _short(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
