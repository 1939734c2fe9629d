"""Live migration of a ``celery: true`` queue under a running ``bus worker`` (issue 21):
every task published before and during the migration runs at least once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pika

from bus.broker.management import ManagementClient
from bus.celery_message import build_task_message
from bus.migrate import migrate
from bus.topology import load_topology
from tests.support.amqp import declare_with_pika
from tests.support.celery_worker import BIN, Worker, clean_env
from tests.support.plan import settings_for

TOPOLOGY = """\
version: 1
exchanges:
  tasks: {{type: topic}}
queues:
  reports.build:
    type: {type}
{extra}    celery: true
    bindings: [{{exchange: tasks, routing_key: reports.build}}]
  email.send:
    celery: true
    bindings: [{{exchange: tasks, routing_key: email.send}}]
"""
OLD = TOPOLOGY.format(type="classic", extra="")
NEW = TOPOLOGY.format(type="quorum", extra="    delivery_limit: 5\n    dead_letter: true\n")


def _publish(url: str, path: Path, tokens: list[str], pause: float = 0.0) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for token in tokens:
            raw = build_task_message("consumers.tasks.record", [str(path), token])
            channel.basic_publish(
                "tasks", "reports.build", raw.body, raw.pika_properties(), mandatory=True
            )
            if pause:
                time.sleep(pause)
    finally:
        connection.close()


def _tokens(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["token"] for line in path.read_text().splitlines() if line}


def test_celery_queue_migrated_under_a_running_worker_runs_every_task(
    bus_vhost_url: str, bus_management: ManagementClient, tmp_path: Path
) -> None:
    old_file, new_file = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_file.write_text(OLD)
    new_file.write_text(NEW)
    declare_with_pika(bus_vhost_url, load_topology(old_file).expanded)
    out = tmp_path / "records.jsonl"
    before = [f"pre-{i}" for i in range(200)]
    during = [f"live-{i}" for i in range(200)]
    _publish(bus_vhost_url, out, before)
    env = clean_env()
    env.update(
        BUS_AMQP_URL=bus_vhost_url,
        BUS_MANAGEMENT_URL=bus_management.base_url,
        BUS_TOPOLOGY=str(old_file),
    )
    argv = [str(BIN / "bus"), "worker", "-Q", "reports.build", "--pool", "threads", "-c", "2"]
    worker = Worker(argv, env).start()
    try:
        worker.wait_ready()
        publisher = threading.Thread(
            target=_publish, args=(bus_vhost_url, out, during, 0.01), daemon=True
        )
        publisher.start()
        migrate(load_topology(new_file), settings_for(bus_vhost_url, bus_management))
        publisher.join(60)
        wanted = set(before) | set(during)
        deadline = time.monotonic() + 90
        running = worker.process
        assert running is not None
        while time.monotonic() < deadline and not wanted <= _tokens(out) and running.poll() is None:
            time.sleep(0.2)
        missing = wanted - _tokens(out)
        assert not missing, f"{len(missing)} tasks never ran; worker said:\n{worker.output}"
    finally:
        worker.stop()
