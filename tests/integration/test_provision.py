"""Broker provisioning: the order of choices, and a throwaway node that leaves nothing behind."""

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


def test_configured_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: True)
    with provide_broker("amqp://u:p@example.invalid:5672/") as broker:
        assert broker.how == "configured"
        assert broker.management_url == "http://example.invalid:15672"
        assert "p@" not in broker.describe()


def test_local_broker_when_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    if not port_open("127.0.0.1", 5672):
        pytest.fail("this test needs the local broker on 127.0.0.1:5672")
    with provide_broker(None) as broker:
        assert broker.how == "local"


def test_nothing_available_says_how_to_get_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "port_open", lambda host, port, timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "rabbitmq_installed", lambda: False)
    with (
        pytest.raises(BrokerUnavailableError, match="rabbitmq-server -detached"),
        provide_broker(None),
    ):
        pass


def _epmd_names() -> str:
    return subprocess.run(["epmd", "-names"], capture_output=True, text=True, check=False).stdout


@pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")
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
        assert ours in _epmd_names()
        assert set(Path(tempfile.gettempdir()).glob(f"{ours}*")) - dirs_before
    # Nothing left behind: no port, no registered node, no data folder.
    assert not port_open("127.0.0.1", amqp_port)
    assert ours not in _epmd_names()
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


@pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")
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
