"""``bus worker``: a passive Celery worker on topology queues, checked before it starts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click
from celery import Celery

from bus.celery_app.config import default_topology_file, use_topology_file
from bus.celery_app.monitoring import serve_worker_metrics
from bus.celery_app.preflight import preflight
from bus.celery_message import celery_routes
from bus.errors import UsageError
from bus.importing import import_object
from bus.topology import load_topology

__all__ = ["load_app", "run_worker", "start_celery", "worker_argv"]


def worker_argv(
    queues: Iterable[str],
    *,
    concurrency: int | None = None,
    pool: str = "prefork",
    loglevel: str = "INFO",
    hostname: str | None = None,
    heartbeat: bool = False,
) -> list[str]:
    """``celery worker`` arguments for a passive worker on ``queues``.

    ``heartbeat`` keeps worker-heartbeat events (monitoring on), which tools such as Flower
    use to tell a live worker from a gone one.
    """
    argv = [
        "worker",
        "-Q",
        ",".join(queues),
        f"--pool={pool}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if not heartbeat:
        argv.append("--without-heartbeat")
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if hostname is not None:
        argv.append(f"--hostname={hostname}")
    return argv


def start_celery(app: Celery, argv: list[str]) -> int:
    """Run a ``celery`` subcommand for ``app``; returns its exit code.

    ``Celery.start`` drops the code: click 8 returns it from ``main(standalone_mode=False)``
    instead of raising ``Exit``, so a worker ending with "Unrecoverable error" (e.g.
    ACCESS_REFUSED) exited 0 through it.
    """
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    finally:
        celery_command.params[0].default = None
    return code if isinstance(code, int) else 0


def load_app(path: str) -> Celery:
    """The Celery app at ``module:attribute`` (attribute ``app`` when omitted)."""
    try:
        app = import_object(path, default_attribute="app")
    except ImportError as exc:
        module_name = path.partition(":")[0]
        raise UsageError(f"cannot import Celery app module {module_name!r}: {exc}") from None
    except AttributeError:
        app = None
    if not isinstance(app, Celery):
        raise UsageError(f"{path!r} is not a Celery app")
    return app


def run_worker(
    app_path: str,
    queues: Iterable[str],
    topology_file: Path | None = None,
    concurrency: int | None = None,
    pool: str = "prefork",
    loglevel: str = "INFO",
    metrics_port: int | None = None,
) -> int:
    """Start a passive worker on topology Celery queues; returns Celery's exit code.

    Every queue must be marked ``celery:`` in the topology (:class:`~bus.errors.UsageError`
    otherwise), and must match the broker (:func:`preflight`), before Celery starts.
    ``metrics_port`` serves :class:`WorkerMetrics` (threads or solo pool only).
    """
    names = [q.strip() for q in queues if q.strip()]
    if not names:
        raise UsageError("no queue given: -Q QUEUE[,QUEUE]")
    if metrics_port is not None and pool == "prefork":
        raise UsageError(
            "--metrics-port needs --pool threads or solo: prefork runs tasks in child "
            "processes whose counters this process cannot serve"
        )
    if topology_file is not None:
        # The app module, imported below, may build its app without a topology: that app reads
        # the default file when first configured. Make it read this one.
        use_topology_file(topology_file)
    loaded = load_topology(topology_file or default_topology_file())
    marked = celery_routes(loaded.expanded)
    for name in names:
        if name not in loaded.expanded.queues:
            raise UsageError(f"queue {name!r} is not in {loaded.file}")
        if name not in marked:
            raise UsageError(f"queue {name!r} is not marked 'celery:' in {loaded.file}")
    app = load_app(app_path)
    preflight(app, names)
    # Checked just now; the worker bootstep would repeat the same HTTP calls.
    app.conf.bus_preflight = False
    if metrics_port is not None:
        serve_worker_metrics(metrics_port)
    argv = worker_argv(
        names,
        concurrency=concurrency,
        pool=pool,
        loglevel=loglevel,
        heartbeat=bool(app.conf.get("bus_monitoring", False)),
    )
    return start_celery(app, argv)
