"""Worker monitoring with narrow rights, on a fresh vhost with real worker processes.

With ``celery: {monitoring: true}`` the remote-control and event exchanges come from
``bus apply``; a worker whose configure permission covers only its own pidbox queue runs,
and ``bus status --workers`` (under a user that may configure only its reply queue) lists it
with its active task.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
from celery.events.event import event_exchange
from kombu.pidbox import Mailbox

from bus.broker.management import ManagementClient
from bus.celery_app import build_app
from bus.cli import main
from bus.provision import ProvidedBroker
from bus.settings import BusSettings
from bus.topology import load_topology
from consumers.tasks import ROUTES
from tests.support.amqp import declare_with_pika, shipped_topology_with
from tests.support.celery_worker import BIN, REPO, Worker, clean_env
from tests.support.users import user_url
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# The README's regexes, written out here so the test proves the documented text.
WORKER_CONFIGURE = r"^[^@]+@.+\.celery\.pidbox$"
INSPECT_CONFIGURE = (
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.reply\.celery\.pidbox$"
)
MONITORING_EXCHANGES = ("celery.pidbox", "reply.celery.pidbox", "celeryev")


@dataclass
class MonitoredVhost:
    vhost: str
    admin_url: str
    topology_file: Path
    management: ManagementClient
    users: dict[str, str]
    env: dict[str, str]


def _exchanges(management: ManagementClient, vhost: str) -> list[dict[str, Any]]:
    keys = ("name", "type", "durable", "auto_delete", "internal", "arguments")
    return sorted(
        ({k: x.get(k) for k in keys} for x in management.exchanges(vhost)),
        key=lambda x: str(x["name"]),
    )


@pytest.fixture
def monitored(
    bus_broker: ProvidedBroker,
    bus_vhost: str,
    bus_vhost_url: str,
    bus_management: ManagementClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[MonitoredVhost]:
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(shipped_topology_with(celery={"monitoring": True}))
    monkeypatch.setenv("BUS_AMQP_URL", bus_vhost_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_broker.management_url or "")
    assert main(["apply", "-f", str(topology_file)]) == 0
    capsys.readouterr()
    users: dict[str, str] = {}
    suffix = uuid.uuid4().hex[:10]
    for role, configure in (("worker", WORKER_CONFIGURE), ("inspect", INSPECT_CONFIGURE)):
        user, password = f"bus-{role}-{suffix}", uuid.uuid4().hex
        bus_management.create_user(user, password, tags="management")
        bus_management.set_permissions(bus_vhost, user, configure=configure, write=".*", read=".*")
        users[role] = user_url(bus_vhost_url, user, password)
    env = clean_env()
    env.update(
        BUS_AMQP_URL=users["worker"],
        BUS_TOPOLOGY=str(topology_file),
        BUS_MANAGEMENT_URL=bus_broker.management_url or "",
    )
    try:
        yield MonitoredVhost(bus_vhost, bus_vhost_url, topology_file, bus_management, users, env)
    finally:
        for url in users.values():
            bus_management.delete_user(str(pika.URLParameters(url).credentials.username))


def test_apply_declares_the_exchanges_exactly_as_celery_does(monitored: MonitoredVhost) -> None:
    live = {x["name"]: x for x in _exchanges(monitored.management, monitored.vhost)}
    assert set(MONITORING_EXCHANGES) <= set(live)
    # Celery's own entities, declared non-passively: any flag that differs from what bus apply
    # declared closes the channel with 406 PRECONDITION_FAILED.
    mailbox = Mailbox("celery", type="fanout")
    connection = pika.BlockingConnection(pika.URLParameters(monitored.admin_url))
    try:
        channel = connection.channel()
        for x in (mailbox.exchange, mailbox.reply_exchange, event_exchange):
            channel.exchange_declare(x.name, x.type, durable=x.durable, auto_delete=x.auto_delete)
    finally:
        connection.close()
    assert {x["name"]: x for x in _exchanges(monitored.management, monitored.vhost)} == live


def test_status_lists_worker_and_active_task_with_narrow_permissions(
    monitored: MonitoredVhost,
    workers: list[Worker],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    exchanges_before = _exchanges(monitored.management, monitored.vhost)
    worker = Worker(
        [str(BIN / "bus"), "worker", "-Q", "email.send,reports.build", "--pool", "threads"],
        monitored.env,
    )
    workers.append(worker.start())
    worker.wait_ready()

    out = tmp_path / "slow.jsonl"
    app = build_app(
        load_topology(monitored.topology_file),
        settings=BusSettings(amqp_url=monitored.admin_url),
        routes=ROUTES,
    )
    sent = app.send_task("consumers.tasks.slow", (str(out), "watched", 20.0), queue="reports.build")
    wait_for(lambda: out.exists() and "start" in out.read_text(), "the task to start")

    monkeypatch.setenv("BUS_AMQP_URL", monitored.users["inspect"])
    code = main(
        ["status", "-f", str(monitored.topology_file), "--vhost", monitored.vhost,
         "--allow-idle", ".*", "--workers", "--json", "--workers-timeout", "2"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["monitoring"] is True
    assert len(report["workers"]) == 1, report["workers"]
    listed = report["workers"][0]
    assert listed["hostname"].startswith("celery@")
    assert [t["id"] for t in listed["active"]] == [sent.id]
    task = listed["active"][0]
    assert task["name"] == "consumers.tasks.slow"
    assert task["routing_key"] == "reports.build"
    assert task["args"] == [str(out), "watched", 20.0]
    assert isinstance(task["started"], float)

    code = main(
        ["status", "-f", str(monitored.topology_file), "--vhost", monitored.vhost,
         "--allow-idle", ".*", "--workers"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert listed["hostname"] in text
    assert sent.id in text

    assert worker.process is not None
    assert worker.process.poll() is None
    worker.stop()
    for marker in ("ACCESS_REFUSED", "NOT_FOUND", "CRITICAL", "Traceback"):
        assert marker not in worker.output
    assert _exchanges(monitored.management, monitored.vhost) == exchanges_before


def test_worker_without_the_pidbox_permission_cannot_start(
    monitored: MonitoredVhost, workers: list[Worker]
) -> None:
    """The regex is what makes the worker run: without it the pidbox queue is refused."""
    user = f"bus-none-{uuid.uuid4().hex[:10]}"
    monitored.management.create_user(user, "pw", tags="management")
    monitored.management.set_permissions(
        monitored.vhost, user, configure="^$", write=".*", read=".*"
    )
    try:
        env = dict(monitored.env, BUS_AMQP_URL=user_url(monitored.admin_url, user, "pw"))
        worker = Worker([str(BIN / "bus"), "worker", "-Q", "email.send", "--pool", "threads"], env)
        workers.append(worker.start())
        code = worker.wait_exit()
        assert code != 0
        assert "ACCESS_REFUSED" in worker.output
        assert ".celery.pidbox" in worker.output
    finally:
        monitored.management.delete_user(user)


def test_workers_flag_with_monitoring_off_prints_one_line(
    bus_broker: ProvidedBroker,
    bus_vhost: str,
    bus_vhost_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topology = load_topology(REPO / "topology.yaml")
    assert topology.expanded.celery.monitoring is False
    declare_with_pika(bus_vhost_url, topology.expanded)
    monkeypatch.setenv("BUS_AMQP_URL", bus_broker.amqp_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_broker.management_url or "")
    args = ["status", "-f", str(REPO / "topology.yaml"), "--vhost", bus_vhost]

    plain_code = main(args)
    plain = capsys.readouterr().out
    code = main([*args, "--workers"])
    with_workers = capsys.readouterr().out

    assert code == plain_code == 4  # nothing consumes: unhealthy either way
    assert with_workers.startswith(plain)
    extra = with_workers[len(plain) :].splitlines()
    assert len(extra) == 1
    assert "monitoring is off" in extra[0]

    main([*args, "--workers", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["monitoring"] is False
    assert report["workers"] == []
