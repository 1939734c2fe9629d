"""Broker provisioning: BUS_TEST_BROKER's choices, auto's order, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pytest

import bus.provision
from bus.broker.management import ManagementClient
from bus.errors import BrokerUnavailableError
from bus.node import rabbitmq_installed
from bus.provision import port_open, provide_broker
from bus.settings import BrokerChoiceSettings

needs_rabbitmq = pytest.mark.skipif(
    not rabbitmq_installed(), reason="needs the rabbitmq-server binary"
)


def test_configured_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: True)
    with provide_broker("amqp://u:p@example.invalid:5672/") as broker:
        assert broker.how == "configured"
        assert broker.management_url == "http://example.invalid:15672"
        assert broker.control is None  # no rabbitmqctl into a broker known only by URL
        assert "p@" not in broker.describe()


def test_url_mode_takes_the_management_url_given() -> None:
    with provide_broker(
        "amqp://u:p@example.invalid:5672/", mode="url", management_url="https://m.example/"
    ) as broker:
        assert broker.management_url == "https://m.example"


def test_url_mode_without_a_url_says_which_variable() -> None:
    with (
        pytest.raises(BrokerUnavailableError, match="BUS_TEST_AMQP_URL"),
        provide_broker(None, mode="url"),
    ):
        pass


def _full_local_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the local broker and its management API answered (whatever this machine has:
    these tests are about the choice, not about that broker)."""
    monkeypatch.setattr(bus.provision, "port_open", lambda host, port, timeout=1.0: True)


def test_local_mode_ignores_a_configured_url(monkeypatch: pytest.MonkeyPatch) -> None:
    _full_local_broker(monkeypatch)
    with provide_broker("amqp://u:p@example.invalid:5672/", mode="local") as broker:
        assert broker.how == "local"
        assert broker.amqp_url.startswith("amqp://guest:guest@127.0.0.1:5672")
        assert broker.management_url == "http://127.0.0.1:15672"


def test_auto_mode_takes_the_local_broker_when_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    _full_local_broker(monkeypatch)
    with provide_broker(None, mode="auto") as broker:
        assert broker.how == "local"


def test_auto_mode_passes_over_docker_without_an_image(monkeypatch: pytest.MonkeyPatch) -> None:
    # An engine answers, but no RabbitMQ image is on the machine and none can be pulled.
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: True)
    monkeypatch.setattr(bus.provision, "_container_image", lambda image, pull: None)
    _full_local_broker(monkeypatch)
    with provide_broker(None, mode="auto") as broker:
        assert broker.how == "local"


def test_local_mode_without_a_local_broker_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus.provision, "port_open", lambda host, port, timeout=1.0: False)
    with (
        pytest.raises(BrokerUnavailableError, match="BUS_TEST_BROKER=local"),
        provide_broker(None, mode="local"),
    ):
        pass


def test_container_mode_without_docker_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    with (
        pytest.raises(BrokerUnavailableError, match="no Docker engine"),
        provide_broker(None, mode="container"),
    ):
        pass


def test_unknown_mode_is_refused() -> None:
    with (
        pytest.raises(BrokerUnavailableError, match="one of auto, url"),
        provide_broker(
            None,
            mode="docker",  # type: ignore[arg-type]
        ),
    ):
        pass


def test_the_switch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_TEST_BROKER", " Throwaway ")
    monkeypatch.setenv("BUS_TEST_RABBITMQ_IMAGE", "example/rabbit:9")
    monkeypatch.setenv("BUS_MANAGEMENT_URL", "http://m:1")
    monkeypatch.delenv("BUS_TEST_MANAGEMENT_URL", raising=False)
    choice = BrokerChoiceSettings()
    assert (choice.broker, choice.rabbitmq_image, choice.management_url) == (
        "throwaway",
        "example/rabbit:9",
        "http://m:1",
    )
    monkeypatch.setenv("BUS_TEST_BROKER", "podman")
    with pytest.raises(ValueError, match="podman"):
        BrokerChoiceSettings()


def test_nothing_available_says_how_to_get_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "port_open", lambda host, port, timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "rabbitmq_installed", lambda: False)
    with (
        pytest.raises(BrokerUnavailableError, match="rabbitmq-server -detached"),
        provide_broker(None),
    ):
        pass


def _epmd_names() -> set[str]:
    out = subprocess.run(["epmd", "-names"], capture_output=True, text=True, check=False).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("name ")}


@needs_rabbitmq
def test_throwaway_node_when_local_broker_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Point the "local broker" at a closed port: provisioning must start its own node.
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "LOCAL_PORT", 1)
    ours = f"bus-throwaway-{os.getpid()}-"
    dirs_before = set(Path(tempfile.gettempdir()).glob(f"{ours}*"))
    with provide_broker(None) as broker:
        assert broker.how == "throwaway"
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        connection.close()
        with ManagementClient(broker.management_url, "guest", "guest") as api:
            assert api.overview()["rabbitmq_version"]
        amqp_port = urlsplit(broker.amqp_url).port
        assert amqp_port is not None
        short_name = broker.identity.partition("@")[0]
        assert short_name.startswith(ours)
        assert short_name in _epmd_names()
        # rabbitmqctl reaches this node, not the default one.
        assert broker.control is not None
        assert broker.identity in broker.control.ctl("status")
        assert set(Path(tempfile.gettempdir()).glob(f"{ours}*")) - dirs_before
    # Nothing left behind: no port, no registered node, no data folder.
    assert not port_open("127.0.0.1", amqp_port)
    assert short_name not in _epmd_names()
    assert not set(Path(tempfile.gettempdir()).glob(f"{ours}*")) - dirs_before


def _only_amqp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    return port == 5672


def test_local_broker_without_management_api_says_how_to_enable_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "port_open", _only_amqp_answers)
    monkeypatch.setattr(bus.provision, "rabbitmq_installed", lambda: False)
    with (
        pytest.raises(BrokerUnavailableError, match="rabbitmq-plugins enable rabbitmq_management"),
        provide_broker(None),
    ):
        pass


@needs_rabbitmq
def test_local_broker_without_management_api_gives_way_to_a_throwaway_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh install: the broker answers on 5672 but its management plugin is off.
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    real_port_open = bus.provision.port_open
    monkeypatch.setattr(
        bus.provision,
        "port_open",
        lambda host, port, timeout=1.0: port != 15672 and real_port_open(host, port, timeout),
    )
    with provide_broker(None) as broker:
        assert broker.how == "throwaway"
        with ManagementClient(broker.management_url, "guest", "guest") as api:
            assert api.overview()["rabbitmq_version"]
