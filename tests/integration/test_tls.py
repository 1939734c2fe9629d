"""TLS: ``amqps://`` with certificate verification on the pika, aio-pika and management paths.

A throwaway node (never the shared broker) gets a TLS listener with a certificate issued by a
CA generated for the test.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from bus.broker.connect import connect_async, connect_sync, ssl_context
from bus.broker.management import ManagementClient
from bus.errors import BrokerUnavailableError
from bus.node import LocalNode, rabbitmq_installed
from bus.settings import BusSettings

pytestmark = pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")

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
