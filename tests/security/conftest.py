"""Per-role broker users for the security tests, created and deleted through the management API.

Every user gets permissions in the test's own vhost (``bus_vhost``) only, never in ``/``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from bus.broker.management import ManagementClient
from bus.provision import ProvidedBroker
from tests.support.users import MakeUser, RoleUser, user_url


@pytest.fixture
def make_user(
    bus_broker: ProvidedBroker,
    bus_management: ManagementClient,
    bus_vhost: str,
    bus_vhost_url: str,
) -> Iterator[MakeUser]:
    """``make_user(configure=, write=, read=, tags=)``: a user with exactly these permissions."""
    created: list[str] = []

    def make(
        *, configure: str = "^$", write: str = "^$", read: str = "^$", tags: str = ""
    ) -> RoleUser:
        name, password = f"bus-sec-{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
        bus_management.create_user(name, password, tags=tags)
        created.append(name)
        bus_management.set_permissions(bus_vhost, name, configure=configure, write=write, read=read)
        return RoleUser(
            name,
            password,
            user_url(bus_vhost_url, name, password),
            bus_broker.management_url,
        )

    try:
        yield make
    finally:
        for name in created:
            bus_management.delete_user(name)
