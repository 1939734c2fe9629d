"""The benchmark suite: amqp-bus against raw aio-pika and raw pika, in the same run.

Every case runs in a fresh process, the cases of a round in a shuffled order, for ``--rounds``
rounds (>= 3 for figures worth quoting). Tables give the median and [min-max] over rounds;
ratios ours/raw are paired within a round (both cases ran under the same load), then the median
is taken. Absolute figures describe the machine and its load at the time; the ratios are
what to compare.

    .venv/bin/python -m bench [--rounds 3] [--only publish,consume/p100] [--json FILE]
    .venv/bin/python -m bench --quick --only publish/w100      # a smoke run
    .venv/bin/python -m bench --only memory                    # 1,000,000 publishes, RSS
    .venv/bin/python -m bench --list                           # the case ids

Groups: publish (window 1, 100, 1000), consume (prefetch 1, 100, 1000), latency (1k, 2k,
3k msg/s), celery, apply, routing, outbox (PostgreSQL), processes (consume and publish with 1,
2, 4 processes); memory only when selected with ``--only``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import java_client, outbox, processes
from bench._harness import BODY, CaseFailed, Spread, bench_vhost, paired_ratios, run_in_process
from bench.report import LABELS, render

__all__ = ["LABELS", "Case", "Group", "catalogue", "groups", "main", "parse", "render", "select",
           "summarise"]  # fmt: skip


# Same loop and the product's loop choice, side by side (see the README's Performance notes).
ASYNC_RATIOS = (
    ("ours", "raw-aio-pika"),
    ("ours-uvloop", "raw-aio-pika"),
    ("ours-uvloop", "raw-aio-pika-uvloop"),
)


@dataclass(frozen=True)
class Case:
    group: str
    variant: str
    impl: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    broker: bool = True  # needs the suite's vhost (``url`` is added to the params)

    @property
    def id(self) -> str:
        return f"{self.group}/{self.variant}/{self.impl}"


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    metric: str  # the figure tables and ratios use
    unit: str
    columns: tuple[str, ...] = ()  # metrics shown one row per case; () = variants x impls
    ratios: tuple[tuple[str, str], ...] = ()  # (ours impl, raw impl)
    lower_is_better: bool = False
    digits: int = 0


def groups(opts: argparse.Namespace) -> dict[str, Group]:
    message = (
        f"{len(BODY)}-byte JSON, persistent, confirms, mandatory, durable classic queue "
        "via the default exchange"
    )
    publisher_ratios = [(f"ours-x{opts.publishers}", "ours")] if opts.publishers > 1 else []
    return {
        g.name: g
        for g in (
            Group(
                "publish",
                f"confirmed publish, msg/s ({message}; {opts.seconds:g} s per case; "
                "raw pika waits for each confirm, its API has no pipelined confirms; ours sync "
                "pipelines them on pika)",
                "msg_s",
                "msg/s",
                ratios=(
                    *ASYNC_RATIOS,
                    ("ours-sync", "raw-pika"),
                    ("ours-sync", "raw-aio-pika"),
                    ("ours", "java"),
                    ("ours-sync", "java"),
                    ("ours", "java-ours"),
                    ("ours-sync", "java-ours"),
                    ("ours-traced", "ours"),
                    *publisher_ratios,
                ),
            ),
            Group(
                "consume",
                f"consume with manual ack, msg/s ({opts.messages:,} pre-filled persistent "
                f"{len(BODY)}-byte JSON messages, one consumer; ours decodes and validates "
                "every message with pydantic)",
                "msg_s",
                "msg/s",
                ratios=(
                    *ASYNC_RATIOS,
                    ("ours", "raw-pika"),
                    ("ours", "java"),
                    ("ours-traced", "ours"),
                ),
            ),
            Group(
                "latency",
                f"end-to-end latency, ms (publisher and consumer in separate processes, fixed "
                f"rate, {opts.latency_seconds:g} s, first second dropped; receive time - "
                "scheduled send time; topic exchange, classic queue, prefetch 100, window 1000)",
                "p99",
                "ms",
                columns=("p50", "p99", "max", "publisher_lag_max_ms"),
                ratios=(("ours", "raw-aio-pika"), ("ours-uvloop", "raw-aio-pika")),
                lower_is_better=True,
                digits=2,
            ),
            Group(
                "celery",
                f"Celery worker, tasks/s ({opts.celery_tasks:,} noop tasks, acks_late, "
                f"{opts.celery_pool} x2)",
                "tasks_s",
                "tasks/s",
                ratios=(("ours", "plain"), ("ours-p1", "plain")),
            ),
            Group(
                "apply",
                "bus apply of a 1,000-object topology to a fresh vhost, then a no-op plan, s "
                "(targets 5 s / 1 s)",
                "apply_s",
                "s",
                columns=("apply_s", "plan_s"),
                lower_is_better=True,
                digits=2,
            ),
            Group(
                "routing",
                "routing simulator, routes/s over topic bindings, no broker (target 200k)",
                "routes_s",
                "routes/s",
                columns=("routes_s", "cold_routes_s", "scan_routes_s"),
            ),
            Group(
                "memory",
                f"RSS of our Publisher over {opts.memory_messages:,} pipelined confirmed "
                f"publishes (window 1000), MiB, sampled every {opts.memory_every:,}",
                "rss_peak_mib",
                "MiB",
                columns=("rss_start_mib", "rss_peak_mib", "rss_end_mib", "rss_growth_mib", "msg_s"),
                lower_is_better=True,
                digits=1,
            ),
            outbox.group(opts),
            processes.group(opts),
        )
    }


def catalogue(opts: argparse.Namespace) -> list[Case]:
    """Every case of the suite with the options applied (selection comes later)."""
    cases: list[Case] = []
    uv = [] if opts.no_uvloop else ["uvloop"]
    # The Java client baseline where javac and Debian's jars exist (main() says when not).
    java = not opts.no_java and java_client.available() is None

    def impls(group: str, variant: str, target: str, params: dict[str, Any]) -> None:
        module = f"bench.{group}"
        for impl, loop in [("raw-aio-pika", "asyncio"), ("ours", "asyncio")] + [
            (f"ours-{x}", x) for x in uv
        ]:
            name = "raw_aio_pika" if impl.startswith("raw") else "ours"
            cases.append(Case(group, variant, impl, f"{module}:{name}", {**params, "loop": loop}))
        if target and uv:
            cases.append(
                Case(group, variant, "raw-aio-pika-uvloop", f"{module}:raw_aio_pika",
                     {**params, "loop": "uvloop"})
            )  # fmt: skip

    for window in opts.windows:
        params = {"seconds": opts.seconds, "window": window}
        impls("publish", f"w{window}", "uv" if window == max(opts.windows) else "", params)
        if window == 1:
            # pika's BlockingChannel waits for each confirm: it has no pipelined variant.
            cases.append(Case("publish", "w1", "raw-pika", "bench.publish:raw_pika", params))
        cases.append(Case("publish", f"w{window}", "ours-sync", "bench.publish:ours_sync", params))
        if java:
            cases.append(Case("publish", f"w{window}", "java", "bench.java_client:publish", params))
        if java and window == max(opts.windows):
            cases.append(
                Case("publish", f"w{window}", "java-ours", "bench.java_client:publish",
                     {**params, "properties": "ours"})
            )  # fmt: skip
        if window == max(opts.windows):
            cases.append(
                Case("publish", f"w{window}", "ours-traced", "bench.publish:ours",
                     {**params, "loop": "asyncio", "traced": True})
            )  # fmt: skip
        if opts.publishers > 1 and window == max(opts.windows):
            cases.append(
                Case("publish", f"w{window}", f"ours-x{opts.publishers}", "bench.publish:ours",
                     {**params, "loop": "asyncio", "publishers": opts.publishers})
            )  # fmt: skip
    for prefetch in opts.prefetches:
        params = {"messages": opts.messages, "prefetch": prefetch}
        impls("consume", f"p{prefetch}", "uv" if prefetch == 100 else "", params)
        cases.append(Case("consume", f"p{prefetch}", "raw-pika", "bench.consume:raw_pika", params))
        if prefetch == 100:
            cases.append(
                Case("consume", "p100", "ours-traced", "bench.consume:ours",
                     {**params, "loop": "asyncio", "traced": True})
            )  # fmt: skip
        if java:
            cases.append(
                Case("consume", f"p{prefetch}", "java", "bench.java_client:consume", params)
            )
    for rate in opts.rates:
        for impl, loop in [("raw-aio-pika", "asyncio"), ("ours", "asyncio")] + [
            (f"ours-{x}", x) for x in uv
        ]:
            cases.append(
                Case("latency", str(rate), impl, "bench.latency:run",
                     {"impl": "raw" if impl.startswith("raw") else "ours", "rate": rate,
                      "seconds": opts.latency_seconds, "loop": loop})
            )  # fmt: skip
    for impl in ("ours", "ours-p1", "plain"):
        cases.append(
            Case("celery", opts.celery_pool, impl, "bench.celery:worker",
                 {"case": impl.replace("-", "_"), "tasks": opts.celery_tasks,
                  "pool": opts.celery_pool})
        )  # fmt: skip
    cases.append(Case("apply", "1000", "ours", "bench.apply:apply_and_plan", broker=False))
    cases.append(
        Case("routing", str(opts.bindings), "ours", "bench.routing:route",
             {"bindings": opts.bindings, "seconds": opts.routing_seconds, "seed": 1},
             broker=False)
    )  # fmt: skip
    cases.append(
        Case("memory", str(opts.memory_messages), "ours", "bench.memory:ours",
             {"messages": opts.memory_messages, "every": opts.memory_every, "window": 1000,
              "loop": "asyncio"})
    )  # fmt: skip
    cases.extend(outbox.cases(opts))
    cases.extend(processes.cases(opts))
    return cases


def select(cases: Sequence[Case], only: Sequence[str]) -> list[Case]:
    """Cases whose id equals or starts with (at a ``/``) one of ``only``; memory only if named."""
    if not only:
        return [c for c in cases if c.group != "memory"]

    def wanted(case: Case) -> bool:
        return any(case.id == o or case.id.startswith(o.rstrip("/") + "/") for o in only)

    return [c for c in cases if wanted(c)]


# -- running ---------------------------------------------------------------------------------
Results = dict[str, list[dict[str, Any] | None]]  # case id -> one result per round


def run_rounds(
    cases: Sequence[Case],
    rounds: int,
    url: str | None,
    *,
    runner: Callable[[str, dict[str, Any]], dict[str, Any]] = run_in_process,
    shuffle: Callable[[list[Case]], None] = random.shuffle,
    log: Callable[[str], None] = print,
) -> tuple[Results, list[str]]:
    results: Results = {c.id: [] for c in cases}
    failures: list[str] = []
    for number in range(1, rounds + 1):
        order = list(cases)
        shuffle(order)
        for case in order:
            params = dict(case.params)
            if case.broker:
                params["url"] = url
            started = time.perf_counter()
            try:
                result = runner(case.target, params)
            except CaseFailed as exc:
                failures.append(f"round {number} {case.id}: {exc}")
                log(f"round {number} {case.id}: FAILED\n{exc}")
                results[case.id].append(None)
                continue
            shown = ", ".join(f"{k} {v:,.2f}" for k, v in result.items() if isinstance(v, float))
            log(f"round {number} {case.id}: {shown} ({time.perf_counter() - started:.0f} s)")
            results[case.id].append(result)
    return results, failures


def metric_values(results: Results, case_id: str, metric: str) -> list[float | None]:
    return [None if r is None else r.get(metric) for r in results.get(case_id, [])]


def summarise(
    cases: Sequence[Case], results: Results, group_specs: dict[str, Group]
) -> dict[str, Any]:
    """Spreads per case and metric, and paired ratios per group variant."""
    summary: dict[str, Any] = {"cases": {}, "ratios": []}
    for case in cases:
        group = group_specs[case.group]
        metrics = group.columns or (group.metric,)
        rows = [r for r in results.get(case.id, []) if r is not None]
        summary["cases"][case.id] = {
            "group": case.group,
            "variant": case.variant,
            "impl": case.impl,
            "params": case.params,
            "rounds": results.get(case.id, []),
            "spread": {
                m: Spread.of([r[m] for r in rows if m in r]).as_dict()
                for m in metrics
                if any(m in r for r in rows)
            },
        }
    variants = dict.fromkeys((c.group, c.variant) for c in cases)
    for group_name, variant in variants:
        group = group_specs[group_name]
        per_round = {
            c.impl: metric_values(results, c.id, group.metric)
            for c in cases
            if (c.group, c.variant) == (group_name, variant)
        }
        for ours, raw in group.ratios:
            values = paired_ratios(per_round, ours, raw)
            if values:
                spread = Spread.of(values)
                summary["ratios"].append(
                    {"group": group_name, "variant": variant, "metric": group.metric,
                     "ours": ours, "raw": raw, "values": values, **spread.as_dict()}
                )  # fmt: skip
    return summary


# -- command line ----------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run, 1 round")
    parser.add_argument("--only", default="", help="comma-separated case id prefixes")
    parser.add_argument("--list", action="store_true", help="print the case ids and exit")
    parser.add_argument("--json", metavar="FILE", help="write every result and ratio as JSON")
    parser.add_argument("--seed", type=int, default=None, help="seed of the shuffled order")
    parser.add_argument("--no-uvloop", action="store_true", help="skip the uvloop variants")
    parser.add_argument("--no-java", action="store_true", help="skip the Java client baseline")
    parser.add_argument("--seconds", type=float, default=None, help="per publish case (5)")
    parser.add_argument("--windows", type=_ints, default=[1, 100, 1000])
    parser.add_argument(
        "--publishers", type=int, default=1,
        help="add an ours-xN publish case: N publishers (connections) in one process",
    )  # fmt: skip
    parser.add_argument("--messages", type=int, default=None, help="per consume case (30000)")
    parser.add_argument("--prefetches", type=_ints, default=[1, 100, 1000])
    parser.add_argument("--process-counts", type=_ints, default=None, help="(1,2,4)")
    parser.add_argument("--rates", type=_ints, default=None, help="latency (1000,2000,3000)")
    parser.add_argument("--latency-seconds", type=float, default=None, help="(10)")
    parser.add_argument("--celery-tasks", type=int, default=None, help="(5000)")
    parser.add_argument("--celery-pool", choices=["prefork", "threads"], default="prefork")
    parser.add_argument("--bindings", type=int, default=1000, help="routing (1000)")
    parser.add_argument("--routing-seconds", type=float, default=None, help="(3)")
    parser.add_argument("--memory-messages", type=int, default=None, help="(1000000)")
    parser.add_argument("--memory-every", type=int, default=None, help="RSS sample (100000)")
    opts = parser.parse_args(argv)
    quick = opts.quick
    defaults: dict[str, tuple[Any, Any]] = {
        "rounds": (3, 1),
        "seconds": (5.0, 1.0),
        "messages": (30_000, 2_000),
        "rates": ([1000, 2000, 3000], [1000]),
        "process_counts": ([1, 2, 4], [1, 2]),
        "latency_seconds": (10.0, 2.0),
        "celery_tasks": (5000, 300),
        "routing_seconds": (3.0, 0.3),
        "memory_messages": (1_000_000, 20_000),
        "memory_every": (100_000, 10_000),
    }
    for name, (full, short) in defaults.items():
        if getattr(opts, name) is None:
            setattr(opts, name, short if quick else full)
    opts.only = [o for o in opts.only.split(",") if o]
    return opts


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in load],
    }


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(argv)
    group_specs = groups(opts)
    cases = select(catalogue(opts), opts.only)
    if opts.list or not cases:
        for case in catalogue(opts):
            print(case.id)
        return 0 if opts.list else 2
    rng = random.Random(opts.seed)
    started = time.time()
    before = machine()
    print(
        f"{len(cases)} cases x {opts.rounds} rounds, fresh process per case, shuffled order; "
        f"load average {before['loadavg']} on {before['cpus']} CPUs",
        flush=True,
    )

    def log(line: str) -> None:
        print(line, flush=True)

    missing_java = None if opts.no_java else java_client.available()
    if missing_java and any(c.group in ("publish", "consume") for c in cases):
        log(missing_java)

    if any(c.broker for c in cases):
        with bench_vhost("suite") as url:
            results, failures = run_rounds(cases, opts.rounds, url, shuffle=rng.shuffle, log=log)
    else:
        results, failures = run_rounds(cases, opts.rounds, None, shuffle=rng.shuffle, log=log)
    summary = summarise(cases, results, group_specs)
    after = machine()
    print(
        f"\n`python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}`: "
        f"{opts.rounds} interleaved rounds in {time.time() - started:.0f} s; "
        f"Python {after['python']}, {after['cpus']} CPUs, load average before "
        f"{before['loadavg']} after {after['loadavg']}"
    )
    for line in render(cases, summary, group_specs):
        print(line)
    if failures:
        print(f"\n{len(failures)} case run(s) failed (see above)")
    if opts.json:
        document = {
            "machine": {"before": before, "after": after},
            "options": {k: v for k, v in vars(opts).items()},
            **summary,
            "failures": failures,
        }
        with open(opts.json, "w") as out:
            json.dump(document, out, indent=2)
    return 1 if failures else 0
