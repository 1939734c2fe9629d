"""Replay and purge: move selected dead letters, leave the others in place and in order.

A run is a series of passes over the queue (:class:`bus.dlq_read.QueuePass`). A pass takes
the messages unacked, in order; the selected ones are copied through
:class:`bus.dlq_publish.CopyPublisher` (confirms + ``mandatory``); after the copies of the
pass are confirmed, the pass acks exactly those dead letters and closes its channel, which
hands every other message back where it was. Nothing is acked before its copy is confirmed.

A lost connection ends the pass: the broker puts every unacked message back in order, and
the run goes on with a new pass. A copy confirmed before the cut whose dead letter comes
back is acked without a second copy (``recovered``): it is recognised by its message id,
body and headers. A copy whose confirm never came may or may not have arrived: it is sent
again, and counted in ``possible_duplicates``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bus.broker.management import ManagementClient
from bus.dlq import (
    EVERYTHING,
    Selection,
    check_delivery_limit,
    delivery_limit,
    replay_headers,
    replay_target,
)
from bus.dlq_publish import CopyItem, CopyPublisher, is_definite
from bus.dlq_read import DeadLetter, PassLost, QueuePass
from bus.errors import BrokerError, BusError
from bus.settings import BusSettings

__all__ = ["ReplayReport", "purge", "replay"]

Identity = tuple[str, str, str]
Progress = Callable[["ReplayReport"], None]

# prefetch_count is an AMQP short: a pass holds at most this many messages.
_MAX_PASS = 65535


@dataclass
class ReplayReport:
    """Outcome of :func:`replay` or :func:`purge` (``action``: replay or purge)."""

    queue: str
    action: str
    dry_run: bool = False
    depth: int = 0
    selected: int = 0
    replayed: int = 0
    purged: int = 0
    left: int = 0
    failed: int = 0
    recovered: int = 0
    possible_duplicates: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    planned: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def summary(self) -> str:
        done = self.purged if self.action == "purge" else self.replayed
        verb = "purged" if self.action == "purge" else "replayed"
        if self.dry_run:
            verb = f"would be {verb}"
            done = self.selected
        text = (
            f"{self.queue}: selected {self.selected}, {verb} {done}, left {self.left}, "
            f"failed {self.failed}"
        )
        if self.recovered or self.possible_duplicates or self.reconnects:
            text += (
                f" (reconnects {self.reconnects}, recovered {self.recovered}, possible "
                f"duplicates {self.possible_duplicates})"
            )
        return text

    def to_data(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class _Run:
    """State that outlives a pass: what was confirmed, what is uncertain, what was counted."""

    def __init__(self, report: ReplayReport, selection: Selection) -> None:
        self.report = report
        self.selection = selection
        self.maybe_back: Counter[Identity] = Counter()
        self.uncertain: set[Identity] = set()
        self.sent_ids: set[str] = set()
        self.selected: set[Identity] = set()
        self.skipped: set[Identity] = set()
        self.failed: dict[Identity, str] = {}

    def full(self) -> bool:
        limit = self.selection.limit
        done = self.report.replayed + self.report.purged
        return limit is not None and done >= limit

    def settle_counts(self) -> None:
        report = self.report
        report.selected = len(self.selected)
        report.failed = len(self.failed)
        report.failures = dict(Counter(self.failed.values()).most_common())
        report.left = len(self.skipped) + report.failed


def replay(
    settings: BusSettings,
    queue: str,
    selection: Selection = EVERYTHING,
    *,
    to_exchange: bool = False,
    rate: float | None = None,
    dry_run: bool = False,
    batch: int = 500,
    management: ManagementClient | None = None,
    progress: Progress | None = None,
    max_reconnects: int = 10,
) -> ReplayReport:
    """Send the selected dead letters of ``queue`` back (see the module docstring)."""
    return _execute(
        settings, queue, selection, "replay", to_exchange=to_exchange, rate=rate,
        dry_run=dry_run, batch=batch, management=management, progress=progress,
        max_reconnects=max_reconnects,
    )  # fmt: skip


def purge(
    settings: BusSettings,
    queue: str,
    selection: Selection = EVERYTHING,
    *,
    dry_run: bool = False,
    management: ManagementClient | None = None,
    progress: Progress | None = None,
    max_reconnects: int = 10,
) -> ReplayReport:
    """Delete the selected dead letters of ``queue``; the others stay in place and in order."""
    return _execute(
        settings, queue, selection, "purge", to_exchange=False, rate=None, dry_run=dry_run,
        batch=1000, management=management, progress=progress, max_reconnects=max_reconnects,
    )  # fmt: skip


def _execute(
    settings: BusSettings,
    queue: str,
    selection: Selection,
    action: str,
    *,
    to_exchange: bool,
    rate: float | None,
    dry_run: bool,
    batch: int,
    management: ManagementClient | None,
    progress: Progress | None,
    max_reconnects: int,
) -> ReplayReport:
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    started = time.monotonic()
    report = ReplayReport(queue, action, dry_run=dry_run)
    run = _Run(report, selection)
    check_delivery_limit(settings, queue, delivery_limit(management, settings.vhost, queue))
    publisher = CopyPublisher(settings) if action == "replay" and not dry_run else None
    if rate is not None:
        batch = max(1, min(batch, int(rate / 5) or 1))
    depth: int | None = None
    consumed = losses = stalls = 0
    try:
        while True:
            reading = QueuePass(settings, queue, connection_name=f"amqp-bus-dlq-{action}")
            try:
                now = reading.open()
                if depth is None:
                    depth = report.depth = now
                # Every message of the original depth not acked yet: what a pass leaves comes
                # back ahead of (classic: in place of) what it did not reach.
                remaining = depth - consumed
                if remaining <= 0 or run.full():
                    reading.close()
                    break
                wanted = min(remaining, _MAX_PASS)
                messages = reading.read(wanted)
                acked, stopped = _one_pass(run, reading, messages, publisher, to_exchange,
                                           batch, rate, started, progress)  # fmt: skip
                if not dry_run:
                    reading.finish()
            except PassLost as exc:
                reading.close()
                losses += 1
                report.reconnects += 1
                if losses > max_reconnects:
                    run.settle_counts()
                    raise BrokerError(
                        f"gave up after {max_reconnects} lost connections ({exc}); so far: "
                        f"{report.summary()}"
                    ) from None
                time.sleep(min(0.2 * 2**losses, 5.0))
                continue
            finally:
                reading.close()
            losses = 0
            consumed += acked
            if dry_run:
                break
            if stopped:
                # A copy's fate is unknown or the rest of its batch was not sent: a new pass
                # sends them again, in order. Give up when passes stop making progress.
                stalls = 0 if acked else stalls + 1
                if stalls > max_reconnects:
                    run.settle_counts()
                    raise BrokerError(
                        f"no progress after {max_reconnects} passes; so far: {report.summary()}"
                    )
                continue
            if len(messages) < wanted or wanted == remaining:
                break  # every message of the queue was looked at
            if acked == 0:
                report.notes.append(
                    f"stopped: {_MAX_PASS} messages that stay come first; narrow the selection"
                )
                break
    finally:
        if publisher is not None:
            publisher.close()
        run.settle_counts()
        report.seconds = round(time.monotonic() - started, 3)
    if progress is not None:
        progress(report)
    return report


def _one_pass(
    run: _Run,
    reading: QueuePass,
    messages: list[DeadLetter],
    publisher: CopyPublisher | None,
    to_exchange: bool,
    batch: int,
    rate: float | None,
    started: float,
    progress: Progress | None,
) -> tuple[int, bool]:
    """Copy and ack the selected messages of one pass: (how many were acked, whether it
    stopped early because a copy's fate is unknown or was not sent)."""
    report, selection = run.report, run.selection
    to_ack: list[int] = []
    confirmed: list[Identity] = []
    recovered: list[Identity] = []
    purged = 0
    pending: list[tuple[DeadLetter, Identity, CopyItem]] = []
    stop = False

    def publish_pending() -> None:
        nonlocal stop
        if publisher is None or not pending:
            return
        # A pass whose own connection is gone can ack nothing: end it before sending more.
        reading.flush()
        results = publisher.publish_in_order([item for _, _, item in pending])
        for (dead, identity, _item), result in zip(pending, results, strict=True):
            if result.error is None:
                to_ack.append(dead.delivery_tag)
                confirmed.append(identity)
                run.sent_ids.add(dead.message_id or "")
                run.failed.pop(identity, None)
                report.replayed += 1
                if identity in run.uncertain:
                    run.uncertain.discard(identity)
                    report.possible_duplicates += 1
            elif is_definite(result.error):
                if type(result.error).__name__ == "NotSentError":
                    stop = True
                else:
                    run.failed[identity] = _why(result.error)
            else:
                run.uncertain.add(identity)
                stop = True
        pending.clear()
        if rate is not None:
            ahead = report.replayed / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if progress is not None:
            progress(report)

    try:
        for dead in messages:
            if stop:
                break
            identity = dead.identity()
            if run.maybe_back[identity] > 0:
                # Its copy was confirmed before a lost connection: ack, never a second copy.
                run.maybe_back[identity] -= 1
                to_ack.append(dead.delivery_tag)
                recovered.append(identity)
                report.recovered += 1
                continue
            again = publisher is not None and (dead.message_id or "") in run.sent_ids
            if identity in run.failed:
                continue  # refused earlier in this run (unroutable, nacked...): it stays
            if run.full() or again or not selection.matches(dead):
                # ``again``: a copy sent by this run failed and came back; it stays.
                run.skipped.add(identity)
                continue
            run.skipped.discard(identity)
            run.selected.add(identity)
            if report.action == "purge" or report.dry_run:
                _plan(run, dead, identity, to_exchange)
                if report.action == "purge" and not report.dry_run:
                    to_ack.append(dead.delivery_tag)
                    purged += 1
                    report.purged += 1
                continue
            try:
                exchange, key = replay_target(dead, to_exchange=to_exchange)
            except BusError as exc:
                run.failed[identity] = str(exc)
                continue
            pending.append((dead, identity, _copy(dead, exchange, key)))
            if len(pending) >= batch:
                publish_pending()
        publish_pending()
        for tag in to_ack:
            reading.ack(tag)
    except PassLost:
        # None of this pass's acks is known to have been applied: its messages come back.
        run.maybe_back.update(confirmed)
        run.maybe_back.update(recovered)
        report.recovered -= len(recovered)
        report.purged -= purged
        raise
    return len(to_ack), stop


def _plan(run: _Run, dead: DeadLetter, identity: Identity, to_exchange: bool) -> None:
    report = run.report
    if not report.dry_run:
        return
    entry: dict[str, Any] = {"message_id": dead.message_id, "reason": dead.reason}
    if report.action == "replay":
        try:
            entry["exchange"], entry["routing_key"] = replay_target(dead, to_exchange=to_exchange)
        except BusError as exc:
            run.failed[identity] = str(exc)
            entry["error"] = str(exc)
    report.planned.append(entry)


def _copy(dead: DeadLetter, exchange: str, key: str) -> CopyItem:
    props = dead.properties
    return CopyItem(
        exchange,
        key,
        dead.body,
        headers=replay_headers(dead),
        event_type=props.type,
        # Returns are matched by message id: a copy never goes out without one.
        message_id=dead.message_id or str(uuid.uuid4()),
        correlation_id=props.correlation_id,
        persistent=props.delivery_mode == 2,
        properties=props,
    )


def _why(error: Exception) -> str:
    return " ".join(str(error).split())
