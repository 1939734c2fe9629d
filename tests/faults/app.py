"""What the fault scenarios publish and consume: one event model, one topology, one app.

``bus consume --app tests.faults.app:app faults.work`` runs the consumer process of the
"consumer SIGKILL" scenario. Its handler appends ``<message_id> <redelivered 0|1>`` to the
file named by ``$FAULTS_TRACE`` after sleeping ``$FAULTS_DELAY`` seconds; a line is written
with one ``write`` of a short string in O_APPEND mode, so a kill never leaves half a line
behind that could be mistaken for a whole one (the reader only takes complete lines).
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from consumers import ConsumerApp, Message

__all__ = ["TOPOLOGY", "Probe", "app"]


class Probe(BaseModel):
    """A uniquely numbered message: ``n`` is its index in the run."""

    n: int
    run: str = ""


TOPOLOGY = """\
version: 1
exchanges:
  faults: {type: topic}
  faults.ae: {type: topic, alternate_exchange: faults.unrouted}
  faults.unrouted: {type: fanout}
  tasks: {type: topic}
queues:
  faults.quorum:
    type: quorum
    dead_letter: true
    bindings: [{exchange: faults, routing_key: quorum}]
  faults.classic:
    dead_letter: true
    bindings: [{exchange: faults, routing_key: classic}]
  faults.work:
    type: quorum
    dead_letter: true
    bindings: [{exchange: faults, routing_key: work}]
  faults.poison:
    type: quorum
    delivery_limit: 20
    dead_letter: true
    retry: {delays: [50ms]}
    bindings: [{exchange: faults, routing_key: poison}]
  faults.unrouted.q:
    bindings: [{exchange: faults.unrouted}]
  faults.gone:
    bindings: [{exchange: faults, routing_key: gone}]
  faults.tasks:
    type: quorum
    dead_letter: true
    celery: true
    bindings: [{exchange: tasks, routing_key: faults.tasks}]
events:
  faults.probe: {exchange: faults, routing_key: quorum, model: "tests.faults.app:Probe"}
"""

app = ConsumerApp("faults-worker", grace=5)


def _trace(line: str) -> None:
    fd = os.open(os.environ["FAULTS_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.handler("faults.work", prefetch=50, concurrency=10)
async def work(event: Probe, message: Message) -> None:
    await asyncio.sleep(float(os.environ.get("FAULTS_DELAY", "0.01")))
    _trace(f"{message.message_id} {int(message.redelivered)}\n")
