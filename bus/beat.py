"""``bus beat``: Celery beat sending exactly the schedules of topology.yaml's ``celery:`` section.

Each schedule becomes one ``beat_schedule`` entry whose only option is ``queue``: the app from
:func:`bus.celery_app.build_app` resolves it to the queue's exchange and routing key from the
topology, and refuses a queue it does not mirror. Tasks are sent by name, so beat needs no
access to the task code. Beat publishes immediate tasks (no countdown / eta), which the
topology app accepts; its only state is the schedule file (when each entry last ran).

Exactly one beat may run per deployment: two beats send every task twice. Nothing here
enforces it (see the README, "Periodic tasks").
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from celery.schedules import crontab

from bus.celery_app import build_app, start_celery
from bus.errors import UsageError
from bus.settings import BeatSettings, BusSettings, TopologySettings
from bus.topology import ExpandedTopology, LoadedTopology, load_topology
from bus.topology.model import Schedule

__all__ = [
    "DEFAULT_SCHEDULE_FILE",
    "beat_argv",
    "beat_schedule",
    "build_beat_app",
    "default_schedule_file",
    "run_beat",
    "schedule_of",
]

DEFAULT_SCHEDULE_FILE = "celerybeat-schedule"


def default_schedule_file(files: BeatSettings | None = None) -> Path:
    """``$BUS_BEAT_SCHEDULE_FILE``, else ``./celerybeat-schedule``."""
    files = files or BeatSettings()
    return files.beat_schedule_file or Path(DEFAULT_SCHEDULE_FILE)


def schedule_of(entry: Schedule) -> timedelta | crontab:
    """The Celery schedule of one entry: an interval or a crontab (times in UTC)."""
    if entry.every is not None:
        return timedelta(milliseconds=entry.every)
    if entry.cron is not None:
        # The loader normalised the expression to single spaces, as from_string needs.
        return crontab.from_string(entry.cron)
    raise UsageError(f"schedule for task {entry.task!r} has neither every nor cron")


def beat_schedule(topology: ExpandedTopology) -> dict[str, dict[str, Any]]:
    """``beat_schedule`` for the topology's ``celery.schedules`` (empty when there are none)."""
    return {
        name: {
            "task": entry.task,
            "schedule": schedule_of(entry),
            "args": tuple(entry.args),
            "kwargs": dict(entry.kwargs),
            "options": {"queue": entry.queue},
        }
        for name, entry in topology.celery.schedules.items()
    }


def build_beat_app(
    topology: LoadedTopology | ExpandedTopology, settings: BusSettings | None = None
) -> Celery:
    """The topology app with ``beat_schedule`` set; UsageError when nothing is scheduled."""
    expanded = topology.expanded if isinstance(topology, LoadedTopology) else topology
    schedule = beat_schedule(expanded)
    if not schedule:
        raise UsageError("the topology has no celery.schedules: beat would send nothing")
    app = build_app(expanded, settings=settings, main="amqp-bus-beat")
    app.conf.beat_schedule = schedule
    return app


def beat_argv(schedule_file: Path, loglevel: str = "INFO") -> list[str]:
    return ["beat", f"--schedule={schedule_file}", f"--loglevel={loglevel}"]


def run_beat(
    topology_file: Path | None = None,
    schedule_file: Path | None = None,
    loglevel: str = "INFO",
    *,
    settings: BusSettings | None = None,
    files: BeatSettings | None = None,
) -> int:
    """Run beat in the foreground until SIGTERM/SIGINT; returns Celery's exit code.

    ``settings`` and ``files`` default to the environment's (``BUS_*``), read here once.
    """
    files = files or BeatSettings()
    loaded = load_topology(topology_file or TopologySettings().topology)
    app = build_beat_app(loaded, settings or BusSettings())
    target = schedule_file if schedule_file is not None else default_schedule_file(files)
    if not target.parent.is_dir():
        raise UsageError(f"schedule file directory does not exist: {target.parent}")
    return start_celery(app, beat_argv(target, loglevel))
