"""Publishing values AMQP cannot carry: refused before sending, same error in both publishers.

Issue 25 finding 8, against the real broker. Before: ``bus publish`` with a 300-byte routing key
or header name said "connection lost before the confirm ... may or may not have been
delivered", a 300-byte exchange name gave "internal error: ShortStringTooLong" (exit 1), and the
async Publisher truncated a 300-byte header name to 255 and sent it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pika
import pytest

from bus.errors import UnsendableMessageError
from bus.settings import BusSettings
from bus.topology import LoadedTopology
from producers import Publisher, SyncPublisher
from tests.support.plan import run_cli_as

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "topology.yaml"
LONG = "h" * 300
BODY = {"order_id": "o-1", "customer_id": "c-1", "total": 12}
# Each case: publish(exchange, routing_key, headers) arguments AMQP cannot carry.
CASES: dict[str, tuple[str, str, dict[str, Any] | None, str]] = {
    "routing-key": ("events", "order." + LONG, None, "routing key"),
    "header-name": ("events", "order.created", {LONG: "x"}, "header name"),
    "nested-header-name": ("events", "order.created", {"t": {LONG: 1}}, "header name in t"),
    "exchange-name": (LONG, "order.created", None, "exchange name"),
    "multibyte-key": ("events", "é" * 128, None, "is 256 bytes"),
    "int-out-of-range": ("events", "order.created", {"n": 2**64}, "does not fit 64 bits"),
    "unencodable-value": ("events", "order.created", {"o": object()}, "cannot be sent"),
}


def _depth(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


@pytest.fixture
def applied(bus_applied_vhost: str, bus_vhost_url: str) -> str:
    return bus_vhost_url


@pytest.mark.parametrize("case", sorted(CASES))
def test_sync_publisher_refuses_before_sending_and_stays_usable(
    case: str, applied: str, bus_topology: LoadedTopology
) -> None:
    exchange, key, headers, fragment = CASES[case]
    with SyncPublisher.connect(BusSettings(amqp_url=applied), bus_topology) as publisher:
        with pytest.raises(UnsendableMessageError, match="nothing was sent") as caught:
            publisher.publish(exchange, key, BODY, headers=headers)
        assert fragment in str(caught.value)
        assert _depth(applied, "billing.orders") == 0
        # The connection was never touched: the next valid publish is confirmed.
        publisher.publish("events", "order.created", BODY)
    assert _depth(applied, "billing.orders") == 1


@pytest.mark.parametrize("case", sorted(CASES))
async def test_async_publisher_refuses_before_sending_and_stays_usable(
    case: str, applied: str, bus_topology: LoadedTopology
) -> None:
    exchange, key, headers, fragment = CASES[case]
    async with Publisher.connect(BusSettings(amqp_url=applied), bus_topology) as publisher:
        with pytest.raises(UnsendableMessageError, match="nothing was sent") as caught:
            await publisher.publish(exchange, key, BODY, headers=headers)
        assert fragment in str(caught.value)
        assert _depth(applied, "billing.orders") == 0
        await publisher.publish("events", "order.created", BODY)
    assert _depth(applied, "billing.orders") == 1


def test_app_id_over_255_bytes_is_refused_by_both_publishers(applied: str) -> None:
    settings = BusSettings(amqp_url=applied)
    with pytest.raises(UnsendableMessageError, match="app_id"):
        SyncPublisher(settings, app_id=LONG)
    with pytest.raises(UnsendableMessageError, match="app_id"):
        Publisher(settings, app_id=LONG)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["-e", "events", "-k", "order." + LONG], "routing key"),
        # Keys no contract matches: the body is not checked against an inferred event.
        (["-e", "events", "-k", "hostile.test", "-H", f"{LONG}=x"], "header name"),
        (["-e", LONG, "-k", "hostile.test"], "exchange name"),
    ],
    ids=["routing-key", "header-name", "exchange-name"],
)
def test_bus_publish_exits_2_with_one_line_and_sends_nothing(
    extra: list[str],
    fragment: str,
    applied: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["publish", *extra, "--json", '{"order_id": "o"}']
    code, _, stderr = run_cli_as({"BUS_AMQP_URL": applied}, argv, monkeypatch, capsys)
    err = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("error: ")
    assert fragment in err[0]
    assert "nothing was sent" in err[0]
    assert "internal error" not in err[0]
    assert "may or may not" not in err[0]
    assert _depth(applied, "billing.orders") == 0
