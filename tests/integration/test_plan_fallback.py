"""Management API unreachable: plan falls back to AMQP probes and says what it cannot verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.broker import Action, PlanConflicts, apply, plan
from bus.broker.management import ManagementClient
from bus.errors import BrokerError
from bus.settings import BusSettings
from tests.support.plan import (
    definitions,
    free_port,
    load,
    run_cli,
    settings_for,
    write,
)

TOPOLOGY = """
version: 1
exchanges:
  events: {type: topic, alternate_exchange: lost}
  lost: {type: fanout}
queues:
  orders:
    message_ttl: 1000
    bindings: [{exchange: events, routing_key: "order.#"}]
  lost.all:
    bindings: [{exchange: lost}]
"""


@pytest.fixture
def offline(bus_vhost_url: str) -> BusSettings:
    """Settings whose management URL points at a closed port."""
    return BusSettings(amqp_url=bus_vhost_url, management_url=f"http://127.0.0.1:{free_port()}")


def test_plan_falls_back_to_amqp_and_says_what_it_could_not_verify(
    offline: BusSettings, bus_vhost_url: str, bus_management: ManagementClient, bus_vhost: str
) -> None:
    apply(load(TOPOLOGY), settings_for(bus_vhost_url, bus_management))
    bus_management.delete_queue(bus_vhost, "lost.all")
    before = definitions(bus_management, bus_vhost)

    result = plan(load(TOPOLOGY), offline)
    assert result.source == "amqp"
    assert not result.verified
    actions = {(i.kind, i.name): i.action for i in result.items}
    assert actions[("queue", "lost.all")] is Action.CREATE
    assert actions[("binding", "lost -> queue lost.all")] is Action.CREATE
    assert actions[("queue", "orders")] is Action.UNVERIFIED
    assert actions[("exchange", "events")] is Action.UNVERIFIED
    assert actions[("binding", "events -> queue orders key 'order.#'")] is Action.UNVERIFIED
    text = result.render()
    assert "checked over AMQP only" in text
    for missing in ("management API could not be used", "bindings", "policies", "prune"):
        assert missing in text
    # Probing created nothing.
    assert definitions(bus_management, bus_vhost) == before

    # A compared field that differs is still found, one object at a time.
    changed = load(TOPOLOGY.replace("message_ttl: 1000", "message_ttl: 2000"))
    conflicted = plan(changed, offline)
    item = next(i for i in conflicted.conflicts)
    assert (item.kind, item.name) == ("queue", "orders")
    assert item.differences[0].field == "arguments.x-message-ttl"
    assert "1000" in str(item.differences[0].live)
    with pytest.raises(PlanConflicts):
        apply(changed, offline)
    assert definitions(bus_management, bus_vhost) == before

    # Apply still works for what AMQP can do, and refuses what it cannot.
    with pytest.raises(BrokerError, match="--prune needs the management API"):
        apply(load(TOPOLOGY), offline, prune=True)
    applied = apply(load(TOPOLOGY), offline)
    assert applied.created == 2
    assert applied.verification is None
    assert bus_management.queue(bus_vhost, "lost.all") is not None
    assert not plan(load(TOPOLOGY), settings_for(bus_vhost_url, bus_management)).has_changes


def test_cli_plan_offline_prints_the_gaps(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bus_vhost_url: str,
    bus_management: ManagementClient,
) -> None:
    apply(load(TOPOLOGY), settings_for(bus_vhost_url, bus_management))
    monkeypatch.setenv("BUS_AMQP_URL", bus_vhost_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", f"http://127.0.0.1:{free_port()}")
    path = write(tmp_path, TOPOLOGY)
    code, out, err = run_cli(["plan", "-f", str(path), "--detailed-exitcode"], capsys)
    # A drift check that could not compare fails (issue 25 finding 10), with one error line.
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        line for line in err.splitlines() if line.strip()
    ]
    assert "could not be verified" in err
    assert run_cli(["plan", "-f", str(path)], capsys)[0] == 0
    assert "Not verified: the management API could not be used" in out
    assert "unreachable" in out
    assert "guest:guest" not in out


def test_policies_need_the_management_api(
    offline: BusSettings, bus_vhost_url: str, bus_management: ManagementClient
) -> None:
    text = TOPOLOGY + "policies:\n  p: {pattern: '^orders$', definition: {max-length: 5}}\n"
    result = plan(load(text), offline)
    assert [i.action for i in result.items if i.kind == "policy"] == [Action.UNVERIFIED]
    with pytest.raises(BrokerError, match="policies can only be applied"):
        apply(load(text), offline)
