"""Waiting, in a synchronous test, for something another process or thread brings about."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["DEADLINE", "wait_for"]

DEADLINE = 60.0


def wait_for(
    predicate: Callable[[], Any], what: str, deadline: float = DEADLINE, interval: float = 0.1
) -> Any:
    """Poll ``predicate`` every ``interval`` s until it returns something true, and return
    that; fails the test saying ``what`` it waited for after ``deadline`` s."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
