"""pytest plugin (entry point ``pytest11``): a real RabbitMQ for integration tests.

Fixtures:

- ``bus_broker`` (session): the :class:`~bus.provision.ProvidedBroker` chosen by
  ``BUS_TEST_BROKER`` (``auto``, ``url``, ``container``, ``local``, ``throwaway``; see
  :class:`~bus.settings.BrokerChoiceSettings`). ``--bus-amqp-url`` (with
  ``--bus-management-url``) on the command line means ``url`` with that broker. Without a
  broker the test **fails** saying how to get one. Containers and throwaway nodes are removed
  at the end of the session, and by a watchdog should the runner be killed.
- ``amqp_url`` (session): the broker's AMQP URL.
- ``bus_rabbitmqctl`` (session): ``rabbitmqctl`` on that very broker (``-n`` its node, or
  ``docker exec`` into its container), for tests that inject faults; such a test is skipped,
  with the reason, on a broker known only by URL.
- ``bus_management`` (session): a :class:`~bus.broker.management.ManagementClient`.
- ``bus_vhost``: a fresh vhost for one test, created and deleted through the management API,
  with full permissions for the URL's user. ``bus_vhost_url`` is the AMQP URL pointing at it.
- ``bus_topology``: the :class:`~bus.topology.LoadedTopology` of ``--bus-topology`` or of the
  ``@pytest.mark.bus_topology("path/to/topology.yaml")`` marker (default: ./topology.yaml).
- ``fake_bus``: a :class:`~bus.fake.FakeBus` on ``bus_topology``: publish without a broker
  and see what each queue would receive.
- ``bus_applied_vhost``: ``bus_vhost`` with ``bus_topology`` applied by ``bus apply``
  (the apply re-plans and fails unless the vhost matches the topology exactly).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.broker.management import ManagementClient
from bus.errors import BusError
from bus.fake import FakeBus
from bus.provision import BrokerControl, ProvidedBroker, provide_broker
from bus.settings import BrokerChoiceSettings, BusSettings, TopologySettings, with_vhost
from bus.topology import LoadedTopology, load_topology

__all__ = [
    "FakeBus",
    "amqp_url",
    "bus_applied_vhost",
    "bus_broker",
    "bus_management",
    "bus_rabbitmqctl",
    "bus_topology",
    "bus_vhost",
    "bus_vhost_url",
    "fake_bus",
    "make_vhost",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("amqp-bus")
    group.addoption("--bus-amqp-url", default=None, help="AMQP URL of the test broker.")
    group.addoption(
        "--bus-management-url",
        default=None,
        help="Management API of --bus-amqp-url's broker (default: its host, port 15672).",
    )
    group.addoption("--bus-topology", default=None, help="topology.yaml used by bus_topology.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bus_topology(path): the topology file the bus_topology fixture loads"
    )


@pytest.fixture(scope="session")
def bus_broker(request: pytest.FixtureRequest) -> Iterator[ProvidedBroker]:
    try:
        choice = BrokerChoiceSettings()
    except ValueError as exc:  # pydantic's ValidationError: a bad BUS_TEST_BROKER
        pytest.fail(f"test broker settings: {exc}", pytrace=False)
    option_url = request.config.getoption("--bus-amqp-url")
    mode = "url" if option_url else choice.broker
    # The command line names one broker: the environment's management URL is another's.
    management = (
        request.config.getoption("--bus-management-url") if option_url else choice.management_url
    )
    try:
        with provide_broker(
            option_url or choice.amqp_url,
            mode=mode,
            image=choice.rabbitmq_image,
            management_url=management,
            docker_host=choice.docker_host,
        ) as broker:
            yield broker
    except BusError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def bus_rabbitmqctl(bus_broker: ProvidedBroker) -> BrokerControl:
    if bus_broker.control is None:
        pytest.skip(
            f"no rabbitmqctl into {bus_broker.describe()}: a broker known only by its URL "
            "cannot take this fault (BUS_TEST_BROKER=container or throwaway can)"
        )
    return bus_broker.control


@pytest.fixture(scope="session")
def amqp_url(bus_broker: ProvidedBroker) -> str:
    return bus_broker.amqp_url


def _settings_for(broker: ProvidedBroker) -> BusSettings:
    # BUS_TEST_AMQP_URL names one node: BUS_AMQP_NODES belongs to BUS_AMQP_URL, never to it.
    return broker.settings()


@pytest.fixture(scope="session")
def bus_management(bus_broker: ProvidedBroker) -> Iterator[ManagementClient]:
    client = ManagementClient.from_settings(_settings_for(bus_broker))
    try:
        client.overview()
    except BusError as exc:
        client.close()
        pytest.fail(f"management API: {exc}", pytrace=False)
    yield client
    client.close()


def make_vhost(management: ManagementClient, user: str, prefix: str = "bus-test") -> str:
    """Create a uniquely named vhost with full permissions for ``user``; returns its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    management.create_vhost(name, description="amqp-bus test vhost (safe to delete)")
    management.set_permissions(name, user)
    return name


@pytest.fixture
def bus_vhost(bus_broker: ProvidedBroker, bus_management: ManagementClient) -> Iterator[str]:
    user, _ = _settings_for(bus_broker).credentials()
    name = make_vhost(bus_management, user)
    try:
        yield name
    finally:
        bus_management.delete_vhost(name)


@pytest.fixture
def bus_vhost_url(amqp_url: str, bus_vhost: str) -> str:
    return with_vhost(amqp_url, bus_vhost)


@pytest.fixture
def bus_topology(request: pytest.FixtureRequest) -> LoadedTopology:
    marker = request.node.get_closest_marker("bus_topology")
    path = marker.args[0] if marker and marker.args else request.config.getoption("--bus-topology")
    return load_topology(Path(path) if path else TopologySettings().topology)


@pytest.fixture
def bus_applied_vhost(
    bus_broker: ProvidedBroker, bus_vhost: str, bus_topology: LoadedTopology
) -> str:
    from bus.broker.apply import apply

    apply(bus_topology, _settings_for(bus_broker), vhost=bus_vhost)
    return bus_vhost


@pytest.fixture
def fake_bus(bus_topology: LoadedTopology) -> FakeBus:
    return FakeBus(bus_topology)
