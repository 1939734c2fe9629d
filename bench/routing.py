"""Routing simulator throughput: routes/s over 1,000 topic bindings (no broker).

Target: >= 200,000 routes/s on the 2-core development machine (keys repeat, as event types
do; the figure with every key new is printed too). For scale, the same keys are
also matched by a linear scan that tries every binding word by word (what a matcher without
a trie does); the ratio is printed.

    .venv/bin/python -m bench.routing [--bindings 1000] [--seconds 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import time

from bus.routing import Router
from bus.topology.expand import BindingSpec, ExchangeSpec, ExpandedTopology, QueueSpec

TARGET = 200_000
DOMAINS = [f"d{i}" for i in range(12)]
ENTITIES = [f"e{i}" for i in range(15)]
ACTIONS = ["created", "updated", "deleted", "paid", "shipped", "failed", "retried", "viewed"]


def patterns(count: int, rng: random.Random) -> list[str]:
    """Realistic topic patterns: mostly literal, some '*' and '#', a few catch-alls."""
    out: set[str] = set()
    while len(out) < count:
        words = [rng.choice(DOMAINS), rng.choice(ENTITIES), rng.choice(ACTIONS)]
        for i in range(3):
            roll = rng.random()
            if roll < 0.15:
                words[i] = "*"
            elif roll < 0.2:
                words[i] = "#"
        if rng.random() < 0.1:
            words.append(rng.choice(["v1", "v2", "*", "#"]))
        out.add(".".join(words))
    return sorted(out)


def topology(bindings: list[str], queues: int = 200) -> ExpandedTopology:
    return ExpandedTopology(
        vhost=None,
        exchanges={"events": ExchangeSpec("events", "topic")},
        queues={f"q{i}": QueueSpec(f"q{i}", "classic") for i in range(queues)},
        bindings=[
            BindingSpec("events", f"q{n % queues}", "queue", pattern)
            for n, pattern in enumerate(bindings)
        ],
        events={},
        policies={},
        unmanaged=[],
        failure={},
    )


def keys(count: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        words = [rng.choice(DOMAINS), rng.choice(ENTITIES), rng.choice(ACTIONS)]
        if rng.random() < 0.1:
            words.append(rng.choice(["v1", "v2", "v3"]))
        out.append(".".join(words))
    return out


def _matches(pattern: list[str], words: list[str]) -> bool:
    """Word-by-word topic match of one binding (what a matcher without a trie runs for
    every binding)."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_matches(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _matches(rest, words[1:])


def rate(seconds: float, step: object, sample: list[str]) -> tuple[float, int]:
    assert callable(step)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for key in sample:
            step(key)
        done += len(sample)
    return done / (time.perf_counter() - started), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bindings", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    bound = patterns(args.bindings, rng)
    sample = keys(10_000, rng)
    router = Router(topology(bound))

    split = [(p.split(".") if p else [], f"q{n % 200}") for n, p in enumerate(bound)]

    def scan(key: str) -> frozenset[str]:
        words = key.split(".") if key else []
        return frozenset(q for pattern, q in split if _matches(pattern, words))

    # The two matchers must agree, or the comparison means nothing.
    for key in sample[:2000]:
        if router.route("events", key).queues != scan(key):
            raise SystemExit(f"trie and scan disagree on {key!r}")
    hits = sum(1 for key in sample if router.route("events", key).queues) / len(sample)

    ours, routed = rate(args.seconds, lambda key: router.route("events", key), sample)
    # The router memoises per routing key; "cold" forgets before every route, i.e. every
    # key is new (the worst case, e.g. keys carrying ids).
    memo = router._exchanges["events"].cache

    def cold_route(key: str) -> object:
        memo.clear()
        return router.route("events", key)

    cold, _ = rate(min(args.seconds, 1.0), cold_route, sample)
    naive, _ = rate(min(args.seconds, 1.0), scan, sample[:500])
    verdict = "ok" if ours >= TARGET else "BELOW TARGET"
    print(f"topic bindings: {len(bound)}, keys: {len(sample)} ({hits:.0%} routed to a queue)")
    print(
        f"Router.route: {ours:,.0f} routes/s ({routed:,} routes; target >= {TARGET:,}: {verdict})"
    )
    print(f"Router.route, every key new (no memo): {cold:,.0f} routes/s")
    print(
        f"scan of every binding: {naive:,.0f} routes/s (trie without memo is {cold / naive:.0f}x)"
    )


if __name__ == "__main__":
    main()
