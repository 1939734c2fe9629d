"""The pytest plugin's fixtures against the real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest

from bus.broker.management import ManagementClient
from bus.provision import ProvidedBroker
from bus.settings import vhost_from_url


def test_bus_vhost_exists_during_the_test(
    bus_vhost: str, bus_vhost_url: str, bus_management: ManagementClient
) -> None:
    assert bus_management.vhost(bus_vhost) is not None
    assert vhost_from_url(bus_vhost_url) == bus_vhost
    # The test user can work in it over AMQP.
    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    try:
        channel = connection.channel()
        channel.queue_declare("probe", durable=True)
    finally:
        connection.close()
    assert bus_management.queue(bus_vhost, "probe") is not None


def test_bus_vhost_is_deleted_after_the_test(
    pytester: pytest.Pytester, bus_management: ManagementClient, bus_broker: ProvidedBroker
) -> None:
    record = pytester.path / "vhost.json"
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        f"""
        import json

        def test_inner(bus_vhost, bus_management):
            assert bus_management.vhost(bus_vhost) is not None
            open({str(record)!r}, "w").write(json.dumps(bus_vhost))
        """
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--bus-amqp-url={bus_broker.amqp_url}",
        f"--bus-management-url={bus_broker.management_url}",
    )
    result.assert_outcomes(passed=1)
    name = json.loads(record.read_text())
    assert name.startswith("bus-test-")
    assert bus_management.vhost(name) is None


def test_no_broker_anywhere_fails_and_says_how_to_get_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bus.provision

    monkeypatch.delenv("BUS_TEST_AMQP_URL", raising=False)
    monkeypatch.setenv("BUS_TEST_BROKER", "auto")
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "port_open", lambda host, port, timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "rabbitmq_installed", lambda: False)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        def test_inner(amqp_url):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no RabbitMQ broker: set BUS_TEST_AMQP_URL*"])
    assert "skipped" not in result.stdout.str()


@pytest.mark.bus_topology(str(Path(__file__).parents[2] / "topology.yaml"))
def test_bus_topology_marker(bus_topology: object) -> None:
    from bus.topology import LoadedTopology

    assert isinstance(bus_topology, LoadedTopology)
    assert "billing.orders" in bus_topology.expanded.queues
