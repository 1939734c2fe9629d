"""Every command in the README runs: the tour against a fresh vhost, the set-up commands in CI.

Conventions of the README's ```bash blocks: one command per line; a trailing comment
``# exit N`` states the expected exit code (0 otherwise); ``runs until`` marks a long-running
command, which must start, keep running, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bus.provision import ProvidedBroker

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Command:
    line: str
    argv: list[str]
    exit_code: int
    long_running: bool


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def _commands() -> list[Command]:
    commands = []
    for block in _blocks("bash"):
        for raw in block.splitlines():
            if not raw.strip():
                continue
            comment = raw.rsplit(" # ", 1)[1] if " # " in raw else ""
            expected = re.search(r"\bexit (\d+)", comment)
            commands.append(
                Command(
                    raw,
                    shlex.split(raw, comments=True),
                    int(expected.group(1)) if expected else 0,
                    "runs until" in comment,
                )
            )
    return commands


def test_the_readme_has_the_two_setup_commands_and_ci_runs_them() -> None:
    setup = [line.strip() for block in _blocks("sh") for line in block.splitlines() if line.strip()]
    install = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
    assert setup == [f"{install} && .venv/bin/bus demo", f"{install} && .venv/bin/pytest"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv .venv" in ci
    assert ".venv/bin/pip install -q -e '.[dev]'" in ci
    assert re.search(r"^\.venv/bin/pytest$", ci, flags=re.MULTILINE)


def test_every_tour_command_is_a_bus_command() -> None:
    commands = _commands()
    assert len(commands) >= 15
    assert all(c.argv[0] == "bus" for c in commands)
    assert {"demo", "apply", "plan", "publish", "consume", "worker"} <= {
        c.argv[1] for c in commands
    }


def test_the_tour_runs_in_order(
    bus_broker: ProvidedBroker, bus_vhost_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env.update(
        BUS_AMQP_URL=bus_vhost_url,
        BUS_MANAGEMENT_URL=bus_broker.management_url,
        BUS_TOPOLOGY=str(REPO / "topology.yaml"),
        PYTHONWARNINGS="ignore:You're running the worker with superuser privileges",
    )
    for command in _commands():
        argv = [sys.executable, "-m", "bus", *command.argv[1:]]
        if command.long_running:
            _run_until_interrupted(argv, env, tmp_path, command)
            continue
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        output = f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert done.returncode == command.exit_code, (
            f"{command.line!r}: {done.returncode}\n{output}"
        )
        assert "Traceback" not in done.stderr, command.line
    assert (tmp_path / "asyncapi.json").exists()


def _run_until_interrupted(
    argv: list[str], env: dict[str, str], cwd: Path, command: Command
) -> None:
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(8)  # long enough to start, connect and consume what is waiting
        if process.poll() is not None:
            output, _ = process.communicate()
            raise AssertionError(f"{command.line!r} stopped by itself:\n{output[-3000:]}")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, (
        f"{command.line!r} exited {process.returncode}:\n{output[-3000:]}"
    )
    assert "Traceback" not in output, output[-3000:]
