"""``bus dlq`` against the real broker: dead letters made by the real consumer runtime.

The size is ``BUS_DLQ_N`` (default 300 so CI stays fast). The 10 000-message run:
``BUS_DLQ_N=10000 BUS_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ \
.venv/bin/pytest tests/integration/test_dlq.py -k replays_one_reason``.

Queue contents are read back with plain pika (``basic.get``), never with the code under test.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest

from bus.broker.management import ManagementClient
from bus.cli import main
from bus.dlq import Selection, list_dead_letters, show
from bus.dlq_replay import ReplayReport, replay
from bus.errors import UsageError
from bus.provision import BrokerControl
from bus.settings import BusSettings
from bus.topology import LoadedTopology
from consumers import Backoff, ConsumerApp, Message, RejectMessage
from producers.events import OrderCreated
from tests.support.consumer import (
    drain,
    load_declared,
    publish,
    queue_depth,
    wait_until,
)
from tests.support.topologies import order_topology

N = int(os.environ.get("BUS_DLQ_N", "300"))

TOPOLOGY = order_topology(
    """
    work.c:
      dead_letter: true
      bindings: [{exchange: events, routing_key: "work.c"}]
    work.q:
      type: quorum
      dead_letter: true
      bindings: [{exchange: events, routing_key: "work.q"}]
    """
)


class Boom(Exception):
    pass


class Declined(Exception):
    pass


def body(seq: int) -> str:
    return OrderCreated(order_id=f"o-{seq}", customer_id="c", total=seq).model_dump_json()


def seq_of(raw: bytes) -> int:
    return int(json.loads(raw)["order_id"][2:])


def failure_of(seq: int) -> str:
    """Which way message ``seq`` fails: four reasons / exception types."""
    return ("boom", "declined", "rejected", "json")[seq % 4]


@pytest.fixture
def topology(bus_vhost_url: str, tmp_path: Path) -> LoadedTopology:
    return load_declared(bus_vhost_url, tmp_path, TOPOLOGY)


async def dead_letter(
    queue: str, count: int, topology: LoadedTopology, settings: BusSettings, url: str
) -> None:
    """Publish ``count`` messages to ``queue`` and let the real runtime dead-letter each."""
    app = ConsumerApp("dlq-test", backoff=Backoff(base=0.05, cap=0.2), grace=5)

    @app.handler(queue, prefetch=50, concurrency=4)
    async def handle(event: OrderCreated, message: Message) -> None:
        kind = failure_of(int(event.total))
        if kind == "boom":
            raise Boom(f"boom {event.order_id}")
        if kind == "declined":
            raise Declined("card declined")
        raise RejectMessage("not for us")

    messages: list[dict[str, Any]] = []
    for seq in range(count):
        raw = body(seq) if failure_of(seq) != "json" else f'{{"order_id": "o-{seq}", '
        messages.append({"exchange": "events", "routing_key": queue, "body": raw,
                         "content_type": "application/json", "type": "order.created",
                         "correlation_id": f"corr-{seq}"})  # fmt: skip
    async with app.serve(settings, topology=topology, queues=[queue]):
        await publish(url, messages)
        await wait_until(lambda: queue_depth(url, f"{queue}.dlq")[0] >= count, 60 + count / 50)


def peek(url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Every message of ``queue`` in order, left in place: consumed unacked, then the channel
    is closed. (Not ``basic.get``: on a 3.10.8 quorum queue, messages taken by ``basic.get``
    come back in hash order when their channel closes; consumed ones come back in order.)"""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        depth = channel.queue_declare(queue, passive=True).method.message_count
        found: list[tuple[Any, bytes]] = []
        if depth:
            channel.basic_qos(prefetch_count=depth)
            tag = channel.basic_consume(
                queue, lambda _c, _m, props, raw: found.append((props, raw)), auto_ack=False
            )
            while len(found) < depth:
                connection.process_data_events(time_limit=0.1)
            channel.basic_cancel(tag)
        channel.close()
        return found
    finally:
        connection.close()


def reason_of(props: Any) -> str:
    return str((props.headers or {}).get("x-failure-reason"))


def check_moved(
    before: list[tuple[Any, bytes]], url: str, queue: str, report: ReplayReport, reason: str
) -> Counter[str]:
    """Every message is back in ``queue`` or still in the DLQ, once (duplicates only as
    reported), in the DLQ's order; returns the duplicate counts."""
    back = drain(url, queue)
    left = drain(url, f"{queue}.dlq")
    wanted = [p.message_id for p, _ in before if reason_of(p) == reason]
    stay = [p.message_id for p, _ in before if reason_of(p) != reason]
    back_ids = [p.message_id for _, p, _ in back]
    seen = Counter(back_ids)
    duplicates = Counter({mid: n - 1 for mid, n in seen.items() if n > 1})
    assert sum(duplicates.values()) <= report.possible_duplicates
    first = list(dict.fromkeys(back_ids))
    assert first == wanted
    left_ids = [p.message_id for _, p, _ in left]
    assert left_ids == stay
    assert report.replayed == len(wanted)
    assert report.left == len(stay)
    # The copy: same body and properties, failure headers reset, x-replayed added.
    originals = {p.message_id: (p, raw) for p, raw in before}
    for _, props, raw in back:
        old, old_raw = originals[props.message_id]
        assert raw == old_raw
        assert (props.correlation_id, props.type, props.timestamp, props.app_id) == (
            old.correlation_id, old.type, old.timestamp, old.app_id,
        )  # fmt: skip
        assert props.headers["x-replayed"] == 1
        # (x-delivery-count is not checked: a quorum queue adds its own on delivery.)
        assert not {"x-failure-reason", "x-failed-queue", "x-retry-count", "x-exception-type",
                    "x-exception-message", "x-death"} & set(props.headers)  # fmt: skip
    return duplicates


@pytest.mark.parametrize("queue", ["work.c", "work.q"])
async def test_replays_one_reason_and_leaves_the_rest_in_order(
    queue: str, topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    await dead_letter(queue, N, topology, settings, bus_vhost_url)
    dlq = f"{queue}.dlq"
    before = peek(bus_vhost_url, dlq)
    assert len(before) == N
    assert {reason_of(p) for p, _ in before} == {"handler", "rejected", "json"}

    # show and list read without consuming: same messages, same order afterwards.
    depth, shown = show(settings, dlq, Selection(exception_types=("Declined",)), count=5)
    assert depth == N
    assert [m.exception_type for m in shown] == [f"{__name__}.Declined"] * 5
    listed = {q.name: q for q in list_dead_letters(topology.expanded, settings)}
    assert listed[dlq].depth == N
    assert listed[dlq].reasons["handler"] == sum(1 for p, _ in before if reason_of(p) == "handler")
    assert listed[dlq].exception_types[f"{__name__}.Boom"] == sum(
        1 for p, _ in before if p.headers.get("x-exception-type") == f"{__name__}.Boom"
    )
    assert [p.message_id for p, _ in peek(bus_vhost_url, dlq)] == [p.message_id for p, _ in before]

    report = replay(settings, dlq, Selection(reasons=("handler",)), batch=100)
    assert report.ok, report.failures
    duplicates = check_moved(before, bus_vhost_url, queue, report, "handler")
    assert not duplicates
    print(f"\n{queue}: {report.summary()} in {report.seconds} s")


async def test_replay_survives_two_cut_connections(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str, bus_vhost: str,
    bus_rabbitmqctl: BrokerControl,
) -> None:
    queue = "work.q"
    await dead_letter(queue, N, topology, settings, bus_vhost_url)
    before = peek(bus_vhost_url, f"{queue}.dlq")
    cuts: list[int] = []
    selected = sum(1 for p, _ in before if reason_of(p) == "handler")

    def cut(report: ReplayReport) -> None:
        # After the first batch and once more past half: the pass holds confirmed copies
        # whose dead letters are not acked yet.
        due = (1, selected // 2)
        if len(cuts) < 2 and report.replayed >= due[len(cuts)]:
            cuts.append(report.replayed)
            bus_rabbitmqctl.ctl("-q", "close_all_connections", "-p", bus_vhost, "dlq test cut")

    report = replay(settings, f"{queue}.dlq", Selection(reasons=("handler",)), batch=20,
                    progress=cut)  # fmt: skip
    assert len(cuts) == 2
    assert report.reconnects >= 2
    assert report.ok, report.failures
    duplicates = check_moved(before, bus_vhost_url, queue, report, "handler")
    print(
        f"\ncut test: {report.summary()} in {report.seconds} s; duplicates found "
        f"{sum(duplicates.values())}"
    )


async def test_replay_to_a_deleted_queue_leaves_everything_and_fails(
    topology: LoadedTopology,
    settings: BusSettings,
    bus_vhost_url: str,
    bus_vhost: str,
    bus_management: ManagementClient,
    amqp_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue = "work.c"
    await dead_letter(queue, 20, topology, settings, bus_vhost_url)
    before = [p.message_id for p, _ in peek(bus_vhost_url, f"{queue}.dlq")]
    bus_management.delete_queue(bus_vhost, queue)
    monkeypatch.setenv("BUS_AMQP_URL", amqp_url)
    code = main(["dlq", "replay", f"{queue}.dlq", "--vhost", bus_vhost])
    out = capsys.readouterr().out
    assert code == 1
    assert "replayed 0" in out
    assert "failed 20" in out
    assert "NO_ROUTE" in out
    assert [p.message_id for p, _ in peek(bus_vhost_url, f"{queue}.dlq")] == before

    # list exits 4 while a DLQ holds messages; purge without --yes deletes nothing.
    path = Path(topology.file)
    assert main(["dlq", "list", "-f", str(path), "--vhost", bus_vhost]) == 4
    assert main(["dlq", "purge", f"{queue}.dlq", "--vhost", bus_vhost, "--reason", "json"]) == 0
    assert len(peek(bus_vhost_url, f"{queue}.dlq")) == 20
    assert main(["dlq", "purge", f"{queue}.dlq", "--vhost", bus_vhost, "--reason", "json",
                 "--yes"]) == 0  # fmt: skip
    remaining = peek(bus_vhost_url, f"{queue}.dlq")
    assert [p.message_id for p, _ in remaining] == [
        mid for mid in before if mid in {p.message_id for p, _ in remaining}
    ]
    assert len(remaining) == 15
    assert all(reason_of(p) != "json" for p, _ in remaining)


BROKER_TOPOLOGY = """\
version: 1
exchanges:
  parked: {type: fanout}
queues:
  own.q:
    type: quorum
    dead_letter_exchange: parked
  parked.q:
    type: quorum
    delivery_limit: 5
    bindings: [{exchange: parked}]
events:
  order.created:
    {exchange: "", routing_key: own.q, model: "producers.events:OrderCreated"}
"""


async def test_broker_dead_letters_go_back_to_their_x_death_queue_and_the_limit_guards(
    bus_vhost_url: str, tmp_path: Path, bus_management: ManagementClient, bus_vhost: str
) -> None:
    topology = load_declared(bus_vhost_url, tmp_path, BROKER_TOPOLOGY)
    settings = BusSettings(amqp_url=bus_vhost_url)
    app = ConsumerApp("dlq-test", backoff=Backoff(base=0.05, cap=0.2), grace=5)

    @app.handler("own.q")
    async def handle(event: OrderCreated, message: Message) -> None:
        raise RejectMessage("no")  # the queue has a DLX but no DLQ of ours: broker reject

    async with app.serve(settings, topology=topology):
        await publish(bus_vhost_url, [
            {"routing_key": "own.q", "body": body(i), "content_type": "application/json",
             "type": "order.created"} for i in range(6)
        ])  # fmt: skip
        await wait_until(lambda: queue_depth(bus_vhost_url, "parked.q")[0] >= 6)
    listed = {q.name: q for q in list_dead_letters(topology.expanded, settings)}
    assert listed["parked.q"].reasons == {"rejected": 6}

    # Quorum, delivery limit 5: list returned each once; a show costs the head two returns;
    # the second show refuses before the broker could drop anything.
    show(settings, "parked.q", management=bus_management)
    with pytest.raises(UsageError, match="delivery limit 5"):
        show(settings, "parked.q", management=bus_management)
    before = [p.message_id for p, _ in peek(bus_vhost_url, "parked.q")]
    assert len(before) == 6  # nothing dropped by the broker

    report = replay(settings, "parked.q")
    assert report.replayed == 6
    back = drain(bus_vhost_url, "own.q")
    assert [p.message_id for _, p, _ in back] == before
    assert all("x-death" not in p.headers for _, p, _ in back)
    assert queue_depth(bus_vhost_url, "parked.q")[0] == 0


async def test_replay_at_a_rate_survives_cuts_at_any_moment(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str, bus_vhost: str,
    bus_rabbitmqctl: BrokerControl,
) -> None:
    """Cuts from another thread land wherever the replay is (mid-batch with unconfirmed
    copies, or between batches): nothing is lost whatever the timing, and every duplicate
    is among the reported possible ones."""
    queue = "work.c"
    await dead_letter(queue, N, topology, settings, bus_vhost_url)
    before = peek(bus_vhost_url, f"{queue}.dlq")
    selected = sum(1 for p, _ in before if reason_of(p) == "handler")
    stop = threading.Event()

    def cutter() -> None:
        for share in (0.2, 0.6):
            while not stop.is_set() and queue_depth(bus_vhost_url, queue)[0] < selected * share:
                time.sleep(0.01)
            if stop.is_set():
                return
            bus_rabbitmqctl.ctl("-q", "close_all_connections", "-p", bus_vhost, "dlq test cut")

    thread = threading.Thread(target=cutter)
    thread.start()
    try:
        report = replay(settings, f"{queue}.dlq", Selection(reasons=("handler",)),
                        rate=selected / 2, batch=25)  # fmt: skip
    finally:
        stop.set()
        thread.join()
    assert report.ok, report.failures
    duplicates = check_moved(before, bus_vhost_url, queue, report, "handler")
    print(f"\nthreaded cuts: {report.summary()} in {report.seconds} s; duplicates found "
          f"{sum(duplicates.values())}")  # fmt: skip


def test_a_copy_to_a_missing_exchange_stays_and_the_rest_of_its_batch_goes_in_order(
    topology: LoadedTopology, settings: BusSettings, bus_vhost_url: str
) -> None:
    """--to-exchange where one message names an exchange that does not exist: the broker
    closes the publishing channel over it, so the copies written after it are not sent on
    that channel; they go in a later pass, in order, and only that message stays."""
    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    ids = []
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for seq in range(8):
            exchange = "gone" if seq == 3 else "events"
            ids.append(f"m-{seq}")
            headers = {
                "x-failed-queue": "work.c",
                "x-failure-reason": "handler",
                "x-original-exchange": exchange,
                "x-original-routing-key": "work.c",
            }
            channel.basic_publish("", "work.c.dlq", body(seq).encode(), pika.BasicProperties(
                message_id=f"m-{seq}", delivery_mode=2, headers=headers))  # fmt: skip
    finally:
        connection.close()
    report = replay(settings, "work.c.dlq", to_exchange=True, batch=8)
    assert report.replayed == 7
    assert report.failed == 1
    assert "gone" in next(iter(report.failures))
    back = [p.message_id for _, p, _ in drain(bus_vhost_url, "work.c")]
    # Copies written before the refused one may have lost their confirms with the channel:
    # sent again, they are the only duplicates, and reported.
    assert list(dict.fromkeys(back)) == [i for i in ids if i != "m-3"]
    assert len(back) - 7 <= report.possible_duplicates
    print(f"\nmissing exchange: {report.summary()}; copies {len(back)}")
    assert [p.message_id for _, p, _ in drain(bus_vhost_url, "work.c.dlq")] == ["m-3"]
