"""Consumer runtime logic that needs no broker: failure rules, ack batching, handler signatures,
decoding, the idempotency store and the optional Prometheus dependency."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import pytest
from pydantic import BaseModel

from bus.contracts import ContractRegistry
from bus.errors import UsageError
from bus.settings import BusSettings
from bus.topology import FailurePolicy, RetryStep, load_topology
from consumers import ConsumerApp, MemoryIdempotencyStore, Message, PrometheusMetrics, Runtime
from consumers.decode import Decoder, InvalidMessageError
from consumers.handlers import HandlerOptions, inspect_handler
from consumers.policy import Backoff, DeadLetter, Drop, Reject, Requeue, Retry, decide
from consumers.settle import ChannelSession
from producers.events import OrderCreated, OrderPaid

LADDER = (RetryStep(1, 1000, "q.retry.1s"), RetryStep(2, 5000, "q.retry.5s"))
BACKOFF = Backoff(base=1.0, cap=8.0, max_requeues=6)


def rule(policy: FailurePolicy, **kw: Any) -> Any:
    kw.setdefault("retry_count", 0)
    kw.setdefault("delivery_count", None)
    kw.setdefault("permanent", False)
    return decide(policy, backoff=BACKOFF, **kw)


class TestFailureRules:
    full = FailurePolicy("q.dlx", "q.dlq", LADDER, delivery_limit=5)

    def test_ladder_steps_in_order_then_dead_letter(self) -> None:
        assert rule(self.full, retry_count=0) == Retry(LADDER[0])
        assert rule(self.full, retry_count=1) == Retry(LADDER[1])
        assert rule(self.full, retry_count=2) == DeadLetter("q.dlx")
        assert rule(self.full, retry_count=7) == DeadLetter("q.dlx")

    def test_permanent_failures_skip_the_ladder(self) -> None:
        assert rule(self.full, permanent=True) == DeadLetter("q.dlx")

    def test_dlq_without_ladder_dead_letters_at_once(self) -> None:
        assert rule(FailurePolicy("q.dlx", "q.dlq")) == DeadLetter("q.dlx")

    def test_own_dlx_without_dlq_is_a_reject(self) -> None:
        policy = FailurePolicy("parked", None, LADDER)
        assert rule(policy, retry_count=2) == Reject("parked")
        assert rule(policy, permanent=True) == Reject("parked")

    def test_no_dlx_requeues_with_growing_capped_backoff(self) -> None:
        policy = FailurePolicy(None, None)
        delays = [rule(policy, attempts=n).delay for n in range(6)]
        assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        assert isinstance(rule(policy, attempts=6), Drop)
        assert isinstance(rule(policy, attempts=10_000), Drop)

    def test_no_dlx_drops_a_permanent_failure_at_once(self) -> None:
        # Requeuing a payload that can never be handled starves the valid messages behind it.
        assert isinstance(rule(FailurePolicy(None, None), permanent=True), Drop)
        assert isinstance(rule(FailurePolicy(None, None, LADDER), permanent=True), Drop)

    def test_no_dlx_bound_counts_the_brokers_deliveries_on_quorum(self) -> None:
        policy = FailurePolicy(None, None, delivery_limit=100)
        assert rule(policy, delivery_count=5, attempts=0) == Requeue(8.0, final=False)
        assert isinstance(rule(policy, delivery_count=6, attempts=0), Drop)

    def test_quorum_delivery_limit_marks_the_final_delivery(self) -> None:
        policy = FailurePolicy(None, None, delivery_limit=2)
        assert rule(policy, delivery_count=1) == Requeue(2.0, final=False)
        assert rule(policy, delivery_count=2) == Requeue(4.0, final=True)
        # The broker's count wins over the process's own requeue count.
        assert rule(policy, delivery_count=0, attempts=5) == Requeue(1.0, final=False)

    def test_shipped_topology_policies(self) -> None:
        failure = load_topology("topology.yaml").expanded.failure
        assert rule(failure["billing.orders"], retry_count=0).step.queue == (
            "billing.orders.retry.1s"
        )
        assert rule(failure["billing.orders"], retry_count=2) == DeadLetter("billing.orders.dlx")
        assert rule(failure["orders.commands"]) == DeadLetter("orders.commands.dlx")
        assert isinstance(rule(failure["analytics.all"]), Requeue)


class FakeChannel:
    """Records the settle frames a session writes."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        self.is_closed = False

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("nack", tag, requeue))

    async def basic_reject(self, tag: int, *, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("reject", tag, requeue))


def session() -> tuple[ChannelSession, FakeChannel]:
    channel = FakeChannel()
    return ChannelSession(channel, "q"), channel  # type: ignore[arg-type]


class TestAckBatching:
    async def test_in_order_completions_become_one_multiple_ack(self) -> None:
        s, ch = session()
        for tag in (1, 2, 3):
            s.track(tag)
            s.done(tag)
        await s.flush()
        assert ch.frames == [("ack", 3, True)]
        assert s.unsettled == 0

    async def test_a_running_delivery_is_never_covered(self) -> None:
        s, ch = session()
        for tag in (1, 2, 3, 4):
            s.track(tag)
        s.done(1)
        s.done(3)
        s.done(4)
        await s.flush()
        assert ch.frames == [("ack", 1, True), ("ack", 3, False), ("ack", 4, False)]
        s.done(2)
        await s.flush()
        assert ch.frames[-1] == ("ack", 2, True)
        assert s.unsettled == 0

    async def test_nack_is_written_before_a_multiple_ack_passes_it(self) -> None:
        s, ch = session()
        for tag in (1, 2, 3):
            s.track(tag)
        s.done(1)
        assert await s.nack(2, requeue=True)
        s.done(3)
        await s.flush()
        assert ch.frames == [("nack", 2, True), ("ack", 3, True)]

    async def test_dead_channel_sends_nothing(self) -> None:
        s, ch = session()
        s.track(1)
        s.track(2)
        s.done(1)
        ch.is_closed = True
        await s.flush()
        assert not await s.nack(2, requeue=True)
        assert ch.frames == []
        assert s.dropped == 2


class TestHandlerSignatures:
    def test_model_union_and_message(self) -> None:
        async def h(event: OrderCreated | OrderPaid, message: Message) -> None: ...

        spec = inspect_handler("q", h, HandlerOptions())
        assert spec.wants_model
        assert spec.wants_message
        assert spec.accepted == (OrderCreated, OrderPaid)

    def test_base_model_accepts_everything(self) -> None:
        async def h(event: BaseModel) -> None: ...

        assert inspect_handler("q", h, HandlerOptions()).accepted is None

    def test_raw_by_annotation_or_flag(self) -> None:
        async def by_annotation(message: Message) -> None: ...

        async def by_flag(m) -> None:  # type: ignore[no-untyped-def]
            ...

        assert not inspect_handler("q", by_annotation, HandlerOptions()).wants_model
        assert not inspect_handler("q", by_flag, HandlerOptions(raw=True)).wants_model

    @pytest.mark.parametrize(
        ("source", "error"),
        [
            ("def h(event: OrderCreated) -> None: ...", "async function"),
            ("async def h(event: int) -> None: ...", "pydantic model"),
            ("async def h(a: OrderCreated, b: int) -> None: ...", "annotated Message"),
            ("async def h() -> None: ...", "positional parameters"),
        ],
    )
    def test_unusable_handlers_are_refused(self, source: str, error: str) -> None:
        namespace: dict[str, Any] = {"OrderCreated": OrderCreated}
        exec(source, namespace)
        with pytest.raises(TypeError, match=error):
            inspect_handler("q", namespace["h"], HandlerOptions())

    def test_options_are_checked(self) -> None:
        with pytest.raises(ValueError, match="concurrency"):
            HandlerOptions(prefetch=10, concurrency=11)
        with pytest.raises(ValueError, match="prefetch"):
            HandlerOptions(prefetch=0)


class TestDecode:
    decoder = Decoder(ContractRegistry(load_topology("topology.yaml").expanded.events))
    body = OrderCreated(order_id="o", customer_id="c", total=1).model_dump_json().encode()

    def reason(self, *args: Any) -> str:
        with pytest.raises(InvalidMessageError) as caught:
            self.decoder.decode(*args)
        return caught.value.reason

    def test_valid(self) -> None:
        event = self.decoder.decode(
            "application/json; charset=utf-8", "order.created", self.body, None
        )
        assert event == OrderCreated(order_id="o", customer_id="c", total=1)

    def test_reasons(self) -> None:
        assert self.reason("text/plain", "order.created", self.body, None) == "content-type"
        assert self.reason(None, "order.created", self.body, None) == "content-type"
        assert self.reason("application/json", None, self.body, None) == "unknown-type"
        assert self.reason("application/json", "nope", self.body, None) == "unknown-type"
        assert self.reason("application/json", "order.created", b"{x", None) == "json"
        assert self.reason("application/json", "order.created", json.dumps({}).encode(), None) == (
            "schema"
        )
        assert self.reason("application/json", "order.created", self.body, (OrderPaid,)) == (
            "not-accepted"
        )


async def test_memory_idempotency_store_is_bounded_lru() -> None:
    store = MemoryIdempotencyStore(max_size=2)
    await store.remember("a")
    await store.remember("b")
    assert await store.seen("a")  # refreshes a
    await store.remember("c")  # evicts b, the least recently used
    assert [await store.seen(k) for k in ("a", "b", "c")] == [True, False, True]
    assert len(store) == 2


def test_prometheus_metrics_without_the_package_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(UsageError, match=r"amqp-bus\[prometheus\]"):
        PrometheusMetrics()


@pytest.mark.skipif(
    importlib.util.find_spec("prometheus_client") is None, reason="prometheus-client not installed"
)
def test_prometheus_metrics_count_per_queue() -> None:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    metrics.consumed("q")
    metrics.acked("q", 3)
    metrics.dead_lettered("q", "schema")
    metrics.dropped("q", "undecodable")
    metrics.handler_seconds("q", 0.01)
    value = registry.get_sample_value
    assert value("bus_consumer_messages_consumed_total", {"queue": "q"}) == 1
    assert value("bus_consumer_messages_acked_total", {"queue": "q"}) == 3
    assert (
        value("bus_consumer_messages_dead_lettered_total", {"queue": "q", "reason": "schema"}) == 1
    )
    assert (
        value("bus_consumer_messages_dropped_total", {"queue": "q", "reason": "undecodable"}) == 1
    )
    assert value("bus_consumer_handler_seconds_count", {"queue": "q"}) == 1


@pytest.mark.parametrize(
    ("app", "error"),
    [
        ("consumers.demo", "MODULE:APP"),
        ("consumers.nope:app", "cannot import consumer app"),
        ("consumers.demo:recorder", "not a consumers.ConsumerApp"),
    ],
)
def test_bus_consume_refuses_a_bad_app_with_one_error_line(
    app: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bus.cli import main

    assert main(["consume", "--app", app]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert error in err
    assert len(err.strip().splitlines()) == 1


class TestAppSelection:
    """What a run consumes is checked before any connection is made."""

    def app_with(self, *queues: str) -> ConsumerApp:
        app = ConsumerApp("t")
        for queue in queues:

            @app.handler(queue)
            async def handle(message: Message) -> None: ...

        return app

    def test_celery_queues_are_refused(self) -> None:
        topology = load_topology("topology.yaml")
        with pytest.raises(UsageError, match="served by Celery"):
            Runtime(self.app_with("email.send"), BusSettings(), topology, None)

    def test_generated_and_unknown_queues_are_refused(self) -> None:
        for queue in ("billing.orders.dlq", "no.such.queue"):
            with pytest.raises(UsageError, match="is not a queue of the topology"):
                Runtime(self.app_with(queue), BusSettings(), load_topology("topology.yaml"), None)

    def test_selected_queue_needs_a_handler(self) -> None:
        app = self.app_with("audit.log")
        with pytest.raises(UsageError, match=r"no handler for queue 'cache\.web'"):
            Runtime(app, BusSettings(), load_topology("topology.yaml"), ["cache.web"])
        runtime = Runtime(app, BusSettings(), load_topology("topology.yaml"), ["audit.log"])
        assert [c.queue for c in runtime.consumers] == ["audit.log"]

    def test_one_handler_per_queue(self) -> None:
        with pytest.raises(ValueError, match="already has a handler"):
            self.app_with("audit.log", "audit.log")

    def test_demo_app_serves_every_non_celery_queue_of_the_topology(self) -> None:
        from consumers.demo import app

        topology = load_topology("topology.yaml")
        wanted = {
            name
            for name, queue in topology.expanded.queues.items()
            if queue.role == "queue" and queue.celery_routing_key is None
        }
        assert set(app.handlers) == wanted
        Runtime(app, BusSettings(), topology, None)
