"""``bus demo``: the whole bus end to end, on a vhost of its own.

It applies ``topology.yaml``, starts the demo consumers (``consumers.demo``) in this process
and a Celery worker (``bus worker``) as a subprocess, publishes sample events through the
topic, direct, fanout and headers exchanges, one event whose handler fails once (the retry
ladder), a Celery task sent as raw AMQP and one poison message, then waits until every
expected delivery happened and prints where each message went. What "expected" means comes
from the routing simulator (:mod:`bus.routing`), so the demo also checks the simulator
against the broker. Exit 1 when an expected delivery did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pika
from pydantic import BaseModel

from bus.broker.apply import apply
from bus.broker.connect import connect_sync
from bus.broker.management import ManagementClient
from bus.dlq import DeadLetterQueue, list_dead_letters, render_dead_letters
from bus.errors import BrokerError, BusError
from bus.node import stop_process_group
from bus.provision import ProvidedBroker, provide_broker
from bus.routing import Router
from bus.settings import BrokerChoiceSettings, BusSettings, mask_url, with_vhost
from bus.topology import LoadedTopology

__all__ = ["DemoReport", "DemoRow", "render_table", "run_demo"]

Echo = Callable[[str], None]
WAIT_SECONDS = 20.0
CELERY_QUEUES = ("email.send", "reports.build")
TASK_NAME = "consumers.tasks.send_email"


@dataclass
class DemoRow:
    message: str
    exchange: str
    expected: list[str]
    reached: list[str] = field(default_factory=list)
    handled_by: list[str] = field(default_factory=list)
    outcome: str = "not delivered"
    retries: int = 0
    dead_letter_queue: str | None = None
    message_id: str = ""

    @property
    def ok(self) -> bool:
        return set(self.expected) <= set(self.reached) and not self.outcome.startswith("not ")


@dataclass
class DemoReport:
    broker: str
    vhost: str
    rows: list[DemoRow]
    seconds: float
    kept: bool
    # `bus dlq list` of the demo's vhost at the end: where the failed messages wait.
    dead_letters: list[DeadLetterQueue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def to_data(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "vhost": self.vhost,
            "kept": self.kept,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "rows": [{**asdict(row), "ok": row.ok} for row in self.rows],
            "dead_letters": [q.to_data() for q in self.dead_letters],
        }


class _Worker:
    """``bus worker`` as a subprocess whose log we read (task results come from it)."""

    def __init__(self, settings: BusSettings, topology: Path) -> None:
        env = dict(os.environ)
        env.update(
            BUS_AMQP_URL=settings.amqp_url,
            BUS_AMQP_NODES=",".join(settings.amqp_nodes),
            BUS_TOPOLOGY=str(topology.resolve()),
            BUS_MANAGEMENT_URL=settings.management_base_url(),
            # Celery warns on stderr when run as root; not the demo's business.
            PYTHONWARNINGS="ignore:You're running the worker with superuser privileges",
        )
        argv = [sys.executable, "-m", "bus", "worker", "-Q", ",".join(CELERY_QUEUES)]
        argv += ["--pool", "threads", "-c", "2", "-l", "INFO"]
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def ready(self) -> bool:
        return any(" ready." in line for line in self.lines)

    def failed(self) -> str | None:
        if self.process.poll() is None:
            return None
        return next((ln for ln in self.lines if ln.startswith("error:")), None) or (
            f"the Celery worker exited with code {self.process.returncode}"
        )

    def task_result(self, task_id: str) -> str | None:
        pattern = re.compile(rf"{re.escape(task_id)}\] (succeeded|raised|retry)[^:]*: (.*)$")
        for line in self.lines:
            match = pattern.search(line)
            if match:
                verb = "succeeded" if match.group(1) == "succeeded" else "failed"
                return f"task {verb}: {match.group(2).strip()}"
        return None

    def stop(self) -> None:
        stop_process_group(self.process, 15, 5)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _credentials(url: str) -> tuple[str, str]:
    return BusSettings(amqp_url=url).credentials()


@contextlib.contextmanager
def _demo_vhost(
    management: ManagementClient, user: str, wanted: str | None, keep: bool
) -> Iterator[str]:
    name = wanted or f"bus-demo-{uuid.uuid4().hex[:8]}"
    created = management.vhost(name) is None
    if created:
        management.create_vhost(name, description="amqp-bus demo")
        management.set_permissions(name, user)
    try:
        yield name
    finally:
        if created and not keep:
            with contextlib.suppress(BusError):
                management.delete_vhost(name)


def _peek_dead_letters(settings: BusSettings, queue: str) -> dict[str, dict[str, Any]]:
    """Message id -> headers of what ``queue`` holds, leaving every message in place."""
    connection = connect_sync(settings, "bus-demo-peek")
    found: dict[str, dict[str, Any]] = {}
    try:
        channel = connection.channel()
        tags: list[int] = []
        while True:
            method, properties, _ = channel.basic_get(queue)
            if method is None:
                break
            tags.append(method.delivery_tag)
            found[str(properties.message_id)] = dict(properties.headers or {})
        if tags:
            channel.basic_nack(tags[-1], multiple=True, requeue=True)
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(f"cannot read {queue}: {exc}") from None
    finally:
        if connection.is_open:
            connection.close()
    return found


async def _run(
    loaded: LoadedTopology, settings: BusSettings, echo: Echo, progress: Echo
) -> list[DemoRow]:
    from consumers.demo import FLAKY_PREFIX, app, recorder
    from producers import Publisher
    from producers.demo import sample_events
    from producers.events import EmailRequested, OrderCreated

    router = Router(loaded.expanded)
    worker = _Worker(settings, Path(loaded.file))
    try:
        recorder.clear()
        async with app.serve(settings, topology=loaded, grace=5.0):
            echo(f"consumers: {len(app.handlers)} handlers started; waiting for the Celery worker")
            deadline = time.monotonic() + WAIT_SECONDS
            while not worker.ready:
                problem = worker.failed()
                if problem:
                    raise BrokerError(problem)
                if time.monotonic() > deadline:
                    raise BrokerError("the Celery worker did not become ready in time")
                await asyncio.sleep(0.1)
            echo("worker: ready on " + ", ".join(CELERY_QUEUES))

            rows: list[DemoRow] = []
            async with Publisher.connect(settings, loaded, app_id="bus-demo") as publisher:
                events: list[tuple[BaseModel, dict[str, Any] | None]] = [
                    (event, None) for event in sample_events()
                ]
                events.append(
                    (
                        OrderCreated(
                            order_id=f"{FLAKY_PREFIX}2001",
                            customer_id="c-7",
                            total=Decimal("12.50"),
                        ),
                        None,
                    )
                )
                events.append(
                    (
                        EmailRequested(to="all@example.com", subject="Autumn newsletter"),
                        {"priority": "low", "kind": "newsletter"},
                    )
                )
                for event, headers in events:
                    contract = publisher.resolver.contract_for(event)
                    all_headers = {**contract.headers, **(headers or {})}
                    expected = router.route(
                        contract.exchange, contract.routing_key, all_headers
                    ).queues
                    message_id = await publisher.publish(event, headers=headers)
                    label = contract.name
                    if isinstance(event, OrderCreated) and event.order_id.startswith(FLAKY_PREFIX):
                        label += " (fails once)"
                    if headers:
                        label += " (" + ", ".join(f"{k}={v}" for k, v in headers.items()) + ")"
                    rows.append(
                        DemoRow(
                            label,
                            _exchange_label(loaded, contract.exchange),
                            sorted(expected),
                            message_id=message_id,
                        )
                    )
                task_id = await publisher.send_task(
                    "email.send", TASK_NAME, ["cust-42@example.com", "Your invoice"]
                )
                task_route = router.route("tasks", "email.send").queues
                rows.append(
                    DemoRow(
                        f"task {TASK_NAME}",
                        _exchange_label(loaded, "tasks"),
                        sorted(task_route),
                        message_id=task_id,
                    )
                )
                poison_id = await publisher.publish(
                    "commands", "order.cancel", b"{this is not json", event_type="order.cancel"
                )
                rows.append(
                    DemoRow(
                        "poison: invalid JSON as order.cancel",
                        _exchange_label(loaded, "commands"),
                        sorted(router.route("commands", "order.cancel").queues),
                        message_id=poison_id,
                        dead_letter_queue="orders.commands.dlq",
                    )
                )
            echo(f"published: {len(rows)} messages, every one confirmed and routed")

            deadline = time.monotonic() + WAIT_SECONDS
            while True:
                _observe(rows, recorder, worker, settings, app)
                done = sum(row.ok for row in rows)
                progress(f"waiting for deliveries: {done}/{len(rows)} messages complete")
                if done == len(rows) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.25)
            progress("")
        return rows
    finally:
        worker.stop()


def _exchange_label(loaded: LoadedTopology, name: str) -> str:
    spec = loaded.expanded.exchanges.get(name)
    return f"{name} ({spec.type})" if spec else name


def _observe(
    rows: list[DemoRow], recorder: Any, worker: _Worker, settings: BusSettings, app: Any
) -> None:
    by_id: dict[str, list[Any]] = {}
    for items in recorder.received.values():
        for item in items:
            by_id.setdefault(str(item.message_id), []).append(item)
    for row in rows:
        if row.message.startswith("task "):
            result = worker.task_result(row.message_id)
            if result:
                row.reached = list(row.expected)
                row.handled_by = ["celery worker"]
                row.outcome = result
            continue
        if row.dead_letter_queue:
            dead = _peek_dead_letters(settings, row.dead_letter_queue).get(row.message_id)
            if dead is not None:
                reason = dead.get("x-failure-reason", "?")
                row.reached = [*row.expected, row.dead_letter_queue]
                row.handled_by = [app.handlers[q].name for q in row.expected if q in app.handlers]
                row.outcome = f"dead-lettered ({reason}) to {row.dead_letter_queue}"
            continue
        seen = by_id.get(row.message_id, [])
        row.reached = sorted({item.queue for item in seen})
        row.handled_by = [app.handlers[q].name for q in row.reached if q in app.handlers]
        row.retries = max((item.retry_count for item in seen), default=0)
        if set(row.expected) <= set(row.reached):
            row.outcome = f"retried {row.retries}x, then acked" if row.retries else "acked"
        else:
            missing = ", ".join(sorted(set(row.expected) - set(row.reached)))
            row.outcome = f"not delivered to {missing}"


def render_table(report: DemoReport) -> str:
    headers = ["message", "exchange", "queues reached", "handled by", "outcome"]
    table = [headers] + [
        [
            row.message,
            row.exchange,
            ", ".join(row.reached) or "-",
            ", ".join(row.handled_by) or "-",
            row.outcome if row.ok else f"FAILED: {row.outcome}",
        ]
        for row in report.rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    verdict = (
        "every expected delivery happened"
        if report.ok
        else "SOME EXPECTED DELIVERIES DID NOT HAPPEN"
    )
    if report.dead_letters:
        lines.append(f"\nbus dlq list (vhost {report.vhost!r}):")
        lines += render_dead_letters(report.dead_letters)
    kept = f"; vhost {report.vhost!r} kept" if report.kept else ""
    lines.append(f"\n{verdict} ({report.seconds:.1f} s{kept})")
    return "\n".join(lines) + "\n"


def run_demo(
    loaded: LoadedTopology,
    settings: BusSettings,
    choice: BrokerChoiceSettings,
    *,
    vhost: str | None = None,
    keep: bool = False,
    echo: Echo = print,
    progress: Echo | None = None,
) -> DemoReport:
    """Run the demo; ``echo`` gets the progress lines, the caller prints the table.

    ``settings``: ``BUS_AMQP_URL`` (with ``BUS_AMQP_NODES``, ``BUS_MANAGEMENT_URL``) is the
    broker when it was given; otherwise ``choice`` (``BUS_TEST_BROKER``) chooses among the
    others exactly as for the tests. Both are read by the caller (``bus demo``).
    """
    started = time.monotonic()
    configured = settings.amqp_url if "amqp_url" in settings.model_fields_set else None
    with provide_broker(
        configured,
        settings.amqp_nodes if configured else (),
        mode=choice.broker,
        image=choice.rabbitmq_image,
        management_url=settings.management_url,
        docker_host=choice.docker_host,
    ) as broker:
        echo(f"broker: {broker.describe()}")
        return _on_broker(broker, loaded, vhost, keep, echo, progress or echo, started)


def _on_broker(
    broker: ProvidedBroker,
    loaded: LoadedTopology,
    vhost: str | None,
    keep: bool,
    echo: Echo,
    progress: Echo,
    started: float,
) -> DemoReport:
    user, password = _credentials(broker.amqp_url)
    with ManagementClient(broker.management_url, user, password) as management:
        management.overview()
        # A throwaway node or a container is removed at exit: nothing there can be kept.
        keep_vhost = keep and broker.how not in ("throwaway", "container")
        with _demo_vhost(management, user, vhost, keep_vhost) as name:
            settings = broker.settings(with_vhost(broker.amqp_url, name))
            echo(f"vhost: {name} at {mask_url(settings.amqp_url)}")
            result = apply(loaded, settings, vhost=name)
            echo(f"apply: {result.summary()}")
            rows = asyncio.run(_run(loaded, settings, echo, progress))
            dead = list_dead_letters(loaded.expanded, settings, management)
            elapsed = time.monotonic() - started
            return DemoReport(broker.describe(), name, rows, elapsed, keep_vhost, dead)
