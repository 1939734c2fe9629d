"""Per-role broker users for the security tests, created and deleted through the management API.

Every user gets permissions in the test's own vhost (``bus_vhost``) only, never in ``/``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from bus.broker.management import ManagementClient
from bus.provision import ProvidedBroker
from bus.settings import BusSettings


@dataclass(frozen=True)
class RoleUser:
    name: str
    password: str
    url: str
    management_url: str

    def settings(self) -> BusSettings:
        return BusSettings(amqp_url=self.url, management_url=self.management_url)

    def env(self) -> dict[str, str]:
        return {"BUS_AMQP_URL": self.url, "BUS_MANAGEMENT_URL": self.management_url}


def user_url(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname or 'localhost'}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


MakeUser = Callable[..., RoleUser]


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
