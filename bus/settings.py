"""Settings from the environment (prefix ``BUS_``); credentials live here, not in topology.yaml."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "DEFAULT_AMQP_URL",
    "OFFICIAL_RABBITMQ_IMAGE",
    "BrokerChoiceSettings",
    "BrokerMode",
    "BusSettings",
    "TopologySettings",
    "TracingSettings",
    "install_log_redaction",
    "mask_url",
    "mask_urls",
    "redact",
    "url_problem",
    "vhost_from_url",
    "with_vhost",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be split safely into user, password, host and path; None when it can.

    An unencoded ``@``, ``/``, ``?``, ``#`` or ``:`` in a password moves the split points: part
    of the password becomes the host (and is looked up in DNS), the port or the vhost, and
    reaches error lines. The answer never quotes the URL.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return (
            "the URL's host or port is malformed (an unencoded ':' or '@' in the password?): "
            "percent-encode the password"
        )
    after_host = parts.path + parts.query + parts.fragment
    if parts.netloc.count("@") > 1 or "@" in after_host:
        return (
            "the URL has an '@' after its credentials (an unencoded '@', '/', '?' or '#' in "
            "the password?): percent-encode the password"
        )
    return None


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and error messages).

    A URL whose credentials cannot be told apart from its host (see :func:`url_problem`)
    is shown as ``scheme://***``: any part of it may be a piece of the password.
    """
    if url_problem(url) is not None:
        scheme = urlsplit(url).scheme
        return f"{scheme}://***" if scheme else "***"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_urls(urls: list[str] | tuple[str, ...]) -> str:
    """Several URLs, comma-separated, passwords masked (the nodes of a cluster)."""
    return ", ".join(mask_url(url) for url in urls)


# scheme://user:password@ anywhere in a text (amqp, amqps, http(s), redis...). The password
# runs to the last '@' of the word: an unencoded '@' or '/' in it must not leave a tail.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"<>]*):[^\s'\"<>]*@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _USERINFO.sub(r"\g<head>:***@", text)


def install_log_redaction() -> None:
    """Mask URL passwords in every log record of this process, whatever logger or handler.

    A record factory, not a filter: a filter sits on one logger or handler and misses records
    that libraries (pika, aio-pika, kombu, Celery) log through handlers configured later.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "bus_redacting", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it itself when emitting
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if redact(text) != text:
                record.exc_text = redact(text)
        return record

    make_record.bus_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


def vhost_from_url(url: str) -> str:
    """The vhost an AMQP URL names: an empty or missing path means ``/``."""
    path = urlsplit(url).path
    if path in ("", "/"):
        return "/"
    return unquote(path[1:])


def with_vhost(url: str, vhost: str) -> str:
    """The same AMQP URL pointed at another vhost."""
    parts = urlsplit(url)
    return urlunsplit(
        (parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, parts.fragment)
    )


_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


def _node_address(entry: str) -> str:
    """``host``, ``host:port`` or ``[v6]:port`` checked and given its explicit port form."""
    if "://" in entry or "@" in entry or "/" in entry:
        # Credentials, scheme and vhost come from BUS_AMQP_URL only: one place for the secret.
        raise ValueError(
            f"BUS_AMQP_NODES takes host:port entries only (scheme, credentials and vhost come "
            f"from BUS_AMQP_URL), got {entry.rpartition('@')[2]!r}"
        )
    parts = urlsplit(f"//{entry}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"BUS_AMQP_NODES: bad port in {entry!r}") from None
    if not parts.hostname:
        raise ValueError(f"BUS_AMQP_NODES: no host in {entry!r}")
    return entry if port is None else parts.netloc


class TopologySettings(BaseSettings):
    """Which topology file a command reads when none is given: ``BUS_TOPOLOGY``.

    Apart from :class:`BusSettings` so that commands needing no broker (``bus validate``,
    ``bus graph``...) never fail on a broker setting.
    """

    # An empty BUS_TOPOLOGY means the default, not the current folder.
    model_config = SettingsConfigDict(env_prefix="BUS_", extra="ignore", env_ignore_empty=True)

    topology: Path = Path("topology.yaml")


class TracingSettings(BaseSettings):
    """``BUS_TRACING=true``: the ``bus`` commands make OpenTelemetry spans (:mod:`bus.tracing`;
    needs the ``otel`` extra). Off by default."""

    model_config = SettingsConfigDict(env_prefix="BUS_", extra="ignore", env_ignore_empty=True)

    tracing: bool = False


class BusSettings(BaseSettings):
    """Where the broker is and how to reach it.

    A cluster: ``BUS_AMQP_URL`` names the first node (with scheme, credentials and vhost) and
    ``BUS_AMQP_NODES`` the others as comma-separated ``host:port`` entries sharing all of
    that; :attr:`amqp_urls` lists one URL per node, the first node first. Code that derives
    settings for another vhost (``model_copy(update={"amqp_url": ...})``) keeps the nodes.
    """

    model_config = SettingsConfigDict(env_prefix="BUS_", extra="ignore")

    amqp_url: str = DEFAULT_AMQP_URL
    amqp_nodes: Annotated[tuple[str, ...], NoDecode] = ()
    management_url: str | None = None
    topology: Path = Path("topology.yaml")
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    heartbeat: int = Field(default=30, ge=0)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(f"BUS_AMQP_URL: {problem}")
        scheme = urlsplit(value).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"BUS_AMQP_URL must start with amqp:// or amqps://, got {scheme!r}")
        return value

    @field_validator("management_url")
    @classmethod
    def _management_url(cls, value: str | None) -> str | None:
        for url in (value or "").split(","):
            problem = url_problem(url.strip())
            if problem is not None:
                raise ValueError(f"BUS_MANAGEMENT_URL: {problem}")
        return value

    @field_validator("amqp_nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(_node_address(str(v).strip()) for v in value if str(v).strip())
        return value

    @property
    def vhost(self) -> str:
        return vhost_from_url(self.amqp_url)

    @property
    def amqp_urls(self) -> list[str]:
        """One AMQP URL per cluster node: ``amqp_url`` first, then each of ``amqp_nodes``."""
        parts = urlsplit(self.amqp_url)
        userinfo = parts.netloc.rpartition("@")[0]
        urls = [self.amqp_url]
        for address in self.amqp_nodes:
            netloc = f"{userinfo}@{address}" if userinfo else address
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
            if url not in urls:
                urls.append(url)
        return urls

    def management_base_url(self) -> str:
        """The management API root: ``BUS_MANAGEMENT_URL`` or http(s)://<amqp host>:15672."""
        return self.management_base_urls()[0]

    def management_base_urls(self) -> list[str]:
        """The management API roots to try in order.

        ``BUS_MANAGEMENT_URL`` (comma-separated for several nodes whose API is not on the
        default port), else http(s)://<host>:15672 (15671) of every AMQP node.
        """
        if self.management_url:
            listed = [u.strip().rstrip("/") for u in self.management_url.split(",")]
            if any(listed):
                return [u for u in listed if u]
        result: list[str] = []
        for url in self.amqp_urls:
            parts = urlsplit(url)
            host = parts.hostname or "localhost"
            if ":" in host:
                host = f"[{host}]"
            base = f"https://{host}:15671" if parts.scheme == "amqps" else f"http://{host}:15672"
            if base not in result:
                result.append(base)
        return result

    def credentials(self) -> tuple[str, str]:
        """User and password from the AMQP URL (RabbitMQ's default guest/guest when absent)."""
        parts = urlsplit(self.amqp_url)
        user = unquote(parts.username) if parts.username is not None else "guest"
        password = unquote(parts.password) if parts.password is not None else "guest"
        return user, password


# The test broker (pytest plugin and ``bus demo``). Kept apart from BusSettings: these choose
# *which* broker to provide, BusSettings says how to reach a known one.

BrokerMode = Literal["auto", "url", "container", "local", "throwaway"]
OFFICIAL_RABBITMQ_IMAGE = "rabbitmq:3.10-management"


class BrokerChoiceSettings(BaseSettings):
    """Which broker the pytest plugin and ``bus demo`` use.

    - ``BUS_TEST_BROKER``: ``auto`` (a URL when one is given, else a container when a Docker
      engine answers, else the local broker when its management API answers, else a throwaway
      node), or exactly one of ``url``, ``container``, ``local``, ``throwaway``.
    - ``BUS_TEST_AMQP_URL`` / ``BUS_TEST_MANAGEMENT_URL``: the broker for ``url`` (and ``auto``);
      ``BUS_MANAGEMENT_URL`` stands in for the latter.
    - ``BUS_TEST_RABBITMQ_IMAGE``: the container image. Unset: the locally built
      ``amqp-bus/rabbitmq:3.10-management`` when present, else the official
      ``rabbitmq:3.10-management`` (pulled when missing).
    """

    model_config = SettingsConfigDict(env_prefix="BUS_TEST_", extra="ignore")

    broker: BrokerMode = "auto"
    amqp_url: str | None = None
    management_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BUS_TEST_MANAGEMENT_URL", "BUS_MANAGEMENT_URL"),
    )
    rabbitmq_image: str | None = None
    # The Docker engine the container path and its availability check use.
    docker_host: str = Field(
        default="unix:///var/run/docker.sock", validation_alias=AliasChoices("DOCKER_HOST")
    )

    @field_validator("broker", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("amqp_url", "management_url", "rabbitmq_image", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class BeatSettings(BaseSettings):
    """``BUS_BEAT_SCHEDULE_FILE``: ``bus beat``'s state file when none is passed (unset or
    empty: ``./celerybeat-schedule``). The topology file is :class:`TopologySettings`'."""

    model_config = SettingsConfigDict(env_prefix="BUS_", extra="ignore")

    beat_schedule_file: Path | None = None

    @field_validator("beat_schedule_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value else value


__all__ += ["BeatSettings"]
