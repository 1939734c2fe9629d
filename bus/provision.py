"""Find or provide a RabbitMQ broker: one order of choices for tests and ``bus demo``.

1. a URL given explicitly (``BUS_TEST_AMQP_URL`` for tests, ``BUS_AMQP_URL`` for the demo);
2. a RabbitMQ container through testcontainers, when a Docker engine answers;
3. the local broker on 127.0.0.1:5672, when it and its management API answer;
4. a throwaway local ``rabbitmq-server`` node (own name, free ports, temporary data folder,
   stopped by pid when the context exits), when the binary is installed;
5. otherwise :class:`~bus.errors.BrokerUnavailableError` saying how to get one.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from bus.errors import BrokerUnavailableError
from bus.node import LocalNode, rabbitmq_installed
from bus.settings import BusSettings, mask_url

__all__ = [
    "HOW_TO_GET_A_BROKER",
    "ProvidedBroker",
    "docker_available",
    "port_open",
    "provide_broker",
]

LOCAL_PORT = 5672
LOCAL_AMQP_URL = f"amqp://guest:guest@127.0.0.1:{LOCAL_PORT}/"
HOW_TO_GET_A_BROKER = (
    "no RabbitMQ broker: set BUS_TEST_AMQP_URL (or BUS_AMQP_URL), start Docker for a "
    "testcontainers broker, or install and start RabbitMQ locally "
    "(apt-get install rabbitmq-server && rabbitmq-server -detached && "
    "rabbitmq-plugins enable rabbitmq_management)"
)


@dataclass(frozen=True)
class ProvidedBroker:
    amqp_url: str
    management_url: str
    how: str  # "configured", "container", "local" or "throwaway"
    # Further cluster nodes: only those given with the configured URL. A demo or a test on a
    # local, container or throwaway node must never fail over to a node of another broker
    # named by a BUS_AMQP_NODES left in the environment.
    nodes: tuple[str, ...] = ()

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


def docker_available(timeout: float = 1.0) -> bool:
    """True when a Docker engine answers ``/_ping`` (the client binary alone is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
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


def _management_for(amqp_url: str) -> str:
    explicit = os.environ.get("BUS_TEST_MANAGEMENT_URL") or os.environ.get("BUS_MANAGEMENT_URL")
    if explicit:
        return explicit.rstrip("/")
    parts = urlsplit(amqp_url)
    host = parts.hostname or "localhost"
    scheme, port = ("https", 15671) if parts.scheme == "amqps" else ("http", 15672)
    return f"{scheme}://{host}:{port}"


@contextlib.contextmanager
def _container() -> Iterator[ProvidedBroker]:  # pragma: no cover - needs a Docker engine
    from testcontainers.rabbitmq import RabbitMqContainer

    container = RabbitMqContainer("rabbitmq:3.10-management").with_exposed_ports(15672)
    with container:
        host = container.get_container_host_ip()
        amqp_port = container.get_exposed_port(5672)
        http_port = container.get_exposed_port(15672)
        yield ProvidedBroker(
            f"amqp://guest:guest@{host}:{amqp_port}/", f"http://{host}:{http_port}", "container"
        )


@contextlib.contextmanager
def provide_broker(
    configured_url: str | None, nodes: tuple[str, ...] = ()
) -> Iterator[ProvidedBroker]:
    """Yield a broker following the module's order of choices (``nodes``: the further
    cluster nodes of ``configured_url``, kept only when that broker is the one used)."""
    if configured_url:
        management = _management_for(configured_url)
        yield ProvidedBroker(configured_url, management, "configured", nodes)
        return
    if docker_available():  # pragma: no cover - no Docker engine on CI machines
        with _container() as broker:
            yield broker
        return
    local_answers = port_open("127.0.0.1", LOCAL_PORT)
    management = _management_for(LOCAL_AMQP_URL)
    if local_answers and _management_answers(management):
        yield ProvidedBroker(LOCAL_AMQP_URL, management, "local")
        return
    # A local broker without its management API (a fresh install: the plugin is off) cannot
    # serve plan/apply or the vhost fixtures; a throwaway node can, and leaves it untouched.
    if rabbitmq_installed():
        with LocalNode(prefix="bus-throwaway", management=True) as node:
            yield ProvidedBroker(node.amqp_url, node.management_url, "throwaway")
        return
    if local_answers:
        raise BrokerUnavailableError(
            f"the broker on 127.0.0.1:{LOCAL_PORT} has no management API at {management}: "
            "run `rabbitmq-plugins enable rabbitmq_management` (or set BUS_AMQP_URL and "
            "BUS_MANAGEMENT_URL)"
        )
    raise BrokerUnavailableError(HOW_TO_GET_A_BROKER)


def _management_answers(url: str) -> bool:
    parts = urlsplit(url)
    default = 15671 if parts.scheme == "https" else 15672
    return port_open(parts.hostname or "127.0.0.1", parts.port or default)
