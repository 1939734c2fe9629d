"""A `management`-tagged user (not an administrator) gets the full management-API view.

RabbitMQ 3.10 answers GET /api/vhosts/<name> only to administrators; the client falls back
to the vhost listing, so plan, export and status need no administrator rights.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from bus.broker import apply
from bus.broker.management import ManagementClient
from bus.cli import main
from bus.provision import ProvidedBroker
from bus.settings import BusSettings
from bus.topology import LoadedTopology


@pytest.fixture
def management_user_url(
    bus_vhost: str, bus_vhost_url: str, bus_management: ManagementClient
) -> Iterator[str]:
    user, password = f"bus-mgmt-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    bus_management.create_user(user, password, tags="management")
    bus_management.set_permissions(bus_vhost, user)
    parts = urlsplit(bus_vhost_url)
    netloc = f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}"
    try:
        yield urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    finally:
        bus_management.delete_user(user)


def test_plan_export_and_status_work_for_a_management_user(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bus_broker: ProvidedBroker,
    bus_vhost: str,
    bus_vhost_url: str,
    bus_topology: LoadedTopology,
    management_user_url: str,
) -> None:
    apply(
        bus_topology, BusSettings(amqp_url=bus_vhost_url, management_url=bus_broker.management_url)
    )
    monkeypatch.setenv("BUS_AMQP_URL", management_user_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_broker.management_url)

    with ManagementClient.from_settings(BusSettings()) as api:
        seen = api.vhost(bus_vhost)
    assert seen is not None
    assert seen["name"] == bus_vhost

    assert main(["plan", "--detailed-exitcode"]) == 0
    out = capsys.readouterr().out
    assert "Not verified" not in out
    assert main(["export"]) == 0
    assert "billing.orders" in capsys.readouterr().out
    assert main(["status", "--allow-idle", ".*"]) == 0
