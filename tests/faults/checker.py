"""The total-queue check (as in RabbitMQ's Jepsen tests) over uniquely identified messages."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class TotalQueue:
    """Records what was sent, confirmed and consumed, and judges the run.

    - lost: confirmed but never consumed (must be 0);
    - unexpected: consumed but never sent (must be 0);
    - duplicates: extra deliveries of a consumed id (allowed: at-least-once; counted);
    - unconfirmed: sent but neither confirmed nor reported failed (must be 0: every publish
      call either confirms or raises).
    """

    sent: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    consumed: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_sent(self, message_id: str) -> None:
        with self._lock:
            self.sent.add(message_id)

    def on_confirmed(self, message_id: str) -> None:
        with self._lock:
            self.confirmed.add(message_id)

    def on_failed(self, message_id: str) -> None:
        with self._lock:
            self.failed.add(message_id)

    def on_consumed(self, message_id: str) -> None:
        with self._lock:
            self.consumed[message_id] += 1

    def merge(self, other: TotalQueue) -> None:
        """Add everything ``other`` recorded (a part of the run checked on its own)."""
        with self._lock:
            self.sent |= other.sent
            self.confirmed |= other.confirmed
            self.failed |= other.failed
            self.consumed.update(other.consumed)

    @property
    def lost(self) -> set[str]:
        return self.confirmed - set(self.consumed)

    @property
    def unexpected(self) -> set[str]:
        return set(self.consumed) - self.sent

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.consumed.values())

    @property
    def unresolved(self) -> set[str]:
        return self.sent - self.confirmed - self.failed

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected and not self.unresolved

    def row(self, scenario: str) -> dict[str, object]:
        return {
            "scenario": scenario,
            "sent": len(self.sent),
            "confirmed": len(self.confirmed),
            "failed": len(self.failed),
            "consumed": len(self.consumed),
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "unexpected": len(self.unexpected),
            "result": "PASS" if self.ok else "FAIL",
        }

    def assert_ok(self) -> None:
        assert not self.unresolved, f"{len(self.unresolved)} publishes neither confirmed nor raised"
        assert not self.lost, (
            f"{len(self.lost)} confirmed messages lost, e.g. {sorted(self.lost)[:5]}"
        )
        assert not self.unexpected, f"{len(self.unexpected)} unexpected messages"
