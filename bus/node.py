"""A throwaway local RabbitMQ node: own node name, ports and data folder, stopped by its pid.

Used where the shared broker must not be touched: fault tests (stop_app, alarms), TLS and
config-level tests, clusters, and ``bus demo`` on a machine where no broker answers. The
recipe is the one verified in ``shared/notes/reliability-scenarios.md`` ("Throwaway node").
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from bus.errors import BrokerUnavailableError
from bus.watchdog import Watchdog

__all__ = [
    "LocalNode",
    "LoopbackBroker",
    "free_port_pair",
    "rabbitmq_installed",
    "stop_process_group",
]

_DIST_OFFSET = 20000


def rabbitmq_installed() -> bool:
    return shutil.which("rabbitmq-server") is not None and shutil.which("rabbitmqctl") is not None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (Linux default 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_pair(count: int = 1) -> int:
    """A base port P such that P..P+count-1 and the Erlang distribution port P+20000 are free.

    Every port lies below the kernel's ephemeral range: a node stopped for a restart would
    otherwise find a port of its own taken by some client's outgoing connection meanwhile
    (its management listener then fails and the node does not come back).
    """
    top = min(_ephemeral_low(), 65536) - _DIST_OFFSET - count
    low = 10000 if top > 10500 else 1024
    if top < low:  # an unusual ephemeral range: the old choice, which may collide
        low, top = 20000, 45000 - count
    for _ in range(500):
        base = random.randint(low, top)
        ports = [*range(base, base + count), base + _DIST_OFFSET]
        if all(_port_free(p) for p in ports):
            return base
    raise BrokerUnavailableError("no free port pair for a throwaway RabbitMQ node")


def stop_process_group(process: subprocess.Popen[Any], grace: float, after_kill: float) -> None:
    """End ``process`` and its group: SIGTERM, SIGKILL when it has not exited after ``grace``
    seconds; the process is reaped either way."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=after_kill)


class LoopbackBroker:
    """The URLs of a broker of our own on 127.0.0.1, reached as guest: a throwaway node, or a
    container whose ports are published there."""

    amqp_port: int
    management_port: int

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"


class LocalNode(LoopbackBroker):
    """One throwaway ``rabbitmq-server`` process.

    ``config`` is appended to the node's own rabbitmq.conf (never the shared broker's); in it,
    ``{dir}`` stands for the node's folder, where ``files`` (name -> content, e.g. TLS
    certificates) are written before the start, and ``{extra_port_N}`` for the extra ports
    (further free ports, e.g. for TLS). With ``management=True`` the management plugin listens
    on ``management_port``.

    The node never outlives the process that started it: :meth:`stop` ends it on a normal exit
    (and on SIGINT, through the callers' ``finally``), and a :class:`~bus.watchdog.Watchdog`
    ends it and removes its folder when the starter dies without cleaning up (SIGTERM,
    SIGKILL).
    """

    def __init__(
        self,
        *,
        prefix: str = "bus-node",
        config: str = "",
        management: bool = False,
        plugins: tuple[str, ...] = (),
        extra_ports: int = 0,
        files: dict[str, bytes] | None = None,
    ) -> None:
        self.base_port = free_port_pair(2 + extra_ports)
        self.amqp_port = self.base_port
        self.management_port = self.base_port + 1
        self.extra_ports = [self.base_port + 2 + i for i in range(extra_ports)]
        self.dist_port = self.base_port + _DIST_OFFSET
        self.name = f"{prefix}-{os.getpid()}-{self.base_port}@localhost"
        self.management = management
        self.plugins = (*plugins, "rabbitmq_management") if management else plugins
        self.dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-"))
        self.config = config.replace("{dir}", str(self.dir))
        for index, port in enumerate(self.extra_ports):
            self.config = self.config.replace(f"{{extra_port_{index}}}", str(port))
        for file_name, content in (files or {}).items():
            (self.dir / file_name).write_bytes(content)
        self._wrapper: subprocess.Popen[bytes] | None = None
        self._watchdog: Watchdog | None = None
        self.node_pid: int | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_PID_FILE=str(self.dir / "node.pid"),
        )
        return env

    def start(self, timeout: float = 120.0) -> LocalNode:
        if not rabbitmq_installed():
            raise BrokerUnavailableError("rabbitmq-server is not installed on this machine")
        (self.dir / "node.pid").unlink(missing_ok=True)
        plugins = ",".join(self.plugins)
        (self.dir / "enabled_plugins").write_text(f"[{plugins}].\n")
        config = self.config
        if self.management:
            config += (
                f"\nmanagement.tcp.port = {self.management_port}\nmanagement.tcp.ip = 127.0.0.1\n"
            )
        (self.dir / "rabbitmq.conf").write_text(config + "\n")
        # The packaged wrapper runs the node as user rabbitmq: it must own the folder.
        with contextlib.suppress(KeyError, PermissionError, LookupError):
            shutil.chown(self.dir, "rabbitmq", "rabbitmq")
            for path in self.dir.iterdir():
                shutil.chown(path, "rabbitmq", "rabbitmq")
        if self._watchdog is None:
            self._watchdog = Watchdog()
            self._watchdog.watch_dir(self.dir)  # and the node.pid written in it
        console = (self.dir / "console.log").open("wb")
        self._wrapper = subprocess.Popen(
            ["rabbitmq-server"],
            env=self._env(),
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        console.close()
        self._watchdog.watch_group(self._wrapper.pid)
        try:
            self.ctl(
                "wait",
                str(self.dir / "node.pid"),
                "--timeout",
                str(int(timeout)),
                timeout=timeout + 10,
            )
            self.node_pid = int((self.dir / "node.pid").read_text().strip())
            if self.management:
                self._wait_port(self.management_port, timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.2)
        raise BrokerUnavailableError(f"throwaway node {self.name}: port {port} never opened")

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``rabbitmqctl -n <this node> ...`` and return its output."""
        result = subprocess.run(
            ["rabbitmqctl", "-n", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(),
            check=False,
        )
        if check and result.returncode != 0:
            log = self.dir / "console.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BrokerUnavailableError(
                f"rabbitmqctl {' '.join(args)} on {self.name} failed: "
                f"{(result.stderr or result.stdout).strip()[:500]} {tail[-300:]}"
            )
        return result.stdout

    def kill(self) -> None:
        """SIGKILL the node (a crash, not a shutdown)."""
        if self.node_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.node_pid, signal.SIGKILL)
            self._wait_gone(self.node_pid, 30)
            self.node_pid = None
            # A stale pid file must not lead the watchdog to a reused pid.
            (self.dir / "node.pid").unlink(missing_ok=True)
        if self._wrapper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._wrapper.wait(timeout=30)
            self._wrapper = None

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        return False

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the node by its pid (SIGTERM, then SIGKILL) and remove its folder."""
        if self.node_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.node_pid, signal.SIGTERM)
            if not self._wait_gone(self.node_pid, 30):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.node_pid, signal.SIGKILL)
                self._wait_gone(self.node_pid, 10)
            self.node_pid = None
        if self._wrapper is not None:
            stop_process_group(self._wrapper, 30, 10)
            self._wrapper = None
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None

    def restart_process(self, timeout: float = 120.0) -> None:
        """Start the node process again on the same data folder (after :meth:`kill`)."""
        self.start(timeout)

    def __enter__(self) -> LocalNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
