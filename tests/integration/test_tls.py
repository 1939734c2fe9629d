"""TLS: ``amqps://`` with certificate verification on the pika, aio-pika and management paths.

A throwaway node (never the shared broker) gets a TLS listener with a certificate issued by a
CA generated for the test.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
import trustme

from bus.broker.connect import connect_async, connect_sync, ssl_context
from bus.broker.management import ManagementClient
from bus.celery_app import build_app
from bus.errors import BrokerUnavailableError
from bus.node import LocalNode, rabbitmq_installed
from bus.settings import BusSettings
from bus.topology import LoadedTopology, load_topology
from consumers import ConsumerApp
from consumers.tasks import ROUTES
from producers import Publisher, SyncPublisher
from producers.events import OrderCreated
from tests.support.amqp import declare_with_pika
from tests.support.celery_worker import Worker, clean_env
from tests.support.commands import run
from tests.support.consumer import must_not_consume

pytestmark = pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")

SHIPPED = Path(__file__).resolve().parents[2] / "topology.yaml"

TLS_CONFIG = """
listeners.ssl.default = {extra_port_0}
ssl_options.cacertfile = {dir}/ca.pem
ssl_options.certfile = {dir}/server.pem
ssl_options.keyfile = {dir}/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
management.ssl.port = {extra_port_1}
management.ssl.ip = 127.0.0.1
management.ssl.cacertfile = {dir}/ca.pem
management.ssl.certfile = {dir}/server.pem
management.ssl.keyfile = {dir}/server.key
"""


@dataclass
class TlsBroker:
    node: LocalNode
    ca_file: Path
    other_ca_file: Path

    @property
    def amqps_port(self) -> int:
        return self.node.extra_ports[0]

    @property
    def https_port(self) -> int:
        return self.node.extra_ports[1]

    def settings(self, host: str = "localhost", ca: Path | None = None) -> BusSettings:
        return BusSettings(
            amqp_url=f"amqps://guest:guest@{host}:{self.amqps_port}/",
            management_url=f"https://{host}:{self.https_port}",
            tls_ca_file=ca or self.ca_file,
            connect_timeout=5,
        )


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost")  # valid for "localhost" only, not for 127.0.0.1
    files = {
        "ca.pem": ca.cert_pem.bytes(),
        "server.pem": b"".join(blob.bytes() for blob in server.cert_chain_pems),
        "server.key": server.private_key_pem.bytes(),
    }
    folder = tmp_path_factory.mktemp("tls")
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other_ca_file = folder / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca_file))
    node = LocalNode(
        prefix="bus-tls", config=TLS_CONFIG, management=True, extra_ports=2, files=files
    )
    node.start()
    try:
        yield TlsBroker(node, ca_file, other_ca_file)
    finally:
        node.stop()


def test_verified_connection_works_with_pika(tls_broker: TlsBroker) -> None:
    connection = connect_sync(tls_broker.settings())
    try:
        channel = connection.channel()
        channel.queue_declare("tls-probe", exclusive=True)
    finally:
        connection.close()


async def test_verified_connection_works_with_aio_pika(tls_broker: TlsBroker) -> None:
    connection = await connect_async(tls_broker.settings())
    try:
        channel = await connection.channel()
        await channel.declare_queue(exclusive=True)
    finally:
        await connection.close()


def test_management_api_over_verified_https(tls_broker: TlsBroker) -> None:
    with ManagementClient.from_settings(tls_broker.settings()) as api:
        assert api.overview()["rabbitmq_version"]


def test_untrusted_ca_is_refused(tls_broker: TlsBroker) -> None:
    settings = tls_broker.settings(ca=tls_broker.other_ca_file)
    with pytest.raises(BrokerUnavailableError, match=r"(?i)certificate verify failed"):
        connect_sync(settings)
    with pytest.raises(BrokerUnavailableError, match=r"(?i)certificate"):
        ManagementClient.from_settings(settings).overview()


async def test_untrusted_ca_is_refused_by_aio_pika(tls_broker: TlsBroker) -> None:
    with pytest.raises(BrokerUnavailableError, match=r"(?i)certificate verify failed"):
        await connect_async(tls_broker.settings(ca=tls_broker.other_ca_file))


def test_hostname_mismatch_is_refused(tls_broker: TlsBroker) -> None:
    # The certificate names "localhost"; 127.0.0.1 is the same server under another name.
    settings = tls_broker.settings(host="127.0.0.1")
    with pytest.raises(BrokerUnavailableError, match=r"(?i)(hostname|IP address) mismatch"):
        connect_sync(settings)


async def test_hostname_mismatch_is_refused_by_aio_pika(tls_broker: TlsBroker) -> None:
    with pytest.raises(BrokerUnavailableError, match=r"(?i)(hostname|IP address) mismatch"):
        await connect_async(tls_broker.settings(host="127.0.0.1"))


def test_no_setting_disables_verification() -> None:
    fields = " ".join(BusSettings.model_fields).lower()
    assert "verify" not in fields
    assert "insecure" not in fields
    context = ssl_context(BusSettings(amqp_url="amqps://u:p@localhost/"))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


# -- producers, consumers and Celery over amqps -------------------------------------------------


@pytest.fixture(scope="module")
def tls_topology(tls_broker: TlsBroker) -> LoadedTopology:
    """The shipped topology, declared on the throwaway node over its plain listener."""
    loaded = load_topology(SHIPPED)
    declare_with_pika(tls_broker.node.amqp_url, loaded.expanded)
    return loaded


def _get(broker: TlsBroker, queue: str) -> bytes | None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.node.amqp_url))
    try:
        method, _, body = connection.channel().basic_get(queue, auto_ack=True)
    finally:
        connection.close()
    return None if method is None else bytes(body)


async def test_publisher_and_consumer_app_over_verified_amqps(
    tls_broker: TlsBroker, tls_topology: LoadedTopology
) -> None:
    settings = tls_broker.settings()
    app = ConsumerApp("tls", grace=5)
    got: list[str] = []
    both = asyncio.Event()

    @app.handler("billing.orders")
    async def handle(event: OrderCreated) -> None:
        got.append(event.order_id)
        if len(got) == 2:
            both.set()

    async with app.serve(settings, topology=tls_topology):
        async with Publisher.connect(settings, tls_topology) as publisher:
            await publisher.publish(OrderCreated(order_id="tls-async", customer_id="c", total=1))
        with SyncPublisher.connect(settings, tls_topology) as sync:
            sync.publish(OrderCreated(order_id="tls-sync", customer_id="c", total=1))
        await asyncio.wait_for(both.wait(), 30)
    assert sorted(got) == ["tls-async", "tls-sync"]


async def test_publishers_and_consumer_app_refuse_an_untrusted_ca(
    tls_broker: TlsBroker, tls_topology: LoadedTopology
) -> None:
    settings = tls_broker.settings(ca=tls_broker.other_ca_file)
    with pytest.raises(BrokerUnavailableError, match=r"(?i)certificate verify failed"):
        await Publisher.connect(settings, tls_topology)
    with pytest.raises(BrokerUnavailableError, match=r"(?i)certificate verify failed"):
        SyncPublisher.connect(settings, tls_topology).start()
    app = must_not_consume(ConsumerApp("tls-untrusted"), "billing.orders")
    with pytest.raises(BrokerUnavailableError, match=r"(?i)certificate verify failed"):
        async with app.serve(settings, topology=tls_topology):
            pass


def _worker_env(broker: TlsBroker, ca: Path) -> dict[str, str]:
    env = clean_env()
    settings = broker.settings(ca=ca)
    env.update(
        BUS_AMQP_URL=settings.amqp_url,
        BUS_MANAGEMENT_URL=str(settings.management_url),
        BUS_TLS_CA_FILE=str(ca),
        BUS_TOPOLOGY=str(SHIPPED),
        BUS_CONNECT_TIMEOUT="5",
    )
    return env


def _worker_argv() -> list[str]:
    bus = str(Path(sys.executable).parent / "bus")
    return [bus, "worker", "-Q", "reports.build", "--pool", "solo"]


def test_celery_task_published_and_run_over_verified_amqps(
    tls_broker: TlsBroker, tls_topology: LoadedTopology, tmp_path: Path
) -> None:
    worker = Worker(_worker_argv(), _worker_env(tls_broker, tls_broker.ca_file), SHIPPED.parent)
    out = tmp_path / "records.jsonl"
    try:
        worker.start()
        worker.wait_running(
            lambda: any(line.endswith(" ready.") for line in worker.lines), "worker ready"
        )
        app = build_app(tls_topology.expanded, settings=tls_broker.settings(), routes=ROUTES)
        assert app.conf.broker_use_ssl["cert_reqs"] == ssl.CERT_REQUIRED
        app.send_task("consumers.tasks.record", (str(out), "over-tls"), queue="reports.build")
        worker.wait_running(out.exists, f"{out}")
        worker.wait_running(lambda: "over-tls" in out.read_text(), "the over-tls record")
    finally:
        worker.stop()
    assert json.loads(out.read_text().splitlines()[0])["token"] == "over-tls"
    assert f"amqps://guest:**@localhost:{tls_broker.amqps_port}" in worker.output


def test_celery_refuses_an_untrusted_ca(
    tls_broker: TlsBroker, tls_topology: LoadedTopology
) -> None:
    settings = tls_broker.settings(ca=tls_broker.other_ca_file)
    app = build_app(tls_topology.expanded, settings=settings, routes=ROUTES)
    connection = app.connection_for_write()
    with pytest.raises(Exception, match=r"(?i)certificate verify failed"), connection:
        connection.ensure_connection(max_retries=1)
    result = run(
        _worker_argv(), env=_worker_env(tls_broker, tls_broker.other_ca_file), cwd=SHIPPED.parent
    )
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert re.search(r"(?i)certificate verify failed", errors[0]), errors[0]
    assert "ready." not in result.stdout
