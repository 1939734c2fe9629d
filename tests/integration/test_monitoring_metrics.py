"""``bus worker --metrics-port``: task outcomes and run times scraped from a real worker."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.broker.management import ManagementClient
from bus.celery_app import build_app
from bus.cli import main
from bus.provision import ProvidedBroker
from bus.settings import BusSettings
from bus.topology import LoadedTopology
from consumers.tasks import ROUTES
from tests.support.amqp import declare_with_pika
from tests.support.celery_worker import BIN, Worker, clean_env
from tests.support.users import user_url
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("bus_celery_")
    }


def _by_labels(samples: Samples, metric: str, *labels: str) -> dict[str, float]:
    """The samples of ``metric`` keyed by the values of ``labels``, joined with ':'."""
    return {
        ":".join(dict(pairs)[label] for label in labels): value
        for (name, pairs), value in samples.items()
        if name == metric
    }


@pytest.fixture
def worker_env(
    bus_broker: ProvidedBroker,
    bus_vhost: str,
    bus_vhost_url: str,
    bus_management: ManagementClient,
    bus_topology: LoadedTopology,
) -> Iterator[dict[str, str]]:
    declare_with_pika(bus_vhost_url, bus_topology.expanded)
    user, password = f"bus-metrics-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    bus_management.create_user(user, password, tags="management")
    bus_management.set_permissions(bus_vhost, user, configure="^$", write=".*", read=".*")
    env = clean_env()
    env.update(
        BUS_AMQP_URL=user_url(bus_vhost_url, user, password),
        BUS_TOPOLOGY=str(bus_topology.file),
        BUS_MANAGEMENT_URL=bus_broker.management_url or "",
    )
    try:
        yield env
    finally:
        bus_management.delete_user(user)


def test_worker_metrics_count_every_outcome_and_time_runs(
    worker_env: dict[str, str],
    bus_vhost_url: str,
    bus_topology: LoadedTopology,
    tmp_path: Path,
) -> None:
    port = _free_port()
    argv = [str(BIN / "bus"), "worker", "-Q", "email.send,reports.build", "--pool", "threads"]
    worker = Worker([*argv, "--metrics-port", str(port)], worker_env)
    try:
        worker.start().wait_ready()
        out = str(tmp_path / "runs.jsonl")
        app = build_app(
            bus_topology.expanded, settings=BusSettings(amqp_url=bus_vhost_url), routes=ROUTES
        )
        app.send_task("consumers.tasks.record", (out, "a"), queue="email.send")
        app.send_task("consumers.tasks.record", (out, "b"), queue="reports.build")
        app.send_task("consumers.tasks.fail", ("broken",), queue="reports.build")
        app.send_task("consumers.tasks.reject", ("no",), queue="email.send")
        app.send_task("consumers.tasks.flaky", (out, "c", 2), queue="reports.build")
        app.send_task("consumers.tasks.no_such_task", (), queue="email.send")

        def finished() -> float:
            counts = _scrape(port)
            return sum(v for (name, _), v in counts.items() if name == "bus_celery_tasks_total")

        # 2 record + fail + reject + 2 flaky retries + flaky success + unknown = 8
        wait_for(lambda: finished() >= 8, f"8 finished runs; worker:\n{worker.output}")
        samples = _scrape(port)
    finally:
        worker.stop()

    assert _by_labels(samples, "bus_celery_tasks_total", "task", "state") == {
        "consumers.tasks.record:SUCCESS": 2,
        "consumers.tasks.fail:FAILURE": 1,
        "consumers.tasks.reject:REJECTED": 1,
        "consumers.tasks.flaky:RETRY": 2,
        "consumers.tasks.flaky:SUCCESS": 1,
        "consumers.tasks.no_such_task:UNKNOWN": 1,
    }
    assert _by_labels(samples, "bus_celery_task_seconds_count", "task") == {
        "consumers.tasks.record": 2,
        "consumers.tasks.fail": 1,
        "consumers.tasks.reject": 1,
        "consumers.tasks.flaky": 3,
    }
    seconds = _by_labels(samples, "bus_celery_task_seconds_sum", "task")
    assert all(value > 0 for value in seconds.values()), seconds


def test_metrics_with_the_prefork_pool_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["worker", "-Q", "email.send", "--metrics-port", str(_free_port())])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --metrics-port needs --pool threads or solo")
