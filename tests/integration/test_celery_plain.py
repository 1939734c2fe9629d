"""Plain Celery beside the bus: the module `bus celery-config` writes, used both ways.

- a plain ``celery.Celery`` client configured from that module sends a task that ``bus worker``
  runs;
- a plain ``celery worker`` configured from that module runs a task the bus publisher sends as
  raw AMQP;
- neither adds, changes or removes any broker object: the vhost's definitions are the same
  before and after, and ``bus plan --prune`` still shows it in sync.

The client and the plain worker run in subprocesses with nothing of amqp-bus imported: only
Celery, kombu and the generated module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bus.broker.management import ManagementClient
from bus.cli import main
from bus.settings import BusSettings
from bus.topology import load_topology
from producers import SyncPublisher
from tests.support.celery_worker import BIN, REPO, Worker, clean_env
from tests.support.commands import run
from tests.support.waiting import DEADLINE, wait_for

SHIPPED = REPO / "topology.yaml"

pytestmark = [pytest.mark.integration, pytest.mark.bus_topology(str(SHIPPED))]

PLAIN_APP = """
import json
import pathlib

from celery import Celery

app = Celery("plain")
app.config_from_object("celeryconfig")
OUT = pathlib.Path(__file__).with_name("plain-runs.jsonl")


@app.task(name="plain.record", bind=True)
def record(self, token):
    info = self.request.delivery_info or {}
    with OUT.open("a") as f:
        f.write(json.dumps({"token": token, "routing_key": info.get("routing_key")}) + "\\n")
"""


def _env(url: str, management: ManagementClient, tmp_path: Path) -> dict[str, str]:
    env = clean_env()
    env.update(
        CELERY_BROKER_URL=url,
        BUS_AMQP_URL=url,
        BUS_MANAGEMENT_URL=management.base_url,
        BUS_TOPOLOGY=str(SHIPPED),
        PYTHONPATH=str(tmp_path),
    )
    return env


def _snapshot(management: ManagementClient, vhost: str) -> dict[str, Any]:
    """Exchanges, queues (with arguments) and bindings of the vhost, without counters."""
    q_keys = ("name", "type", "durable", "auto_delete", "exclusive", "arguments")
    x_keys = ("name", "type", "durable", "auto_delete", "internal", "arguments")
    return {
        "queues": sorted(
            (json.dumps({k: q.get(k) for k in q_keys}, sort_keys=True))
            for q in management.queues(vhost)
        ),
        "exchanges": sorted(
            (json.dumps({k: x.get(k) for k in x_keys}, sort_keys=True))
            for x in management.exchanges(vhost)
        ),
        "bindings": sorted(json.dumps(b, sort_keys=True) for b in management.bindings(vhost)),
    }


@pytest.fixture
def plain_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    target = tmp_path / "celeryconfig.py"
    assert main(["celery-config", "-f", str(SHIPPED), "-o", str(target)]) == 0
    capsys.readouterr()
    (tmp_path / "plainapp.py").write_text(PLAIN_APP, encoding="utf-8")
    return tmp_path


def test_plain_client_and_plain_worker_beside_the_bus(
    plain_module: Path,
    workers: list[Worker],
    bus_applied_vhost: str,
    bus_vhost_url: str,
    bus_management: ManagementClient,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp = plain_module
    env = _env(bus_vhost_url, bus_management, tmp)
    before = _snapshot(bus_management, bus_applied_vhost)

    # 1. A plain Celery client sends a task; `bus worker` runs it.
    bus_worker = Worker(
        [str(BIN / "bus"), "worker", "-Q", "email.send", "--pool", "threads", "-c", "2"], env, tmp
    )
    workers.append(bus_worker.start())
    bus_worker.wait_ready()
    records = tmp / "bus-runs.jsonl"
    client = run(
        [
            sys.executable,
            "-c",
            "import sys, plainapp; r = plainapp.app.send_task('consumers.tasks.record', "
            "(sys.argv[1], 'from-plain-client')); print(r.id)",
            records,
        ],
        env=env,
        cwd=tmp,
        timeout=DEADLINE,
    )
    assert client.returncode == 0, client.stderr
    task_id = client.stdout.strip()
    ran = wait_for(lambda: records.exists() and records.read_text(), "bus worker to run it")
    record = json.loads(ran.splitlines()[0])
    assert record["token"] == "from-plain-client"
    assert record["routing_key"] == "email.send"
    assert task_id in bus_worker.output

    # 2. A plain `celery worker` on the generated module runs our raw-AMQP send_task.
    plain_worker = Worker(
        [
            *(str(BIN / "celery"), "-A", "plainapp", "worker", "-Q", "email.send,reports.build"),
            *("--pool=threads", "-c", "2", "--loglevel=INFO"),
        ],
        env,
        tmp,
    )
    workers.append(plain_worker.start())
    bus_worker.stop()
    plain_worker.wait_ready()
    settings = BusSettings(amqp_url=bus_vhost_url, management_url=bus_management.base_url)
    with SyncPublisher.connect(settings, load_topology(SHIPPED)) as publisher:
        publisher.send_task("reports.build", "plain.record", ["raw-to-reports"])
        publisher.send_task("email.send", "plain.record", ["raw-to-email"])
    out = tmp / "plain-runs.jsonl"
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 2, "2 plain runs")
    runs = {json.loads(line)["token"]: json.loads(line) for line in out.read_text().splitlines()}
    assert {t: r["routing_key"] for t, r in runs.items()} == {
        "raw-to-reports": "reports.build",
        "raw-to-email": "email.send",
    }
    # Per-consumer QoS on the quorum queue: no global QoS refused by the broker.
    for marker in ("NOT_IMPLEMENTED", "PRECONDITION_FAILED", "NOT_FOUND", "CRITICAL"):
        assert marker not in plain_worker.output
        assert marker not in bus_worker.output

    # 3. Nothing was declared by either (checked while the plain worker still runs).
    after = _snapshot(bus_management, bus_applied_vhost)
    for kind in before:
        assert set(after[kind]) - set(before[kind]) == set(), f"{kind} added"
        assert set(before[kind]) - set(after[kind]) == set(), f"{kind} removed"
    monkeypatch.setenv("BUS_AMQP_URL", bus_vhost_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_management.base_url)
    code = main(["plan", "-f", str(SHIPPED), "--prune", "--detailed-exitcode"])
    out_text = capsys.readouterr().out
    assert code == 0, out_text


def test_celery_config_without_celery_queues_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = tmp_path / "t.yaml"
    topology.write_text(
        "version: 1\nexchanges:\n  x: {type: direct}\nqueues:\n"
        "  q: {bindings: [{exchange: x, routing_key: k}]}\n",
        encoding="utf-8",
    )
    assert main(["celery-config", "-f", str(topology)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: the topology marks no queue with 'celery:'"
