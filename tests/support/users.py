"""Broker users for tests: an AMQP URL with other credentials, and the per-role users of the
security suite (made by its ``make_user`` fixture)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

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
