"""Helpers shared by the plan/apply/export suites (no tests here)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pika
import pytest

from bench.apply import TYPES, queue_binding
from bus.broker.management import ManagementClient
from bus.cli import main
from bus.settings import BusSettings
from bus.topology import LoadedTopology, parse_topology


def settings_for(url: str, management: ManagementClient) -> BusSettings:
    return BusSettings(amqp_url=url, management_url=management.base_url)


def load(text: str) -> LoadedTopology:
    return parse_topology(text, "test-topology.yaml")


def write(tmp_path: Path, text: str, name: str = "topology.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def definitions(management: ManagementClient, vhost: str) -> dict[str, Any]:
    """Everything the broker holds for a vhost, order-free, for before/after comparisons."""
    data = management.definitions(vhost)
    out: dict[str, Any] = {}
    for key in ("exchanges", "queues", "bindings", "policies"):
        out[key] = sorted(data.get(key, []), key=repr)
    return out


def run_cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    """``bus ARGS`` in-process: (exit code, stdout, stderr)."""
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli_as(
    env: Mapping[str, str], args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> tuple[int, str, str]:
    """:func:`run_cli` with ``env`` (a user's ``BUS_*`` settings, say) set for the test."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return run_cli(args, capsys)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def publish(url: str, routing_key: str, body: bytes = b"{}", exchange: str = "") -> None:
    connection = connect(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange, routing_key, body, pika.BasicProperties(delivery_mode=2), mandatory=True
        )
    finally:
        connection.close()


def synthetic_topology(exchanges: int, queues_per_exchange: int, quorum_every: int = 0) -> str:
    """A generated topology: every exchange type, e2e bindings, headers bindings, policies."""
    lines = ["version: 1", "exchanges:"]
    for i in range(exchanges):
        kind = TYPES[i % 4]
        extra = ", internal: true" if i % 7 == 6 else ""
        lines.append(f"  x{i}: {{type: {kind}{extra}}}")
    lines.append("queues:")
    n = 0
    for i in range(exchanges):
        kind = TYPES[i % 4]
        if i % 7 == 6:
            continue  # internal exchanges are fed by exchange bindings only
        for j in range(queues_per_exchange):
            n += 1
            quorum = quorum_every and n % quorum_every == 0
            qtype = "quorum" if quorum else "classic"
            fields = [f"type: {qtype}"]
            if n % 3 == 0:
                fields.append(f"message_ttl: {1000 * (j + 1)}")
            if n % 5 == 0:
                fields.append("max_length: 1000")
            if quorum:
                fields.append("delivery_limit: 3")
            binding = queue_binding(kind, f"x{i}", n)
            lines.append(f"  q{i}.{j}: {{{', '.join(fields)}, bindings: [{binding}]}}")
    lines.append("exchange_bindings:")
    for i in range(exchanges):
        if i % 7 == 6:
            lines.append(f'  - {{source: x{i - 6}, destination: x{i}, routing_key: "r.{i}"}}')
    if not any(line.startswith("  - ") for line in lines):
        lines.pop()
    lines += [
        "policies:",
        "  ttl-cap: {pattern: '^q1\\.', apply_to: queues, priority: 1,",
        "            definition: {max-length: 50000}}",
    ]
    return "\n".join(lines) + "\n"
