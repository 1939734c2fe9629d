"""Fixtures every suite may use (the broker fixtures come from the ``bus.testing`` plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.celery_worker import Worker

pytest_plugins = ["pytester"]


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Worker processes a test started (it appends them): stopped when it ends, however."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()
