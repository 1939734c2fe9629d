"""bus plan / bus apply against the real broker, each test in its own vhost."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from bus.broker import Action, PlanConflicts, apply, plan
from bus.broker.management import ManagementClient
from bus.settings import BusSettings, with_vhost
from bus.topology import LoadedTopology
from tests.support.plan import (
    connect,
    definitions,
    load,
    publish,
    run_cli,
    settings_for,
    synthetic_topology,
    write,
)

SHIPPED = Path(__file__).parents[2] / "topology.yaml"


@pytest.fixture
def settings(bus_vhost_url: str, bus_management: ManagementClient) -> BusSettings:
    return settings_for(bus_vhost_url, bus_management)


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, bus_vhost_url: str, bus_management: ManagementClient
) -> None:
    monkeypatch.setenv("BUS_AMQP_URL", bus_vhost_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_management.base_url)
    monkeypatch.delenv("BUS_TOPOLOGY", raising=False)


def _only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


# -- converge ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_shipped_topology_applies_then_plans_unchanged(
    capsys: pytest.CaptureFixture[str],
    bus_management: ManagementClient,
    bus_vhost: str,
    bus_topology: LoadedTopology,
) -> None:
    code, out, _ = run_cli(["plan", "-f", str(SHIPPED), "--detailed-exitcode"], capsys)
    assert code == 3
    assert "+ create" in out

    code, out, err = run_cli(["apply", "-f", str(SHIPPED)], capsys)
    assert (code, err) == (0, "")
    expected = bus_topology.expanded
    assert f"{len(expected.exchanges) + len(expected.queues) + len(expected.bindings)} created" in (
        out
    )

    code, out, _ = run_cli(["plan", "-f", str(SHIPPED), "--detailed-exitcode"], capsys)
    assert code == 0, out
    live_queues = {q["name"]: q for q in bus_management.queues(bus_vhost)}
    assert set(live_queues) == set(expected.queues)
    for name, spec in expected.queues.items():
        assert live_queues[name]["type"] == spec.type
    bindings = {
        (b["source"], b["destination"], b["routing_key"])
        for b in bus_management.bindings(bus_vhost)
        if b["source"]
    }
    assert bindings == {(b.source, b.destination, b.routing_key) for b in expected.bindings}


def test_bigger_synthetic_topology_converges(
    settings: BusSettings, bus_management: ManagementClient, bus_vhost: str
) -> None:
    topology = load(synthetic_topology(exchanges=21, queues_per_exchange=4, quorum_every=9))
    x = topology.expanded
    result = apply(topology, settings)
    assert result.created == (len(x.exchanges) + len(x.queues) + len(x.bindings) + len(x.policies))
    again = plan(topology, settings)
    assert not again.has_changes
    assert not again.conflicts
    assert {i.action for i in again.items} == {Action.UNCHANGED}
    assert len(again.items) == len(x.exchanges) + len(x.queues) + len(x.bindings) + 1
    live = {q["name"]: q for q in bus_management.queues(bus_vhost)}
    for name, spec in x.queues.items():
        stored = dict(live[name]["arguments"])
        stored.setdefault("x-queue-type", live[name]["type"])
        assert stored == spec.arguments
    # Applying again changes nothing.
    second = apply(topology, settings)
    assert (second.created, second.updated, second.deleted) == (0, 0, 0)


# -- conflicts ----------------------------------------------------------------------------------

BASE = """
version: 1
exchanges:
  ev: {type: topic, alternate_exchange: ae}
  ae: {type: fanout}
  ae2: {type: fanout}
  cmd: {type: direct, arguments: {x-note: a}}
queues:
  q1:
    message_ttl: 1000
    max_length: 10
    arguments: {x-custom: a}
    bindings: [{exchange: ev, routing_key: "a.#"}]
  q2: {bindings: [{exchange: cmd, routing_key: go}]}
"""

# (what changes, object kind, object name, field, whether the broker refuses a redeclare)
CHANGES: list[tuple[str, str, str, str, str, bool]] = [
    ("q1:\n    message_ttl", "q1:\n    type: quorum\n    message_ttl", "queue", "q1", "type", True),
    ("q2: {bindings", "q2: {durable: false, bindings", "queue", "q2", "durable", True),
    ("q2: {bindings", "q2: {auto_delete: true, bindings", "queue", "q2", "auto_delete", True),
    ("message_ttl: 1000", "message_ttl: 2000", "queue", "q1", "arguments.x-message-ttl", True),
    ("    max_length: 10\n", "", "queue", "q1", "arguments.x-max-length", True),
    ("x-custom: a", "x-custom: b", "queue", "q1", "arguments.x-custom", False),
    ("ev: {type: topic", "ev: {type: direct", "exchange", "ev", "type", True),
    ("ae: {type: fanout}", "ae: {type: fanout, internal: true}", "exchange", "ae", "internal",
     True),
    ("alternate_exchange: ae}", "alternate_exchange: ae2}", "exchange", "ev",
     "arguments.alternate-exchange", True),
    ("x-note: a", "x-note: b", "exchange", "cmd", "arguments.x-note", False),
]  # fmt: skip


def _redeclare(url: str, kind: str, spec: Any) -> int | None:
    """Redeclare with plain pika; the reply code of a refusal, or None when accepted."""
    connection = connect(url)
    try:
        channel = connection.channel()
        if kind == "queue":
            channel.queue_declare(
                spec.name, durable=spec.durable, auto_delete=spec.auto_delete,
                arguments=spec.arguments,
            )  # fmt: skip
        else:
            channel.exchange_declare(
                spec.name, spec.type, durable=spec.durable, auto_delete=spec.auto_delete,
                internal=spec.internal, arguments=spec.arguments or None,
            )  # fmt: skip
        return None
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if connection.is_open:
            connection.close()


@pytest.mark.parametrize(
    ("old", "new", "kind", "name", "field", "broker_refuses"),
    CHANGES,
    ids=[f"{c[2]}-{c[3]}-{c[4]}" for c in CHANGES],
)
def test_each_immutable_change_is_a_conflict(
    settings: BusSettings,
    bus_vhost_url: str,
    bus_management: ManagementClient,
    bus_vhost: str,
    old: str,
    new: str,
    kind: str,
    name: str,
    field: str,
    broker_refuses: bool,
) -> None:
    apply(load(BASE), settings)
    assert old in BASE
    changed = load(BASE.replace(old, new, 1))
    result = plan(changed, settings)
    item = _only([i for i in result.conflicts if i.kind == kind and i.name == name])
    difference = _only([d for d in item.differences if d.field == field])
    assert difference.desired != difference.live
    expected_reason = "immutable" if broker_refuses else "ineffective"
    assert difference.reason.startswith(expected_reason)
    rendered = result.render()
    assert f"conflict   {kind} {name}" in rendered
    assert field in rendered

    before = definitions(bus_management, bus_vhost)
    with pytest.raises(PlanConflicts):
        apply(changed, settings)
    assert definitions(bus_management, bus_vhost) == before

    # The classification matches what the broker does with the desired object.
    spec = (changed.expanded.queues if kind == "queue" else changed.expanded.exchanges)[name]
    reply = _redeclare(bus_vhost_url, kind, spec)
    if broker_refuses:
        assert reply == 406
    else:
        assert reply is None
        assert definitions(bus_management, bus_vhost) == before  # accepted, and ignored


@pytest.mark.usefixtures("env")
def test_combined_change_leaves_the_broker_exactly_as_before(
    tmp_path: Path,
    settings: BusSettings,
    capsys: pytest.CaptureFixture[str],
    bus_management: ManagementClient,
    bus_vhost: str,
) -> None:
    base = write(tmp_path, BASE)
    assert run_cli(["apply", "-f", str(base)], capsys)[0] == 0
    combined = BASE.replace("message_ttl: 1000", "message_ttl: 5000") + (
        "  q3: {bindings: [{exchange: ev, routing_key: new.key}]}\n"
    )
    combined = combined.replace(
        "bindings: [{exchange: cmd, routing_key: go}]",
        "bindings: [{exchange: cmd, routing_key: go}, {exchange: cmd, routing_key: also}]",
    )
    changed = write(tmp_path, combined, "changed.yaml")
    plan_result = plan(load(combined), settings)
    actions = {(i.action, i.kind) for i in plan_result.items}
    assert {(Action.CONFLICT, "queue"), (Action.CREATE, "queue"), (Action.CREATE, "binding")} <= (
        actions
    )

    before = bus_management.definitions(bus_vhost)
    code, out, err = run_cli(["apply", "-f", str(changed)], capsys)
    assert code == 1
    assert err.startswith("error: 1 conflict")
    assert err.count("\n") == 1
    assert "nothing was applied" in err
    assert "x-message-ttl" in out
    after = bus_management.definitions(bus_vhost)
    for key in ("exchanges", "queues", "bindings", "policies"):
        assert sorted(after.get(key, []), key=repr) == sorted(before.get(key, []), key=repr)

    code, _, err = run_cli(["plan", "-f", str(changed), "--detailed-exitcode"], capsys)
    assert code == 1
    assert "conflict" in err


# -- drift --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_objects_deleted_out_of_band_are_drift_and_recreated(
    capsys: pytest.CaptureFixture[str],
    bus_management: ManagementClient,
    bus_vhost: str,
) -> None:
    assert run_cli(["apply", "-f", str(SHIPPED)], capsys)[0] == 0
    vh = bus_vhost
    bus_management.delete_queue(vh, "cache.web")  # takes its binding with it
    bus_management.request("DELETE", f"/exchanges/{vh}/audit")  # and the e2e + audit.log binding
    binding = _only([
        b for b in bus_management.bindings(vh)
        if b["source"] == "events" and b["destination"] == "analytics.all"
    ])  # fmt: skip
    bus_management.delete_binding(vh, "events", "analytics.all", "queue", binding["properties_key"])

    code, out, _ = run_cli(["plan", "-f", str(SHIPPED), "--detailed-exitcode"], capsys)
    assert code == 3
    for expected in (
        "+ create     queue cache.web",
        "+ create     exchange audit",
        "+ create     binding broadcast -> queue cache.web",
        "+ create     binding events -> queue analytics.all key '#'",
        "+ create     binding events -> exchange audit key 'order.#'",
        "+ create     binding audit -> queue audit.log key '#'",
    ):
        assert expected in out

    code, out, _ = run_cli(["apply", "-f", str(SHIPPED)], capsys)
    assert code == 0
    assert "6 created" in out
    assert run_cli(["plan", "-f", str(SHIPPED), "--detailed-exitcode"], capsys)[0] == 0


# -- recreate-empty ---------------------------------------------------------------------------


def test_recreate_empty_replaces_an_empty_queue_with_all_its_bindings(
    settings: BusSettings, bus_management: ManagementClient, bus_vhost: str, bus_vhost_url: str
) -> None:
    apply(load(BASE), settings)
    # A binding the topology does not declare must survive the replacement too.
    connection = connect(bus_vhost_url)
    try:
        connection.channel().queue_bind("q1", "cmd", "by-hand")
    finally:
        connection.close()
    bindings_before = {
        (b["source"], b["routing_key"])
        for b in bus_management.bindings(bus_vhost)
        if b["destination"] == "q1" and b["source"]
    }
    assert bindings_before == {("ev", "a.#"), ("cmd", "by-hand")}

    changed = load(BASE.replace("message_ttl: 1000", "message_ttl: 3000"))
    with pytest.raises(PlanConflicts):
        apply(changed, settings)
    result = apply(changed, settings, recreate_empty=True)
    assert result.recreated == 1
    q1 = bus_management.queue(bus_vhost, "q1")
    assert q1 is not None
    assert q1["arguments"]["x-message-ttl"] == 3000
    bindings_after = {
        (b["source"], b["routing_key"])
        for b in bus_management.bindings(bus_vhost)
        if b["destination"] == "q1" and b["source"]
    }
    assert bindings_after == bindings_before
    publish(bus_vhost_url, "a.b", exchange="ev")
    assert plan(changed, settings).has_changes is False


def test_recreate_empty_refuses_a_queue_holding_messages(
    settings: BusSettings, bus_management: ManagementClient, bus_vhost: str, bus_vhost_url: str
) -> None:
    apply(load(BASE), settings)
    publish(bus_vhost_url, "a.b", exchange="ev")
    changed = load(BASE.replace("message_ttl: 1000", "message_ttl: 3000"))
    before = definitions(bus_management, bus_vhost)
    with pytest.raises(PlanConflicts) as caught:
        apply(changed, settings, recreate_empty=True)
    item = _only(caught.value.plan.conflicts)
    assert item.name == "q1"
    assert "holds 1 message" in item.note
    assert definitions(bus_management, bus_vhost) == before
    connection = connect(bus_vhost_url)
    try:
        assert connection.channel().queue_declare("q1", passive=True).method.message_count == 1
    finally:
        connection.close()


# -- policies -----------------------------------------------------------------------------------

WITH_POLICY = """
version: 1
queues:
  jobs.a: {}
  jobs.b: {}
policies:
  jobs-cap: {pattern: '^jobs\\.', apply_to: queues, priority: 2, definition: {max-length: 100}}
"""


def test_policies_are_created_then_updated_in_place(
    settings: BusSettings, bus_management: ManagementClient, bus_vhost: str
) -> None:
    first = plan(load(WITH_POLICY), settings)
    assert _only([i for i in first.items if i.kind == "policy"]).action is Action.CREATE
    apply(load(WITH_POLICY), settings)
    live = _only(bus_management.policies(bus_vhost))
    assert (live["name"], live["definition"], live["priority"]) == (
        "jobs-cap", {"max-length": 100}, 2
    )  # fmt: skip
    queues_before = definitions(bus_management, bus_vhost)["queues"]

    changed = load(WITH_POLICY.replace("max-length: 100", "max-length: 5, message-ttl: 60000"))
    result = plan(changed, settings)
    item = _only(result.by_action(Action.UPDATE))
    assert (item.kind, item.name) == ("policy", "jobs-cap")
    assert {d.field for d in item.differences} == {
        "definition.max-length",
        "definition.message-ttl",
    }
    assert "~ update     policy jobs-cap" in result.render()
    assert not result.conflicts

    applied = apply(changed, settings)
    assert applied.updated == 1
    assert applied.created == 0
    live = _only(bus_management.policies(bus_vhost))
    assert live["definition"] == {"max-length": 5, "message-ttl": 60000}
    assert definitions(bus_management, bus_vhost)["queues"] == queues_before


# -- permissions and vhosts ---------------------------------------------------------------------


def test_user_without_configure_permission_gets_one_clear_error_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bus_management: ManagementClient,
    bus_vhost: str,
    bus_vhost_url: str,
) -> None:
    user, password = f"bus-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    bus_management.create_user(user, password, tags="management")
    try:
        bus_management.set_permissions(bus_vhost, user, configure="^$")
        url = bus_vhost_url.replace("guest:guest@", f"{user}:{password}@")
        monkeypatch.setenv("BUS_AMQP_URL", url)
        monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_management.base_url)
        code, out, err = run_cli(["apply", "-f", str(SHIPPED)], capsys)
    finally:
        bus_management.delete_user(user)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: ")
    # 'events' names an alternate exchange: declaring it needs read too, checked after configure.
    assert err.startswith(
        f"error: access refused: configure or read permission on exchange 'events' in vhost "
        f"{bus_vhost!r} for user {user!r}"
    )
    assert password not in err + out
    assert {x["name"] for x in bus_management.exchanges(bus_vhost)} == {
        x["name"] for x in bus_management.exchanges(bus_vhost) if x["name"].startswith("amq.")
    } | {""}


def test_a_vhost_named_by_the_topology_is_created(
    amqp_url: str, bus_management: ManagementClient, spare_vhost: Callable[[str], str]
) -> None:
    name = spare_vhost("bus-test")
    text = f"version: 1\nvhost: {{name: {name}, default_queue_type: quorum}}\nqueues:\n  q: {{}}\n"
    settings = settings_for(amqp_url, bus_management)
    result = apply(load(text), settings)
    assert result.created == 2
    info = bus_management.vhost(name)
    assert info is not None
    assert info["default_queue_type"] == "quorum"
    queue = bus_management.queue(name, "q")
    # The topology's explicit classic wins over the vhost default.
    assert queue is not None
    assert queue["type"] == "classic"
    assert not plan(load(text), settings).has_changes

    # A queue declared elsewhere without a type takes the vhost default: it is quorum.
    connection = connect(with_vhost(amqp_url, name))
    try:
        connection.channel().queue_declare("untyped", durable=True)
    finally:
        connection.close()
    as_quorum = load(text + "  untyped: {type: quorum}\n")
    assert not plan(as_quorum, settings).has_changes
    as_classic = plan(load(text + "  untyped: {}\n"), settings)
    assert [(i.name, i.differences[0].field) for i in as_classic.conflicts] == [("untyped", "type")]


def test_a_missing_vhost_the_topology_does_not_name_is_an_error(
    amqp_url: str, bus_management: ManagementClient
) -> None:
    name = f"bus-test-{uuid.uuid4().hex[:12]}"
    settings = settings_for(with_vhost(amqp_url, name), bus_management)
    with pytest.raises(Exception, match="does not exist") as caught:
        plan(load("version: 1\nqueues:\n  q: {}\n"), settings)
    assert caught.value.__class__.__name__ == "NotFoundError"
    assert bus_management.vhost(name) is None


def test_bus_applied_vhost_fixture_holds_the_topology(
    bus_applied_vhost: str,
    bus_topology: LoadedTopology,
    bus_management: ManagementClient,
    amqp_url: str,
) -> None:
    queues = {q["name"] for q in bus_management.queues(bus_applied_vhost)}
    assert queues == set(bus_topology.expanded.queues)
    settings = settings_for(with_vhost(amqp_url, bus_applied_vhost), bus_management)
    assert not plan(bus_topology, settings).has_changes


@pytest.mark.usefixtures("env")
def test_dry_run_changes_nothing_and_data_loss_needs_prune(
    capsys: pytest.CaptureFixture[str], bus_management: ManagementClient, bus_vhost: str
) -> None:
    before = definitions(bus_management, bus_vhost)
    code, out, err = run_cli(["apply", "-f", str(SHIPPED), "--dry-run"], capsys)
    assert (code, err) == (0, "")
    assert "+ create     queue billing.orders" in out
    assert "Dry run: nothing was changed." in out
    assert definitions(bus_management, bus_vhost) == before

    code, _, err = run_cli(["apply", "-f", str(SHIPPED), "--allow-data-loss"], capsys)
    assert code == 2
    assert "--allow-data-loss only applies with --prune" in err
    assert definitions(bus_management, bus_vhost) == before
