"""The Celery app of the fault suite: ``bus worker -A tests.faults.tasks:app -Q faults.tasks``.

Built like ``consumers.tasks`` (acks_late, reject_on_worker_lost, confirmed publishing, JSON
only, nothing declared), on the suite's topology (``$BUS_TOPOLOGY``). The one task appends a
``start`` and a ``done`` line to a file named by the caller, so the test sees each run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bus.celery_app import build_app

__all__ = ["app", "work"]

app = build_app(main="tests.faults.tasks")


def _append(path: str, **entry: Any) -> None:
    # One short O_APPEND write per line: concurrent pool processes never interleave.
    line = json.dumps({"pid": os.getpid(), **entry}) + "\n"
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(line)


@app.task(name="tests.faults.tasks.work", bind=True)
def work(self: Any, path: str, seconds: float) -> None:
    """Record a start, sleep ``seconds``, record a done: a task to kill mid-way."""
    _append(path, event="start", task_id=self.request.id)
    if seconds:
        time.sleep(seconds)
    _append(path, event="done", task_id=self.request.id)
