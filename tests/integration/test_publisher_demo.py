"""The demo producer reaches the queues the shipped topology binds, through every exchange type."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bus.settings import BusSettings
from bus.topology import LoadedTopology
from producers.demo import run_demo
from tests.support.amqp import declare_with_pika
from tests.support.publisher import depth, drain
from tests.support.topologies import SAMPLES_REACH

ROOT = Path(__file__).resolve().parents[2]

# priority=high does not match email.bulk (x-match all, kind=newsletter); nothing is unroutable.
EXPECTED = {**SAMPLES_REACH, "email.bulk": 0, "unrouted.events": 0}


async def test_demo_publishes_through_every_exchange_type(
    bus_vhost_url: str, bus_topology: LoadedTopology
) -> None:
    declare_with_pika(bus_vhost_url, bus_topology.expanded)
    published = await run_demo(BusSettings(amqp_url=bus_vhost_url), bus_topology)
    assert {p.exchange_type for p in published} == {"topic", "direct", "fanout", "headers"}
    assert {queue: depth(bus_vhost_url, queue) for queue in EXPECTED} == EXPECTED
    (cancel,) = drain(bus_vhost_url, "orders.commands", 1)
    assert cancel.properties.type == "order.cancel"
    assert cancel.properties.app_id == "amqp-bus-demo"
    assert cancel.properties.message_id in {p.message_id for p in published}


def test_demo_module_runs_from_the_command_line(
    bus_vhost_url: str, bus_topology: LoadedTopology
) -> None:
    declare_with_pika(bus_vhost_url, bus_topology.expanded)
    env = dict(os.environ, BUS_AMQP_URL=bus_vhost_url, BUS_TOPOLOGY=str(ROOT / "topology.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "producers.demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert depth(bus_vhost_url, "cache.web") == 1


def test_demo_module_fails_in_one_line_without_topology_applied(bus_vhost_url: str) -> None:
    env = dict(os.environ, BUS_AMQP_URL=bus_vhost_url, BUS_TOPOLOGY=str(ROOT / "topology.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "producers.demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: exchanges ")
    assert "bus apply" in line
