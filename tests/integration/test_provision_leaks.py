"""Throwaway brokers never outlive the test run, however the runner ends.

A real pytest runner starts its session broker (a throwaway node, or a container), then is
ended by SIGINT (pytest's own teardown), SIGTERM (Python's default: exit without cleanup) or
SIGKILL (nothing runs at all). Within 30 s no beam process, epmd name, data folder or
container of that broker may be left: the fixtures end it on a normal exit and on SIGINT, the
broker's watchdog when the runner dies without cleaning up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bus.node import rabbitmq_installed
from bus.provision import docker_available
from bus.settings import BrokerChoiceSettings

INNER_TEST = """
import json, time

def test_hold(bus_broker):
    with open({mark!r}, "w") as out:
        json.dump({{"identity": bus_broker.identity, "how": bus_broker.how}}, out)
    time.sleep(600)
"""

# pytest, with Ctrl-C's KeyboardInterrupt even when this suite itself was started in the
# background (a shell's background job inherits SIGINT ignored, and Python keeps it so).
RUNNER = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "import pytest; sys.exit(pytest.main(sys.argv[1:]))"
)

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]


def _container_ready() -> bool:
    if not docker_available(BrokerChoiceSettings().docker_host):
        return False
    from bus.container import choose_image

    return choose_image(None, pull=False) is not None


def _epmd_names() -> set[str]:
    out = subprocess.run(["epmd", "-names"], capture_output=True, text=True, check=False).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("name ")}


def _processes_of(node: str) -> list[str]:
    """Processes (beam and its wrappers) started for ``node``: its name is in their environment
    (RABBITMQ_NODENAME), not in their command line."""
    wanted = f"RABBITMQ_NODENAME={node}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted in environ.read_bytes().split(b"\0"):
                found.append(environ.parent.name)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _container_exists(identity: str) -> bool:
    import docker  # type: ignore[import-untyped]

    try:
        docker.from_env().containers.get(identity)
    except docker.errors.NotFound:
        return False
    return True


def _start_runner(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    mark = tmp_path / "broker.json"
    (tmp_path / "test_inner.py").write_text(INNER_TEST.format(mark=str(mark)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_TEST_")}
    env["BUS_TEST_BROKER"] = mode
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not mark.exists() or not mark.read_text():
        if runner.poll() is not None or time.monotonic() > deadline:
            _reap(runner)
            pytest.fail(f"the inner runner never got its {mode} broker (exit {runner.poll()})")
        time.sleep(0.5)
    time.sleep(0.2)  # the mark is written in one go; let the write finish
    return runner, json.loads(mark.read_text())


def _gone_within(seconds: float, left: Callable[[], list[str]]) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        remaining = left()
        if not remaining or time.monotonic() > deadline:
            return remaining
        time.sleep(0.5)


def _end(runner: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    runner.send_signal(sig)
    try:
        runner.wait(timeout=60)  # SIGINT: pytest's teardown stops the broker first
    except subprocess.TimeoutExpired:
        pytest.fail(f"the runner did not end on {sig.name}")
    finally:
        _reap(runner)


def _reap(runner: subprocess.Popen[bytes]) -> None:
    if runner.poll() is None:
        runner.kill()
    runner.wait()


@pytest.mark.skipif(not rabbitmq_installed(), reason="needs the rabbitmq-server binary")
@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_throwaway_node_does_not_outlive_its_runner(tmp_path: Path, sig: signal.Signals) -> None:
    runner, broker = _start_runner(tmp_path, "throwaway")
    node = str(broker["identity"])
    short_name = node.partition("@")[0]
    folders = f"bus-throwaway-{runner.pid}-*"
    try:
        assert broker["how"] == "throwaway"
        assert short_name in _epmd_names()
        assert _processes_of(node)
        assert list(Path(tempfile.gettempdir()).glob(folders))
    finally:
        _end(runner, sig)

    def left() -> list[str]:
        found = [f"process {pid}" for pid in _processes_of(node)]
        if short_name in _epmd_names():
            found.append(f"epmd name {short_name}")
        found += [f"folder {p}" for p in Path(tempfile.gettempdir()).glob(folders)]
        return found

    assert _gone_within(30, left) == []


@pytest.mark.skipif(
    not _container_ready(),
    reason="needs a Docker engine with a RabbitMQ image (tools/build-rabbitmq-image)",
)
@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_container_does_not_outlive_its_runner(tmp_path: Path, sig: signal.Signals) -> None:
    runner, broker = _start_runner(tmp_path, "container")
    identity = str(broker["identity"])
    try:
        assert broker["how"] == "container"
        assert _container_exists(identity)
    finally:
        _end(runner, sig)
    assert _gone_within(30, lambda: [identity] if _container_exists(identity) else []) == []
