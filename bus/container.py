"""A RabbitMQ container for tests and ``bus demo``, on the structured testcontainers API.

- The image: ``BUS_TEST_RABBITMQ_IMAGE`` when set; else the image built from Debian's packages
  by ``tools/build-rabbitmq-image`` (:data:`LOCAL_IMAGE`) when the engine has it, so that a
  machine without a registry never tries to pull; else the official management image
  (:data:`~bus.settings.OFFICIAL_RABBITMQ_IMAGE`), pulled when missing.
- Ports are published on 127.0.0.1 only (random host ports) and the broker is reached through
  127.0.0.1, never through a bridge or gateway address the engine may report.
- Readiness is a :class:`WaitStrategy` (the management API answers an authenticated
  ``/api/overview`` and AMQP accepts a connection), not the deprecated decorator.
- Testcontainers' Ryuk reaper is kept where its image can be had; where it cannot (no
  registry), it is turned off and the containers are removed by the fixture itself and, should
  the runner die, by a :class:`~bus.watchdog.Watchdog`.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from bus.errors import BrokerUnavailableError
from bus.node import LoopbackBroker
from bus.settings import OFFICIAL_RABBITMQ_IMAGE
from bus.watchdog import Watchdog

__all__ = ["LOCAL_IMAGE", "RabbitContainer", "choose_image", "image_present", "rabbit_container"]

LOCAL_IMAGE = "amqp-bus/rabbitmq:3.10-management"
AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
LOOPBACK = "127.0.0.1"
USER = PASSWORD = "guest"


def _engine() -> Any:
    import docker  # type: ignore[import-untyped]

    return docker.from_env()


def image_present(image: str) -> bool:
    """True when the engine has ``image`` (never pulls)."""
    import docker

    try:
        _engine().images.get(image)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as exc:
        raise BrokerUnavailableError(f"Docker engine: {exc}") from exc
    return True


def _pull(image: str) -> bool:
    import docker

    try:
        _engine().images.pull(image)
    except docker.errors.DockerException:
        return False
    return True


def choose_image(configured: str | None, *, pull: bool) -> str | None:
    """The image to run, or None when none is on the machine and (``pull``) none can be pulled."""
    candidates = [configured] if configured else [LOCAL_IMAGE, OFFICIAL_RABBITMQ_IMAGE]
    for image in candidates:
        if image_present(image):
            return image
    if pull and _pull(candidates[-1]):
        return candidates[-1]
    return None


def _ryuk_usable() -> bool:
    from testcontainers.core.config import testcontainers_config as config

    if config.ryuk_disabled:
        return False
    return image_present(config.ryuk_image) or _pull(config.ryuk_image)


def _make_wait_strategy() -> Any:
    from testcontainers.core.waiting_utils import WaitStrategy

    class BrokerReady(WaitStrategy):
        """Management API and AMQP both answer on the container's loopback ports."""

        def wait_until_ready(self, container: Any) -> None:
            deadline = time.monotonic() + self._startup_timeout
            last = "not started"
            while time.monotonic() < deadline:
                container.reload()
                if container.status in ("exited", "dead"):
                    raise BrokerUnavailableError(
                        f"RabbitMQ container exited: {container.get_logs()[0][-1500:]!r}"
                    )
                try:
                    http = _published(container, MANAGEMENT_PORT)
                    amqp = _published(container, AMQP_PORT)
                    response = httpx.get(
                        f"http://{LOOPBACK}:{http}/api/overview", auth=(USER, PASSWORD), timeout=2
                    )
                    if response.status_code == 200:
                        with socket.create_connection((LOOPBACK, amqp), timeout=2) as sock:
                            # An AMQP 0-9-1 header: the broker answers Connection.Start.
                            sock.sendall(b"AMQP\x00\x00\x09\x01")
                            if sock.recv(8):
                                return
                    last = f"management API answered {response.status_code}"
                except (OSError, httpx.HTTPError, ConnectionError) as exc:
                    last = str(exc)
                time.sleep(self._poll_interval)
            raise TimeoutError(f"RabbitMQ container not ready in {self._startup_timeout} s: {last}")

    return BrokerReady().with_startup_timeout(180).with_poll_interval(0.5)


def _published(container: Any, port: int) -> int:
    """The host port published for ``port`` on 127.0.0.1 (asked of the engine directly)."""
    bindings = container.get_docker_client().client.api.port(container.get_container_id(), port)
    for binding in bindings or []:
        if binding.get("HostIp") in (LOOPBACK, "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    raise ConnectionError(f"port {port} is not published on {LOOPBACK}")


class RabbitContainer(LoopbackBroker):
    """A running container: URLs on 127.0.0.1 and ``rabbitmqctl`` through ``docker exec``."""

    def __init__(self, container: Any, image: str) -> None:
        self._container = container
        self.image = image
        self.amqp_port = _published(container, AMQP_PORT)
        self.management_port = _published(container, MANAGEMENT_PORT)

    @property
    def id(self) -> str:
        return str(self._container.get_container_id())

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``rabbitmqctl ...`` in the container and return its output."""
        del timeout  # docker exec has no timeout of its own; rabbitmqctl's default applies
        code, output = self._container.exec(["rabbitmqctl", *args])
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        if check and code != 0:
            raise BrokerUnavailableError(f"rabbitmqctl {' '.join(args)} in container: {text[:500]}")
        return text


@contextlib.contextmanager
def rabbit_container(image: str) -> Iterator[RabbitContainer]:
    """Run ``image`` until the context exits; the container is removed however the run ends."""
    from testcontainers.core.config import testcontainers_config as config
    from testcontainers.core.container import DockerContainer

    if not _ryuk_usable():
        config.ryuk_disabled = True
    name = f"amqp-bus-rabbitmq-{uuid.uuid4().hex[:12]}"
    container: Any = (
        DockerContainer(image)
        .with_name(name)
        .with_env("RABBITMQ_DEFAULT_USER", USER)
        .with_env("RABBITMQ_DEFAULT_PASS", PASSWORD)
        .waiting_for(_make_wait_strategy())
    )
    # (host ip, host port): published on loopback only, the engine picks a free port.
    container.ports.update(
        {f"{AMQP_PORT}/tcp": (LOOPBACK, None), f"{MANAGEMENT_PORT}/tcp": (LOOPBACK, None)}
    )
    watchdog = Watchdog()
    watchdog.watch_container(name)  # by name: known before the engine returns an id
    try:
        try:
            container.start()
            running = RabbitContainer(container, image)
        except Exception as exc:
            with contextlib.suppress(Exception):
                container.stop()
            raise BrokerUnavailableError(f"RabbitMQ container ({image}): {exc}") from exc
        try:
            yield running
        finally:
            container.stop()
    finally:
        watchdog.disarm()
