"""Fixtures more than one integration module uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.settings import BusSettings
from tests.support.outbox import outbox_database


@pytest.fixture
def settings(bus_vhost_url: str) -> BusSettings:
    """Settings for the test's vhost, AMQP only (modules that also need the management API
    define their own ``settings``)."""
    return BusSettings(amqp_url=bus_vhost_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database for the outbox: SQLite, then PostgreSQL (skipped when
    the local PostgreSQL is not reachable)."""
    with outbox_database(request.param, tmp_path) as url:
        yield url
