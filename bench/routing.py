"""Routing simulator throughput: routes/s over 1,000 topic bindings (no broker).

Target: >= 200,000 routes/s on the 2-core development machine (keys repeat, as event types
do; the figure with every key new is printed too: "cold" forgets the per-key memo before
each route, while the trie's word transitions, built as words are met, stay, as they do
for keys that carry ids among known words). For scale, the same keys are
also matched by a linear scan that tries every binding word by word (what a matcher without
a trie does); the ratio is printed.

    .venv/bin/python -m bench.routing [suite options]   # = python -m bench --only routing
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

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


def route(bindings: int, seconds: float, seed: int) -> dict[str, Any]:
    """Routes/s of the router (memoised, and with every key new) and of a linear scan."""
    rng = random.Random(seed)
    bound = patterns(bindings, rng)
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

    ours, _ = rate(seconds, lambda key: router.route("events", key), sample)
    # The router memoises per routing key; "cold" forgets before every route, i.e. every
    # key is new (the worst case, e.g. keys carrying ids).
    memo = router._exchanges["events"].cache

    def cold_route(key: str) -> object:
        memo.clear()
        return router.route("events", key)

    cold, _ = rate(min(seconds, 1.0), cold_route, sample)
    naive, _ = rate(min(seconds, 1.0), scan, sample[:500])
    return {
        "bindings": len(bound),
        "routed_share": hits,
        "routes_s": ours,
        "cold_routes_s": cold,
        "scan_routes_s": naive,
    }


if __name__ == "__main__":
    from bench.suite import main

    sys.exit(main(["--only", "routing", *sys.argv[1:]]))
