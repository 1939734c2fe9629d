"""The version rules of :mod:`bus.versions` against the broker the session uses.

Each test asks the broker itself (its management API) and compares with what the rules say
for its version, so the same test proves 3.10.8's rules on 3.10.8 and 4.0's on 4.0.5.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pytest

from bus.broker import Action, apply, plan
from bus.broker.management import ManagementClient
from bus.errors import ManagementAPIError
from bus.settings import BusSettings
from bus.status import collect_status, render_table
from bus.topology import LoadedTopology
from bus.versions import (
    RabbitVersion,
    broker_version,
    effective_delivery_limit,
    version_issues,
)
from tests.support.plan import load, run_cli, settings_for, write

pytestmark = pytest.mark.integration

QUORUM = """
version: 1
queues:
  work: {type: quorum}
  limited: {type: quorum, delivery_limit: 3}
  guarded: {type: quorum, dead_letter: true}
"""


@pytest.fixture
def version(bus_management: ManagementClient) -> RabbitVersion:
    return broker_version(bus_management.overview())


@pytest.fixture
def settings(bus_vhost_url: str, bus_management: ManagementClient) -> BusSettings:
    return settings_for(bus_vhost_url, bus_management)


@pytest.fixture
def quorum(settings: BusSettings) -> LoadedTopology:
    """QUORUM, applied to the test's vhost."""
    loaded = load(QUORUM)
    apply(loaded, settings)
    return loaded


def _queue_stats(management: ManagementClient, vhost: str, queue: str) -> dict[str, Any]:
    """The queue as the management API shows it once its statistics came in (the fields
    read here arrive with them, every few seconds; ``memory`` does on every version)."""
    deadline = time.monotonic() + 60
    while True:
        raw = management.queue(vhost, queue)
        assert raw is not None
        if "memory" in raw or time.monotonic() > deadline:
            return raw
        time.sleep(0.5)


def _broker_limit(management: ManagementClient, vhost: str, queue: str) -> int | None:
    """The delivery limit as the broker reports it: 4.x has a field (an integer, or
    ``unlimited``); 3.10.8 has none, and no default: only the queue's own argument."""
    raw = _queue_stats(management, vhost, queue)
    value = (
        raw["delivery_limit"]
        if "delivery_limit" in raw
        else raw["arguments"].get("x-delivery-limit")
    )
    return value if isinstance(value, int) else None


def test_effective_delivery_limit_is_the_brokers(
    quorum: LoadedTopology, bus_management: ManagementClient, bus_vhost: str, version: RabbitVersion
) -> None:
    x = quorum.expanded
    for name in ("work", "limited", "guarded", "guarded.dlq"):
        ours = effective_delivery_limit(x.queues[name], x.policies, version)
        assert ours == _broker_limit(bus_management, bus_vhost, name), (name, str(version))
    if version.at_least(4, 0):
        assert _broker_limit(bus_management, bus_vhost, "work") == 20


def test_plan_shows_the_effective_limit_of_a_quorum_queue_without_one(
    quorum: LoadedTopology,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    settings: BusSettings,
    bus_management: ManagementClient,
    bus_vhost: str,
    version: RabbitVersion,
) -> None:
    result = plan(quorum, settings)
    assert result.rabbitmq == str(broker_version(bus_management.overview()))
    assert not result.has_changes
    work = next(i for i in result.items if i.kind == "queue" and i.name == "work")
    limited = next(i for i in result.items if i.kind == "queue" and i.name == "limited")
    assert limited.remarks == ()  # its own limit: nothing the version adds
    monkeypatch.setenv("BUS_AMQP_URL", settings.amqp_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_management.base_url)
    code, out, _ = run_cli(["plan", "-f", str(write(tmp_path, QUORUM))], capsys)
    assert code == 0
    assert f"RabbitMQ {version}" in out.splitlines()[0]
    if version.at_least(4, 0):
        # The broker's own figure, shown under the queue, and the drop warned about.
        broker_limit = _broker_limit(bus_management, bus_vhost, "work")
        assert any(r.startswith(f"delivery limit: {broker_limit} ") for r in work.remarks)
        assert any("DROPPED" in r for r in work.remarks)
        block = out.split("queue work\n", 1)[1].split("\n  ", 1)[0]
        assert f"delivery limit: {broker_limit} " in block
    else:
        assert work.remarks == ()
        assert "delivery limit" not in out


def test_refused_policy_keys_are_what_the_broker_refuses(
    settings: BusSettings,
    bus_management: ManagementClient,
    bus_vhost: str,
    version: RabbitVersion,
) -> None:
    """The rules call ``ha-mode`` an error on a version exactly when the broker refuses the
    policy; the plan then makes it a conflict, so apply changes nothing."""
    text = "version: 1\npolicies:\n  mirror: {pattern: '^m$', definition: {ha-mode: all}}\n"
    loaded = load(text)
    refused_by_rules = any(i.severity == "error" for i in version_issues(loaded.expanded, version))
    name = f"probe-{uuid.uuid4().hex[:8]}"
    refusal: ManagementAPIError | None = None
    try:
        bus_management.put_policy(
            bus_vhost, name, pattern="^m$", apply_to="all", priority=0,
            definition={"ha-mode": "all"},
        )  # fmt: skip
        bus_management.delete_policy(bus_vhost, name)
    except ManagementAPIError as exc:
        refusal = exc
    refused_by_broker = refusal is not None
    if refusal is not None:
        assert refusal.status_code == 400
    assert refused_by_rules is refused_by_broker
    item = next(i for i in plan(loaded, settings).items if i.kind == "policy")
    assert item.action is (Action.CONFLICT if refused_by_broker else Action.CREATE)


def test_queue_version_1_is_what_the_broker_makes_of_it(
    settings: BusSettings,
    bus_management: ManagementClient,
    bus_vhost: str,
    version: RabbitVersion,
) -> None:
    """``queue_version: 1`` is warned about on the versions that create a version 2 queue."""
    loaded = load("version: 1\nqueues:\n  old: {queue_version: 1}\n")
    apply(loaded, settings)
    raw = _queue_stats(bus_management, bus_vhost, "old")
    assert "memory" in raw
    warned = any(i.field == "queue_version" for i in version_issues(loaded.expanded, version))
    # 4.x reports the storage it uses; 3.10.8 keeps version 1 and has no such field.
    assert warned is (raw.get("storage_version", 1) != 1)


def test_status_shows_the_delivery_limit_the_broker_applies(
    quorum: LoadedTopology,
    settings: BusSettings,
    bus_management: ManagementClient,
    bus_vhost: str,
    version: RabbitVersion,
) -> None:
    for _ in range(2):  # before and after the broker's statistics (4.x: its own figure)
        report = collect_status(quorum.expanded, settings, bus_management, bus_vhost)
        limits = {q.name: q.delivery_limit for q in report.queues}
        assert limits["limited"] == 3
        assert limits["work"] == (20 if version.at_least(4, 0) else None)
        row = next(line for line in render_table(report).splitlines() if line.startswith("work "))
        assert row.split()[1:3] == ["quorum", "20" if version.at_least(4, 0) else "none"]
        _queue_stats(bus_management, bus_vhost, "work")
    assert limits["work"] == _broker_limit(bus_management, bus_vhost, "work")


def test_a_quorum_queue_without_limit_drops_where_the_rules_say(
    quorum: LoadedTopology, bus_vhost_url: str, version: RabbitVersion
) -> None:
    """Nack-requeue one message until the broker drops it (or 30 deliveries): a limit of N
    allows N + 1 deliveries; ``x-delivery-count`` is absent or 0 on the first one."""
    limit = effective_delivery_limit(quorum.expanded.queues["work"], {}, version)
    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", "work", b"x")
        counts: list[int | None] = []
        while len(counts) < 30:
            method, properties, _ = channel.basic_get("work")
            if method is None:
                # The nack is handled before this get (same queue, in order): gone for good.
                assert channel.queue_declare("work", passive=True).method.message_count == 0
                break
            counts.append((properties.headers or {}).get("x-delivery-count"))
            channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()
    assert counts[0] in (None, 0)
    assert counts[1:] == list(range(1, len(counts)))
    assert len(counts) == (30 if limit is None else limit + 1)
