"""Coalesced acks (consumers.settle): by count or a short timer, never over unfinished work.

A fake channel plays the broker's side of the rules: a ``multiple`` ack settles every unsettled
tag up to it, and each of those must be finished (handler returned, or its copy confirmed) at
the moment the frame is written; a nacked or rejected tag is settled once and never again.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.settle import ChannelSession


class Broker:
    """Applies settle frames as RabbitMQ does and checks them against the handlers' state."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        self.is_closed = False
        self.unsettled: set[int] = set()
        self.finished: set[int] = set()
        self.block: asyncio.Event | None = None

    def delivered(self, tag: int) -> None:
        self.unsettled.add(tag)

    def _settle(self, tag: int) -> None:
        assert tag in self.unsettled, f"tag {tag} settled twice (or never delivered)"
        self.unsettled.discard(tag)

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.block is not None:
            await self.block.wait()
        self.frames.append(("ack", tag, multiple))
        covered = sorted(t for t in self.unsettled if t <= tag) if multiple else [tag]
        for t in covered:
            assert t in self.finished, f"ack {tag} (multiple={multiple}) covers unfinished {t}"
            self._settle(t)

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("nack", tag, requeue))
        self._settle(tag)

    async def basic_reject(self, tag: int, *, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("reject", tag, requeue))
        self._settle(tag)


def session(delay: float = 0.002) -> tuple[ChannelSession, Broker]:
    broker = Broker()
    return ChannelSession(broker, "q", ack_delay=delay), broker  # type: ignore[arg-type]


def deliver(s: ChannelSession, broker: Broker, *tags: int) -> None:
    for tag in tags:
        broker.delivered(tag)
        s.track(tag)


def finish(s: ChannelSession, broker: Broker, tag: int) -> None:
    broker.finished.add(tag)
    s.done(tag)


async def test_the_timer_sends_one_multiple_ack_after_the_delay() -> None:
    s, broker = session(delay=0.01)
    deliver(s, broker, 1, 2, 3)
    for tag in (1, 2, 3):
        finish(s, broker, tag)
        s.flush_later()
    await asyncio.sleep(0)
    assert broker.frames == []  # not yet: more may finish within the delay
    await asyncio.sleep(0.05)
    assert broker.frames == [("ack", 3, True)]
    assert s.unsettled == 0


def one_finished(delay: float) -> tuple[ChannelSession, Broker]:
    """A session whose one delivery finished and whose timer is armed."""
    s, broker = session(delay)
    deliver(s, broker, 1)
    finish(s, broker, 1)
    s.flush_later()
    return s, broker


async def test_a_flush_cancels_the_timer() -> None:
    s, broker = one_finished(delay=0.01)
    await s.flush()
    await asyncio.sleep(0.03)
    assert broker.frames == [("ack", 1, True)]


async def test_flush_later_without_finished_work_arms_nothing() -> None:
    s, broker = session(delay=0.001)
    deliver(s, broker, 1)
    s.flush_later()
    await asyncio.sleep(0.01)
    assert broker.frames == []


async def test_a_flush_waits_for_the_one_under_way() -> None:
    # A graceful stop flushes and then closes the channel: when its flush returns, the acks of
    # a timer's flush that was still writing must be out too, and in order.
    s, broker = session(delay=0.001)
    deliver(s, broker, 1, 2)
    finish(s, broker, 1)
    broker.block = asyncio.Event()
    s.flush_later()
    await asyncio.sleep(0.01)  # the timer's flush is now blocked writing ack 1
    finish(s, broker, 2)
    stop = asyncio.create_task(s.flush())
    await asyncio.sleep(0.01)
    assert not stop.done()
    broker.block.set()
    await stop
    assert broker.frames == [("ack", 1, True), ("ack", 2, True)]
    assert s.unsettled == 0


async def test_a_timer_on_a_closed_channel_sends_nothing() -> None:
    s, broker = one_finished(delay=0.001)
    broker.is_closed = True
    await asyncio.sleep(0.01)
    assert broker.frames == []
    assert s.dropped == 1


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    failing=st.sets(st.integers(1, 40), max_size=10),
    flush_every=st.integers(1, 8),
)
def test_out_of_order_completions_never_ack_unfinished_or_nacked_work(
    count: int, seed: int, failing: set[int], flush_every: int
) -> None:
    """Handlers finish in any order (concurrency > 1), some fail (nack/reject), flushes and
    timers come at any point: every multiple-ack covers finished deliveries only, every tag is
    settled exactly once, and after the last flush nothing is left."""

    async def scenario() -> None:
        rng = random.Random(seed)
        s, broker = session(delay=0.0005)
        tags = list(range(1, count + 1))
        deliver(s, broker, *tags)
        rng.shuffle(tags)
        for step, tag in enumerate(tags, 1):
            if tag in failing:
                assert await s.nack(tag, requeue=rng.random() < 0.5)
            else:
                finish(s, broker, tag)
            if step % flush_every == 0:
                await s.flush()
            elif rng.random() < 0.3:
                s.flush_later()
                await asyncio.sleep(rng.choice((0, 0.001)))
        await s.flush()
        assert broker.unsettled == set()
        assert s.unsettled == 0
        acks = [f for f in broker.frames if f[0] == "ack"]
        assert len(acks) <= count - len(failing & set(range(1, count + 1)))

    asyncio.run(scenario())


@pytest.mark.parametrize("batch", [1, 25])
async def test_a_running_delivery_keeps_later_ones_out_of_every_multiple_ack(batch: int) -> None:
    s, broker = session()
    deliver(s, broker, *range(1, 31))
    for tag in range(2, 31):  # tag 1's handler is still running
        finish(s, broker, tag)
        if s.pending_acks >= batch:
            await s.flush()
    await s.flush()
    assert all(not multiple for _, _, multiple in broker.frames)
    assert broker.unsettled == {1}
    finish(s, broker, 1)
    await s.flush()
    assert broker.frames[-1] == ("ack", 1, True)
    assert broker.unsettled == set()

