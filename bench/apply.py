"""Apply a 1,000-object topology to a fresh vhost; time the apply and a no-op plan.

Targets (2-core machine, local broker): apply <= 5 s, no-op plan <= 1 s. The apply time
includes its own plan before and its verifying re-plan after the changes.

    .venv/bin/python -m bench.apply [suite options]   # = python -m bench --only apply
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bus.broker import apply, plan
from bus.settings import BusSettings
from bus.topology import ExpandedTopology, parse_topology

APPLY_TARGET_S = 5.0
PLAN_TARGET_S = 1.0
TYPES = ("topic", "direct", "fanout", "headers")


def queue_binding(kind: str, exchange: str, n: int) -> str:
    """The binding of generated queue number ``n`` to ``exchange`` of type ``kind``."""
    if kind == "headers":
        return f"{{exchange: {exchange}, arguments: {{x-match: any, k{n}: {n}, tag: t{n}}}}}"
    if kind == "fanout":
        return f"{{exchange: {exchange}}}"
    return f'{{exchange: {exchange}, routing_key: "key.{n}.#"}}'


def topology_text(exchanges: int = 50, queues: int = 460, quorum_every: int = 46) -> str:
    """``exchanges`` + ``queues`` + one binding per queue + e2e bindings = 1,000 objects."""
    lines = ["version: 1", "exchanges:"]
    for i in range(exchanges):
        lines.append(f"  bx{i}: {{type: {TYPES[i % 4]}}}")
    lines.append("queues:")
    for n in range(queues):
        i = n % exchanges
        kind = TYPES[i % 4]
        fields = ["type: quorum"] if quorum_every and n % quorum_every == 0 else []
        if n % 3 == 0:
            fields.append(f"message_ttl: {1000 + n}")
        fields.append(f"bindings: [{queue_binding(kind, f'bx{i}', n)}]")
        lines.append(f"  bq{n}: {{{', '.join(fields)}}}")
    lines.append("exchange_bindings:")
    remaining = 1000 - exchanges - 2 * queues
    for k in range(remaining):
        src, dst = k % exchanges, (k * 7 + 1) % exchanges
        if src == dst:
            dst = (dst + 1) % exchanges
        lines.append(f'  - {{source: bx{src}, destination: bx{dst}, routing_key: "e2e.{k}"}}')
    return "\n".join(lines) + "\n"


def count(x: ExpandedTopology) -> int:
    return len(x.exchanges) + len(x.queues) + len(x.bindings)


def apply_and_plan() -> dict[str, Any]:
    """Apply the 1,000-object topology to a vhost of its own, then time a no-op plan."""
    from bench._harness import bench_vhost

    topology = parse_topology(topology_text(), "bench-topology.yaml")
    objects = count(topology.expanded)
    with bench_vhost("apply") as url:
        settings = BusSettings(amqp_url=url)
        started = time.perf_counter()
        result = apply(topology, settings)
        apply_s = time.perf_counter() - started
        started = time.perf_counter()
        noop = plan(topology, settings)
        plan_s = time.perf_counter() - started
    if result.created != objects or noop.has_changes or noop.conflicts:
        raise SystemExit(f"bench did not converge: {result.summary()} / {noop.summary()}")
    return {"objects": objects, "apply_s": apply_s, "plan_s": plan_s}


if __name__ == "__main__":
    from bench.suite import main

    sys.exit(main(["--only", "apply", *sys.argv[1:]]))
