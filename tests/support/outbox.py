"""Databases, topology and broker reading for the outbox tests."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

TOPOLOGY = """
version: 1
exchanges:
  events: {type: topic}
  tasks: {type: topic}
queues:
  outbox.all:
    bindings: [{exchange: events, routing_key: "order.#"}]
  email.send:
    celery: true
    bindings: [{exchange: tasks, routing_key: email.send}]
events:
  order.created:
    {exchange: events, routing_key: order.created, model: "producers.events:OrderCreated"}
"""


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own on the local PostgreSQL, dropped afterwards (skip when absent)."""
    psycopg = pytest.importorskip("psycopg")
    name = f"bus_outbox_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def outbox_database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.db'}"
    else:
        with postgres_database() as url:
            yield url


def terminate_connections(database_url: str) -> int:
    """``pg_terminate_backend`` every other connection to this test's own database."""
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


@dataclass
class Seen:
    message_id: str
    order_id: str
    number: int
    properties: pika.BasicProperties


def read_queue(url: str, queue: str, idle: float = 3.0) -> list[Seen]:
    """Every message of ``queue`` in delivery order, until it stays empty for ``idle`` s."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        got: list[Seen] = []
        for method, properties, body in channel.consume(queue, inactivity_timeout=idle):
            if method is None:
                break
            data = json.loads(body)
            got.append(
                Seen(properties.message_id, data["order_id"], int(data["customer_id"]), properties)
            )
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
        return got
    finally:
        connection.close()


def order_broken(seen: list[Seen]) -> list[str]:
    """Ordering keys whose numbers, first delivery of each message_id kept (as an inbox
    would), do not increase."""
    first: set[str] = set()
    last: dict[str, int] = {}
    broken: list[str] = []
    for item in seen:
        if item.message_id in first:
            continue
        first.add(item.message_id)
        if item.number <= last.get(item.order_id, -1):
            broken.append(item.order_id)
        last[item.order_id] = item.number
    return broken
