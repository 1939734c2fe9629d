"""``python -m bench --quick``: the suite runs against the broker and reports ratios.

Never asserts a timing or a ratio: only that the cases ran and the report has its lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import java_client
from bus.provision import ProvidedBroker


def test_quick_publish_suite_reports_paired_ratios(
    bus_broker: ProvidedBroker, tmp_path: Path
) -> None:
    report = tmp_path / "bench.json"
    env = dict(os.environ, BUS_AMQP_URL=bus_broker.amqp_url)
    if bus_broker.management_url:
        env["BUS_MANAGEMENT_URL"] = bus_broker.management_url
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-uvloop", "--seconds", "0.5",
         "--only", "publish/w100", "--json", str(report)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("| w100 | ") for line in lines), done.stdout
    assert any(
        line.startswith("ratio publish w100 msg_s: ours / raw aio-pika = ") for line in lines
    ), done.stdout
    document = json.loads(report.read_text())
    expected = {"publish/w100/raw-aio-pika", "publish/w100/ours", "publish/w100/ours-sync"}
    missing_java = java_client.available()
    if missing_java is None:
        # The Java client baseline runs in the same invocation and gets its ratio line.
        expected.add("publish/w100/java")
        assert any(
            line.startswith("ratio publish w100 msg_s: ours / Java client = ") for line in lines
        ), done.stdout
    else:
        assert missing_java in lines, done.stdout
    assert set(document["cases"]) == expected
    assert all(case["spread"]["msg_s"]["median"] > 0 for case in document["cases"].values())
    assert document["failures"] == []


def test_hops_stamps_every_message_at_every_hop(bus_broker: ProvidedBroker, tmp_path: Path) -> None:
    """``python -m bench.hops`` (the latency decomposition): each message is found at each hop,
    in order along the way, and the report has a row per hop. No timing is asserted."""
    env = dict(os.environ, BUS_AMQP_URL=bus_broker.amqp_url)
    if bus_broker.management_url:
        env["BUS_MANAGEMENT_URL"] = bus_broker.management_url
    prefix = tmp_path / "hops"
    done = subprocess.run(
        [sys.executable, "-m", "bench.hops", "--rates", "200", "--seconds", "2",
         "--json", str(prefix)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    hops = {"sched->call", "call->write", "write->read", "read->deliver", "deliver->handler"}
    assert hops <= rows, done.stdout
    result = json.loads(Path(f"{prefix}.200.json").read_text())
    stamps = [result["pub"][hop] for hop in ("sched", "call", "write")]
    stamps += [result["con"][hop] for hop in ("read", "deliver", "handler")]
    assert len(stamps[0]) == 400
    assert all(set(hop) == set(stamps[0]) for hop in stamps)
    for seq in stamps[0]:
        # call, write, read, deliver and handler follow one another on the shared clock.
        along = [hop[seq] for hop in stamps[1:]]
        assert along == sorted(along), seq
