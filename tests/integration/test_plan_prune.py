"""--prune deletes what the topology does not declare, and nothing it must not touch."""

from __future__ import annotations

import pytest

from bus.broker import Action, apply, plan
from bus.broker.management import ManagementClient
from bus.settings import BusSettings
from tests.support.plan import connect, load, publish, settings_for

TOPOLOGY = """
version: 1
exchanges:
  events: {type: topic}
queues:
  kept.q:
    bindings: [{exchange: events, routing_key: "a.#"}]
unmanaged: ['^legacy\\.']
"""


@pytest.fixture
def settings(bus_vhost_url: str, bus_management: ManagementClient) -> BusSettings:
    return settings_for(bus_vhost_url, bus_management)


def _names(management: ManagementClient, vhost: str, kind: str) -> set[str]:
    listing = management.exchanges(vhost) if kind == "exchange" else management.queues(vhost)
    return {item["name"] for item in listing}


def _bindings(management: ManagementClient, vhost: str) -> set[tuple[str, str, str]]:
    return {
        (b["source"], b["destination"], b["routing_key"])
        for b in management.bindings(vhost)
        if b["source"]
    }


def test_prune_deletes_only_what_it_may(
    settings: BusSettings, bus_vhost_url: str, bus_management: ManagementClient, bus_vhost: str
) -> None:
    topology = load(TOPOLOGY)
    apply(topology, settings)
    builtin = {n for n in _names(bus_management, bus_vhost, "exchange") if n.startswith("amq.")}
    assert builtin  # the vhost has its amq.* exchanges; none may go

    # Out-of-band objects: some prunable, one of each exclusion.
    holder = connect(bus_vhost_url)  # keeps the exclusive queue alive during the test
    try:
        ch = holder.channel()
        ch.exchange_declare("stale.x", "fanout", durable=True)
        ch.exchange_declare("stale.bound", "fanout", durable=True)
        ch.exchange_declare("legacy.x", "direct", durable=True)
        ch.queue_declare("stale.q", durable=True)
        ch.queue_declare("stale.full", durable=True)
        ch.queue_declare("legacy.q", durable=True)
        private = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind("stale.q", "events", "stale.#")
        ch.queue_bind("stale.q", "amq.topic", "stale.#")
        ch.queue_bind("kept.q", "events", "extra.key")  # a binding the topology does not declare
        ch.queue_bind("kept.q", "legacy.x", "keep")  # touches an unmanaged name
        ch.queue_bind(private, "stale.bound")  # deleting stale.bound would cut the consumer
        ch.queue_bind("legacy.q", "events", "#")
        publish(bus_vhost_url, "stale.full", b'{"keep": true}')

        result = plan(topology, settings, prune=True)
        actions = {(i.kind, i.name): i.action for i in result.items}
        assert actions[("exchange", "stale.x")] is Action.DELETE
        assert actions[("queue", "stale.q")] is Action.DELETE
        assert actions[("binding", "events -> queue kept.q key 'extra.key'")] is Action.DELETE
        assert actions[("binding", "amq.topic -> queue stale.q key 'stale.#'")] is Action.DELETE
        assert actions[("queue", "stale.full")] is Action.UNMANAGED
        assert actions[("exchange", "stale.bound")] is Action.UNMANAGED
        assert actions[("exchange", "legacy.x")] is Action.UNMANAGED
        assert actions[("queue", "legacy.q")] is Action.UNMANAGED
        assert actions[("queue", private)] is Action.UNMANAGED
        assert actions[("binding", "legacy.x -> queue kept.q key 'keep'")] is Action.UNMANAGED
        assert not any(name.startswith("amq.") for kind, name in actions if kind == "exchange")
        full = next(i for i in result.items if i.name == "stale.full")
        assert "holds 1 message" in full.note
        assert "--allow-data-loss" in full.note

        # Without --prune the same objects are only reported.
        unpruned = plan(topology, settings)
        assert not unpruned.by_action(Action.DELETE)
        assert not unpruned.has_changes

        applied = apply(topology, settings, prune=True)
        assert applied.deleted == 5  # stale.x, stale.q, and the three bindings above

        exchanges = _names(bus_management, bus_vhost, "exchange")
        queues = _names(bus_management, bus_vhost, "queue")
        assert builtin <= exchanges
        assert "" in exchanges
        assert {"stale.bound", "legacy.x", "events"} <= exchanges
        assert "stale.x" not in exchanges
        assert {"stale.full", "legacy.q", private, "kept.q"} <= queues
        assert "stale.q" not in queues
        bindings = _bindings(bus_management, bus_vhost)
        assert ("legacy.x", "kept.q", "keep") in bindings
        assert ("stale.bound", private, private) in bindings
        assert ("events", "kept.q", "extra.key") not in bindings
        assert ch.queue_declare("stale.full", passive=True).method.message_count == 1

        # --allow-data-loss lifts only the message guard.
        apply(topology, settings, prune=True, allow_data_loss=True)
        queues = _names(bus_management, bus_vhost, "queue")
        assert "stale.full" not in queues
        assert {"legacy.q", private, "kept.q"} <= queues
        assert builtin <= _names(bus_management, bus_vhost, "exchange")
        assert holder.is_open
    finally:
        holder.close()


def test_prune_keeps_a_queue_with_a_consumer(
    settings: BusSettings, bus_vhost_url: str, bus_management: ManagementClient, bus_vhost: str
) -> None:
    topology = load(TOPOLOGY)
    apply(topology, settings)
    holder = connect(bus_vhost_url)
    try:
        ch = holder.channel()
        ch.queue_declare("stale.busy", durable=True)
        ch.basic_consume("stale.busy", lambda *args: None)
        result = plan(topology, settings, prune=True)
        item = next(i for i in result.items if i.name == "stale.busy")
        assert item.action is Action.UNMANAGED
        assert "1 consumer" in item.note
        apply(topology, settings, prune=True)
        assert "stale.busy" in _names(bus_management, bus_vhost, "queue")
    finally:
        holder.close()


def test_prune_deletes_an_unused_policy_but_not_an_unmanaged_one(
    settings: BusSettings, bus_management: ManagementClient, bus_vhost: str
) -> None:
    for name in ("stale-policy", "legacy.policy"):
        bus_management.put_policy(
            bus_vhost, name, pattern="^nothing$", apply_to="queues", priority=0,
            definition={"max-length": 1},
        )  # fmt: skip
    apply(load(TOPOLOGY), settings, prune=True)
    assert {p["name"] for p in bus_management.policies(bus_vhost)} == {"legacy.policy"}
