"""``bus beat`` and ``bus worker`` as real processes on a fresh vhost, under a user that can
configure nothing: a schedule from topology.yaml runs on the worker, on time and on its queue."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bus.broker.management import ManagementClient
from bus.provision import ProvidedBroker
from bus.topology import load_topology
from tests.support.amqp import declare_with_pika, shipped_topology_with
from tests.support.celery_worker import BIN, Worker, clean_env
from tests.support.users import user_url
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _schedule(out: Path) -> dict[str, object]:
    tick = {"task": "consumers.tasks.record", "queue": "reports.build", "every": "1s"}
    return {"schedules": {"tick": {**tick, "args": [str(out), "tick"]}}}


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_every_second_schedule_runs_at_least_three_times_in_five_seconds(
    bus_broker: ProvidedBroker,
    bus_vhost: str,
    bus_vhost_url: str,
    bus_management: ManagementClient,
    tmp_path: Path,
    workers: list[Worker],
) -> None:
    out = tmp_path / "ticks.jsonl"
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(shipped_topology_with(celery=_schedule(out)))
    declare_with_pika(bus_vhost_url, load_topology(topology_file).expanded)
    user, password = f"bus-beat-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    bus_management.create_user(user, password, tags="management")
    bus_management.set_permissions(bus_vhost, user, configure="^$", write=".*", read=".*")
    try:
        env = clean_env()
        env.update(
            BUS_AMQP_URL=user_url(bus_vhost_url, user, password),
            BUS_TOPOLOGY=str(topology_file),
            BUS_MANAGEMENT_URL=bus_broker.management_url or "",
        )
        worker = Worker(
            [str(BIN / "bus"), "worker", "-Q", "reports.build", "--pool", "threads"], env
        )
        workers.append(worker.start())
        worker.wait_ready()
        state = tmp_path / "state" / "beat-schedule"
        state.parent.mkdir()
        beat = Worker([str(BIN / "bus"), "beat", "--schedule-file", str(state)], env)
        workers.append(beat.start())

        runs = wait_for(lambda: _records(out), "a first run")
        window_end = runs[0]["at"] + 5.0
        # Same host, same clock: the task stamps its runs with time.time() too.
        wait_for(lambda: time.time() > window_end + 0.5, "the end of the 5 s window")
        in_window = [r for r in _records(out) if r["at"] <= window_end]

        assert len(in_window) >= 3, in_window
        assert {r["token"] for r in in_window} == {"tick"}
        assert {r["routing_key"] for r in in_window} == {"reports.build"}
        assert len({r["task_id"] for r in in_window}) == len(in_window)
        assert any(p.name.startswith("beat-schedule") for p in state.parent.iterdir())
        for marker in ("ACCESS_REFUSED", "countdown/eta", "Traceback"):
            assert marker not in beat.output
            assert marker not in worker.output
    finally:
        for process in workers:
            process.stop()
        bus_management.delete_user(user)
