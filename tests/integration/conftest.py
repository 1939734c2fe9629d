"""Fixtures more than one integration module uses."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus.broker.management import ManagementClient
from bus.settings import BusSettings
from tests.support.outbox import outbox_database


@pytest.fixture
def settings(bus_vhost_url: str) -> BusSettings:
    """Settings for the test's vhost, AMQP only (modules that also need the management API
    define their own ``settings``)."""
    return BusSettings(amqp_url=bus_vhost_url)


@pytest.fixture
def spare_vhost(bus_management: ManagementClient) -> Iterator[Callable[[str], str]]:
    """Names for vhosts a test has created by ``apply`` or by hand, besides its own: each name
    is unique and its vhost is deleted after the test, whether it was created or not."""
    names: list[str] = []

    def name(prefix: str) -> str:
        names.append(f"{prefix}-{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield name
    for made in names:
        bus_management.delete_vhost(made)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database for the outbox: SQLite, then PostgreSQL (skipped when
    the local PostgreSQL is not reachable)."""
    with outbox_database(request.param, tmp_path) as url:
        yield url
