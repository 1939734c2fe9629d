"""consumers.processes with stand-in workers: jobs passed down, signals forwarded, fail fast.

The workers here are small Python scripts that record what happened to them in a file; the
real command (``bus consume --processes 2``) is tested against the broker in
tests/integration/test_consume_processes.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consumers.processes import Supervisor, WorkerExitedError, write_job

# A worker: its job is "<record file>|<mode>[|<record files>]"; mode "run" waits for a signal,
# "exit:N" exits with N once the workers of the listed record files have started (so they have
# their signal handlers when the supervisor stops them), "hang" ignores SIGTERM.
WORKER = r"""
import os, signal, sys, time
from consumers.processes import read_job, stop_when_parent_exits
record, mode, *others = read_job().decode().split("|")
def note(text):
    with open(record, "a") as f:
        f.write(text + "\n")
def stop(signum, frame):
    note(f"signal {signal.Signals(signum).name}")
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "hang" else stop)
stop_when_parent_exits()
note("started " + mode)
if mode.startswith("exit:"):
    deadline = time.monotonic() + 20
    waiting = [path for path in ",".join(others).split(",") if path]
    while time.monotonic() < deadline and not all(
        os.path.exists(path) and os.path.getsize(path) for path in waiting
    ):
        time.sleep(0.02)
    sys.exit(int(mode[5:]))
while True:
    time.sleep(0.02)
"""
COMMAND = [sys.executable, "-c", WORKER]
SUPERVISE = r"""
import json, sys
from consumers.processes import Supervisor, WorkerExitedError
command, jobs, timeout = json.loads(sys.argv[1])
try:
    Supervisor(command, [j.encode() for j in jobs], timeout).run()
except WorkerExitedError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def records(tmp_path: Path, count: int) -> list[Path]:
    return [tmp_path / f"worker{i}.log" for i in range(1, count + 1)]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(condition: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def supervise(jobs: list[str], timeout: float = 10) -> subprocess.Popen[str]:
    argument = json.dumps([COMMAND, jobs, timeout])
    return subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, argument], stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_reaches_every_worker_once_and_the_command_exits_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    logs = records(tmp_path, 2)
    process = supervise([f"{log}|run" for log in logs])
    wait_for(lambda: all(lines(log) for log in logs))
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    for log in logs:  # each its own job, one signal each (own process group: no double Ctrl-C)
        assert lines(log) == ["started run", f"signal {sig.name}"]


def test_a_worker_that_exits_stops_the_others_and_fails_with_one_line(tmp_path: Path) -> None:
    logs = records(tmp_path, 3)
    jobs = [f"{logs[0]}|run", f"{logs[1]}|exit:3|{logs[0]},{logs[2]}", f"{logs[2]}|run"]
    with pytest.raises(WorkerExitedError) as caught:
        Supervisor(COMMAND, [j.encode() for j in jobs], stop_timeout=10).run()
    message = str(caught.value)
    assert message.startswith("consumer worker 2 (pid ")
    assert message.endswith(
        "exited with code 3 (of 3) without a stop being asked; the other workers were stopped"
    )
    assert caught.value.exit_code == 1
    assert lines(logs[0]) == ["started run", "signal SIGTERM"]
    assert lines(logs[2]) == ["started run", "signal SIGTERM"]


def test_a_worker_that_does_not_stop_is_killed_and_reported(tmp_path: Path) -> None:
    logs = records(tmp_path, 2)
    process = supervise([f"{logs[0]}|run", f"{logs[1]}|hang"], timeout=1)
    wait_for(lambda: all(lines(log) for log in logs))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stderr.splitlines()[-1].startswith("error: worker 2 (pid ")
    assert stderr.splitlines()[-1].endswith("was killed by SIGKILL while stopping (of 2 workers)")
    assert "did not stop within 1 s: killed" in stderr
    assert lines(logs[0]) == ["started run", "signal SIGTERM"]


def test_a_worker_stops_itself_when_its_parent_is_gone(tmp_path: Path) -> None:
    log = tmp_path / "orphan.log"
    worker = subprocess.Popen(COMMAND, stdin=subprocess.PIPE)
    assert worker.stdin is not None
    write_job(worker.stdin, f"{log}|run".encode())
    wait_for(lambda: lines(log) == ["started run"])
    worker.stdin.close()  # what the parent's death does to the pipe
    assert worker.wait(timeout=20) == 0
    assert lines(log) == ["started run", "signal SIGTERM"]
