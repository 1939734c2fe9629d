"""Memory: resident set size of our Publisher over N pipelined, confirmed publishes.

One process publishes ``messages`` 256-byte persistent messages through
``Publisher.publish_many`` (window 1,000) in chunks of 10,000, so that the per-message result
list the API returns stays small and what is measured is the publisher itself. The RSS is
sampled every ``every`` messages; the peak is the kernel's high-water mark (``VmHWM``), which
also catches what happens between samples. The queue is purged between samples so that the
broker does not page a million messages to disk while we measure the client.

Not part of the default suite (it takes minutes): ``python -m bench --only memory
[--memory-messages 1000000]``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bench._harness import BODY, prepare_queue, rss_kib

QUEUE = "bench.memory"
CHUNK = 10_000


async def ours(url: str, messages: int, every: int, window: int, loop: str) -> dict[str, Any]:
    from bus.settings import BusSettings
    from producers import Outgoing, Publisher

    prepare_queue(url, QUEUE)
    message = Outgoing("", QUEUE, BODY)
    chunk = [message] * min(CHUNK, every)
    samples: list[tuple[int, int]] = []
    started = time.perf_counter()
    async with Publisher.connect(BusSettings(amqp_url=url), window=window) as publisher:
        await publisher.publish_many(chunk[:1000])
        samples.append((0, rss_kib()))
        sent = 0
        while sent < messages:
            results = await publisher.publish_many(chunk[: messages - sent])
            sent += len(results)
            failed = sum(1 for r in results if not r.ok)
            if failed:
                raise SystemExit(f"memory: {failed} publishes failed")
            del results
            if sent % every == 0 or sent >= messages:
                samples.append((sent, rss_kib()))
                prepare_queue(url, QUEUE)
        peak = rss_kib("VmHWM")
    elapsed = time.perf_counter() - started
    prepare_queue(url, QUEUE)
    print(
        "\n".join(f"  {count:>9,} messages: RSS {kib / 1024:7.1f} MiB" for count, kib in samples),
        file=sys.stderr,
    )
    return {
        "messages": sent,
        "msg_s": sent / elapsed,
        "rss_start_mib": samples[0][1] / 1024,
        "rss_peak_mib": peak / 1024,
        "rss_end_mib": samples[-1][1] / 1024,
        "rss_growth_mib": (samples[-1][1] - samples[1][1]) / 1024 if len(samples) > 1 else 0.0,
        "samples": samples,
    }


if __name__ == "__main__":
    from bench.suite import main

    sys.exit(main(["--only", "memory", *sys.argv[1:]]))
