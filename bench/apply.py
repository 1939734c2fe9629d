"""Apply a 1,000-object topology to a fresh vhost; time the apply and a no-op plan.

Targets (2-core machine, local broker): apply <= 5 s, no-op plan <= 1 s. The apply time
includes its own plan before and its verifying re-plan after the changes.

    .venv/bin/python -m bench.apply [--amqp-url URL] [--management-url URL] [--keep]
"""

from __future__ import annotations

import argparse
import time
import uuid

from bus.broker import apply, plan
from bus.broker.management import ManagementClient
from bus.settings import BusSettings, with_vhost
from bus.topology import ExpandedTopology, parse_topology

APPLY_TARGET_S = 5.0
PLAN_TARGET_S = 1.0
TYPES = ("topic", "direct", "fanout", "headers")


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
        if kind == "headers":
            binding = f"{{exchange: bx{i}, arguments: {{x-match: any, k: {n}}}}}"
        elif kind == "fanout":
            binding = f"{{exchange: bx{i}}}"
        else:
            binding = f'{{exchange: bx{i}, routing_key: "key.{n}.#"}}'
        fields.append(f"bindings: [{binding}]")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", default=None, help="default: $BUS_AMQP_URL or local guest")
    parser.add_argument("--management-url", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the bench vhost")
    args = parser.parse_args()
    base = BusSettings()
    amqp_url = args.amqp_url or base.amqp_url
    vhost = f"bus-bench-{uuid.uuid4().hex[:8]}"
    settings = BusSettings(
        amqp_url=with_vhost(amqp_url, vhost),
        management_url=args.management_url or base.management_url,
    )
    topology = parse_topology(topology_text(), "bench-topology.yaml")
    objects = count(topology.expanded)
    with ManagementClient.from_settings(settings) as management:
        management.create_vhost(vhost, description="amqp-bus bench (safe to delete)")
        management.set_permissions(vhost, settings.credentials()[0])
        try:
            started = time.perf_counter()
            result = apply(topology, settings)
            apply_s = time.perf_counter() - started
            started = time.perf_counter()
            noop = plan(topology, settings)
            plan_s = time.perf_counter() - started
        finally:
            if not args.keep:
                management.delete_vhost(vhost)
    if result.created != objects or noop.has_changes or noop.conflicts:
        raise SystemExit(f"bench did not converge: {result.summary()} / {noop.summary()}")
    quorum = sum(1 for q in topology.expanded.queues.values() if q.type == "quorum")
    print(
        f"objects: {objects} ({len(topology.expanded.exchanges)} exchanges, "
        f"{len(topology.expanded.queues)} queues of which {quorum} quorum, "
        f"{len(topology.expanded.bindings)} bindings)"
    )
    print(f"apply (plan + {objects} changes + verifying re-plan): {apply_s:.2f} s "
          f"(target <= {APPLY_TARGET_S:.0f} s)")  # fmt: skip
    print(f"no-op plan: {plan_s:.2f} s (target <= {PLAN_TARGET_S:.0f} s)")


if __name__ == "__main__":
    main()
