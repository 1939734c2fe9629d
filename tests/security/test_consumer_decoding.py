"""Consumer decoding never evaluates code, whatever the content type claims.

Payloads that run code under pickle, YAML (``!!python/object/apply``) or ``eval`` (each one
would create a marker file) go to a consumer-runtime queue with every plausible content type.
The marker never appears, no handler runs, and each message is dead-lettered exactly once.

Celery's side (JSON only, a pickled task dead-lettered and never executed) is proven in
tests/integration/test_celery_worker.py::test_pickled_task_is_never_executed_and_dead_letters.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bus.contracts import ContractRegistry
from bus.settings import BusSettings
from bus.topology import LoadedTopology
from consumers import ConsumerApp, Message
from consumers.decode import Decoder, InvalidMessageError
from producers.events import OrderCreated
from tests.support.consumer import (
    drain,
    load_declared,
    publish,
    queue_depth,
    wait_until,
)
from tests.support.topologies import order_topology

TOPOLOGY = order_topology(
    """
    decode.q:
      dead_letter: true
      bindings: [{exchange: events, routing_key: "order.*"}]
    """
)

CONTENT_TYPES = ["application/x-python-serialize", "application/x-yaml", "application/json"]


class _Touch:
    """Unpickling this creates the marker file (``os.system("touch ...")``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def payloads(marker: Path) -> dict[str, bytes]:
    command = f"touch {marker}"
    return {
        "pickle": pickle.dumps(_Touch(marker)),
        "yaml": f'!!python/object/apply:os.system ["{command}"]\n'.encode(),
        "eval": f"__import__('os').system('{command}')".encode(),
        "json-string": f"\"__import__('os').system('{command}')\"".encode(),
    }


def test_the_payloads_do_run_code_when_deserialised_unsafely(tmp_path: Path) -> None:
    """The control: each payload really creates the marker under an unsafe decoder."""
    import yaml

    for name, body in payloads(tmp_path / "m").items():
        marker = tmp_path / "m"
        marker.unlink(missing_ok=True)
        if name == "pickle":
            pickle.loads(body)
        elif name == "yaml":
            yaml.unsafe_load(body)
        else:
            text = body.decode()
            eval(text if name == "eval" else eval(text))
        assert marker.exists(), name


@pytest.mark.parametrize("content_type", [*CONTENT_TYPES, None])
def test_decoder_refuses_every_payload_without_running_it(
    content_type: str | None, tmp_path: Path, bus_topology: LoadedTopology
) -> None:
    decoder = Decoder(ContractRegistry(bus_topology.expanded.events))
    marker = tmp_path / "marker"
    for name, body in payloads(marker).items():
        with pytest.raises(InvalidMessageError) as info:
            decoder.decode(content_type, "order.created", body, None)
        expected = {"content-type"} if content_type != "application/json" else {"json", "schema"}
        assert info.value.reason in expected, name
    assert not marker.exists()


async def test_consumer_dead_letters_code_payloads_once_and_never_runs_them(
    bus_vhost_url: str, tmp_path: Path
) -> None:
    topology = load_declared(bus_vhost_url, tmp_path, TOPOLOGY)
    marker = tmp_path / "marker"
    app = ConsumerApp("decoding", grace=5)
    handled: list[Any] = []

    @app.handler("decode.q")
    async def handle(event: OrderCreated, message: Message) -> None:
        handled.append((event, message.message_id))

    messages = [
        {
            "exchange": "events",
            "routing_key": "order.created",
            "body": body,
            "content_type": content_type,
            "type": "order.created",
        }
        for body in payloads(marker).values()
        for content_type in CONTENT_TYPES
    ]
    async with app.serve(BusSettings(amqp_url=bus_vhost_url), topology=topology):
        ids = await publish(bus_vhost_url, messages)
        await wait_until(lambda: queue_depth(bus_vhost_url, "decode.q.dlq")[0] >= len(ids))
        # Anything more (a requeue loop, a second copy) would show up in the meantime.
        await asyncio.sleep(0.5)
    content_types = {i: str(m["content_type"]) for i, m in zip(ids, messages, strict=True)}
    dead = drain(bus_vhost_url, "decode.q.dlq")
    assert Counter(props.message_id for _, props, _ in dead) == Counter(ids)  # each once
    for _, props, _ in dead:
        content_type = content_types[props.message_id]
        assert props.content_type == content_type
        reason = props.headers["x-failure-reason"]
        if content_type == "application/json":
            assert reason in ("json", "schema")
        else:
            assert reason == "content-type"
    assert handled == []
    assert not marker.exists()
    assert queue_depth(bus_vhost_url, "decode.q")[0] == 0
