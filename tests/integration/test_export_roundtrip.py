"""bus export on a vhost built by hand with pika: the file validates and plans as no change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bus.broker import Action, apply, export_topology, plan
from bus.broker.management import ManagementClient
from bus.settings import with_vhost
from bus.topology import parse_topology
from tests.support.plan import connect, run_cli, settings_for


def _build_by_hand(url: str, management: ManagementClient, vhost: str) -> None:
    connection = connect(url)
    try:
        ch = connection.channel()
        ch.exchange_declare(
            "orders", "topic", durable=True, arguments={"alternate-exchange": "lost"}
        )
        ch.exchange_declare("lost", "fanout", durable=True)
        ch.exchange_declare("cmds", "direct", durable=True)
        ch.exchange_declare("mail", "headers", durable=True)
        ch.exchange_declare("audit", "topic", durable=True, internal=True)
        ch.exchange_declare("scratch", "fanout", durable=False, auto_delete=True)
        ch.exchange_declare("tagged", "direct", durable=True, arguments={"x-owner": "team-a"})
        ch.queue_declare(
            "billing", durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 5,
                       "x-dead-letter-exchange": "lost", "x-quorum-initial-group-size": 1},
        )  # fmt: skip
        ch.queue_declare(
            "events.log", durable=True,
            arguments={"x-queue-type": "stream", "x-max-age": "7D",
                       "x-max-length-bytes": 10_000_000},
        )  # fmt: skip
        ch.queue_declare(
            "cache", durable=True,
            arguments={"x-message-ttl": 60000, "x-max-length": 100, "x-overflow": "drop-head",
                       "x-custom": "kept", "x-max-priority": 5},
        )  # fmt: skip
        ch.queue_declare("transient", durable=False, auto_delete=True)
        ch.queue_declare("lost.all", durable=True)
        ch.queue_bind("billing", "orders", "order.*")
        ch.queue_bind("billing", "cmds", "bill")
        ch.queue_bind("events.log", "audit", "#")
        ch.queue_bind("cache", "mail", "", {"x-match": "any", "priority": "high", "tier": 2})
        ch.queue_bind("cache", "mail", "", {"x-match": "all", "kind": "newsletter", "on": True})
        ch.queue_bind("transient", "scratch")
        ch.queue_bind("lost.all", "lost")
        ch.queue_bind("cache", "amq.topic", "cache.#")
        ch.exchange_bind("audit", "orders", "order.#")
        ch.exchange_bind("scratch", "cmds", "copy")
    finally:
        connection.close()
    management.put_policy(
        vhost, "cap", pattern="^cache$", apply_to="queues", priority=3,
        definition={"max-length": 50},
    )  # fmt: skip


def test_export_round_trip_plans_as_no_change(
    bus_vhost_url: str, bus_management: ManagementClient, bus_vhost: str
) -> None:
    _build_by_hand(bus_vhost_url, bus_management, bus_vhost)
    settings = settings_for(bus_vhost_url, bus_management)
    # An exclusive queue belongs to its connection: export leaves it out, plan leaves it alone.
    holder = connect(bus_vhost_url)
    channel = holder.channel()
    private = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(private, "orders", "#")
    try:
        exported = export_topology(settings, bus_vhost)
        result = plan(parse_topology(exported.text, "exported.yaml"), settings)
    finally:
        holder.close()
    assert exported.issues == []
    data = yaml.safe_load(exported.text)
    assert data["exchanges"]["audit"]["internal"] is True
    assert data["exchanges"]["orders"]["alternate_exchange"] == "lost"
    assert data["exchanges"]["tagged"]["arguments"] == {"x-owner": "team-a"}
    assert data["queues"]["billing"]["type"] == "quorum"
    assert data["queues"]["billing"]["delivery_limit"] == 5
    assert data["queues"]["events.log"]["max_age"] == "7D"
    assert data["queues"]["cache"]["arguments"] == {"x-custom": "kept"}
    assert {
        "exchange": "mail",
        "arguments": {"kind": "newsletter", "on": True, "x-match": "all"},
    } in (data["queues"]["cache"]["bindings"])
    assert {"source": "orders", "destination": "audit", "routing_key": "order.#"} in (
        data["exchange_bindings"]
    )
    assert data["policies"]["cap"]["definition"] == {"max-length": 50}

    assert private not in exported.text
    assert not result.conflicts, result.render()
    assert not result.has_changes, result.render()
    assert {i.action for i in result.items} == {Action.UNCHANGED, Action.UNMANAGED}
    unmanaged = {(i.kind, i.name) for i in result.by_action(Action.UNMANAGED)}
    assert unmanaged == {("queue", private), ("binding", f"orders -> queue {private} key '#'")}


def test_export_command_output_validates_and_plans_clean(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bus_vhost_url: str,
    bus_management: ManagementClient,
    bus_vhost: str,
) -> None:
    _build_by_hand(bus_vhost_url, bus_management, bus_vhost)
    monkeypatch.setenv("BUS_AMQP_URL", bus_vhost_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_management.base_url)
    out_file = tmp_path / "exported.yaml"
    code, _, err = run_cli(["export", "--vhost", bus_vhost, "-o", str(out_file)], capsys)
    assert code == 0, err
    assert "guest:guest" not in out_file.read_text()
    assert run_cli(["validate", "-f", str(out_file)], capsys)[0] == 0
    code, out, _ = run_cli(["plan", "-f", str(out_file), "--detailed-exitcode"], capsys)
    assert code == 0, out


def test_export_reports_what_topology_yaml_cannot_hold(
    bus_vhost_url: str, bus_management: ManagementClient, bus_vhost: str
) -> None:
    connection = connect(bus_vhost_url)
    try:
        # The broker accepts a dead-letter exchange that does not exist; the topology does not.
        connection.channel().queue_declare(
            "orphan", durable=True, arguments={"x-dead-letter-exchange": "nowhere"}
        )
    finally:
        connection.close()
    exported = export_topology(settings_for(bus_vhost_url, bus_management), bus_vhost)
    assert len(exported.issues) == 1
    assert "'nowhere' is not declared" in exported.issues[0]


def test_export_round_trips_the_vhost_section(
    bus_vhost_url: str, bus_management: ManagementClient, spare_vhost: Callable[[str], str]
) -> None:
    """description and default_queue_type survive export -> apply into a new vhost."""
    source = spare_vhost("bus-test-export")
    copy = spare_vhost("bus-test-export-copy")
    settings = settings_for(bus_vhost_url, bus_management)
    user, _ = settings.credentials()
    bus_management.create_vhost(source, default_queue_type="quorum", description="orders of team a")
    bus_management.set_permissions(source, user)
    connection = connect(with_vhost(bus_vhost_url, source))
    try:
        # No x-queue-type: the vhost's default makes it a quorum queue.
        connection.channel().queue_declare("billing", durable=True)
    finally:
        connection.close()
    exported = export_topology(settings, source)
    data = yaml.safe_load(exported.text)
    assert data["vhost"] == {
        "name": source,
        "description": "orders of team a",
        "default_queue_type": "quorum",
    }
    again = plan(parse_topology(exported.text, "exported.yaml"), settings)
    assert again.vhost == source
    assert not again.has_changes, again.render()
    assert not again.conflicts, again.render()

    data["vhost"]["name"] = copy
    apply(parse_topology(yaml.safe_dump(data), "copy.yaml"), settings)
    created = bus_management.vhost(copy)
    assert created is not None
    assert created["description"] == "orders of team a"
    assert created["default_queue_type"] == "quorum"
