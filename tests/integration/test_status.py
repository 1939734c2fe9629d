"""``bus status`` against the real broker: exact depths, DLQ and consumer health, JSON fields."""

from __future__ import annotations

import json
from typing import Any

import pika
import pytest

from bus.cli import main
from bus.provision import ProvidedBroker
from bus.topology import LoadedTopology
from tests.support.amqp import declare_with_pika


@pytest.fixture
def status_env(
    monkeypatch: pytest.MonkeyPatch,
    bus_broker: ProvidedBroker,
    bus_vhost_url: str,
    bus_topology: LoadedTopology,
) -> str:
    declare_with_pika(bus_vhost_url, bus_topology.expanded)
    monkeypatch.setenv("BUS_AMQP_URL", bus_broker.amqp_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_broker.management_url)
    return bus_vhost_url


def _status(
    capsys: pytest.CaptureFixture[str], vhost: str, *extra: str
) -> tuple[int, dict[str, Any]]:
    code = main(["status", "--vhost", vhost, "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _publish(url: str, queue: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for index in range(count):
        channel.basic_publish("", queue, f"m{index}".encode(), mandatory=True)
    connection.close()


def _broker_counts(url: str, queues: list[str]) -> dict[str, tuple[int, int]]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    counts = {}
    for name in queues:
        ok = channel.queue_declare(name, passive=True).method
        counts[name] = (ok.message_count, ok.consumer_count)
    connection.close()
    return counts


def test_depths_match_the_broker_and_dlq_makes_it_unhealthy(
    status_env: str, bus_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(status_env, "analytics.all", 5)
    _publish(status_env, "billing.orders.dlq", 2)

    code, report = _status(capsys, bus_vhost, "--allow-idle", ".*")

    assert code == 4
    assert report["healthy"] is False
    assert report["problems"] == [
        "billing.orders: dead-letter queue billing.orders.dlq holds 2 messages"
    ]
    queues = {q["name"]: q for q in report["queues"]}
    counts = _broker_counts(status_env, list(queues))
    for name, (ready, consumers) in counts.items():
        assert queues[name]["ready"] == ready, name
        assert queues[name]["consumers"] == consumers, name
    assert queues["analytics.all"]["ready"] == 5
    assert queues["billing.orders"]["dead_letter_queue"] == "billing.orders.dlq"
    assert queues["billing.orders"]["dead_letter_depth"] == 2
    assert queues["billing.orders"]["type"] == "quorum"
    assert queues["email.send"]["celery"] is True
    assert queues["billing.orders.retry.1s"]["role"] == "retry"

    # Drained: healthy again.
    connection = pika.BlockingConnection(pika.URLParameters(status_env))
    channel = connection.channel()
    while (got := channel.basic_get("billing.orders.dlq"))[0] is not None:
        channel.basic_ack(got[0].delivery_tag)
    connection.close()
    code, report = _status(capsys, bus_vhost, "--allow-idle", ".*")
    assert code == 0
    assert report["healthy"] is True


def test_unserved_queues_are_unhealthy_until_consumed(
    status_env: str,
    bus_vhost: str,
    bus_topology: LoadedTopology,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, report = _status(capsys, bus_vhost)
    main_queues = sorted(n for n, q in bus_topology.expanded.queues.items() if q.role == "queue")
    assert code == 4
    assert sorted(p.split(":")[0] for p in report["problems"]) == main_queues

    connection = pika.BlockingConnection(pika.URLParameters(status_env))
    channel = connection.channel()
    for name in main_queues:
        channel.basic_consume(name, lambda *args: None)
    try:
        code, report = _status(capsys, bus_vhost)
        assert code == 0, report["problems"]
        assert all(q["consumers"] == 1 for q in report["queues"] if q["name"] in main_queues)
    finally:
        connection.close()


def test_table_output_and_missing_vhost(
    status_env: str, bus_vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--vhost", bus_vhost, "--allow-idle", ".*"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == f"vhost {bus_vhost}: healthy"
    assert any(line.startswith("billing.orders ") for line in out.splitlines())

    code = main(["status", "--vhost", bus_vhost + "-missing"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: vhost ")
    assert "does not exist" in err


def test_a_poison_message_looping_through_requeues_is_unhealthy(
    status_env: str,
    bus_vhost: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A consumer that keeps requeueing the one message of a queue without a DLX: the broker's
    own counters (redelivered, acked) name the loop, and the exit code says unhealthy."""
    _publish(status_env, "email.bulk", 1)
    connection = pika.BlockingConnection(pika.URLParameters(status_env))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(
        "email.bulk", lambda ch, method, *_: ch.basic_nack(method.delivery_tag, requeue=True)
    )
    try:
        looping: list[dict[str, Any]] = []
        # The management API samples rates every 5 s: poll until a sample saw the loop.
        for _ in range(30):
            connection.sleep(1.0)  # serves the consumer meanwhile
            code, report = _status(capsys, bus_vhost, "--allow-idle", ".*")
            looping = [p for p in report["problems"] if "redelivery loop" in p]
            if looping:
                break
        assert looping, report["problems"]
        assert looping[0].startswith("email.bulk: redelivery loop")
        assert code == 4
        # A served queue that acks is not looping, however much it redelivers.
        assert not [p for p in report["problems"] if p.startswith("billing.orders")]
    finally:
        connection.close()
