"""The beat schedule built from topology.yaml's celery.schedules (no broker)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from celery.schedules import crontab

from bus.beat import beat_schedule, build_beat_app, default_schedule_file
from bus.errors import PublishError, UsageError
from bus.settings import BusSettings
from bus.topology import parse_topology

BASE = """\
version: 1
exchanges:
  tasks: {type: topic}
queues:
  reports.build:
    celery: true
    bindings: [{exchange: tasks, routing_key: reports.build}]
  email.send:
    celery: true
    bindings: [{exchange: tasks, routing_key: mail.out}]
"""
SETTINGS = BusSettings(amqp_url="amqp://guest:guest@127.0.0.1:1/none")


def _schedules(body: str) -> str:
    return BASE + "celery:\n  schedules:\n" + body


def test_every_and_cron_become_celery_schedules_with_the_queue() -> None:
    loaded = parse_topology(
        _schedules(
            "    cleanup:\n"
            "      task: consumers.tasks.cleanup\n"
            "      queue: email.send\n"
            "      every: 30s\n"
            "      args: [a, 1]\n"
            "      kwargs: {dry: true}\n"
            "    nightly:\n"
            "      task: consumers.tasks.build_report\n"
            "      queue: reports.build\n"
            "      cron: '*/5  0-6 1,15 jan-mar mon-fri'\n"
        )
    )

    schedule = beat_schedule(loaded.expanded)

    assert schedule["cleanup"] == {
        "task": "consumers.tasks.cleanup",
        "schedule": timedelta(seconds=30),
        "args": ("a", 1),
        "kwargs": {"dry": True},
        "options": {"queue": "email.send"},
    }
    nightly = schedule["nightly"]
    assert nightly["options"] == {"queue": "reports.build"}
    assert nightly["schedule"] == crontab(
        minute="*/5",
        hour="0-6",
        day_of_month="1,15",
        month_of_year="jan-mar",
        day_of_week="mon-fri",
    )


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 * * 0",
        "*/15 9-17 * * mon-fri",
        "0 12 1,15 * *",
        "30 2 * jan-mar,dec sun",
        "0-30/10 * * * *",
    ],
)
def test_valid_cron_expressions_match_celery_fields(cron: str) -> None:
    loaded = parse_topology(
        _schedules(f"    s: {{task: t.a, queue: reports.build, cron: '{cron}'}}\n")
    )
    minute, hour, dom, month, dow = cron.split()
    assert beat_schedule(loaded.expanded)["s"]["schedule"] == crontab(
        minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow
    )


def test_beat_app_routes_each_entry_to_the_topology_queue() -> None:
    loaded = parse_topology(
        _schedules("    mail: {task: any.task, queue: email.send, every: 1s}\n")
    )
    app = build_beat_app(loaded, SETTINGS)
    entry = app.conf.beat_schedule["mail"]

    route = app.amqp.router.route(dict(entry["options"]), entry["task"])

    queue = route["queue"]
    assert queue.name == "email.send"
    assert queue.exchange.name == "tasks"
    assert queue.routing_key == "mail.out"
    assert queue.no_declare is True
    # Beat publishes immediate tasks only; the app still refuses delayed ones.
    with pytest.raises(PublishError, match="countdown/eta"):
        app.send_task(entry["task"], countdown=5, **entry["options"])


def test_a_topology_without_schedules_has_nothing_for_beat() -> None:
    with pytest.raises(UsageError, match=r"no celery\.schedules"):
        build_beat_app(parse_topology(BASE), SETTINGS)


def test_schedule_file_defaults_to_env_then_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUS_BEAT_SCHEDULE_FILE", raising=False)
    assert default_schedule_file() == Path("celerybeat-schedule")
    monkeypatch.setenv("BUS_BEAT_SCHEDULE_FILE", "/var/lib/bus/beat")
    assert default_schedule_file() == Path("/var/lib/bus/beat")
