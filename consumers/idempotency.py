"""Idempotency hook: run a handler once per message id, even when the broker redelivers.

Redelivery is normal in at-least-once messaging (a connection lost before the ack, a consumer
stopped past its grace period). A handler registered with ``idempotent=True`` is skipped, and
the message acked, when its key was recorded by an earlier successful run. The key is
``"<queue>:<message_id>"``, so the same event fanned out to two queues runs once in each.
A message without ``message_id`` cannot be deduplicated and always runs.

The store is pluggable (:class:`IdempotencyStore`); :class:`MemoryIdempotencyStore` keeps the
most recent keys of this process, so it only covers redeliveries to the same process. Use a
shared store (Redis, a database table with a unique key) when several consumers serve a queue.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol, runtime_checkable

__all__ = ["IdempotencyStore", "MemoryIdempotencyStore"]


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where keys of successfully handled messages are recorded."""

    async def seen(self, key: str) -> bool:
        """True when ``key`` was recorded by :meth:`remember`."""
        ...

    async def remember(self, key: str) -> None:
        """Record ``key`` after its handler succeeded (before the ack is sent)."""
        ...


class MemoryIdempotencyStore:
    """In-process store of the ``max_size`` most recently remembered keys (LRU)."""

    def __init__(self, max_size: int = 100_000) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    async def seen(self, key: str) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    async def remember(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_size:
            self._keys.popitem(last=False)
