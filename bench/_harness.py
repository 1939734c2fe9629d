"""What every bench shares: the message, a throwaway vhost, a process per case, statistics.

A case is a plain function ``module:function(**params) -> dict`` (sync or async). The suite
runs each one in a fresh interpreter (``python -m bench._harness TARGET PARAMS_JSON``) so that
no case inherits another's heap, loop or connections; the case prints its result as the last
line of its stdout, as JSON.

The pure parts (percentiles, spreads, ratios paired per round) have no broker dependency and
are unit-tested.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

WARMUP = 300
CONTENT_TYPE = "application/json"


def body_256() -> bytes:
    """A 256-byte JSON object, like the baseline's message."""
    head = b'{"event":"bench","pad":"'
    tail = b'"}'
    body = head + b"x" * (256 - len(head) - len(tail)) + tail
    json.loads(body)
    return body


BODY = body_256()


# -- statistics (pure) -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values))

    def format(self, digits: int = 0) -> str:
        return f"{self.median:,.{digits}f} [{self.low:,.{digits}f}-{self.high:,.{digits}f}]"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def latency_summary(samples: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of latencies in seconds, reported in milliseconds."""
    ordered = sorted(samples)
    out = {f"p{q:g}": percentile(ordered, q) * 1000 for q in (50, 90, 99, 99.9)}
    out["max"] = ordered[-1] * 1000
    return out


def paired_ratios(rounds: Mapping[str, Sequence[float | None]], ours: str, raw: str) -> list[float]:
    """ours/raw within each round where both ran (a failed case leaves None in its round)."""
    out: list[float] = []
    for a, b in zip(rounds.get(ours, ()), rounds.get(raw, ()), strict=False):
        if a is not None and b:
            out.append(a / b)
    return out


# -- resources -------------------------------------------------------------------------------
def rss_kib(field: str = "VmRSS") -> int:
    """Resident set size of this process in KiB (``VmHWM`` is its peak so far)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def record_spans() -> None:
    """Switch the bus's tracing on, with the OpenTelemetry SDK recording every span and
    exporting none: the cost of the spans themselves, not of an exporter."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from bus import tracing

    trace.set_tracer_provider(TracerProvider())
    tracing.set_tracing(True)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# -- broker ----------------------------------------------------------------------------------
@contextmanager
def bench_vhost(label: str) -> Iterator[str]:
    """A fresh vhost for the duration of the block; yields the AMQP URL that points at it."""
    from bus.broker.management import ManagementClient
    from bus.settings import BusSettings, with_vhost

    settings = BusSettings()
    vhost = f"bus-bench-{label}-{uuid.uuid4().hex[:8]}"
    with ManagementClient.from_settings(settings) as management:
        management.create_vhost(vhost, description=f"amqp-bus bench {label} (safe to delete)")
        try:
            management.set_permissions(vhost, settings.credentials()[0])
            yield with_vhost(settings.amqp_url, vhost)
        finally:
            management.delete_vhost(vhost)


def prepare_queue(url: str, queue: str, *, purge: bool = True) -> None:
    """Declare the durable classic ``queue`` (idempotent) and empty it."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
        if purge:
            channel.queue_purge(queue)
    finally:
        connection.close()


def queue_depth(url: str, queue: str) -> int:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        count: int = connection.channel().queue_declare(queue, passive=True).method.message_count
        return count
    finally:
        connection.close()


# -- running one case ------------------------------------------------------------------------
def run_loop(coroutine: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """Run a coroutine on a fresh asyncio or uvloop event loop."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    if loop != "asyncio":
        raise ValueError(f"unknown loop {loop!r}")
    return asyncio.run(coroutine)


def call_target(target: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Call ``module:function`` with ``params``; a coroutine function runs on ``params['loop']``."""
    module_name, _, name = target.partition(":")
    func = getattr(importlib.import_module(module_name), name)
    kwargs = dict(params)
    if inspect.iscoroutinefunction(func):
        loop = kwargs.get("loop", "asyncio")
        result = run_loop(func(**kwargs), loop)
    else:
        result = func(**kwargs)
    if not isinstance(result, dict):
        raise TypeError(f"{target} returned {type(result).__name__}, not a dict")
    return result


class CaseFailed(RuntimeError):
    pass


def run_in_process(
    target: str, params: Mapping[str, Any], *, timeout: float = 900
) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its JSON result."""
    command = [sys.executable, "-m", "bench._harness", target, json.dumps(dict(params))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CaseFailed(f"{target} did not finish within {timeout:g} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise CaseFailed(f"{target} exited {done.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def until(deadline: float) -> Iterator[None]:
    while time.perf_counter() < deadline:
        yield None


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench._harness MODULE:FUNCTION PARAMS_JSON", file=sys.stderr)
        return 2
    result = call_target(argv[0], json.loads(argv[1]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
