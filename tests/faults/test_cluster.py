"""A three-node cluster of throwaway nodes: quorum queues, failover, and the plan of every node.

One cluster for the module (about 40 s to start here), stopped in the finaliser. The node a
test kills is the one that leads the queue it works on, and it is restarted before the test
ends, so the next test again finds three running nodes.

``BUS_CLUSTER_N`` sets the number of messages of the publish test (default 2,000: the issue's
figure is 10,000); ``BUS_CLUSTER_REPORT`` names a file that gets one JSON line of figures per
run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pika
import pytest

from bus.broker.management import ManagementClient
from bus.errors import BusError
from bus.node import LocalNode, rabbitmq_installed
from bus.topology import load_topology
from consumers import ConsumerApp, Message
from producers import Publisher
from producers.sync import SyncPublisher
from tests.faults.checker import TotalQueue
from tests.faults.cluster import LocalCluster
from tests.faults.worker import BIN, REPO, BusWorker
from tests.support.commands import run
from tests.support.waiting import wait_for

VHOST = "cluster"
QUEUE = "orders.cluster"
TASKS = "email.send"
DEADLINE = 120.0
# How long one message is retried before the test gives up on it: each failure is a raised
# publish (recorded), never a silent one. After a leader kill the broker nacked publishes to
# the quorum queue for several seconds (observed), hence a deadline, not a number of tries.
RETRY_FOR = 90.0
RETRY_PAUSE = 0.25

# email.send and reports.build: the Celery queues consumers.tasks routes to (both must exist).
TOPOLOGY = f"""\
version: 1
vhost: {{name: {VHOST}}}
exchanges:
  events: {{type: topic}}
  tasks: {{type: topic}}
queues:
  {QUEUE}:
    type: quorum
    initial_cluster_size: 3
    leader_locator: balanced
    delivery_limit: 5
    dead_letter: true
    bindings: [{{exchange: events, routing_key: "order.#"}}]
  {TASKS}:
    type: quorum
    initial_cluster_size: 3
    leader_locator: balanced
    delivery_limit: 5
    dead_letter: true
    celery: true
    bindings: [{{exchange: tasks, routing_key: {TASKS}}}]
  reports.build:
    type: quorum
    initial_cluster_size: 3
    celery: true
    bindings: [{{exchange: tasks, routing_key: reports.build}}]
"""

pytestmark = pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        yield running


@pytest.fixture(autouse=True)
def healed(cluster: LocalCluster) -> Iterator[None]:
    """Every test starts and ends with three running nodes, even after a failure mid-kill."""
    cluster.heal()
    yield
    cluster.heal()


def _env(cluster: LocalCluster, first: LocalNode, vhost: str = "/", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUS_", "CELERY_"))}
    env["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser privileges"
    env.update(cluster.env(first, vhost), **extra)
    return env


def _bus(cluster: LocalCluster, first: LocalNode, *args: str) -> subprocess.CompletedProcess[str]:
    return run([BIN / "bus", *args], env=_env(cluster, first), cwd=REPO, timeout=DEADLINE)


@pytest.fixture(scope="module")
def topology_file(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The topology, applied once with ``bus apply`` through the cluster's first node."""
    path = tmp_path_factory.mktemp("cluster") / "topology.yaml"
    path.write_text(TOPOLOGY)
    result = _bus(cluster, cluster.nodes[0], "apply", "-f", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return path


# The cluster's nodes take their time: a longer deadline, a slower poll.
_wait = partial(wait_for, deadline=DEADLINE, interval=0.2)


async def _await(predicate: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _report(row: dict[str, Any]) -> None:
    print(json.dumps(row))
    target = os.environ.get("BUS_CLUSTER_REPORT")
    if target:
        with Path(target).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


# -- the cluster itself ------------------------------------------------------------------------
def test_three_nodes_run_as_one_cluster(cluster: LocalCluster) -> None:
    assert sorted(cluster.running_nodes()) == sorted(node.name for node in cluster.nodes)


def test_quorum_queue_has_a_member_on_every_node(cluster: LocalCluster) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(cluster.nodes[1].amqp_url))
    try:
        connection.channel().queue_declare(
            "spread", durable=True, arguments={"x-queue-type": "quorum"}
        )
    finally:
        connection.close()
    with ManagementClient(cluster.nodes[0].management_url, "guest", "guest") as api:
        queue = api.queue("/", "spread")
    assert queue is not None
    assert sorted(queue["members"]) == sorted(node.name for node in cluster.nodes)


def test_bus_apply_spreads_the_topology_quorum_queues(
    cluster: LocalCluster, topology_file: Path
) -> None:
    with cluster.management() as api:
        for name in (QUEUE, TASKS):
            queue = api.queue(VHOST, name)
            assert queue is not None
            assert queue["arguments"]["x-quorum-initial-group-size"] == 3
            assert queue["arguments"]["x-queue-leader-locator"] == "balanced"
            assert sorted(queue["members"]) == sorted(node.name for node in cluster.nodes)


# -- publishers and consumers across a leader kill --------------------------------------------
@dataclass
class Run:
    """The figures of one publish run besides the total-queue check's own."""

    raised: Counter[str]
    confirmed_while_down: int = 0
    killed_at: float = 0.0
    first_raise: float | None = None
    last_raise: float | None = None

    def raised_now(self, exc: BaseException) -> None:
        self.raised[type(exc).__name__] += 1
        now = time.monotonic()
        if self.first_raise is None:
            self.first_raise = now
        self.last_raise = now

    def window(self) -> list[float] | None:
        """Seconds from the kill to the first and to the last raised publish."""
        if self.first_raise is None or self.last_raise is None:
            return None
        return [
            round(self.first_raise - self.killed_at, 1),
            round(self.last_raise - self.killed_at, 1),
        ]


def _connections_by_name(api: ManagementClient) -> dict[str, str]:
    """connection name -> node, for the connections of our vhost."""
    result: dict[str, str] = {}
    for conn in api.request("GET", "/connections") or []:
        if conn.get("vhost") == VHOST:
            name = (conn.get("client_properties") or {}).get("connection_name", "")
            result[str(name)] = str(conn.get("node"))
    return result


def _consumers(api: ManagementClient, queue: str) -> int:
    info = api.queue(VHOST, queue) or {}
    return int(info.get("consumers") or 0)


async def test_confirmed_publishes_survive_killing_the_quorum_leader(
    cluster: LocalCluster, topology_file: Path
) -> None:
    n = int(os.environ.get("BUS_CLUSTER_N", "2000"))
    leader = cluster.leader(VHOST, QUEUE)
    survivor = cluster.others(leader)[0]
    check = TotalQueue()
    run = Run(Counter())

    # Two consumer apps on the same queue: one starts on a node that stays up, one on the
    # leader, which it must leave for another node.
    apps = {}
    for where, first in (("survivor", survivor), ("leader", leader)):
        app = ConsumerApp(f"cluster-{where}", grace=5)

        async def on_message(message: Message) -> None:
            assert message.message_id is not None
            check.on_consumed(message.message_id)

        app.handler(QUEUE, prefetch=100, concurrency=4, raw=True)(on_message)
        apps[where] = (app, cluster.settings(first, VHOST))

    ids = iter(range(n))
    prefix = uuid.uuid4().hex[:8]

    async def lane(publisher: Publisher) -> None:
        for index in ids:
            message_id = f"{prefix}-{index}"
            last: BaseException | None = None
            give_up = time.monotonic() + RETRY_FOR
            while True:
                # A retry is a new send with the same id: the checker stays exact.
                check.on_sent(message_id)
                try:
                    await publisher.publish(
                        "events", "order.cluster", {"n": index}, message_id=message_id
                    )
                except BusError as exc:
                    check.on_failed(message_id)
                    run.raised_now(exc)
                    last = exc
                    if time.monotonic() > give_up:
                        raise AssertionError(
                            f"{message_id}: no confirm in {RETRY_FOR:g}s; last: {last!r} "
                            f"(raised so far: {dict(run.raised)})"
                        ) from None
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                check.on_confirmed(message_id)
                break

    def names_away_from_leader() -> bool:
        with cluster.management() as api:
            nodes = _connections_by_name(api)
            consumers = _consumers(api, QUEUE)
        ours = ("cluster-publisher", "amqp-bus consumer cluster-leader")
        return consumers == 2 and all(name in nodes and nodes[name] != leader.name for name in ours)

    async def nemesis() -> None:
        await _await(lambda: len(check.confirmed) >= n // 3, "a third of the messages")
        run.killed_at = time.monotonic()
        await asyncio.to_thread(leader.kill)
        at_kill = len(check.confirmed)
        # The publisher and the consumer that were on the leader are back, elsewhere.
        await asyncio.to_thread(_wait, names_away_from_leader, "connections on other nodes")
        await _await(
            lambda: len(check.confirmed) >= max(2 * n // 3, at_kill + 1),
            "publishing to go on with the leader down",
        )
        run.confirmed_while_down = len(check.confirmed) - at_kill
        await asyncio.to_thread(cluster.restart, leader)

    publisher_settings = cluster.settings(leader, VHOST)
    async with (
        apps["survivor"][0].serve(apps["survivor"][1], topology=topology_file),
        apps["leader"][0].serve(apps["leader"][1], topology=topology_file),
        Publisher.connect(
            publisher_settings, exchanges=["events"], connection_name="cluster-publisher"
        ) as publisher,
    ):

        def publisher_node() -> str | None:
            # The management API lists a connection once its first stats arrive (seconds).
            with cluster.management() as api:
                return _connections_by_name(api).get("cluster-publisher")

        assert await asyncio.to_thread(_wait, publisher_node, "the publisher") == leader.name
        async with asyncio.TaskGroup() as group:
            group.create_task(nemesis())
            for _ in range(20):
                group.create_task(lane(publisher))
        # Every confirmed message is consumed, then the queue is empty.
        await _await(lambda: check.confirmed <= set(check.consumed), "every confirmed message")

        def drained() -> bool:
            with cluster.management() as api:
                info = api.queue(VHOST, QUEUE) or {}
            return info.get("messages") == 0

        await asyncio.to_thread(_wait, drained, "an empty queue")

    row = check.row(f"cluster leader kill, N={n}")
    row.update(
        raised=dict(run.raised),
        raised_window_after_kill_s=run.window(),
        confirmed_while_leader_down=run.confirmed_while_down,
        unresolved=len(check.unresolved),
    )
    _report(row)
    check.assert_ok()
    assert len(check.confirmed) == n
    assert run.confirmed_while_down > 0


# -- a Celery worker across a leader kill ------------------------------------------------------
def _records(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    lines = path.read_text().splitlines()
    return Counter(json.loads(line)["token"] for line in lines if line.endswith("}"))


def test_celery_worker_keeps_executing_tasks_across_a_leader_kill(
    cluster: LocalCluster, topology_file: Path, tmp_path: Path
) -> None:
    leader = cluster.leader(VHOST, TASKS)
    out = tmp_path / "records.jsonl"
    worker = BusWorker(
        ["-Q", TASKS, "--pool", "threads", "-c", "2"],
        _env(cluster, leader, VHOST, BUS_TOPOLOGY=str(topology_file)),
        tmp_path / "worker.log",
    )
    sent: set[str] = set()
    raised: Counter[str] = Counter()
    topology = load_topology(topology_file)
    # The sync (pika) publisher starts on the leader too: it must move with the next publish.
    publisher = SyncPublisher(cluster.settings(leader, VHOST), topology)
    try:
        _wait(worker.ready, "the worker to be ready")
        publisher.start()

        def batch(tag: str, count: int = 20) -> set[str]:
            tokens = {f"{tag}-{i}" for i in range(count)}
            for token in sorted(tokens):
                give_up = time.monotonic() + RETRY_FOR
                while True:
                    try:
                        publisher.send_task(TASKS, "consumers.tasks.record", [str(out), token])
                    except BusError as exc:
                        raised[type(exc).__name__] += 1
                        if time.monotonic() > give_up:
                            raise AssertionError(f"task {token}: no confirm: {exc!r}") from None
                        time.sleep(RETRY_PAUSE)
                        continue
                    break
            sent.update(tokens)
            return tokens

        def ran(tokens: set[str]) -> bool:
            return tokens <= set(_records(out))

        before = batch("before")
        _wait(lambda: ran(before), "the tasks sent before the kill")
        leader.kill()
        try:
            down = batch("down")
            # Run while the leader is still down: the worker has moved to another node.
            _wait(lambda: ran(down), f"the tasks sent with the leader down:\n{worker.output}")
        finally:
            cluster.restart(leader)
        after = batch("after")
        _wait(lambda: ran(after), "the tasks sent after the restart")
    finally:
        publisher.close()
        code = worker.stop()
    records = _records(out)
    _report(
        {
            "scenario": "celery worker, leader kill",
            "sent": len(sent),
            "executed": len(records),
            "duplicates": sum(records.values()) - len(records),
            "raised": dict(raised),
        }
    )
    assert set(records) == sent
    assert code == 0, worker.output[-3000:]
    assert "Connection to broker lost" in worker.output
    assert "Unrecoverable error" not in worker.output


# -- bus plan against every node ---------------------------------------------------------------
CHANGED = TOPOLOGY + (
    "  orders.audit:\n"
    "    type: quorum\n"
    "    bindings: [{exchange: events, routing_key: 'order.#'}]\n"
)
CONFLICTING = TOPOLOGY.replace(
    "initial_cluster_size: 3\n    leader_locator", "initial_cluster_size: 2\n    leader_locator", 1
)


def _plan_text(result: subprocess.CompletedProcess[str]) -> str:
    # The header names the broker URL the plan was asked of: the only line that may differ.
    return re.sub(r" on amqp://\S+", " on <node>", result.stdout)


def test_bus_plan_is_the_same_through_every_node(
    cluster: LocalCluster, topology_file: Path, tmp_path: Path
) -> None:
    changed = tmp_path / "changed.yaml"
    changed.write_text(CHANGED)
    conflicting = tmp_path / "conflicting.yaml"
    conflicting.write_text(CONFLICTING)
    plans: dict[str, list[tuple[int, str]]] = {}
    for node in cluster.nodes:
        plans[node.name] = [
            (r.returncode, _plan_text(r))
            for r in (
                _bus(cluster, node, "plan", "-f", str(topology_file), "--detailed-exitcode"),
                _bus(cluster, node, "plan", "-f", str(changed), "--detailed-exitcode"),
                _bus(cluster, node, "plan", "-f", str(conflicting)),
            )
        ]
    first = plans[cluster.nodes[0].name]
    assert [code for code, _ in first] == [0, 3, 1], first
    assert "orders.audit" in first[1][1]
    assert "x-quorum-initial-group-size" in first[2][1]
    for name, plan in plans.items():
        assert plan == first, name

    # With the first node of the list dead, plan and apply go through the others.
    dead = cluster.others(cluster.leader(VHOST, QUEUE))[-1]
    dead.kill()
    try:
        planned = _bus(cluster, dead, "plan", "-f", str(changed), "--detailed-exitcode")
        assert (planned.returncode, _plan_text(planned)) == first[1], planned.stderr
        applied = _bus(cluster, dead, "apply", "-f", str(changed))
        assert applied.returncode == 0, applied.stdout + applied.stderr
    finally:
        cluster.restart(dead)
    for node in cluster.nodes:
        again = _bus(cluster, node, "plan", "-f", str(changed), "--detailed-exitcode")
        assert again.returncode == 0, again.stdout + again.stderr
