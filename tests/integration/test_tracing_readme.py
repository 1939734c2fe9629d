"""README "Tracing": the service example runs as printed, and so does the cost command.

The ```python block runs in a fresh interpreter from the repository (where topology.yaml is),
against a vhost with the topology applied; what it prints is what the prose says it prints.
The ```shell block runs with ``--quick`` sizes appended (CI keeps benchmarks small).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pika
import pytest

from bus.broker.management import ManagementClient
from bus.settings import with_vhost
from tests.support.commands import run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SECTION = (REPO / "README.md").read_text(encoding="utf-8").split("## Tracing\n", 1)[1]
SECTION = SECTION.split("\n## ", 1)[0]


def _block(language: str) -> str:
    (block,) = re.findall(rf"```{language}\n(.*?)```", SECTION, flags=re.DOTALL)
    return block


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON documents the console exporter prints one after another."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    position = 0
    while (start := text.find("{", position)) != -1:
        value, position = decoder.raw_decode(text, start)
        objects.append(value)
    return objects


def test_the_service_example_prints_the_publish_span_under_the_services_span(
    amqp_url: str, bus_applied_vhost: str
) -> None:
    url = with_vhost(amqp_url, bus_applied_vhost)
    env = {**os.environ, "BUS_AMQP_URL": url}
    done = run([sys.executable, "-c", _block("python")], cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    spans = {span["name"]: span for span in _json_objects(done.stdout)}
    assert set(spans) == {"checkout", "publish events"}
    publish, checkout = spans["publish events"], spans["checkout"]
    assert publish["kind"] == "SpanKind.PRODUCER"
    assert publish["parent_id"] == checkout["context"]["span_id"]
    assert publish["context"]["trace_id"] == checkout["context"]["trace_id"]
    assert publish["attributes"]["messaging.destination.name"] == "events"
    assert publish["attributes"]["messaging.rabbitmq.destination.routing_key"] == "order.created"

    # The message on the broker carries the publish span (billing.orders is bound to order.*).
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        method, properties, _body = channel.basic_get("billing.orders", auto_ack=True)
    finally:
        connection.close()
    assert method is not None, "the example's event did not reach billing.orders"
    traceparent = str((properties.headers or {})["traceparent"])
    _version, trace_id, span_id, _flags = traceparent.split("-")
    assert f"0x{trace_id}" == publish["context"]["trace_id"]
    assert f"0x{span_id}" == publish["context"]["span_id"]


def test_the_cost_command_prints_the_traced_ratios(
    amqp_url: str, bus_management: ManagementClient
) -> None:
    command = shlex.split(_block("shell").strip())
    assert command[:3] == ["python", "-m", "bench"]
    small = ["--quick", "--seconds", "1", "--messages", "2000", "--no-java", "--no-uvloop"]
    # The test broker (local, throwaway node or container), as the bench reads it.
    env = {**os.environ, "BUS_AMQP_URL": amqp_url, "BUS_MANAGEMENT_URL": bus_management.base_url}
    done = run([sys.executable, *command[1:], *small], cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ratio publish w1000 msg_s: ours-traced / ours = " in done.stdout
    assert "ratio consume p100 msg_s: ours-traced / ours = " in done.stdout
