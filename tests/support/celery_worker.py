"""Celery workers as subprocesses on a vhost of their own (the Celery and monitoring suites).

:class:`Worker` runs any long-running command that way (``bus worker``, ``celery worker``,
``bus consume``): own process group, output collected line by line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika

from bus.broker.management import ManagementClient
from bus.celery_app import build_app
from bus.settings import BusSettings
from bus.topology import LoadedTopology
from consumers.tasks import ROUTES
from tests.support.amqp import declare_with_pika
from tests.support.waiting import DEADLINE, wait_for

REPO = Path(__file__).resolve().parents[2]


BIN = Path(sys.executable).parent


def clean_env() -> dict[str, str]:
    """The test process's environment without ``BUS_*`` and ``CELERY_*`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUS_", "CELERY_"))}
    # This machine runs tests as root; Celery's multi-line warning about it is not under test.
    env["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser privileges"
    return env


@dataclass
class Worker:
    """A worker subprocess in its own process group, with its output collected."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path = REPO
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self) -> Worker:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> Worker:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output}")
            return any(line.endswith(" ready.") for line in self.lines)

        wait_for(ready, f"worker ready; output so far:\n{self.output}")
        return self

    def wait_running(self, condition: Callable[[], Any], what: str) -> Any:
        """Poll ``condition`` until it returns something true, and return that; fails, with
        the output, should the process exit first."""

        def check() -> Any:
            assert self.process is not None
            result = condition()
            if not result and self.process.poll() is not None:
                raise AssertionError(f"exited before {what}:\n{self.output}")
            return result

        return wait_for(check, f"{what}; output so far:\n{self.output}")

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def kill(self) -> None:
        """SIGKILL the whole group: the main process and every pool child, no cleanup."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.wait_exit()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the whole group if it still runs, SIGKILL it after ``timeout`` s; the exit
        code (None when it never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode


@dataclass
class CeleryVhost:
    """A vhost with the topology declared and a worker user that cannot configure anything.

    ``with`` declares the topology (plain pika, not the code under test) on entry and stops
    every worker started through it on exit.
    """

    vhost: str
    admin_url: str
    worker_url: str
    management_url: str | None
    topology: LoadedTopology
    management: ManagementClient
    tmp: Path
    workers: list[Worker] = field(default_factory=list)

    def __enter__(self) -> CeleryVhost:
        declare_with_pika(self.admin_url, self.topology.expanded)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for worker in self.workers:
            worker.stop()

    def env(self) -> dict[str, str]:
        env = clean_env()
        env.update(BUS_AMQP_URL=self.worker_url, BUS_TOPOLOGY=str(self.topology.file))
        if self.management_url:
            env["BUS_MANAGEMENT_URL"] = self.management_url
        return env

    def worker(self, queues: str, *, pool: str = "threads", via: str = "bus") -> Worker:
        if via == "bus":
            argv = [str(BIN / "bus"), "worker", "-Q", queues, "--pool", pool, "-c", "2"]
        else:
            # Deliberately without --without-gossip/mingle/heartbeat: the app must keep them off.
            argv = [str(BIN / "celery"), "-A", "consumers.tasks", "worker", "-Q", queues]
            argv += [f"--pool={pool}", "-c", "2", "--loglevel=INFO"]
        w = Worker(argv, self.env())
        self.workers.append(w)
        return w.start()

    def app(self) -> Any:
        settings = BusSettings(amqp_url=self.admin_url, management_url=self.management_url)
        return build_app(self.topology.expanded, settings=settings, routes=ROUTES)

    def records(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def get(self, queue: str) -> tuple[pika.spec.BasicProperties, bytes] | None:
        connection = pika.BlockingConnection(pika.URLParameters(self.admin_url))
        try:
            method, props, body = connection.channel().basic_get(queue, auto_ack=True)
        finally:
            connection.close()
        return None if method is None else (props, body)

    def wait_get(self, queue: str) -> tuple[pika.spec.BasicProperties, bytes]:
        result: tuple[pika.spec.BasicProperties, bytes] = wait_for(
            lambda: self.get(queue), f"a message in {queue}"
        )
        return result

    def snapshot(self) -> dict[str, Any]:
        """Everything the broker holds for the vhost, minus counters and consumers."""
        m, vh = self.management, self.vhost
        definitions = m.definitions(vh)
        definitions.pop("rabbit_version", None)
        definitions.pop("rabbitmq_version", None)
        q_keys = ("name", "type", "durable", "auto_delete", "exclusive", "arguments", "policy")
        x_keys = ("name", "type", "durable", "auto_delete", "internal", "arguments")
        queues = sorted(
            ({k: q.get(k) for k in q_keys} for q in m.queues(vh)), key=lambda q: str(q["name"])
        )
        exchanges = sorted(
            ({k: x.get(k) for k in x_keys} for x in m.exchanges(vh)), key=lambda x: str(x["name"])
        )
        bindings = sorted(m.bindings(vh), key=lambda b: json.dumps(b, sort_keys=True))
        return {
            "definitions": definitions,
            "queues": queues,
            "exchanges": exchanges,
            "bindings": bindings,
            "permissions": m.request("GET", f"/vhosts/{quote(vh, safe='')}/permissions"),
        }


