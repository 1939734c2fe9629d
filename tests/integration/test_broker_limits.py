"""The broker's limits that topology validation enforces, measured here on the real broker.

Issue 25 finding 7: a retry delay of ``36500d`` validated, then ``bus apply`` stopped after 4 of
7 changes with "406 value_too_large ... it changed since the plan". Each limit in
``bus.topology.limits`` is proven against the broker (accepted at the limit, refused beyond
it), the validator refuses the value at its line, and apply never starts on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from bus.broker import apply
from bus.broker.management import ManagementClient
from bus.cli import main
from bus.errors import BrokerError, PlanConflictError
from bus.settings import BusSettings
from bus.topology import parse_topology
from bus.topology.limits import MAX_TTL_MS

pytestmark = pytest.mark.integration


def _declare(url: str, arguments: dict[str, Any]) -> str | None:
    """None when the broker accepts a queue with these arguments, else its 406 reply text."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        try:
            channel.queue_declare("limit.probe", durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return f"{exc.reply_code} {exc.reply_text}"
        channel.queue_delete("limit.probe")
        return None
    finally:
        connection.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
@pytest.mark.parametrize("argument", ["x-message-ttl", "x-expires"])
def test_ttl_and_expires_limit_is_3650_days(
    argument: str, queue_type: str, bus_vhost_url: str
) -> None:
    args = {"x-queue-type": queue_type}
    assert _declare(bus_vhost_url, {**args, argument: MAX_TTL_MS}) is None
    refused = _declare(bus_vhost_url, {**args, argument: MAX_TTL_MS + 1})
    assert refused is not None
    assert refused.startswith("406 ")
    assert "value_too_large" in refused


def test_expires_must_be_positive_and_priority_at_most_255(bus_vhost_url: str) -> None:
    zero = _declare(bus_vhost_url, {"x-expires": 0})
    assert zero is not None
    assert "value_zero" in zero
    assert _declare(bus_vhost_url, {"x-max-priority": 255}) is None
    too_high = _declare(bus_vhost_url, {"x-max-priority": 256})
    assert too_high is not None
    assert "max_value_exceeded" in too_high


def test_a_routing_key_over_255_bytes_cannot_even_be_encoded(bus_vhost_url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    try:
        channel = connection.channel()
        channel.queue_declare("limit.keys")
        channel.queue_bind("limit.keys", "amq.direct", "k" * 255)
        with pytest.raises(pika.exceptions.ShortStringTooLong):
            channel.queue_bind("limit.keys", "amq.direct", "k" * 256)
    finally:
        if connection.is_open:
            connection.close()


# The shape of the topology: 7 changes, the delay queue among the last ones.
TOPOLOGY = """\
version: 1
exchanges:
  events: {{type: topic}}
queues:
  a.orders:
    bindings: [{{exchange: events, routing_key: order.created}}]
  billing:
    dead_letter: true
    retry: {{delays: [1s, {delay}]}}
    bindings: [{{exchange: events, routing_key: order.#}}]
"""


def test_apply_refuses_a_36500d_delay_at_its_line_and_changes_nothing(
    bus_vhost_url: str,
    bus_vhost: str,
    bus_management: ManagementClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    amqp_url: str,
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY.format(delay="36500d"), encoding="utf-8")
    monkeypatch.setenv("BUS_AMQP_URL", bus_vhost_url)
    monkeypatch.setenv("BUS_MANAGEMENT_URL", BusSettings(amqp_url=amqp_url).management_base_url())
    code = main(["apply", "-f", str(path)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    # Line 9, column of "36500d" in "    retry: {delays: [1s, 36500d]}".
    assert err == [
        f"{path}:9:26: queues.billing.retry.delays[1]: retry delay of 36500d (3153600000000 ms) "
        "exceeds RabbitMQ's maximum of 315360000000 ms (3650d): the broker refuses the "
        "declare (value_too_large)"
    ]
    assert bus_management.queues(bus_vhost) == []
    # At the limit the same topology applies completely.
    path.write_text(TOPOLOGY.format(delay="3650d"), encoding="utf-8")
    assert main(["apply", "-f", str(path)]) == 0
    names = {q["name"] for q in bus_management.queues(bus_vhost)}
    assert "billing.retry.3650d" in names


def test_apply_stopped_by_a_value_names_the_object_and_the_real_reason(
    bus_vhost: str, amqp_url: str
) -> None:
    # A limit the validator does not know (simulated by editing the expanded topology after
    # validation): apply stops at that object and says why, not "it changed since the plan".
    loaded = parse_topology(TOPOLOGY.format(delay="10s"))
    loaded.expanded.queues["billing.retry.10s"].arguments["x-message-ttl"] = MAX_TTL_MS + 1
    settings = BusSettings(amqp_url=amqp_url)
    with pytest.raises(BrokerError) as caught:
        apply(loaded, settings, vhost=bus_vhost)
    assert not isinstance(caught.value, PlanConflictError)
    text = str(caught.value)
    assert "queue 'billing.retry.10s'" in text
    assert "value_too_large" in text
    assert "changed since the plan" not in text
    assert "stopped after" in text
