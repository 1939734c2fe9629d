"""Celery workers on topology queues, against the real broker, with real worker processes.

Every worker runs as a subprocess under a broker user without configure permission
(``configure: "^$"``), in a fresh vhost whose topology was declared with plain pika; each test
stops its workers in a finaliser.
"""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import pika
import pytest

from bus.broker.management import ManagementClient
from bus.celery_app import build_app, preflight
from bus.celery_message import build_task_message, celery_route
from bus.errors import NotFoundError, PublishError, UsageError
from bus.provision import ProvidedBroker
from bus.settings import BusSettings
from bus.topology import LoadedTopology
from bus.topology.expand import ExpandedTopology
from tests.support.amqp import declare_with_pika
from tests.support.celery_worker import BIN, REPO, CeleryVhost, Worker, clean_env
from tests.support.commands import run
from tests.support.users import user_url
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

@pytest.fixture
def celery_vhost(
    bus_broker: ProvidedBroker,
    bus_vhost: str,
    bus_vhost_url: str,
    bus_management: ManagementClient,
    bus_topology: LoadedTopology,
    tmp_path: Path,
) -> Iterator[CeleryVhost]:
    user, password = f"bus-celery-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    # The management tag lets the worker's pre-flight read its own vhost's queues over HTTP.
    bus_management.create_user(user, password, tags="management")
    bus_management.set_permissions(bus_vhost, user, configure="^$", write=".*", read=".*")
    worker_url = user_url(bus_vhost_url, user, password)
    try:
        with CeleryVhost(
            vhost=bus_vhost, admin_url=bus_vhost_url, worker_url=worker_url,
            management_url=bus_broker.management_url, topology=bus_topology,
            management=bus_management, tmp=tmp_path,
        ) as cv:  # fmt: skip
            yield cv
    finally:
        bus_management.delete_user(user)


def _publish_pika(url: str, exchange: str, routing_key: str, body: bytes, props: Any) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
    finally:
        connection.close()


async def _publish_aio_pika(url: str, exchange: str, key: str, message: aio_pika.Message) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        x = await channel.get_exchange(exchange, ensure=False)
        await x.publish(message, routing_key=key, mandatory=True)
    finally:
        await connection.close()


async def test_tasks_from_celery_aio_pika_and_pika_run_on_both_queues(
    celery_vhost: CeleryVhost,
) -> None:
    cv = celery_vhost
    cv.worker("email.send,reports.build", pool="prefork").wait_ready()
    out = cv.tmp / "records.jsonl"
    app = cv.app()
    # send_task follows task_routes from the topology: record has no route -> default queue.
    app.send_task("consumers.tasks.record", (str(out), "celery-send-task"))
    app.signature("consumers.tasks.record", (str(out), "celery-apply-async")).apply_async(
        queue="reports.build"
    )
    expanded = cv.topology.expanded
    email, reports = celery_route(expanded, "email.send"), celery_route(expanded, "reports.build")
    raw = build_task_message("consumers.tasks.record", [str(out), "aio-pika"])
    await _publish_aio_pika(cv.admin_url, email.exchange, email.routing_key, raw.aio_pika_message())
    raw = build_task_message("consumers.tasks.record", [str(out), "pika"])
    _publish_pika(
        cv.admin_url, reports.exchange, reports.routing_key, raw.body, raw.pika_properties()
    )

    records = wait_for(lambda: len(cv.records(out)) >= 4 and cv.records(out), "4 task runs")
    by_token = {r["token"]: r for r in records}
    assert {t: r["routing_key"] for t, r in by_token.items()} == {
        "celery-send-task": "email.send",
        "celery-apply-async": "reports.build",
        "aio-pika": "email.send",
        "pika": "reports.build",
    }
    assert by_token["pika"]["task_id"] == raw.task_id


def test_worker_leaves_every_broker_definition_unchanged(celery_vhost: CeleryVhost) -> None:
    cv = celery_vhost
    perms = cv.management.request("GET", f"/vhosts/{quote(cv.vhost, safe='')}/permissions")
    worker_user = urlsplit(cv.worker_url).username
    assert [p["configure"] for p in perms if p["user"] == worker_user] == ["^$"]
    before = cv.snapshot()

    w = cv.worker("email.send,reports.build", via="celery").wait_ready()
    out = cv.tmp / "records.jsonl"
    app = cv.app()
    with pytest.raises(PublishError, match="countdown/eta is not supported"):
        app.send_task("consumers.tasks.record", (str(out), "delayed"), countdown=2)
    with pytest.raises(PublishError, match="countdown/eta is not supported"):
        app.signature("consumers.tasks.send_email", ("a@example.org",)).apply_async(
            eta=time.time() + 2
        )
    for queue in ("email.send", "reports.build"):
        app.send_task("consumers.tasks.record", (str(out), queue), queue=queue)
    app.send_task("consumers.tasks.send_email", ("a@example.org",))
    wait_for(lambda: len(cv.records(out)) >= 2, "2 task runs")
    w.stop()

    assert cv.snapshot() == before
    assert {r["token"] for r in cv.records(out)} == {"email.send", "reports.build"}
    for marker in ("ACCESS_REFUSED", "PRECONDITION_FAILED", "CRITICAL", "NOT_FOUND"):
        assert marker not in w.output
    # Nothing was left queued either: the refused delayed tasks were never published.
    for queue in ("email.send", "reports.build", "email.send.dlq", "reports.build.dlq"):
        assert cv.get(queue) is None


def test_reject_and_failure_dead_letter(celery_vhost: CeleryVhost) -> None:
    cv = celery_vhost
    cv.worker("email.send,reports.build").wait_ready()
    app = cv.app()
    rejected = app.send_task("consumers.tasks.reject", ("not today",), queue="email.send")
    failed = app.send_task("consumers.tasks.fail", ("broken",), queue="reports.build")

    props, _ = cv.wait_get("email.send.dlq")
    assert props.headers["id"] == rejected.id
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == "email.send"

    props, _ = cv.wait_get("reports.build.dlq")
    assert props.headers["id"] == failed.id
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == "reports.build"


def test_sigkill_mid_task_runs_the_task_again(celery_vhost: CeleryVhost) -> None:
    cv = celery_vhost
    out = cv.tmp / "records.jsonl"
    first = cv.worker("email.send", pool="prefork").wait_ready()
    sent = cv.app().send_task("consumers.tasks.slow", (str(out), "slow", 3.0))
    wait_for(lambda: any(r.get("event") == "start" for r in cv.records(out)), "the task start")
    first.kill()
    assert not any(r.get("event") == "done" for r in cv.records(out))

    cv.worker("email.send", pool="prefork").wait_ready()
    wait_for(lambda: any(r.get("event") == "done" for r in cv.records(out)), "the re-run")
    runs = [r for r in cv.records(out) if r["task_id"] == sent.id]
    assert [r["event"] for r in runs] == ["start", "start", "done"]


@pytest.mark.parametrize("protocol", [2, 1])
def test_pickled_task_is_never_executed_and_dead_letters(
    celery_vhost: CeleryVhost, protocol: int
) -> None:
    """Protocol 2 (task in the headers) and protocol 1 (everything in the pickled body).

    Celery rejects the first as an invalid task; the second fails while decoding, where plain
    Celery acknowledges it away and TopologyConsumer rejects it instead.
    """
    cv = celery_vhost
    w = cv.worker("reports.build").wait_ready()
    out = cv.tmp / "records.jsonl"
    route = celery_route(cv.topology.expanded, "reports.build")
    raw = build_task_message("consumers.tasks.record", [str(out), "pickled"])
    if protocol == 2:
        body = pickle.dumps(([str(out), "pickled"], {}, {"callbacks": None}))
        headers = raw.headers
    else:
        body = pickle.dumps(
            {"task": "consumers.tasks.record", "id": raw.task_id, "args": [str(out), "pickled"]}
        )
        headers = {"proto1-id": raw.task_id}
    props = replace(
        raw,
        headers=headers,
        content_type="application/x-python-serialize",
        content_encoding="binary",
    )
    _publish_pika(cv.admin_url, route.exchange, route.routing_key, body, props.pika_properties())
    # A JSON task behind it: once it ran, the worker has dealt with the pickled one.
    cv.app().send_task("consumers.tasks.record", (str(out), "json"), queue="reports.build")
    wait_for(lambda: cv.records(out), "the JSON task")

    dead, dead_body = cv.wait_get("reports.build.dlq")
    assert dead.correlation_id == raw.task_id
    assert dead.content_type == "application/x-python-serialize"
    assert dead.headers["x-first-death-reason"] == "rejected"
    assert dead_body == body
    assert [r["token"] for r in cv.records(out)] == ["json"]
    assert "ContentDisallowed" in w.output or "untrusted content" in w.output


def _drifted(expanded: ExpandedTopology) -> ExpandedTopology:
    queues = dict(expanded.queues)
    spec = queues["email.send"]
    queues["email.send"] = replace(spec, arguments={**spec.arguments, "x-delivery-limit": 5})
    return replace(expanded, queues=queues)


@pytest.mark.parametrize("via", ["bus", "celery"])
def test_drifted_queue_fails_worker_start_with_one_line(
    via: str,
    bus_broker: ProvidedBroker,
    bus_vhost: str,
    bus_vhost_url: str,
    bus_topology: LoadedTopology,
) -> None:
    declare_with_pika(bus_vhost_url, _drifted(bus_topology.expanded))
    env = clean_env()
    env.update(BUS_AMQP_URL=bus_vhost_url, BUS_TOPOLOGY=str(bus_topology.file))
    if bus_broker.management_url:
        env["BUS_MANAGEMENT_URL"] = bus_broker.management_url
    if via == "bus":
        argv = [str(BIN / "bus"), "worker", "-Q", "email.send,reports.build"]
    else:
        argv = [str(BIN / "celery"), "-A", "consumers.tasks", "worker", "-Q", "email.send"]
    w = Worker(argv, env).start()
    try:
        code = w.wait_exit()
    finally:
        w.stop()
    lines = [line for line in w.lines if line.strip()]
    assert code != 0
    assert len(lines) == 1, w.output
    assert lines[0].startswith("error: Celery queue 'email.send'")
    assert "x-delivery-limit: expected 3, broker has 5" in lines[0]


def test_queue_not_marked_for_celery_is_refused(bus_topology: LoadedTopology) -> None:
    env = clean_env()
    env["BUS_TOPOLOGY"] = str(bus_topology.file)
    result = run([BIN / "bus", "worker", "-Q", "email.send,billing.orders"], env=env, cwd=REPO)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: queue 'billing.orders' is not marked 'celery:' in {bus_topology.file}"
    ]


def test_preflight_without_management_api_still_checks_existence(
    bus_vhost_url: str, bus_topology: LoadedTopology, caplog: pytest.LogCaptureFixture
) -> None:
    # Port 9 has no management API: the check falls back to passive declares over AMQP.
    settings = BusSettings(amqp_url=bus_vhost_url, management_url="http://127.0.0.1:9")
    app = build_app(bus_topology.expanded, settings=settings)
    with pytest.raises(NotFoundError, match=r"email\.send"):
        preflight(app, ["email.send"])
    declare_with_pika(bus_vhost_url, bus_topology.expanded)
    with caplog.at_level("WARNING", logger="bus.celery_app"):
        preflight(app, ["email.send", "reports.build"])
    assert "NOT their arguments" in caplog.text


async def test_send_task_from_both_publishers_runs_on_the_worker(celery_vhost: CeleryVhost) -> None:
    from producers import Publisher, SyncPublisher

    cv = celery_vhost
    cv.worker("email.send,reports.build").wait_ready()
    out = cv.tmp / "records.jsonl"
    settings = BusSettings(amqp_url=cv.admin_url)
    async with Publisher.connect(settings, cv.topology) as publisher:
        async_id = await publisher.send_task(
            "email.send", "consumers.tasks.record", [str(out), "async-publisher"]
        )
    with SyncPublisher.connect(settings, cv.topology) as sync_publisher:
        sync_id = sync_publisher.send_task(
            "reports.build", "consumers.tasks.record", [str(out), "sync-publisher"]
        )
        with pytest.raises(UsageError, match=r"analytics\.all"):
            sync_publisher.send_task("analytics.all", "consumers.tasks.record", [str(out), "x"])

    records = wait_for(lambda: len(cv.records(out)) >= 2 and cv.records(out), "2 task runs")
    by_token = {r["token"]: r for r in records}
    assert by_token["async-publisher"]["routing_key"] == "email.send"
    assert by_token["async-publisher"]["task_id"] == async_id
    assert by_token["sync-publisher"]["routing_key"] == "reports.build"
    assert by_token["sync-publisher"]["task_id"] == sync_id
    assert "x" not in by_token


def test_undecodable_and_malformed_messages_dead_letter_and_the_worker_lives(
    celery_vhost: CeleryVhost,
) -> None:
    """One message per kind of finding 3 (py-amqp could not decode it: the worker used to exit
    with "Unrecoverable error: UnicodeDecodeError"), then valid tasks: every malformed one is
    in the DLQ, the valid ones ran, the worker process never exited nor reconnected."""
    from tests.support.hostile.worker_io import DUPLICATE, KindSender, drain_dead_letters
    from tests.support.hostile.worker_kinds import KINDS

    cv = celery_vhost
    names = (
        "type-not-utf8",
        "app-id-not-utf8-quorum",
        "headers-nested-5000",
        "task-header-list",
        "body-not-json",
        "kwargs-not-a-dict",
    )
    kinds = {k.name: k for k in KINDS if k.name in names}
    worker = cv.worker("email.send,reports.build").wait_ready()
    out = cv.tmp / "records.jsonl"
    sender = KindSender(cv.admin_url)
    try:
        for index, name in enumerate(names):
            kind = kinds[name]
            route = celery_route(cv.topology.expanded, kind.queue)
            sent = kind.build(str(out), f"bad-{name}", f"k{index}")
            assert sender.send(route.exchange, route.routing_key, sent) == ""
    finally:
        sender.close()
    app = cv.app()
    for queue in ("email.send", "reports.build"):
        app.send_task("consumers.tasks.record", (str(out), f"valid-{queue}"), queue=queue)

    def dead_lettered() -> int:
        return sum(
            (cv.management.queue(cv.vhost, f"{q}.dlq") or {}).get("messages") or 0
            for q in ("email.send", "reports.build")
        )

    wait_for(lambda: len(cv.records(out)) >= 2, "the valid tasks")
    wait_for(lambda: dead_lettered() >= len(names), "every malformed message in a DLQ")
    dead = {
        **drain_dead_letters(cv.admin_url, "email.send.dlq"),
        **drain_dead_letters(cv.admin_url, "reports.build.dlq"),
    }
    # Every one exactly once (nothing lost, nothing requeued), each rejected by the worker.
    assert sorted(dead) == sorted(f"k{i}" for i in range(len(names))), dead
    assert not [reason for reason in dead.values() if DUPLICATE in reason], dead
    assert all(
        reason.startswith("rejected") or "x-bus-undecodable" in reason for reason in dead.values()
    ), dead
    assert sorted(r["token"] for r in cv.records(out)) == [
        "valid-email.send",
        "valid-reports.build",
    ]
    assert worker.process is not None
    assert worker.process.poll() is None, worker.output
    assert "Unrecoverable error" not in worker.output
    assert "Connection to broker lost" not in worker.output
    assert "undecodable content header: type: not UTF-8" in worker.output
