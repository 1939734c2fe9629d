"""Least privilege, per role, against the real broker (RabbitMQ 3.10.8 facts, verified there).

Each test creates users with exactly the permissions of one role in a fresh vhost where the
shipped topology.yaml was applied by the admin user, and deletes them afterwards.

What the broker checks (observed on 3.10.8):

- a passive ``exchange.declare`` / ``queue.declare`` needs no permission at all, so the
  start-up checks of publishers and consumers cost nothing;
- ``basic.publish`` needs write on the exchange, on ``amq.default`` for the default exchange;
  the alternate exchange and exchange-to-exchange bindings need nothing more;
- ``basic.consume`` / ``basic.get`` need read on the queue; acks and rejects need nothing;
- declaring needs configure, plus read on the object and write on its alternate / dead-letter
  exchange when it names one; binding needs write on the destination and read on the source.

``bus apply`` without configure is proven in tests/integration/test_plan_apply.py
(test_user_without_configure_permission_gets_one_clear_error_line); the Celery worker without
configure in tests/integration/test_celery_worker.py (every worker there runs as a user with
configure ``^$``; test_worker_leaves_every_broker_definition_unchanged checks it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pika
import pytest

from bus.errors import AccessRefusedError
from bus.settings import BusSettings
from bus.topology import LoadedTopology
from consumers import Backoff, ConsumerApp, Message, RejectMessage
from producers import Publisher, SyncPublisher
from producers.events import CacheInvalidated, CancelOrder, EmailRequested, OrderCreated
from tests.support.consumer import must_not_consume
from tests.support.plan import run_cli_as
from tests.support.users import MakeUser, RoleUser

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "topology.yaml"

# The exchanges the demo producers publish to (contracts + the Celery task exchange).
PUBLISHER_WRITE = r"^(events|commands|broadcast|notifications|tasks)$"
# The consumer runtime on billing.orders: retries go through the default exchange to
# billing.orders.retry.*, dead letters through billing.orders.dlx.
CONSUMER_WRITE = r"^(amq\.default|billing\.orders\.dlx)$"
CONSUMER_READ = r"^billing\.orders$"

CREATED = OrderCreated(order_id="o-1", customer_id="c-1", total=12)


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("error: "), lines
    return lines[0]


def _depths(url: str, *queues: str) -> dict[str, int]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        return {q: int(channel.queue_declare(q, passive=True).method.message_count) for q in queues}
    finally:
        connection.close()


def _get(url: str, queue: str) -> tuple[Any, bytes] | None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        method, props, body = connection.channel().basic_get(queue, auto_ack=True)
    finally:
        connection.close()
    return None if method is None else (props, body)


async def _until(condition: Any, what: str, seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def applied(bus_applied_vhost: str, bus_vhost_url: str) -> str:
    """The admin URL of a vhost holding the shipped topology."""
    return bus_vhost_url


# -- producers ------------------------------------------------------------------------------


@pytest.fixture
def publisher_user(make_user: MakeUser, applied: str) -> RoleUser:
    return make_user(configure="^$", write=PUBLISHER_WRITE, read="^$")


async def test_publisher_works_with_write_only_on_its_exchanges(
    publisher_user: RoleUser, applied: str, bus_topology: LoadedTopology
) -> None:
    async with Publisher.connect(publisher_user.settings(), bus_topology) as publisher:
        await publisher.publish(CREATED)
        await publisher.publish(CancelOrder(order_id="o-1"))
        await publisher.publish(CacheInvalidated(key="k"))
        await publisher.publish(EmailRequested(to="a@example.org", subject="hi"))
        await publisher.send_task("email.send", "consumers.tasks.send_email", ["a@example.org"])
    assert _depths(
        applied, "billing.orders", "orders.commands", "cache.web", "email.priority", "email.send"
    ) == {"billing.orders": 1, "orders.commands": 1, "cache.web": 1, "email.priority": 1,
          "email.send": 1}  # fmt: skip


def test_sync_publisher_works_with_write_only_on_its_exchanges(
    publisher_user: RoleUser, applied: str, bus_topology: LoadedTopology
) -> None:
    with SyncPublisher.connect(publisher_user.settings(), bus_topology) as publisher:
        publisher.publish(CREATED)
        publisher.publish(CancelOrder(order_id="o-1"))
        publisher.send_task("reports.build", "consumers.tasks.record", ["/dev/null", "x"])
    assert _depths(applied, "billing.orders", "orders.commands", "reports.build") == {
        "billing.orders": 1,
        "orders.commands": 1,
        "reports.build": 1,
    }


@pytest.mark.parametrize("client", ["async", "sync"])
async def test_publish_without_write_names_permission_and_exchange_and_connection_stays_usable(
    client: str,
    make_user: MakeUser,
    applied: str,
    bus_vhost: str,
    bus_topology: LoadedTopology,
) -> None:
    user = make_user(configure="^$", write="^events$", read="^$")
    expected = (
        f"access refused: write permission on exchange 'commands' in vhost {bus_vhost!r} "
        f"for user {user.name!r}"
    )
    if client == "async":
        async with Publisher.connect(user.settings(), bus_topology) as publisher:
            with pytest.raises(AccessRefusedError) as info:
                await publisher.publish(CancelOrder(order_id="o-1"))
            await publisher.publish(CREATED)
    else:
        with SyncPublisher.connect(user.settings(), bus_topology) as sync:
            with pytest.raises(AccessRefusedError) as info:
                sync.publish(CancelOrder(order_id="o-1"))
            sync.publish(CREATED)
    assert str(info.value) == expected
    assert _depths(applied, "billing.orders", "orders.commands") == {
        "billing.orders": 1,
        "orders.commands": 0,
    }


def test_publish_to_the_default_exchange_names_amq_default(
    make_user: MakeUser, applied: str, bus_vhost: str
) -> None:
    user = make_user(configure="^$", write="^events$", read="^$")
    with (
        SyncPublisher.connect(user.settings()) as publisher,
        pytest.raises(AccessRefusedError) as info,
    ):
        publisher.publish("", "analytics.all", {"x": 1})
    assert str(info.value) == (
        f"access refused: write permission on exchange 'amq.default' (the default exchange) "
        f"in vhost {bus_vhost!r} for user {user.name!r}"
    )


@pytest.mark.parametrize(
    ("write", "argv", "refused"),
    [
        pytest.param(
            "^events$",
            ["publish", "-e", "commands", "-k", "order.cancel", "--json", '{"order_id": "o"}'],
            "write permission on exchange 'commands'",
            id="publish-without-write",
        ),
        pytest.param(
            CONSUMER_WRITE,
            ["consume", "--app", "tests.security.apps:billing", "-f", str(SHIPPED)],
            "read permission on queue 'billing.orders'",
            id="consume-without-read",
        ),
    ],
)
def test_bus_command_without_permission_prints_one_line(
    write: str,
    argv: list[str],
    refused: str,
    make_user: MakeUser,
    applied: str,
    bus_vhost: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = make_user(configure="^$", write=write, read="^$")
    code, _, err = run_cli_as(user.env(), argv, monkeypatch, capsys)
    assert code == 1
    assert _error_line(err) == (
        f"error: access refused: {refused} in vhost {bus_vhost!r} for user {user.name!r}"
    )


# -- consumer runtime -----------------------------------------------------------------------


async def test_consumer_runtime_works_without_configure(
    make_user: MakeUser, applied: str, bus_topology: LoadedTopology
) -> None:
    """Handled, retried through the default exchange, dead-lettered through the DLX."""
    user = make_user(configure="^$", write=CONSUMER_WRITE, read=CONSUMER_READ)
    app = ConsumerApp("least-privilege", backoff=Backoff(base=0.05, cap=0.2), grace=5)
    seen: list[tuple[str, int]] = []

    @app.handler("billing.orders")
    async def handle(event: OrderCreated, message: Message) -> None:
        seen.append((event.order_id, message.retry_count))
        if event.order_id == "fails" and message.retry_count == 0:
            raise RuntimeError("first attempt fails")
        if event.order_id == "fails":
            raise RejectMessage("second attempt rejects")

    async with app.serve(user.settings(), topology=bus_topology):
        async with Publisher.connect(BusSettings(amqp_url=applied), bus_topology) as publisher:
            await publisher.publish(CREATED)
            await publisher.publish(OrderCreated(order_id="fails", customer_id="c", total=1))
        await _until(lambda: len(seen) >= 3, "three handler calls")
        await _until(
            lambda: _depths(applied, "billing.orders.dlq")["billing.orders.dlq"] == 1,
            "the dead letter",
        )
    assert sorted(seen) == [("fails", 0), ("fails", 1), ("o-1", 0)]
    dead = _get(applied, "billing.orders.dlq")
    assert dead is not None
    props, body = dead
    assert json.loads(body)["order_id"] == "fails"
    assert props.headers["x-failure-reason"] == "rejected"
    assert props.headers["x-retry-count"] == 1
    assert _depths(applied, "billing.orders")["billing.orders"] == 0


async def test_consumer_without_read_fails_at_start_naming_permission_and_queue(
    make_user: MakeUser, applied: str, bus_vhost: str, bus_topology: LoadedTopology
) -> None:
    user = make_user(configure="^$", write=CONSUMER_WRITE, read="^$")
    app = must_not_consume(ConsumerApp("no-read"), "billing.orders")
    with pytest.raises(AccessRefusedError) as info:
        async with app.serve(user.settings(), topology=bus_topology):
            pass
    assert str(info.value) == (
        f"access refused: read permission on queue 'billing.orders' in vhost {bus_vhost!r} "
        f"for user {user.name!r}"
    )


async def test_consumer_without_write_on_the_dlx_logs_permission_and_keeps_the_message(
    make_user: MakeUser,
    applied: str,
    bus_vhost: str,
    bus_topology: LoadedTopology,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = make_user(configure="^$", write=r"^amq\.default$", read=CONSUMER_READ)
    app = ConsumerApp("no-dlx-write", backoff=Backoff(base=0.05, cap=0.2), grace=5)
    calls: list[str] = []

    @app.handler("billing.orders")
    async def handle(event: OrderCreated) -> None:
        calls.append(event.order_id)
        raise RejectMessage("always")

    expected = (
        f"access refused: write permission on exchange 'billing.orders.dlx' in vhost "
        f"{bus_vhost!r} for user {user.name!r}"
    )
    with caplog.at_level(logging.ERROR, logger="consumers.runtime"):
        async with app.serve(user.settings(), topology=bus_topology):
            async with Publisher.connect(BusSettings(amqp_url=applied), bus_topology) as pub:
                await pub.publish(CREATED)
            await _until(lambda: expected in caplog.text, "the access-refused log line")
    assert calls
    assert set(calls) == {"o-1"}
    # Not dead-lettered, not lost: back in its queue for when the permission is granted.
    assert _depths(applied, "billing.orders", "billing.orders.dlq") == {
        "billing.orders": 1,
        "billing.orders.dlq": 0,
    }


# -- bus apply: write and read, beside configure (tested in test_plan_apply.py) -------------


@pytest.mark.parametrize(
    ("write", "read", "expected"),
    [
        # Declaring 'events' (alternate exchange 'unrouted') needs write on 'unrouted'.
        ("^$", ".*", "write permission on exchange 'unrouted'"),
        # ... and read on 'events' itself, checked after configure.
        (".*", "^$", "configure or read permission on exchange 'events'"),
        # Binding a queue needs write on it (declaring it needs nothing more without a DLX).
        (r"^(unrouted|.*\.dlx)$", ".*", "write permission on (queue|exchange) '"),
    ],
)
def test_bus_apply_names_the_missing_permission_and_object(
    write: str,
    read: str,
    expected: str,
    make_user: MakeUser,
    bus_vhost: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = make_user(configure=".*", write=write, read=read, tags="management")
    code, _, err = run_cli_as(user.env(), ["apply", "-f", str(SHIPPED)], monkeypatch, capsys)
    assert code == 1
    line = _error_line(err)
    assert re.match(f"error: access refused: {expected}", line), line
    assert f"in vhost {bus_vhost!r} for user {user.name!r}" in line


def test_bus_apply_works_for_the_operator_role(
    make_user: MakeUser, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    user = make_user(configure=".*", write=".*", read=".*", tags="management")
    code, out, err = run_cli_as(user.env(), ["apply", "-f", str(SHIPPED)], monkeypatch, capsys)
    assert (code, err) == (0, "")
    # GET /api/vhosts/<name> needs the administrator tag on 3.10: with "management" only, plan
    # and apply fall back to AMQP probes (no re-plan after the apply).
    assert re.search(r"Applied: \d+ created", out), out


def test_bus_plan_works_read_only(
    make_user: MakeUser,
    applied: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No permission at all in the vhost: plan falls back to passive AMQP probes (free)."""
    user = make_user(configure="^$", write="^$", read="^$", tags="management")
    argv = ["plan", "-f", str(SHIPPED), "--detailed-exitcode"]
    code, _, err = run_cli_as(user.env(), argv, monkeypatch, capsys)
    assert code == 0, err
