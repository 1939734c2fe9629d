"""Publisher behaviour on the real broker: one suite, run for the async and the sync publisher.

Messages are read back with plain pika (not our code) so the tests also prove that what we
publish is an ordinary AMQP message any client can read.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from bus.errors import (
    ContractError,
    MessageTooLargeError,
    NotFoundError,
    PublishNackedError,
    PublishTimeoutError,
    UnroutableError,
)
from bus.settings import BusSettings
from bus.topology import LoadedTopology, parse_topology
from producers import Outgoing, Publisher, PublishResult, SyncPublisher
from producers.events import CancelOrder, OrderCreated
from tests.faults.proxy import FaultProxy
from tests.support.amqp import declare_with_pika
from tests.support.publisher import TOPOLOGY, depth, drain

APP_ID = "publisher-tests"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Stray(BaseModel):
    """A model no contract names."""

    value: int


class Client:
    """The async or the sync publisher behind one awaitable interface."""

    def __init__(self, publisher: Publisher | SyncPublisher) -> None:
        self.publisher = publisher

    async def publish(self, *args: Any, **kwargs: Any) -> str:
        if isinstance(self.publisher, Publisher):
            return await self.publisher.publish(*args, **kwargs)
        return self.publisher.publish(*args, **kwargs)

    async def publish_many(
        self, items: Iterable[Outgoing | BaseModel], **options: Any
    ) -> list[PublishResult]:
        if isinstance(self.publisher, Publisher):
            return await self.publisher.publish_many(items, window=200, **options)
        return self.publisher.publish_many(items, window=200, **options)


OpenClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def proxy(bus_vhost_url: str) -> Iterator[FaultProxy]:
    """A proxy to the test broker (set up before the clients, so it outlives them)."""
    broker = urlsplit(bus_vhost_url)
    with FaultProxy(broker.hostname or "127.0.0.1", broker.port or 5672) as proxy:
        yield proxy


def through(proxy: FaultProxy, url: str) -> str:
    """``url`` with the proxy's address in place of the broker's."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}").geturl()


@pytest.fixture
def topology() -> LoadedTopology:
    return parse_topology(TOPOLOGY, "test-topology.yaml")


@pytest.fixture
def declared(bus_vhost_url: str, topology: LoadedTopology) -> str:
    declare_with_pika(bus_vhost_url, topology.expanded)
    return bus_vhost_url


@pytest.fixture(params=["async", "sync"])
async def open_client(
    request: pytest.FixtureRequest, bus_vhost_url: str, topology: LoadedTopology
) -> AsyncIterator[OpenClient]:
    opened: list[Publisher | SyncPublisher] = []

    async def open_(url: str | None = None, **options: Any) -> Client:
        """A publisher on the test vhost (through ``url`` when given), closed afterwards."""
        options.setdefault("app_id", APP_ID)
        settings = BusSettings(amqp_url=url or bus_vhost_url, connect_timeout=10)
        publisher: Publisher | SyncPublisher
        if request.param == "async":
            publisher = await Publisher.connect(settings, topology, **options)
        else:
            publisher = SyncPublisher.connect(settings, topology, **options)
        opened.append(publisher)
        return Client(publisher)

    yield open_
    for publisher in opened:
        if isinstance(publisher, Publisher):
            await publisher.close()
        else:
            publisher.close()


async def test_10k_pipelined_publishes_confirmed_and_read_by_plain_pika(
    declared: str, open_client: OpenClient
) -> None:
    client = await open_client()
    events = [
        OrderCreated(order_id=f"o-{i}", customer_id=f"c-{i % 7}", total=Decimal(i) / 100)
        for i in range(10_000)
    ]
    before = int(time.time())
    results = await client.publish_many(events)
    after = int(time.time())

    assert [r.error for r in results if not r.ok] == []
    ids = [r.message_id for r in results]
    assert len(set(ids)) == 10_000

    got = drain(declared, "orders.all", 10_000)
    assert len(got) == 10_000
    assert depth(declared, "orders.all") == 0
    by_id = {d.properties.message_id: d for d in got}
    assert set(by_id) == set(ids)
    for event, message_id in zip(events, ids, strict=True):
        delivery = by_id[message_id]
        props = delivery.properties
        assert delivery.routing_key == "order.created"
        assert props.content_type == "application/json"
        assert props.delivery_mode == 2
        assert props.type == "order.created"
        assert props.app_id == APP_ID
        assert str(uuid.UUID(props.message_id)) == props.message_id
        assert props.correlation_id == props.message_id
        assert before <= props.timestamp <= after
        assert json.loads(delivery.body)["order_id"] == event.order_id
        assert OrderCreated.model_validate_json(delivery.body) == event


async def test_unroutable_publish_raises(declared: str, open_client: OpenClient) -> None:
    client = await open_client()
    with pytest.raises(UnroutableError) as info:
        await client.publish("commands", "nobody.listens", {"x": 1})
    assert info.value.exchange == "commands"
    assert info.value.routing_key == "nobody.listens"
    assert "NO_ROUTE" in info.value.reply_text


async def test_missing_exchange_raises_and_next_publish_succeeds(
    declared: str, open_client: OpenClient
) -> None:
    client = await open_client()
    with pytest.raises(NotFoundError, match="ghost"):
        await client.publish("ghost", "k", {"x": 1})
    event = CancelOrder(order_id="o-1", reason="changed mind")
    await client.publish(event)
    got = drain(declared, "orders.commands", 1)
    assert [CancelOrder.model_validate_json(d.body) for d in got] == [event]


async def test_full_reject_publish_queue_nacks(declared: str, open_client: OpenClient) -> None:
    client = await open_client()
    await client.publish("limited", "tiny", {"n": 1})
    with pytest.raises(PublishNackedError):
        await client.publish("limited", "tiny", {"n": 2})
    assert [json.loads(d.body) for d in drain(declared, "tiny", 1)] == [{"n": 1}]
    # The nack closed nothing: the same publisher goes on.
    await client.publish("limited", "tiny", {"n": 3})
    assert [json.loads(d.body) for d in drain(declared, "tiny", 1)] == [{"n": 3}]


async def test_unknown_model_is_refused_before_sending(
    declared: str, open_client: OpenClient
) -> None:
    client = await open_client()
    with pytest.raises(ContractError, match="Stray"):
        await client.publish(Stray(value=1))
    with pytest.raises(ContractError):
        await client.publish(Stray(value=2), event_name="order.created")
    await client.publish(OrderCreated(order_id="o-9", customer_id="c", total=Decimal("1.50")))
    got = drain(declared, "orders.all", 2, idle=1.0)
    assert [json.loads(d.body)["order_id"] for d in got] == ["o-9"]
    assert depth(declared, "orders.commands") == 0


async def test_oversize_refused_and_connection_still_works(
    declared: str, open_client: OpenClient
) -> None:
    client = await open_client(max_message_size=1024)
    with pytest.raises(MessageTooLargeError, match="1025 bytes"):
        await client.publish("commands", "order.cancel", b"x" * 1025)
    await client.publish("commands", "order.cancel", b"y" * 1024)
    got = drain(declared, "orders.commands", 1)
    assert [d.body for d in got] == [b"y" * 1024]


async def test_startup_check_names_missing_exchanges(
    bus_vhost_url: str, open_client: OpenClient
) -> None:
    # Nothing declared: every exchange of the contracts is missing, and the extra one too.
    with pytest.raises(NotFoundError) as info:
        await open_client(exchanges=["audit-extra"])
    message = str(info.value)
    for name in ("audit-extra", "commands", "events"):
        assert repr(name) in message
    assert "limited" not in message  # no contract publishes there and it was not asked for


async def test_startup_check_passes_with_declared_exchanges(
    declared: str, open_client: OpenClient
) -> None:
    await open_client(exchanges=["limited"])
    with pytest.raises(NotFoundError, match="nope"):
        await open_client(exchanges=["limited", "nope"])


async def test_traceparent_and_caller_headers_pass_through(
    declared: str, open_client: OpenClient
) -> None:
    client = await open_client()
    message_id = await client.publish(
        OrderCreated(order_id="o-t", customer_id="c", total=Decimal(3)),
        traceparent=TRACEPARENT,
        headers={"tenant": "acme"},
        correlation_id="conversation-7",
    )
    (delivery,) = drain(declared, "orders.all", 1)
    assert delivery.properties.message_id == message_id
    assert delivery.properties.correlation_id == "conversation-7"
    headers = delivery.properties.headers
    assert headers["traceparent"] == TRACEPARENT
    assert headers["tenant"] == "acme"


async def test_deadline_shorter_than_a_round_trip_times_out_then_recovers(
    declared: str, open_client: OpenClient
) -> None:
    client = await open_client()
    # No broker confirms within a nanosecond: the deadline path, not the broker, decides.
    with pytest.raises(PublishTimeoutError, match="no confirm within"):
        await client.publish("commands", "order.cancel", {"n": 1}, confirm_timeout=1e-9)
    await client.publish("commands", "order.cancel", {"n": 2})
    bodies = [json.loads(d.body) for d in drain(declared, "orders.commands", 2, idle=1.0)]
    # The timed-out message may or may not have arrived; the next one always does.
    assert bodies[-1] == {"n": 2}
    assert bodies[:-1] in ([], [{"n": 1}])


async def test_publish_many_reports_every_outcome_in_order(
    declared: str, open_client: OpenClient
) -> None:
    client = await open_client()
    results = await client.publish_many(
        [
            CancelOrder(order_id="a"),
            Outgoing("commands", "nobody.listens", {"x": 1}),
            Stray(value=3),
            Outgoing("commands", "order.cancel", {"order_id": "b"}, event_type="order.cancel"),
        ]
    )
    assert [type(r.error) for r in results] == [
        type(None),
        UnroutableError,
        ContractError,
        type(None),
    ]
    got = drain(declared, "orders.commands", 2)
    assert [json.loads(d.body)["order_id"] for d in got] == ["a", "b"]
    assert [d.properties.type for d in got] == ["order.cancel", "order.cancel"]


async def test_publish_many_nacks_only_what_a_full_queue_refused(
    declared: str, open_client: OpenClient
) -> None:
    client = await open_client()
    results = await client.publish_many([Outgoing("limited", "tiny", {"n": n}) for n in range(6)])
    # max_length 1, reject-publish: the broker takes the first and nacks the rest, in order.
    assert [type(r.error) for r in results] == [type(None)] + [PublishNackedError] * 5
    assert [json.loads(d.body) for d in drain(declared, "tiny", 6, idle=1.0)] == [{"n": 0}]


async def test_publish_many_with_one_message_id_keeps_each_outcome(
    declared: str, open_client: OpenClient
) -> None:
    # A return is matched to its publish by message_id: the unroutable one must fail and
    # the routed ones around it must be confirmed, not the other way round.
    client = await open_client()
    results = await client.publish_many(
        [
            Outgoing("commands", "order.cancel", {"order_id": "a"}, message_id="same"),
            Outgoing("commands", "nobody.listens", {"order_id": "b"}, message_id="same"),
            Outgoing("commands", "order.cancel", {"order_id": "c"}, message_id="same"),
        ]
    )
    assert [type(r.error) for r in results] == [type(None), UnroutableError, type(None)]
    got = drain(declared, "orders.commands", 3, idle=1.0)
    assert [json.loads(d.body)["order_id"] for d in got] == ["a", "c"]


async def test_publish_many_deadline_times_out_then_recovers(
    proxy: FaultProxy, declared: str, open_client: OpenClient
) -> None:
    client = await open_client(url=through(proxy, declared))
    # The publishing channel is open before the link goes dark: only confirms are missing.
    assert (await client.publish_many([CancelOrder(order_id="before")]))[0].ok
    assert [json.loads(d.body)["order_id"] for d in drain(declared, "orders.commands", 1)] == [
        "before"
    ]
    items = [Outgoing("commands", "order.cancel", {"order_id": f"t{n}"}) for n in range(20)]
    # The proxy holds every byte back: no confirm can arrive within the deadline, however
    # loaded the machine is, so the deadline path decides for all of them.
    proxy.blackhole()
    try:
        results = await client.publish_many(items, confirm_timeout=0.2)
    finally:
        proxy.heal()
    assert results
    assert all(isinstance(r.error, PublishTimeoutError) for r in results)
    assert all("no confirm within" in str(r.error) for r in results)
    after = await client.publish_many([CancelOrder(order_id="after")])
    assert after[0].ok
    got = [json.loads(d.body)["order_id"] for d in drain(declared, "orders.commands", 21, idle=1.0)]
    assert got[-1] == "after"
    assert got[:-1] == [f"t{n}" for n in range(20) if f"t{n}" in got]  # order kept


async def test_publish_many_sends_again_what_followed_a_refused_message(
    declared: str, open_client: OpenClient
) -> None:
    items = [Outgoing("commands", "order.cancel", {"order_id": f"o{n}"}) for n in range(60)]
    items.insert(30, Outgoing("ghost", "k", {"x": 1}))
    client = await open_client()
    results = await client.publish_many(items)
    after = await client.publish_many([CancelOrder(order_id="after")])
    assert after[0].ok
    refused = results[30].error
    assert isinstance(refused, NotFoundError)
    assert "ghost" in str(refused)
    # Written after the refused one, the broker discarded them: sent again and confirmed.
    assert [r.error for r in results[31:]] == [None] * 30
    # Written before it: routed, but the closed channel never confirmed them.
    assert all(r.ok or "may or may not" in str(r.error) for r in results[:30])
    got = [json.loads(d.body)["order_id"] for d in drain(declared, "orders.commands", 62)]
    order = [f"o{n}" for n in range(60)] + ["after"]
    assert got == [o for o in order if o in got]  # in order, none twice
    names = [*order[:30], "ghost", *order[30:60]]
    confirmed = {names[i] for i, r in enumerate(results) if r.ok}
    assert confirmed | {"after"} <= set(got)
