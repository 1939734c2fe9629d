"""Find or provide a RabbitMQ broker for tests and ``bus demo``: one switch, one order.

``mode`` (``BUS_TEST_BROKER``, see :class:`~bus.settings.BrokerChoiceSettings`):

- ``url``: the URL given (``BUS_TEST_AMQP_URL`` / ``--bus-amqp-url`` for tests,
  ``BUS_AMQP_URL`` for the demo);
- ``container``: a RabbitMQ container (:mod:`bus.container`), pulling the image if need be;
- ``local``: the local broker on 127.0.0.1:5672 with its management API;
- ``throwaway``: a throwaway local ``rabbitmq-server`` node (own name, free ports, temporary
  data folder, stopped by pid when the context exits, or by its watchdog should we die);
- ``auto``: the first that is there, in that order: a URL when one is given; a container when
  a Docker engine answers and the image is on the machine or can be pulled; the local broker
  when it and its management API answer; a throwaway node when ``rabbitmq-server`` is
  installed; otherwise :class:`~bus.errors.BrokerUnavailableError` saying how to get one.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from bus.errors import BrokerUnavailableError
from bus.node import LocalNode, rabbitmq_installed
from bus.settings import BrokerMode, BusSettings, mask_url

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "HOW_TO_GET_A_BROKER",
    "BrokerControl",
    "ProvidedBroker",
    "docker_available",
    "port_open",
    "provide_broker",
]

LOCAL_PORT = 5672
LOCAL_AMQP_URL = f"amqp://guest:guest@127.0.0.1:{LOCAL_PORT}/"
HOW_TO_GET_A_BROKER = (
    "no RabbitMQ broker: set BUS_TEST_AMQP_URL (or BUS_AMQP_URL), start Docker for a "
    "container broker (BUS_TEST_BROKER=container), or install and start RabbitMQ locally "
    "(apt-get install rabbitmq-server && rabbitmq-server -detached && "
    "rabbitmq-plugins enable rabbitmq_management)"
)
MODES: tuple[BrokerMode, ...] = ("auto", "url", "container", "local", "throwaway")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


class BrokerControl(Protocol):
    """``rabbitmqctl`` on the broker a session uses (for tests that inject faults)."""

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str: ...


class _DefaultNode:
    """The local broker: ``rabbitmqctl`` without ``-n`` addresses it."""

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        result = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise BrokerUnavailableError(
                f"rabbitmqctl {' '.join(args)}: {(result.stderr or result.stdout).strip()[:500]}"
            )
        return result.stdout


@dataclass(frozen=True)
class ProvidedBroker:
    amqp_url: str
    management_url: str
    how: str  # "configured", "container", "local" or "throwaway"
    # Further cluster nodes: only those given with the configured URL. A demo or a test on a
    # local, container or throwaway node must never fail over to a node of another broker
    # named by a BUS_AMQP_NODES left in the environment.
    nodes: tuple[str, ...] = ()
    # How to run rabbitmqctl on this very broker; None for a broker known only by URL.
    control: BrokerControl | None = field(default=None, compare=False, repr=False)
    # The Erlang node name (throwaway node) or container id, for the record and for checks.
    identity: str = ""

    def settings(self, amqp_url: str | None = None) -> BusSettings:
        """Settings for this broker (``amqp_url``: the same broker, another vhost)."""
        return BusSettings(
            amqp_url=amqp_url or self.amqp_url,
            amqp_nodes=self.nodes,
            management_url=self.management_url,
        )

    def describe(self) -> str:
        where = {
            "configured": "the configured broker",
            "container": "a RabbitMQ container (testcontainers)",
            "local": "the local broker on 127.0.0.1:5672",
            "throwaway": "a throwaway local rabbitmq-server node",
        }[self.how]
        return f"{where} at {mask_url(self.amqp_url)}"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def docker_available(docker_host: str = DEFAULT_DOCKER_HOST, timeout: float = 1.0) -> bool:
    """True when a Docker engine answers ``/_ping`` (the client binary alone is not enough).

    ``docker_host``: ``DOCKER_HOST`` as read by :class:`~bus.settings.BrokerChoiceSettings`.
    """
    host = docker_host or DEFAULT_DOCKER_HOST
    if host.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = host[len("unix://") :]
    elif host.startswith("tcp://"):
        parts = urlsplit(host)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = (parts.hostname or "localhost", parts.port or 2375)
    else:
        return False
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
        except OSError:
            return False


def _management_for(amqp_url: str, explicit: str | None) -> str:
    if explicit:
        return explicit.rstrip("/")
    parts = urlsplit(amqp_url)
    host = parts.hostname or "localhost"
    scheme, port = ("https", 15671) if parts.scheme == "amqps" else ("http", 15672)
    return f"{scheme}://{host}:{port}"


def _management_answers(url: str) -> bool:
    parts = urlsplit(url)
    default = 15671 if parts.scheme == "https" else 15672
    return port_open(parts.hostname or "127.0.0.1", parts.port or default)


@contextlib.contextmanager
def _container(image: str) -> Iterator[ProvidedBroker]:
    from bus.container import rabbit_container

    with rabbit_container(image) as running:
        yield ProvidedBroker(
            running.amqp_url, running.management_url, "container", control=running,
            identity=running.id,
        )  # fmt: skip


@contextlib.contextmanager
def _throwaway() -> Iterator[ProvidedBroker]:
    with LocalNode(prefix="bus-throwaway", management=True) as node:
        yield ProvidedBroker(
            node.amqp_url, node.management_url, "throwaway", control=node, identity=node.name
        )


def _local(management: str) -> ProvidedBroker:
    control = _DefaultNode() if shutil.which("rabbitmqctl") else None
    return ProvidedBroker(LOCAL_AMQP_URL, management, "local", control=control)


def _container_image(configured: str | None, *, pull: bool) -> str | None:
    from bus.container import choose_image

    return choose_image(configured, pull=pull)


@contextlib.contextmanager
def provide_broker(
    configured_url: str | None,
    nodes: tuple[str, ...] = (),
    *,
    mode: BrokerMode = "auto",
    image: str | None = None,
    management_url: str | None = None,
    docker_host: str = DEFAULT_DOCKER_HOST,
) -> Iterator[ProvidedBroker]:
    """Yield the broker ``mode`` asks for (see the module's docstring).

    ``nodes``: the further cluster nodes of ``configured_url``, kept only when that broker is
    the one used. ``image``: the container image (default: see :mod:`bus.container`).
    ``management_url``: the configured broker's management API (default: its host, 15672).
    ``docker_host``: the Docker engine the container path uses (``DOCKER_HOST``). The caller
    reads all of these from :class:`~bus.settings.BrokerChoiceSettings`.
    """
    if mode not in MODES:
        raise BrokerUnavailableError(f"BUS_TEST_BROKER must be one of {', '.join(MODES)}: {mode!r}")
    if mode == "url" or (mode == "auto" and configured_url):
        if not configured_url:
            raise BrokerUnavailableError(
                "BUS_TEST_BROKER=url needs a broker URL (BUS_TEST_AMQP_URL or --bus-amqp-url; "
                "BUS_AMQP_URL for bus demo)"
            )
        management = _management_for(configured_url, management_url)
        yield ProvidedBroker(configured_url, management, "configured", nodes)
        return
    if mode == "container":
        if not docker_available(docker_host):
            raise BrokerUnavailableError(
                "BUS_TEST_BROKER=container: no Docker engine answers (DOCKER_HOST or "
                "/var/run/docker.sock)"
            )
        chosen = _container_image(image, pull=True)
        if chosen is None:
            raise BrokerUnavailableError(
                f"BUS_TEST_BROKER=container: image {image or 'rabbitmq:3.10-management'} is not "
                "on this machine and cannot be pulled; build one with tools/build-rabbitmq-image"
            )
        with _container(chosen) as broker:
            yield broker
        return
    if mode == "auto" and docker_available(docker_host):
        chosen = _container_image(image, pull=True)
        if chosen is not None:
            with _container(chosen) as broker:
                yield broker
            return
    local_answers = port_open("127.0.0.1", LOCAL_PORT)
    management = _management_for(LOCAL_AMQP_URL, None)
    if mode in ("auto", "local") and local_answers and _management_answers(management):
        yield _local(management)
        return
    if mode == "local":
        raise BrokerUnavailableError(
            f"BUS_TEST_BROKER=local: no broker with a management API on 127.0.0.1:{LOCAL_PORT} "
            "(rabbitmq-server -detached && rabbitmq-plugins enable rabbitmq_management)"
        )
    # A local broker without its management API (a fresh install: the plugin is off) cannot
    # serve plan/apply or the vhost fixtures; a throwaway node can, and leaves it untouched.
    if rabbitmq_installed():
        with _throwaway() as broker:
            yield broker
        return
    if mode == "throwaway":
        raise BrokerUnavailableError(
            "BUS_TEST_BROKER=throwaway: rabbitmq-server is not installed "
            "(apt-get install rabbitmq-server)"
        )
    if local_answers:
        raise BrokerUnavailableError(
            f"the broker on 127.0.0.1:{LOCAL_PORT} has no management API at {management}: "
            "run `rabbitmq-plugins enable rabbitmq_management` (or set BUS_AMQP_URL and "
            "BUS_MANAGEMENT_URL)"
        )
    raise BrokerUnavailableError(HOW_TO_GET_A_BROKER)
