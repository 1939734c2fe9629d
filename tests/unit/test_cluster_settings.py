"""Several broker addresses: BUS_AMQP_NODES, the URLs every client derives, masking."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from pydantic import ValidationError

from bus.broker.connect import FailoverConnection, _async_urls, pika_parameters_all
from bus.broker.management import _first_answering
from bus.celery_app import build_app, celery_config
from bus.celery_app.app_settings import settings_for
from bus.provision import ProvidedBroker, provide_broker
from bus.settings import BusSettings, mask_urls, with_vhost
from bus.topology.load import parse_topology

PRIMARY = "amqp://app:s3cret@rabbit-1.example:5672/orders?channel_max=64"


def test_nodes_from_the_environment_share_scheme_credentials_vhost_and_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BUS_AMQP_URL", PRIMARY)
    monkeypatch.setenv(
        "BUS_AMQP_NODES", " rabbit-2.example:5673, rabbit-3.example ,[fd00::3]:5672,"
    )
    settings = BusSettings()
    assert settings.amqp_nodes == ("rabbit-2.example:5673", "rabbit-3.example", "[fd00::3]:5672")
    assert settings.amqp_urls == [
        PRIMARY,
        "amqp://app:s3cret@rabbit-2.example:5673/orders?channel_max=64",
        "amqp://app:s3cret@rabbit-3.example/orders?channel_max=64",
        "amqp://app:s3cret@[fd00::3]:5672/orders?channel_max=64",
    ]
    # Every existing single-URL use keeps meaning the first node.
    assert settings.amqp_url == PRIMARY


def test_without_nodes_there_is_one_url() -> None:
    assert BusSettings(amqp_url=PRIMARY).amqp_urls == [PRIMARY]


def test_the_first_node_listed_again_is_not_tried_twice() -> None:
    settings = BusSettings(amqp_url=PRIMARY, amqp_nodes=["rabbit-1.example:5672", "b:1"])
    assert len(settings.amqp_urls) == 2


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("amqp://app:hunter2@rabbit-2:5672/", "host:port entries only"),
        ("app:hunter2@rabbit-2:5672", "host:port entries only"),
        ("rabbit-2:5672/orders", "host:port entries only"),
        ("rabbit-2:notaport", "bad port"),
        (":5672", "no host"),
    ],
)
def test_node_entries_that_are_not_host_port_are_refused(entry: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment) as caught:
        BusSettings(amqp_url=PRIMARY, amqp_nodes=entry)
    # The CLI prints the messages (bus.cli.support.broker_settings): never the password.
    assert "hunter2" not in " ".join(str(e["msg"]) for e in caught.value.errors())


def test_vhost_derivations_keep_every_node() -> None:
    settings = BusSettings(amqp_url=PRIMARY, amqp_nodes="rabbit-2.example:5672")
    # The derivation plan/apply/status use for another vhost.
    other = settings.model_copy(update={"amqp_url": with_vhost(settings.amqp_url, "billing")})
    assert other.amqp_urls == [
        "amqp://app:s3cret@rabbit-1.example:5672/billing?channel_max=64",
        "amqp://app:s3cret@rabbit-2.example:5672/billing?channel_max=64",
    ]
    assert other.vhost == "billing"


def test_management_roots_of_every_node_unless_one_is_set() -> None:
    settings = BusSettings(amqp_url=PRIMARY, amqp_nodes="rabbit-2.example:5673,rabbit-1.example:1")
    # One management root per host: two AMQP ports on one host share its API.
    assert settings.management_base_urls() == [
        "http://rabbit-1.example:15672",
        "http://rabbit-2.example:15672",
    ]
    tls = BusSettings(amqp_url="amqps://u:p@a:5671/", amqp_nodes="b")
    assert tls.management_base_urls() == ["https://a:15671", "https://b:15671"]
    fixed = settings.model_copy(update={"management_url": "http://lb.example:15672/"})
    assert fixed.management_base_urls() == ["http://lb.example:15672"]
    listed = settings.model_copy(update={"management_url": "http://a:1/, http://b:2"})
    assert listed.management_base_urls() == ["http://a:1", "http://b:2"]
    assert listed.management_base_url() == "http://a:1"


def test_masked_urls_hide_every_password() -> None:
    settings = BusSettings(amqp_url=PRIMARY, amqp_nodes="b:1,c:2")
    text = mask_urls(settings.amqp_urls)
    assert "s3cret" not in text
    assert text.count("app:***@") == 3


def test_pika_gets_one_parameter_set_per_node_in_order() -> None:
    settings = BusSettings(amqp_url=PRIMARY, amqp_nodes="b:5673,c", heartbeat=7)
    params = pika_parameters_all(settings)
    assert [(p.host, p.port) for p in params] == [
        ("rabbit-1.example", 5672),
        ("b", 5673),
        ("c", 5672),
    ]
    assert {p.virtual_host for p in params} == {"orders"}
    assert {p.heartbeat for p in params} == {7}


def test_aio_pika_urls_carry_heartbeat_and_a_short_reconnect_interval() -> None:
    single = _async_urls(BusSettings(amqp_url="amqp://u:p@a/", heartbeat=9))
    assert single == ["amqp://u:p@a/?heartbeat=9"]
    several = _async_urls(BusSettings(amqp_url="amqp://u:p@a/", amqp_nodes="b", heartbeat=9))
    assert several == [
        "amqp://u:p@a/?heartbeat=9&reconnect_interval=1",
        "amqp://u:p@b/?heartbeat=9&reconnect_interval=1",
    ]
    chosen = _async_urls(BusSettings(amqp_url="amqp://u:p@a/?reconnect_interval=3", amqp_nodes="b"))
    assert all(
        "reconnect_interval=3" in url and url.count("reconnect_interval") == 1 for url in chosen
    )


def test_failover_hooks_the_robust_connection_step_aio_pika_has() -> None:
    # FailoverConnection overrides this private step; an aio-pika upgrade that renames it
    # would silently turn failover off.
    step = "_RobustConnection__connect_transport"
    assert callable(getattr(aio_pika.RobustConnection, step, None))
    assert step in vars(FailoverConnection)


CELERY_TOPOLOGY = """
version: 1
exchanges:
  tasks: {type: topic}
queues:
  jobs:
    type: quorum
    celery: true
    bindings: [{exchange: tasks, routing_key: jobs.run}]
"""


def test_celery_gets_the_failover_list_and_reads_it_back() -> None:
    expanded = parse_topology(CELERY_TOPOLOGY).expanded
    settings = BusSettings(amqp_url="amqp://u:pw@a:5672/v", amqp_nodes="b:5673,c:5674")
    config = celery_config(expanded, settings)
    assert config["broker_url"] == (
        "amqp://u:pw@a:5672/v;amqp://u:pw@b:5673/v;amqp://u:pw@c:5674/v"
    )
    app = build_app(expanded, settings=settings)
    try:
        assert settings_for(app).amqp_urls == settings.amqp_urls
        app.conf.broker_url = "amqp://u:pw@x:1/v;amqp://u:pw@y:2/v"
        assert settings_for(app).amqp_urls == ["amqp://u:pw@x:1/v", "amqp://u:pw@y:2/v"]
    finally:
        app.close()


def test_celery_tls_checks_each_node_by_its_own_name(tmp_path: Any) -> None:
    expanded = parse_topology(CELERY_TOPOLOGY).expanded
    one = BusSettings(amqp_url="amqps://u:p@a:5671/v")
    several = BusSettings(amqp_url="amqps://u:p@a:5671/v", amqp_nodes="b:5671")
    assert celery_config(expanded, one)["broker_use_ssl"]["server_hostname"] == "a"
    # None: kombu fills in the host of the URL it is connecting to.
    assert celery_config(expanded, several)["broker_use_ssl"]["server_hostname"] is None


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_management_api_of_the_first_node_that_answers(http_server: str) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    settings = BusSettings(connect_timeout=2)
    # A 401 is an answer: that node's API is there, the credentials are the caller's problem.
    assert _first_answering([dead, http_server], settings, True) == http_server
    assert _first_answering([http_server, dead], settings, True) == http_server
    # Nobody answers: the first, so that the caller reports it unreachable as before.
    assert _first_answering([dead, dead + "0"], settings, True) == dead


def test_cluster_queue_fields_take_what_rabbitmq_3_10_takes() -> None:
    # On a 3-node 3.10.8 cluster: every locator value below was accepted (a made-up one was
    # refused with 406 invalid_queue_locator_arg), and a size above the node count was
    # accepted and capped at the node count.
    loaded = parse_topology(
        "version: 1\nqueues:\n"
        "  q1: {type: quorum, initial_cluster_size: 5, leader_locator: client-local}\n"
        "  q2: {type: quorum, leader_locator: balanced}\n"
        "  q3: {type: quorum, leader_locator: random}\n"
        "  q4: {type: quorum, leader_locator: least-leaders}\n"
        "  s1: {type: stream, initial_cluster_size: 2, leader_locator: balanced}\n"
    )
    queues = loaded.expanded.queues
    assert queues["q1"].arguments["x-quorum-initial-group-size"] == 5
    assert queues["q1"].arguments["x-queue-leader-locator"] == "client-local"
    assert queues["q4"].arguments["x-queue-leader-locator"] == "least-leaders"
    assert queues["s1"].arguments["x-initial-cluster-size"] == 2
    assert "x-quorum-initial-group-size" not in queues["s1"].arguments


@pytest.mark.parametrize("how", ["local", "container", "throwaway"])
def test_a_provisioned_broker_never_inherits_stray_cluster_nodes(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A BUS_AMQP_NODES left in the shell names another broker's nodes: a demo or a test on a
    # local node must not fail over to them.
    monkeypatch.setenv("BUS_AMQP_NODES", "prod-2.example:5672")
    assert BusSettings().amqp_nodes == ("prod-2.example:5672",)
    broker = ProvidedBroker("amqp://guest:guest@127.0.0.1:5672/", "http://127.0.0.1:15672", how)
    settings = broker.settings(with_vhost(broker.amqp_url, "demo"))
    assert settings.amqp_nodes == ()
    assert settings.amqp_urls == ["amqp://guest:guest@127.0.0.1:5672/demo"]


def test_the_configured_broker_keeps_the_nodes_given_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BUS_AMQP_NODES", "elsewhere.example:5672")
    with provide_broker(PRIMARY, ("rabbit-2.example:5672",)) as broker:
        settings = broker.settings()
    assert settings.amqp_nodes == ("rabbit-2.example:5672",)
    assert [urlsplit(u).netloc.rpartition("@")[2] for u in settings.amqp_urls] == [
        "rabbit-1.example:5672",
        "rabbit-2.example:5672",
    ]
