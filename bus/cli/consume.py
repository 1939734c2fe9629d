"""``bus consume --app MODULE:APP [--processes N] [QUEUE ...]``: run a consumer app.

The consuming side (``consumers``) is imported when the command runs: the other commands do
not load it.

With ``--processes N`` (N > 1) the command supervises N worker processes, each running the app
on its own connection (:mod:`consumers.processes`: signals forwarded, a worker that exits
unasked stops the command with a one-line error and exit code 1, no restarts). The command
reads settings and topology once and hands them to the workers with their job
(:class:`WorkerJob`); a worker is ``python -c`` :data:`WORKER_CODE`, which calls
:func:`worker_main`. Worker *i* serves Prometheus metrics on ``--metrics-port`` + *i* - 1.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pickle
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bus.cli.support import broker_settings, file_option, load
from bus.errors import BusError, UsageError
from bus.importing import import_object
from bus.settings import BusSettings, install_log_redaction, redact
from bus.topology import LoadedTopology

if TYPE_CHECKING:
    from consumers.runtime import ConsumerApp

__all__ = ["COMMANDS", "WORKER_CODE", "WorkerJob", "load_app", "run_app", "worker_main"]

WORKER_CODE = "from bus.cli.consume import worker_main; raise SystemExit(worker_main())"
"""What each worker process of ``--processes N`` runs (``python -c``)."""

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s{}: %(message)s"


@dataclass(frozen=True)
class WorkerJob:
    """What one worker process runs: everything the command read, nothing read again."""

    app: str
    settings: BusSettings
    topology: LoadedTopology
    queues: tuple[str, ...] | None
    grace: float | None
    metrics_port: int | None
    tracing: bool
    number: int
    count: int


def load_app(path: str) -> ConsumerApp:
    """The :class:`ConsumerApp` named by ``package.module:attribute``."""
    from consumers.runtime import ConsumerApp

    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--app must look like MODULE:APP (e.g. consumers.demo:app), got {path!r}")
    try:
        target = import_object(path)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import consumer app {path!r}: {exc}") from None
    if not isinstance(target, ConsumerApp):
        raise UsageError(f"{path!r} is a {type(target).__name__}, not a consumers.ConsumerApp")
    return target


def _logging(suffix: str = "") -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT.format(suffix))


def run_app(
    path: str,
    *,
    file: Path | None = None,
    queues: Sequence[str] | None = None,
    grace: float | None = None,
    metrics_port: int | None = None,
    processes: int = 1,
) -> None:
    """Run until SIGTERM/SIGINT; returns after a clean shutdown, raises a BusError otherwise."""
    _logging()
    app = load_app(path)
    topology = load(file)
    settings = broker_settings()
    chosen = tuple(queues or ()) or None
    if processes <= 1:
        _serve(app, settings, topology, chosen, grace, metrics_port)
        return
    from bus.tracing import tracing_enabled
    from consumers.processes import STOP_MARGIN, Supervisor

    jobs = [
        pickle.dumps(
            WorkerJob(
                path, settings, topology, chosen, grace, metrics_port, tracing_enabled(),
                number, processes,
            )
        )
        for number in range(1, processes + 1)
    ]
    stop_timeout = (app.grace if grace is None else grace) + STOP_MARGIN
    Supervisor([sys.executable, "-c", WORKER_CODE], jobs, stop_timeout).run()


def _serve(
    app: ConsumerApp,
    settings: BusSettings,
    topology: LoadedTopology,
    queues: tuple[str, ...] | None,
    grace: float | None,
    metrics_port: int | None,
) -> None:
    from consumers.metrics import PrometheusMetrics

    if metrics_port is not None:
        app.metrics = PrometheusMetrics()
        prometheus_client: Any = importlib.import_module("prometheus_client")
        try:
            prometheus_client.start_http_server(metrics_port)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
    _run(app.run(settings, topology=topology, queues=queues, grace=grace))


def worker_main() -> int:
    """One worker process of ``bus consume --processes N``: its job comes on standard input.

    Errors end it as they end ``bus consume``: one ``error: ...`` line and the error's exit
    code (the parent then names the worker and stops the others).
    """
    from consumers.processes import read_job, stop_when_parent_exits

    install_log_redaction()
    try:
        job: WorkerJob = pickle.loads(read_job(sys.stdin.fileno()))
        _logging(f" [worker {job.number}/{job.count}]")
        stop_when_parent_exits(sys.stdin.fileno())
        if job.tracing:
            from bus.tracing import set_tracing

            set_tracing(True)
        port = None if job.metrics_port is None else job.metrics_port + job.number - 1
        _serve(load_app(job.app), job.settings, job.topology, job.queues, job.grace, port)
    except BusError as exc:
        print(f"error: {redact(' '.join(str(exc).split()))}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: one line, as the bus command prints it
        print(f"error: internal error: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (the ``fast`` extra), else on asyncio.

    ``bus consume`` owns its event loop, so it may choose one: uvloop delivers about 20 %
    more messages per core (docs/performance-baseline.md). ``ConsumerApp.run`` and the
    ``Publisher`` never change the loop of a program that embeds them.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


@click.command("consume")
@file_option
@click.option("--app", "app_path", required=True, metavar="MODULE:APP", help="consumers.demo:app")
@click.option("--grace", type=float, default=None, help="Seconds for running handlers at shutdown.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics here.")
@click.option(
    "--processes", type=click.IntRange(1, 256), default=1, show_default=True,
    help="Worker processes, each consuming on its own connection; signals are forwarded to "
    "them, and one that exits unasked stops the command (exit 1).",
)  # fmt: skip
@click.argument("queues", nargs=-1)
def consume_command(
    file: Path | None, app_path: str, grace: float | None, metrics_port: int | None,
    processes: int, queues: tuple[str, ...],
) -> None:  # fmt: skip
    """Run a consumer app until SIGTERM/SIGINT (exit 0 on a clean shutdown)."""
    run_app(app_path, file=file, queues=queues, grace=grace, metrics_port=metrics_port,
            processes=processes)  # fmt: skip


COMMANDS: tuple[click.Command, ...] = (consume_command,)
