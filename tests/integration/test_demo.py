"""``bus demo`` end to end: its table agrees with the broker's own counts; without a local
broker it runs on a throwaway node and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest

import bus.provision
from bus.broker.management import ManagementClient
from bus.cli import main
from bus.node import rabbitmq_installed
from bus.provision import ProvidedBroker
from bus.settings import with_vhost
from tests.support.commands import bus_argv, run

REPO = Path(__file__).resolve().parents[2]


def _publish_counts(api: ManagementClient, vhost: str) -> dict[str, int]:
    return {
        q["name"]: int((q.get("message_stats") or {}).get("publish", 0)) for q in api.queues(vhost)
    }


def _ack_counts(api: ManagementClient, vhost: str) -> dict[str, int]:
    return {q["name"]: int((q.get("message_stats") or {}).get("ack", 0)) for q in api.queues(vhost)}


def test_demo_table_matches_the_broker_counts(
    bus_broker: ProvidedBroker, bus_management: ManagementClient
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env.update(BUS_AMQP_URL=bus_broker.amqp_url, BUS_MANAGEMENT_URL=bus_broker.management_url)
    done = run(bus_argv("demo", "--keep", "--json"), cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    vhost = report["vhost"]
    try:
        rows: list[dict[str, Any]] = report["rows"]
        assert report["ok"] is True
        assert all(row["ok"] for row in rows)
        topology_queues = {q["name"]: q for q in bus_management.queues(vhost)}

        # What the demo says went into each queue, counted the broker's way: one publish per
        # message routed into a queue (dead-letter copies included), one per retry copy.
        expected_publish: Counter[str] = Counter()
        retries = 0
        for row in rows:
            expected_publish.update(row["reached"])
            retries += row["retries"]
        retry_queues = [n for n in topology_queues if ".retry." in n]

        deadline = time.monotonic() + 30  # the management API's counters lag by ~5 s
        while True:
            published = _publish_counts(bus_management, vhost)
            observed = {n: c for n, c in published.items() if c and n not in retry_queues}
            if observed == dict(expected_publish) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert observed == dict(expected_publish)
        assert sum(published[n] for n in retry_queues) == retries

        # Every delivery the table calls handled was acked (a retried one twice).
        acks = _ack_counts(bus_management, vhost)
        handled = [q for row in rows for q in row["reached"] if not q.endswith(".dlq")]
        assert sum(acks.values()) == len(handled) + retries

        # Dead-lettered rows: exactly those messages sit in their DLQ (passive declare: exact).
        connection = pika.BlockingConnection(
            pika.URLParameters(with_vhost(bus_broker.amqp_url, vhost))
        )
        try:
            channel = connection.channel()
            for dlq in {row["dead_letter_queue"] for row in rows if row["dead_letter_queue"]}:
                depth = channel.queue_declare(dlq, passive=True).method.message_count
                assert depth == sum(1 for row in rows if row["dead_letter_queue"] == dlq)
        finally:
            connection.close()
        # It ends with `bus dlq list` of its vhost: depths as the broker counts them.
        listed = {q["queue"]: q["depth"] for q in report["dead_letters"]}
        for row in rows:
            if row["dead_letter_queue"]:
                assert listed[row["dead_letter_queue"]] >= 1
        assert sum(listed.values()) == sum(1 for row in rows if row["dead_letter_queue"])
        # The table shows every exchange type of the topology.
        kinds = {row["exchange"].split("(")[-1].rstrip(")") for row in rows}
        assert {"topic", "direct", "fanout", "headers"} <= kinds
    finally:
        bus_management.delete_vhost(vhost)


def _our_nodes(prefix: str) -> set[str]:
    names = subprocess.run(["epmd", "-names"], capture_output=True, text=True, check=False).stdout
    return {word for word in names.split() if word.startswith(prefix)}


def _our_processes(prefix: str) -> set[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return {line for line in ps.splitlines() if prefix in line}


@pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")
def test_demo_without_a_local_broker_runs_on_a_throwaway_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BUS_AMQP_URL", raising=False)
    monkeypatch.delenv("BUS_MANAGEMENT_URL", raising=False)
    monkeypatch.setenv("BUS_TEST_BROKER", "auto")  # whatever broker this session itself uses
    monkeypatch.setattr(bus.provision, "docker_available", lambda timeout=1.0: False)
    monkeypatch.setattr(bus.provision, "LOCAL_PORT", 1)  # the "local broker" answers nowhere
    monkeypatch.chdir(REPO)
    ours = f"bus-throwaway-{os.getpid()}-"
    before = set(Path(tempfile.gettempdir()).glob(f"{ours}*"))
    # The session may itself run on a throwaway node of this process: only new ones count.
    nodes_before = _our_nodes(ours)
    ps_before = _our_processes(ours)

    code = main(["demo"])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "broker: a throwaway local rabbitmq-server node" in err
    assert "every expected delivery happened" in out
    assert _our_nodes(ours) <= nodes_before
    assert not set(Path(tempfile.gettempdir()).glob(f"{ours}*")) - before
    # No worker or node process of ours survives.
    assert _our_processes(ours) <= ps_before
