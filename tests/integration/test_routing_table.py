"""The unit tables of ``tests/unit/test_routing.py`` replayed on the real broker.

The unit tests check the simulator against those tables; this module proves every row of the
tables on RabbitMQ itself, so an expected value can never be the simulator's own opinion.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from bus.broker.management import ManagementClient
from bus.topology import parse_topology
from bus.versions import RabbitVersion, broker_version
from tests.support.amqp import declare_with_pika
from tests.support.routing_tables import SCENARIOS, TOPIC_CASES, headers_cases

pytestmark = pytest.mark.integration


@pytest.fixture
def version(bus_management: ManagementClient) -> RabbitVersion:
    """The version of the broker under test: the tables' answers for it are expected."""
    return broker_version(bus_management.overview())


@pytest.fixture
def channel(bus_vhost_url: str) -> Iterator[BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(bus_vhost_url))
    try:
        ch = connection.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        connection.close()


def _drain(ch: BlockingChannel, queue: str) -> list[str]:
    """Message ids in ``queue``; the publishes were confirmed, so they are all there."""
    ids = []
    while True:
        method, properties, _ = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return ids
        ids.append(properties.message_id)


def _get_settled(ch: BlockingChannel, queue: str) -> Any:
    """basic_get that also sees a copy the queue dead-lettered to itself.

    A queue handles our reject (a cast), then our get (a call), in order; a copy it
    dead-letters to itself is a new message behind that get. A second get comes after it.
    (A passive declare is no barrier: the queue answers ``stat`` calls with priority.)
    """
    got = ch.basic_get(queue, auto_ack=True)
    return got if got[0] is not None else ch.basic_get(queue, auto_ack=True)


def test_topic_table_on_the_broker(channel: BlockingChannel) -> None:
    channel.exchange_declare("t", "topic", auto_delete=False)
    patterns = list(dict.fromkeys(p for p, _, _ in TOPIC_CASES))
    for n, pattern in enumerate(patterns):
        channel.queue_declare(f"p{n}")
        channel.queue_bind(f"p{n}", "t", pattern)
    keys = list(dict.fromkeys(k for _, k, _ in TOPIC_CASES))
    for n, key in enumerate(keys):
        channel.basic_publish("t", key, b"", pika.BasicProperties(message_id=str(n)))
    delivered = {
        (pattern, keys[int(mid)])
        for n, pattern in enumerate(patterns)
        for mid in _drain(channel, f"p{n}")
    }
    wrong = [
        (pattern, key, expected)
        for pattern, key, expected in TOPIC_CASES
        if ((pattern, key) in delivered) is not expected
    ]
    assert wrong == [], "rows of TOPIC_CASES the broker disagrees with"


def test_headers_table_on_the_broker(channel: BlockingChannel, version: RabbitVersion) -> None:
    wrong = []
    for n, (arguments, headers, expected) in enumerate(headers_cases(version.rules)):
        channel.exchange_declare(f"h{n}", "headers")
        channel.queue_declare(f"h{n}")
        channel.queue_bind(f"h{n}", f"h{n}", "", arguments)
        channel.basic_publish(f"h{n}", "", b"", pika.BasicProperties(headers=headers))
        got = channel.basic_get(f"h{n}", auto_ack=True)[0] is not None
        if got is not expected:
            wrong.append((arguments, headers, expected))
    assert wrong == [], f"rows of the headers tables RabbitMQ {version} disagrees with"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_on_the_broker(name: str, bus_vhost_url: str, channel: BlockingChannel) -> None:
    text, publishes = SCENARIOS[name]
    topology = parse_topology(textwrap.dedent(text), "t.yaml").expanded
    declare_with_pika(bus_vhost_url, topology)
    wrong: list[tuple[str, str, dict[str, Any] | None, set[str], set[str]]] = []
    for exchange, key, headers, expected in publishes:
        mid = uuid.uuid4().hex
        channel.basic_publish(
            exchange, key, b"", pika.BasicProperties(message_id=mid, headers=headers)
        )
        got = {q for q in topology.queues if mid in _drain(channel, q)}
        if got != expected:
            wrong.append((exchange, key, headers, expected, got))
    assert wrong == [], "publishes of the scenario the broker routes differently"


def test_internal_exchange_refuses_publishes_on_the_broker(channel: BlockingChannel) -> None:
    channel.exchange_declare("inner", "fanout", internal=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
        channel.basic_publish("inner", "", b"")
    assert caught.value.reply_code == 403
    assert "cannot publish to internal exchange" in caught.value.reply_text


def test_cc_header_of_the_wrong_type_is_refused_on_the_broker(channel: BlockingChannel) -> None:
    channel.exchange_declare("d", "direct")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
        channel.basic_publish("d", "k", b"", pika.BasicProperties(headers={"CC": "k2"}))
    assert caught.value.reply_code == 406
    assert "unacceptable_type_in_header" in caught.value.reply_text


def test_dead_letter_cycles_on_the_broker(bus_vhost_url: str, channel: BlockingChannel) -> None:
    """``loop`` dead-letters to the default exchange with the original key, i.e. to itself:
    a reject comes back, an expiry is dropped by the broker's cycle detection."""
    from tests.support.routing_tables import DEAD_LETTER

    declare_with_pika(bus_vhost_url, parse_topology(DEAD_LETTER, "t.yaml").expanded)
    channel.basic_publish("events", "loop", b"", pika.BasicProperties(message_id="r"))
    method, _, _ = channel.basic_get("loop")
    assert method is not None
    channel.basic_reject(method.delivery_tag, requeue=False)
    method, properties, _ = _get_settled(channel, "loop")
    assert method is not None
    assert properties.headers["x-first-death-reason"] == "rejected"

    channel.basic_publish("events", "loop", b"", pika.BasicProperties(expiration="0"))
    assert _get_settled(channel, "loop")[0] is None
    # The same expiry does dead-letter where there is no cycle (so the drop above is the
    # cycle rule, not an expiry that never dead-letters). Expired messages dead-letter only
    # from the head of the queue, so the earlier copies in keyed must go first.
    channel.queue_purge("keyed")
    channel.basic_publish("events", "order.x", b"", pika.BasicProperties(expiration="0"))
    for queue in ("work", "keyed"):
        _get_settled(channel, queue)  # both have handled the expiry: the copies are sent
    assert channel.basic_get("work.dlq", auto_ack=True)[0] is not None
    assert channel.basic_get("parked", auto_ack=True)[0] is not None


def test_dead_letter_headers_on_the_broker(
    bus_vhost_url: str, channel: BlockingChannel, version: RabbitVersion
) -> None:
    """The death headers of a rejected copy (names and values, ``x-death`` aside) are the
    simulator's for the broker's version (4.0 adds ``x-last-death-*``), and so is what a
    headers exchange routing the copy sees of them (4.0 does not show it ``x-death``)."""
    from bus.routing import Router

    text = """
    version: 1
    exchanges: {ev: {type: topic}, dlx: {type: fanout}, hx: {type: headers}}
    queues:
      work: {dead_letter_exchange: dlx, bindings: [{exchange: ev, routing_key: "a.#"}]}
      work.h: {dead_letter_exchange: hx, bindings: [{exchange: ev, routing_key: "h.#"}]}
      dlq: {bindings: [{exchange: dlx}]}
      on.x-death:
        bindings: [{exchange: hx, arguments: {x-match: any-with-x, x-death: null}}]
      on.last:
        bindings: [{exchange: hx, arguments: {x-match: all-with-x, x-last-death-reason: rejected}}]
      on.first:
        bindings:
          - {exchange: hx, arguments: {x-match: all-with-x, x-first-death-reason: rejected}}
    """
    topology = parse_topology(textwrap.dedent(text), "t.yaml").expanded
    declare_with_pika(bus_vhost_url, topology)
    router = Router(topology, rabbitmq=version)
    headers = {"CC": ["a.c"], "k": 1}
    channel.basic_publish("ev", "a.b", b"", pika.BasicProperties(headers=headers))
    channel.basic_publish("ev", "h.b", b"", pika.BasicProperties(message_id="h"))
    for queue in ("work", "work.h"):
        method, _, _ = channel.basic_get(queue)
        assert method is not None
        channel.basic_reject(method.delivery_tag, requeue=False)
    method, properties, _ = _get_settled(channel, "dlq")
    assert method is not None
    route = router.route("ev", "a.b", headers, on="reject")
    simulated = route.dead_letters["work"].headers

    def deaths(table: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in table.items() if k.startswith(("x-first-death", "x-last-death"))}

    assert deaths(properties.headers) == deaths(simulated)
    assert route.dead_letter_queues == {"dlq"}
    # work.h handles the reject before this get, so its copies are sent by then.
    assert channel.basic_get("work.h")[0] is None
    landed = {q for q in ("on.x-death", "on.last", "on.first") if "h" in _drain(channel, q)}
    assert landed == router.route("ev", "h.b", on="reject").dead_letter_queues
