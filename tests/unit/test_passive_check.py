"""The one passive-check helper reads both synchronous clients' Queue.DeclareOk shapes."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace
from typing import Any

from bus.broker.live import QueueUsage
from bus.broker.passive import check_exchange, check_queue

DeclareOk = namedtuple("DeclareOk", "queue message_count consumer_count")


class _Channel:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls: list[tuple[Any, ...]] = []

    def queue_declare(self, name: str, passive: bool = False) -> Any:
        self.calls.append(("queue", name, passive))
        return self.result

    def exchange_declare(self, name: str, exchange_type: str, passive: bool = False) -> None:
        self.calls.append(("exchange", name, exchange_type, passive))


def test_pika_frame_and_py_amqp_tuple_give_the_same_counts() -> None:
    pika_like = SimpleNamespace(method=SimpleNamespace(message_count=3, consumer_count=1))
    assert check_queue(_Channel(pika_like), "q") == QueueUsage(messages=3, consumers=1)
    assert check_queue(_Channel(DeclareOk("q", 3, 1)), "q") == QueueUsage(messages=3, consumers=1)


def test_every_check_is_passive() -> None:
    channel = _Channel(DeclareOk("q", 0, 0))
    check_exchange(channel, "ev", "topic")
    check_queue(channel, "q")
    assert channel.calls == [("exchange", "ev", "topic", True), ("queue", "q", True)]
