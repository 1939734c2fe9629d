"""Hostile input against ``bus worker``: every malformed kind in one run, on a throwaway node.

One ``bus worker`` (threads pool) serves ``email.send`` (quorum) and ``reports.build``
(classic), both with a DLX. Every kind of :mod:`tests.support.hostile.worker_kinds` is published,
byte for byte, as a hostile publisher would; then a valid task per queue. The test reports
per kind: refused by the broker / dead-lettered (with the reason RabbitMQ recorded) /
handled (the task ran), and asserts that each kind ended as the requirement says, that
nothing is lost (every published message is in a DLQ or ran), that the worker process is
alive, never reconnected, and still runs valid tasks afterwards.

A throwaway node: the forged ``x-death`` kinds may break a broker's dead-lettering.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from bus.broker.management import ManagementClient
from bus.celery_message import celery_route
from bus.node import LocalNode, rabbitmq_installed
from bus.settings import BusSettings
from bus.topology import LoadedTopology, load_topology
from tests.support.celery_worker import CeleryVhost
from tests.support.hostile.worker_io import DUPLICATE, KindSender, Outcome, drain_dead_letters
from tests.support.hostile.worker_kinds import KINDS, valid_task
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not rabbitmq_installed(), reason="needs rabbitmq-server for a node"),
]

REPO = Path(__file__).resolve().parents[2]
QUEUES = ("reports.build", "email.send")


@pytest.fixture
def node(hostile_node: LocalNode) -> LocalNode:
    """The hostile suite's throwaway node (tests/hostile/conftest.py), one per session."""
    return hostile_node


@pytest.fixture
def node_vhost(node: LocalNode, tmp_path: Path) -> Iterator[CeleryVhost]:
    topology: LoadedTopology = load_topology(REPO / "topology.yaml")
    vhost = f"hostile-{uuid.uuid4().hex[:10]}"
    settings = BusSettings(amqp_url=node.amqp_url, management_url=node.management_url)
    management = ManagementClient.from_settings(settings)
    management.create_vhost(vhost)
    management.set_permissions(vhost, "guest")
    url = f"{node.amqp_url}{vhost}"
    try:
        with CeleryVhost(
            vhost=vhost, admin_url=url, worker_url=url, management_url=node.management_url,
            topology=topology, management=management, tmp=tmp_path,
        ) as cv:  # fmt: skip
            yield cv
    finally:
        management.delete_vhost(vhost)
        management.close()


def _log_sizes(node: LocalNode) -> dict[Path, int]:
    return {p: p.stat().st_size for p in (node.dir / "log").glob("*.log")}


def _log_since(node: LocalNode, sizes: dict[Path, int]) -> str:
    """What the node logged since ``sizes`` (the node is shared with other hostile tests)."""
    text = ""
    for path in (node.dir / "log").glob("*.log"):
        with path.open("rb") as f:
            f.seek(sizes.get(path, 0))
            text += f.read().decode(errors="replace")
    return text


def _tokens(path: Path) -> list[str]:
    """Tokens of the finished record lines (a 1 MB line may be half-written while read)."""
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line)["token"] for line in complete.splitlines() if line]


def _queued(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        count: int = connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()
    return count


def test_every_malformed_kind_is_refused_dead_lettered_or_handled(
    node: LocalNode, node_vhost: CeleryVhost
) -> None:
    cv = node_vhost
    log_sizes = _log_sizes(node)
    worker = cv.worker(",".join(QUEUES)).wait_ready()
    out = cv.tmp / "records.jsonl"
    expanded = cv.topology.expanded
    outcomes: list[Outcome] = []
    sender = KindSender(cv.admin_url)
    try:
        for index, kind in enumerate(KINDS):
            tag, token = f"k{index}", f"kind-{index}-{kind.name}"
            outcome = Outcome(kind, tag, token)
            route = celery_route(expanded, kind.queue)
            sent = kind.build(str(out), token, tag)
            outcome.refused = sender.send(route.exchange, route.routing_key, sent)
            outcome.published = not outcome.refused
            outcomes.append(outcome)
    finally:
        sender.close()

    published = [o for o in outcomes if o.published]
    dlqs = [f"{q}.dlq" for q in QUEUES]

    def settled() -> bool:
        ran = {t[:80] for t in _tokens(out)}
        dead = sum(_queued(cv.admin_url, q) for q in dlqs)
        return dead + len(ran) >= len(published)

    # On a timeout the per-kind report below says which ones are missing.
    with contextlib.suppress(AssertionError):
        wait_for(settled, "every published kind dead-lettered or run", deadline=120)
    # A valid task per queue after all of them: the worker still serves both queues.
    finals = {q: f"final-{q}" for q in QUEUES}
    app = cv.app()
    for queue, token in finals.items():
        app.send_task("consumers.tasks.record", (str(out), token), queue=queue)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: set(finals.values()) <= set(_tokens(out)), "")
    final_ran = set(finals.values()) <= set(_tokens(out))

    dead: dict[str, str] = {}
    for queue in dlqs:
        dead.update(drain_dead_letters(cv.admin_url, queue))
    ran_tokens = _tokens(out)
    for o in outcomes:
        o.dead_reason = dead.pop(o.tag, "")
        o.handled = any(t.startswith(o.token) for t in ran_tokens)

    report = "\n".join(o.line() for o in outcomes)
    print(f"\nbus worker, {len(KINDS)} kinds (kind, queue, result, detail):\n{report}")
    assert worker.process is not None
    alive = worker.process.poll() is None
    wrong = [o.line() for o in outcomes if o.result != o.kind.expect]
    assert not wrong, "kinds not ending as required:\n" + "\n".join(wrong)
    assert not dead, f"unexpected dead letters: {dead}"
    assert not [o.line() for o in outcomes if DUPLICATE in o.dead_reason], "dead-lettered twice"
    assert final_ran, f"valid tasks after the hostile ones did not run:\n{worker.output[-3000:]}"
    assert alive, f"worker exited:\n{worker.output[-3000:]}"
    for queue in QUEUES:
        assert _queued(cv.admin_url, queue) == 0
    for marker in ("Unrecoverable error", "Connection to broker lost"):
        assert marker not in worker.output, worker.output[-5000:]
    assert len(KINDS) >= 40
    # No queue process crashed dead-lettering a forged x-death (RabbitMQ 3.10.8 does).
    broker_log = _log_since(node, log_sizes)
    assert "rabbit_dead_letter" not in broker_log


# The kinds shared with the consumer suite (tests/support/hostile/kinds.py) corrupt a template
# message; here the template is a valid record task. Those that leave everything Celery reads
# intact must run; every other one must be dead-lettered (the kinds written with raw
# properties, e.g. timestamp-max, replace the template's headers: no task header is left).
SHARED_HANDLED = frozenset(
    {
        "type-missing", "type-empty", "type-unknown", "type-255-bytes", "type-other-event",
        "message-id-missing", "message-id-empty", "delivery-mode-transient", "priority-255",
        "x-first-death-forged", "x-last-death-forged", "x-delivery-count-string",
        "x-delivery-count-huge", "x-retry-count-string", "x-retry-count-negative",
        "x-retry-count-huge", "x-retry-count-bool", "header-decimal", "header-value-bytes",
        "header-value-none", "header-name-255-bytes", "headers-2000-keys",
        # A label only: the body is the template's valid JSON, which kombu reads as UTF-8.
        "body-encoding-unknown",
    }
)  # fmt: skip


def test_shared_kinds_are_dead_lettered_or_handled(
    node: LocalNode, node_vhost: CeleryVhost
) -> None:
    shared = pytest.importorskip("tests.support.hostile.kinds")
    cv = node_vhost
    log_sizes = _log_sizes(node)
    log_sizes = _log_sizes(node)
    worker = cv.worker(",".join(QUEUES)).wait_ready()
    out = cv.tmp / "records.jsonl"
    route = celery_route(cv.topology.expanded, "reports.build")
    tags: dict[str, str] = {}
    refused: dict[str, str] = {}
    connection = pika.BlockingConnection(pika.URLParameters(cv.admin_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for index, kind in enumerate(shared.KINDS):
            tag = f"s{index}"
            tags[kind.name] = tag
            task = valid_task(str(out), tag, tag)
            template = shared.Template(
                tag=tag,
                type="celery.task",
                body=task.body,
                content_type="application/json",
                headers=task.props["headers"],
            )
            try:
                shared.publish_kind(
                    channel, kind, template, exchange=route.exchange, routing_key=route.routing_key
                )
            except (pika.exceptions.AMQPChannelError, pika.exceptions.AMQPConnectionError) as exc:
                refused[kind.name] = f"{type(exc).__name__}: {exc}"
                if connection.is_closed:
                    connection = pika.BlockingConnection(pika.URLParameters(cv.admin_url))
                channel = connection.channel()
                channel.confirm_delivery()
    finally:
        if connection.is_open:
            connection.close()

    expected_total = len(tags) - len(refused)

    def settled() -> bool:
        ran = set(_tokens(out))
        return _queued(cv.admin_url, "reports.build.dlq") + len(ran) >= expected_total

    with contextlib.suppress(AssertionError):
        wait_for(settled, "", deadline=120)
    app = cv.app()
    app.send_task("consumers.tasks.record", (str(out), "final"), queue="reports.build")
    with contextlib.suppress(AssertionError):
        wait_for(lambda: "final" in set(_tokens(out)), "")

    dead = drain_dead_letters(cv.admin_url, "reports.build.dlq", prefix="s")
    ran = set(_tokens(out))
    lines, wrong = [], []
    for name, tag in tags.items():
        result = (
            "+".join(
                what
                for what, hit in (
                    ("refused", name in refused),
                    ("dead-lettered", tag in dead),
                    ("handled", tag in ran),
                )
                if hit
            )
            or "LOST"
        )
        expect = "handled" if name in SHARED_HANDLED else "dead-lettered"
        line = f"{name:42} {result:14} {refused.get(name) or dead.get(tag, '')}"
        lines.append(line)
        if result != expect and not (result == "refused" and name not in SHARED_HANDLED):
            wrong.append(f"{line} (expected {expect})")
    print(f"\nbus worker, {len(tags)} shared kinds (kind, result, detail):\n" + "\n".join(lines))
    assert not wrong, "kinds not ending as required:\n" + "\n".join(wrong)
    assert not [r for r in dead.values() if DUPLICATE in r], "dead-lettered twice"
    assert "final" in ran, worker.output[-3000:]
    assert worker.process is not None
    assert worker.process.poll() is None, worker.output[-3000:]
    for marker in ("Unrecoverable error", "Connection to broker lost"):
        assert marker not in worker.output, worker.output[-5000:]
    broker_log = _log_since(node, log_sizes)
    assert "rabbit_dead_letter" not in broker_log
