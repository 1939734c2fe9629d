"""Celery mirrors of the topology and raw protocol-2 task messages (no broker)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery

from bus.celery_app import build_app, celery_config, celery_queues
from bus.celery_message import build_task_message, celery_route, celery_routes, topic_matches
from bus.errors import PublishError, UsageError
from bus.settings import BusSettings
from bus.topology import LoadedTopology, parse_topology

CUSTOM = """
version: 1
exchanges:
  jobs: {type: topic}
  direct: {type: direct}
queues:
  jobs.any:
    type: quorum
    delivery_limit: 4
    max_length: 1000
    single_active_consumer: true
    celery: {routing_key: jobs.run}
    bindings: [{exchange: jobs, routing_key: "jobs.#"}]
  jobs.direct:
    celery: true
    bindings:
      - {exchange: direct, routing_key: first}
      - {exchange: direct, routing_key: second}
  plain:
    bindings: [{exchange: jobs, routing_key: "plain.*"}]
"""


@pytest.fixture
def custom() -> LoadedTopology:
    return parse_topology(CUSTOM, "custom.yaml")


def test_raw_message_matches_what_celery_itself_builds() -> None:
    app = Celery("oracle", set_as_current=False)
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    args, kwargs = ["a@example.org", 3], {"subject": "hi", "tags": ["x"]}
    ours = build_task_message(
        "consumers.tasks.send_email",
        args,
        kwargs,
        task_id="0b6e5f4e-4f4c-4d57-9d64-8a1b8d0f0c11",
        expires=expires,
        time_limit=30,
        soft_time_limit=20,
        ignore_result=True,
    )
    theirs = app.amqp.as_task_v2(
        ours.task_id,
        "consumers.tasks.send_email",
        args,
        kwargs,
        expires=expires,
        time_limit=30,
        soft_time_limit=20,
        ignore_result=True,
    )
    their_headers = theirs.headers
    for key, value in ours.headers.items():
        if key == "origin":
            continue
        assert key in their_headers, key
        assert json.loads(json.dumps(their_headers[key])) == value, key
    assert json.loads(ours.body) == json.loads(json.dumps(theirs.body))
    assert ours.correlation_id == theirs.properties["correlation_id"]
    props = ours.amqp_properties()
    assert props["content_type"] == "application/json"
    assert props["delivery_mode"] == 2
    assert "reply_to" not in props


def test_pika_and_aio_pika_forms_carry_the_same_message() -> None:
    msg = build_task_message("t.x", [1], {"k": "v"}, reply_to="amq.rabbitmq.reply-to")
    pika_props = msg.pika_properties()
    aio = msg.aio_pika_message()
    for attr in ("content_type", "content_encoding", "correlation_id", "reply_to"):
        assert getattr(pika_props, attr) == getattr(aio, attr), attr
    assert pika_props.delivery_mode == int(aio.delivery_mode) == 2
    assert pika_props.headers == dict(aio.headers) == msg.headers
    assert aio.body == msg.body


@pytest.mark.parametrize(
    ("args", "kwargs", "expires"),
    [
        ("not-a-list", None, None),
        ([object()], None, None),
        ([], {"when": datetime.now(UTC)}, None),
        ([], None, datetime.now() + timedelta(hours=1)),  # naive: the worker cannot place it
    ],
)
def test_builder_refuses_what_a_json_worker_cannot_take(
    args: Any, kwargs: Any, expires: datetime | None
) -> None:
    with pytest.raises(UsageError):
        build_task_message("t.x", args, kwargs, expires=expires)


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("jobs.#", "jobs.run", True),
        ("jobs.#", "jobs", True),
        ("jobs.*", "jobs", False),
        ("jobs.*", "jobs.run.now", False),
        ("#", "", True),
        ("*.run", "jobs.run", True),
        ("#.run", "a.b.run", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c", False),
        ("exact", "exactly", False),
    ],
)
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_routes_follow_the_bindings(custom: LoadedTopology) -> None:
    routes = celery_routes(custom.expanded)
    assert set(routes) == {"jobs.any", "jobs.direct"}
    assert (routes["jobs.any"].exchange, routes["jobs.any"].routing_key) == ("jobs", "jobs.run")
    assert routes["jobs.direct"].exchange == "direct"
    assert routes["jobs.direct"].routing_key == "first"
    with pytest.raises(UsageError, match="not a Celery queue"):
        celery_route(custom.expanded, "plain")


def test_kombu_queues_mirror_the_declared_queues_exactly(custom: LoadedTopology) -> None:
    queues = celery_queues(custom.expanded)
    for name, queue in queues.items():
        spec = custom.expanded.queues[name]
        assert queue.queue_arguments == spec.arguments
        assert [type(v) for v in queue.queue_arguments.values()] == [
            type(v) for v in spec.arguments.values()
        ]
        assert queue.no_declare is True
        assert queue.exchange.no_declare is True
        assert queue.durable is spec.durable
        assert queue.exchange.type == custom.expanded.exchanges[queue.exchange.name].type
    assert queues["jobs.any"].queue_arguments["x-queue-type"] == "quorum"


def test_config_points_every_default_at_a_topology_queue(custom: LoadedTopology) -> None:
    settings = BusSettings(amqp_url="amqp://u:p@broker.example:5672/v")
    conf = celery_config(custom.expanded, settings, routes={"app.run": "jobs.any"})
    assert conf["task_default_queue"] == "jobs.any"
    assert conf["task_default_exchange"] == "jobs"
    assert conf["task_default_routing_key"] == "jobs.run"
    assert conf["task_routes"] == {"app.run": {"queue": "jobs.any", "routing_key": "jobs.run"}}
    assert conf["task_create_missing_queues"] is False
    assert conf["broker_use_ssl"] is None
    with pytest.raises(UsageError, match="not a Celery queue"):
        celery_config(custom.expanded, settings, routes={"app.run": "plain"})
    with pytest.raises(UsageError, match="not a Celery queue"):
        celery_config(custom.expanded, settings, default_queue="plain")


def test_prefetch_multiplier_is_celerys_four_unless_the_topology_says_otherwise(
    custom: LoadedTopology,
) -> None:
    settings = BusSettings(amqp_url="amqp://u:p@broker.example:5672/v")
    assert celery_config(custom.expanded, settings)["worker_prefetch_multiplier"] == 4
    long_tasks = parse_topology(CUSTOM + "celery: {prefetch_multiplier: 1}\n", "custom.yaml")
    assert celery_config(long_tasks.expanded, settings)["worker_prefetch_multiplier"] == 1
    conf = celery_config(long_tasks.expanded, settings, prefetch_multiplier=2)
    assert conf["worker_prefetch_multiplier"] == 2


def test_tls_settings_always_verify(custom: LoadedTopology, tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    settings = BusSettings(amqp_url="amqps://u:p@broker.example:5671/v", tls_ca_file=ca)
    ssl_options = celery_config(custom.expanded, settings)["broker_use_ssl"]
    import ssl

    assert ssl_options["cert_reqs"] == ssl.CERT_REQUIRED
    assert ssl_options["server_hostname"] == "broker.example"
    assert ssl_options["ca_certs"] == str(ca)


def test_countdown_and_eta_are_refused_before_any_connection(custom: LoadedTopology) -> None:
    # Port 9 (discard) has no broker: a publish attempt would fail with a connection error.
    settings = BusSettings(amqp_url="amqp://u:p@127.0.0.1:9/v", connect_timeout=1)
    app = build_app(custom.expanded, settings=settings)
    with pytest.raises(PublishError, match="countdown/eta is not supported"):
        app.send_task("app.run", (1,), countdown=5)
    with pytest.raises(PublishError, match="countdown/eta is not supported"):
        app.signature("app.run").apply_async(eta=datetime.now(UTC) + timedelta(seconds=5))


def test_building_and_importing_do_not_touch_files_or_broker(tmp_path: Any) -> None:
    code = (
        "import sys, consumers.tasks, bus.celery_message\n"
        "print(type(consumers.tasks.app).__name__)\n"
    )
    missing = tmp_path / "missing.yaml"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"BUS_TOPOLOGY": str(missing), "BUS_AMQP_URL": "amqp://u:p@127.0.0.1:9/"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Celery"


def test_message_builder_does_not_import_celery() -> None:
    code = "import sys, bus.celery_message\nprint('celery' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
