"""``bus worker``, ``bus beat``, ``bus celery-config``: Celery on the topology's queues."""

from __future__ import annotations

from pathlib import Path

import click

from bus.cli.support import FILE, file_option, load, output_option, write_output

__all__ = ["COMMANDS"]


@click.command()
@file_option
@click.option("-Q", "--queues", required=True, help="Comma-separated topology Celery queues.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=None)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
)
@click.option("-A", "--app", "app_path", default="consumers.tasks:app", show_default=True)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus task metrics here.")
def worker(
    file: Path | None,
    queues: str,
    concurrency: int | None,
    pool: str,
    app_path: str,
    loglevel: str,
    metrics_port: int | None,
) -> int:
    """A Celery worker on topology queues, declaring nothing (exit codes as celery)."""
    from bus.celery_app import run_worker

    return run_worker(
        app_path, queues.split(","), file, concurrency, pool, loglevel, metrics_port=metrics_port
    )


@click.command()
@file_option
@click.option(
    "--schedule-file",
    type=FILE,
    default=None,
    help="Beat state file (default: $BUS_BEAT_SCHEDULE_FILE, then ./celerybeat-schedule).",
)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
def beat(file: Path | None, schedule_file: Path | None, loglevel: str) -> int:
    """Celery beat sending the topology's celery.schedules; run exactly one per deployment."""
    from bus.beat import run_beat

    return run_beat(file, schedule_file, loglevel)


@click.command("celery-config")
@file_option
@output_option("Write the module to FILE (e.g. celeryconfig.py) instead of stdout.")
@click.option("--default-queue", default=None, help="Celery queue of unrouted tasks.")
def celery_config_command(
    file: Path | None, output: Path | None, default_queue: str | None
) -> None:
    """Celery settings module for a plain Celery app beside the bus. Exit 0, 2 invalid."""
    from bus.celery_plain import plain_celery_config

    module = output.stem if output is not None else "celeryconfig"
    expanded = load(file).expanded
    write_output(plain_celery_config(expanded, module=module, default_queue=default_queue), output)


COMMANDS: tuple[click.Command, ...] = (worker, beat, celery_config_command)
