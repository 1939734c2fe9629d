"""Sample events of the demo domain through the direct, topic, fanout and headers exchanges.

``python -m producers.demo`` publishes them to ``$BUS_AMQP_URL`` using ``$BUS_TOPOLOGY``
(default ./topology.yaml), which must have been applied (``bus apply``): producers never
declare topology. ``bus demo`` calls :func:`publish_demo` with a publisher of its own.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, ValidationError

from bus.errors import BusError
from bus.settings import BusSettings
from bus.topology import LoadedTopology, load_topology
from producers.events import CacheInvalidated, CancelOrder, EmailRequested, OrderCreated, OrderPaid
from producers.publisher import Publisher

__all__ = ["DemoPublication", "main", "publish_demo", "run_demo", "sample_events"]


@dataclass(frozen=True)
class DemoPublication:
    """One confirmed demo message and where it went in."""

    event: str
    exchange: str
    exchange_type: str
    routing_key: str
    message_id: str

    def describe(self) -> str:
        key = f" key {self.routing_key!r}" if self.exchange_type != "fanout" else ""
        return (
            f"{self.event}: {self.exchange_type} exchange {self.exchange!r}{key} "
            f"(message_id {self.message_id})"
        )


def sample_events() -> list[BaseModel]:
    """One event per exchange type of the shipped topology (topic twice: two keys)."""
    return [
        OrderCreated(order_id="demo-1001", customer_id="cust-42", total=Decimal("59.90")),
        OrderPaid(order_id="demo-1001", amount=Decimal("59.90")),
        CancelOrder(order_id="demo-1002", reason="customer request"),
        CacheInvalidated(key="product:1001"),
        EmailRequested(to="cust-42@example.com", subject="Your order demo-1001"),
    ]


async def publish_demo(
    publisher: Publisher, topology: LoadedTopology, events: list[BaseModel] | None = None
) -> list[DemoPublication]:
    """Publish the sample events (confirmed, routed) and say where each went in."""
    published: list[DemoPublication] = []
    for event in sample_events() if events is None else events:
        contract = publisher.resolver.contract_for(event)
        message_id = await publisher.publish(event)
        exchange = topology.expanded.exchanges.get(contract.exchange)
        published.append(
            DemoPublication(
                event=contract.name,
                exchange=contract.exchange,
                exchange_type=exchange.type if exchange is not None else "unknown",
                routing_key=contract.routing_key,
                message_id=message_id,
            )
        )
    return published


async def run_demo(settings: BusSettings, topology: LoadedTopology) -> list[DemoPublication]:
    """Connect, check the exchanges, publish the samples, close."""
    async with Publisher.connect(settings, topology, app_id="amqp-bus-demo") as publisher:
        return await publish_demo(publisher, topology)


def main() -> int:
    try:
        settings = BusSettings()
        topology = load_topology(settings.topology)
        for publication in asyncio.run(run_demo(settings, topology)):
            print(publication.describe())
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    except BusError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
