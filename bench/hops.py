"""Where the latency of ``bench.latency`` (ours) goes, hop by hop: a diagnostic, not a case.

Runs the latency case's publisher and consumer (same topology, message, window, prefetch and
schedule, :func:`bench.latency._fixed_rate`) with timestamps taken per message
(CLOCK_MONOTONIC, shared by the processes of the host):

- ``sched->call``: the message's scheduled time to the start of ``send()`` (the bench's pacer,
  which wakes at most once per millisecond, plus the publisher's loop starting the task);
- ``call->write``: ``Publisher.publish`` to the start of the ``StreamWriter.write`` that holds
  the message (our publisher's code and loop);
- ``write->read``: that write to the consumer's socket read that returned it; with ``--pcap``
  it is split at the loopback interface (``tcpdump -i lo``, needs root): ``write->lo_in``
  (the send system call), ``lo_in->lo_out (broker)``, ``lo_out->read`` (the consumer waking
  up and reading);
- ``read->deliver``: the read to the runtime's ``QueueConsumer._deliver`` (frame decoding);
- ``deliver->handler``: to the handler's first line (worker wake-up, decoding, validation).

Messages are matched by the ``"seq":N`` of their JSON body, found in the written, read and
captured bytes. The instrumentation wraps ``StreamWriter.write`` (publisher process),
``FrameReader._read_more`` and ``QueueConsumer._deliver`` (consumer process); each wrapper costs
a regex over the bytes and a clock read. Also reported: Python GC pauses per generation in the
measured window (``gc.callbacks``), and CPU, run-queue wait and time slices of both processes
and of the broker when it runs here (``/proc/<pid>/task/*/schedstat``).

    .venv/bin/python -m bench.hops --rates 1000,3000 [--seconds 8] [--pcap] [--pin 1]

``--pin CPU`` pins the publisher and the consumer to one CPU (``os.sched_setaffinity``), to
see what CPU placement does on a host the broker shares.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from bench._harness import percentile
from bench.latency import PREFETCH, QUEUE, TOPOLOGY, Probe, _declare, _fixed_rate

SEQ = re.compile(rb'"seq":(\d+)')
Stamps = dict[int, float]


class GcPauses:
    """``gc.callbacks`` recorder: (start, seconds, generation) per collection."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: Mapping[str, Any]) -> None:
        if phase == "start":
            self._start = time.monotonic()
        else:
            self.pauses.append((self._start, time.monotonic() - self._start, info["generation"]))


def schedstat(pid: int | str = "self") -> list[float]:
    """[CPU s, run-queue wait s, time slices] summed over the threads of ``pid``."""
    totals = [0.0, 0.0, 0.0]
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                run, wait, slices = stat.read().split()
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        totals[0] += int(run) / 1e9
        totals[1] += int(wait) / 1e9
        totals[2] += int(slices)
    return totals


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


# -- consumer process --------------------------------------------------------------------------
async def _consume(url: str, count: int) -> dict[str, Any]:
    from bus.settings import BusSettings
    from bus.topology import parse_topology
    from consumers import ConsumerApp, queue_consumer, wire

    read: Stamps = {}
    delivered: Stamps = {}
    handled: Stamps = {}
    pauses = GcPauses()
    read_more = wire.FrameReader._read_more

    async def timed_read_more(self: wire.FrameReader) -> None:
        await read_more(self)
        now = time.monotonic()
        for match in SEQ.finditer(self._data, self._position):
            read.setdefault(int(match.group(1)), now)

    deliver = queue_consumer.QueueConsumer._deliver

    def timed_deliver(self: Any, session: Any, message: Any) -> None:
        match = SEQ.search(message.body)
        if match:
            delivered[int(match.group(1))] = time.monotonic()
        deliver(self, session, message)

    wire.FrameReader._read_more = timed_read_more  # type: ignore[method-assign]
    queue_consumer.QueueConsumer._deliver = timed_deliver  # type: ignore[method-assign]
    done = asyncio.Event()
    app = ConsumerApp("bench-hops", grace=5)

    @app.handler(QUEUE, prefetch=PREFETCH)
    async def handle(event: Probe) -> None:
        handled[event.seq] = time.monotonic()
        if len(handled) == count:
            done.set()

    topology = parse_topology(TOPOLOGY, "bench-latency.yaml")
    async with app.serve(BusSettings(amqp_url=url), topology=topology):
        print("ready", flush=True)
        before = schedstat()
        await done.wait()
        after = schedstat()
    return {"read": read, "deliver": delivered, "handler": handled, "gc": pauses.pauses,
            "sched": [b - a for a, b in zip(before, after, strict=True)]}  # fmt: skip


def consumer(url: str, count: int, pin: int | None) -> dict[str, Any]:
    """The consumer process (run through the harness)."""
    _pin(pin)
    return asyncio.run(_consume(url, count))


# -- publisher (this process) --------------------------------------------------------------------
async def _publish(url: str, rate: int, seconds: float, broker: int | None) -> dict[str, Any]:
    from bus.settings import BusSettings
    from bus.topology import parse_topology
    from producers import Publisher

    scheduled: Stamps = {}
    called: Stamps = {}
    written: Stamps = {}
    pauses = GcPauses()
    write = asyncio.StreamWriter.write

    def timed_write(self: asyncio.StreamWriter, data: bytes | bytearray | memoryview) -> None:
        # Stamped before the send: on loopback the send runs the broker side's TCP receive and
        # wakes its thread, which may preempt us before the call returns (p90 0.3 ms here).
        now = time.monotonic()
        for match in SEQ.finditer(bytes(data)):
            written[int(match.group(1))] = now
        write(self, data)

    asyncio.StreamWriter.write = timed_write  # type: ignore[method-assign]
    topology = parse_topology(TOPOLOGY, "bench-latency.yaml")
    async with Publisher.connect(BusSettings(amqp_url=url), topology) as publisher:

        async def send(seq: int, at: float) -> None:
            called[seq] = time.monotonic()
            scheduled[seq] = at
            await publisher.publish(Probe(seq=seq, scheduled=at))

        mine, theirs = schedstat(), schedstat(broker) if broker else [0.0] * 3
        _, lag = await _fixed_rate(send, rate, seconds)
        mine_after, theirs_after = schedstat(), schedstat(broker) if broker else [0.0] * 3
    return {
        "sched": scheduled, "call": called, "write": written, "gc": pauses.pauses, "lag": lag,
        "cpu": [b - a for a, b in zip(mine, mine_after, strict=True)],
        "broker": [b - a for a, b in zip(theirs, theirs_after, strict=True)],
        # CLOCK_REALTIME - CLOCK_MONOTONIC, to put the capture's timestamps on our clock.
        "offset": time.time() - time.monotonic(),
    }  # fmt: skip


def run_once(url: str, rate: int, seconds: float, pin: int | None) -> dict[str, Any]:
    """One measured run: the consumer in a process of its own, the publisher here."""
    from bench.processes import _broker_pid

    _declare(url)
    params = {"url": url, "count": int(rate * seconds), "pin": pin}
    command = [sys.executable, "-m", "bench._harness", "bench.hops:consumer", json.dumps(params)]
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                process.wait(10)
                errors.seek(0)
                raise RuntimeError(f"consumer did not start:\n{errors.read()[-2000:]}")
            _pin(pin)
            published = asyncio.run(_publish(url, rate, seconds, _broker_pid(url)))
            out = process.stdout.read()
            process.wait(120)
        finally:
            if process.poll() is None:
                process.kill()
    consumed = json.loads(out.strip().splitlines()[-1])
    for key in ("read", "deliver", "handler"):
        consumed[key] = {int(seq): t for seq, t in consumed[key].items()}
    return {"rate": rate, "pub": published, "con": consumed}


# -- loopback capture ----------------------------------------------------------------------------
def read_pcap(path: str, offset: float, port: int) -> tuple[Stamps, Stamps]:
    """First loopback timestamp of each ``seq``: towards the broker (on ``port``), and from it."""
    with open(path, "rb") as capture:
        data = capture.read()
    if len(data) < 24:
        return {}, {}
    nano = struct.unpack_from("<I", data)[0] == 0xA1B23C4D
    link_header = 14 if struct.unpack_from("<I", data, 20)[0] == 1 else 16
    inbound: Stamps = {}
    outbound: Stamps = {}
    position = 24
    while position + 16 <= len(data):
        seconds, fraction, size, _ = struct.unpack_from("<IIII", data, position)
        packet = data[position + 16 : position + 16 + size]
        position += 16 + size
        at = seconds + fraction * (1e-9 if nano else 1e-6) - offset
        ip = packet[link_header:]
        tcp = ip[(ip[0] & 15) * 4 :]
        source, target = struct.unpack_from(">HH", tcp)
        stamps = inbound if target == port else outbound if source == port else None
        if stamps is not None:
            for match in SEQ.finditer(tcp[(tcp[12] >> 4) * 4 :]):
                stamps.setdefault(int(match.group(1)), at)
    return inbound, outbound


# -- report --------------------------------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float:
    # The latency case's definition (linear interpolation), so both report the same p99.
    return percentile(sorted(values), q)


def report(result: Mapping[str, Any], capture: tuple[Stamps, Stamps] | None = None) -> str:
    """Per-hop percentiles (ms) and the mean of each hop over the messages at or above p99."""
    rate, pub, con = result["rate"], result["pub"], result["con"]
    seqs = sorted(seq for seq in con["handler"] if seq >= rate and seq in pub["sched"])
    total = {seq: con["handler"][seq] - pub["sched"][seq] for seq in seqs}
    p99 = _percentile(list(total.values()), 99)
    tail = [seq for seq in seqs if total[seq] >= p99]
    hops: list[tuple[str, Stamps, Stamps]] = [
        ("sched->call", pub["sched"], pub["call"]),
        ("call->write", pub["call"], pub["write"]),
    ]
    if capture is not None:
        inbound, outbound = capture
        hops += [("write->lo_in", pub["write"], inbound),
                 ("lo_in->lo_out (broker)", inbound, outbound),
                 ("lo_out->read", outbound, con["read"])]  # fmt: skip
    else:
        hops.append(("write->read", pub["write"], con["read"]))
    hops += [("read->deliver", con["read"], con["deliver"]),
             ("deliver->handler", con["deliver"], con["handler"])]  # fmt: skip
    ms = [_percentile(list(total.values()), q) * 1e3 for q in (50, 99, 99.9)]
    lines = [
        f"rate {rate}/s, {len(seqs)} messages after the first second: p50 {ms[0]:.2f}, "
        f"p99 {ms[1]:.2f}, p99.9 {ms[2]:.2f}, max {max(total.values()) * 1e3:.2f} ms; "
        f"publisher lag max {pub['lag'] * 1e3:.2f} ms",
        f"  {'hop':24}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   mean over the {len(tail)} "
        "messages >= p99",
    ]
    for name, start, end in hops:
        both = [seq for seq in seqs if seq in start and seq in end]
        if not both:
            continue
        spans = [end[seq] - start[seq] for seq in both]
        tail_spans = [end[seq] - start[seq] for seq in tail if seq in start and seq in end]
        row = "".join(f"{_percentile(spans, q) * 1e3:8.3f}" for q in (50, 90, 99))
        mean = sum(tail_spans) / max(1, len(tail_spans)) * 1e3
        lines.append(f"  {name:24}{row}{max(spans) * 1e3:8.3f}   {mean:8.3f}")
    window = (pub["sched"][seqs[0]], pub["sched"][seqs[-1]] + 0.05)
    for side, pauses in (("publisher", pub["gc"]), ("consumer", con["gc"])):
        inside = [p for p in pauses if window[0] <= p[0] <= window[1]]
        by_generation = {g: [s for _, s, gen in inside if gen == g] for g in (0, 1, 2)}
        text = ", ".join(f"gen{g} {len(s)}x max {max(s) * 1e3:.2f} ms"
                         for g, s in by_generation.items() if s)  # fmt: skip
        lines.append(f"  GC {side} (measured window): {text or 'none'}")
    for side, (cpu, wait, slices) in (("publisher", pub["cpu"]), ("consumer", con["sched"]),
                                      ("broker", pub["broker"])):  # fmt: skip
        if slices:
            lines.append(f"  {side}: CPU {cpu:.2f} s, run-queue wait {wait * 1e3:.0f} ms over "
                         f"{slices:.0f} slices ({wait / slices * 1e6:.0f} us each)")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from bench._harness import bench_vhost

    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__)
    parser.add_argument("--rates", default="1000,2000,3000")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--pin", type=int, default=None, help="CPU for both client processes")
    parser.add_argument("--pcap", action="store_true", help="split write->read (tcpdump, root)")
    parser.add_argument("--json", metavar="PREFIX", help="write PREFIX.<rate>.json")
    opts = parser.parse_args(argv)
    print(f"load average {os.getloadavg()} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as scratch, bench_vhost("hops") as url:
        port = urlsplit(url).port or 5672  # the broker's, for the capture
        for rate in (int(r) for r in opts.rates.split(",") if r):
            dump = None
            path = os.path.join(scratch, f"{rate}.pcap")
            if opts.pcap:
                dump = subprocess.Popen(
                    ["tcpdump", "-i", "lo", "-s", "0", "-B", "16384", "-w", path,
                     "--time-stamp-precision=nano", f"tcp port {port}"],
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1)  # tcpdump opens the interface
            result = run_once(url, rate, opts.seconds, opts.pin)
            capture = None
            if dump is not None:
                time.sleep(0.5)
                dump.terminate()
                dump.wait()
                capture = read_pcap(path, result["pub"]["offset"], port)
            print(report(result, capture), flush=True)
            if opts.json:
                with open(f"{opts.json}.{rate}.json", "w") as out:
                    json.dump(result, out)
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
