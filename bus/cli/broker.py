"""``bus plan``, ``apply``, ``export``, ``status``: the topology against a live vhost."""

from __future__ import annotations

from pathlib import Path

import click

from bus.cli.support import (
    broker_settings,
    file_option,
    load,
    output_option,
    plan_exit_code,
    timeout_option,
)

__all__ = ["COMMANDS"]


@click.command("plan")
@file_option
@click.option("--prune", is_flag=True, help="Show what apply --prune would delete.")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 3 when changes are pending, 1 when anything could not be verified, 0 in sync.",
)
def plan_command(file: Path | None, prune: bool, detailed_exitcode: bool) -> int:
    """Diff the topology against the live vhost. Exit 0, 1 conflict/broker, 2 invalid, 3 changes."""
    from bus.broker import PlanConflicts, plan

    result = plan(load(file), broker_settings(), prune=prune)
    click.echo(result.render(), nl=False)
    if result.conflicts:
        raise PlanConflicts(result, "bus apply will change nothing until they are resolved")
    return plan_exit_code(result, detailed_exitcode)


@click.command("apply")
@file_option
@click.option("--prune", is_flag=True, help="Delete what the topology does not declare.")
@click.option(
    "--recreate-empty", is_flag=True, help="Replace a conflicting queue when it is empty."
)
@click.option(
    "--allow-data-loss", is_flag=True, help="With --prune: delete queues holding messages too."
)
@click.option("--dry-run", is_flag=True, help="Plan and stop: change nothing.")
@click.option(
    "--migrate",
    is_flag=True,
    help="Move conflicting queues that hold messages live (docs/queue-migration.md).",
)
def apply_command(
    file: Path | None,
    prune: bool,
    recreate_empty: bool,
    allow_data_loss: bool,
    dry_run: bool,
    migrate: bool,
) -> None:
    """Apply the plan; nothing changes while a conflict exists. Exit 0, 1, 2."""
    from bus.broker import apply
    from bus.cli.migrate import apply_migrate
    from bus.errors import UsageError

    if allow_data_loss and not prune:
        raise UsageError("--allow-data-loss only applies with --prune")
    loaded = load(file)
    if migrate:
        apply_migrate(
            loaded, broker_settings(), prune=prune, recreate_empty=recreate_empty,
            allow_data_loss=allow_data_loss, dry_run=dry_run,
        )  # fmt: skip
        return
    result = apply(
        loaded, broker_settings(), prune=prune, recreate_empty=recreate_empty,
        allow_data_loss=allow_data_loss, dry_run=dry_run,
        on_plan=lambda p: click.echo(p.render(), nl=False),
    )  # fmt: skip
    click.echo(result.summary())


@click.command("export")
@click.option("--vhost", default=None, help="Vhost to export (default: the URL's).")
@output_option("Write to FILE instead of stdout.")
def export_command(vhost: str | None, output: Path | None) -> None:
    """topology.yaml of an existing vhost (applying it back plans as no change). Exit 0, 1."""
    from bus.broker import export_topology
    from bus.errors import BrokerError

    exported = export_topology(broker_settings(), vhost)
    if output is None:
        click.echo(exported.text, nl=False)
    else:
        try:
            output.write_text(exported.text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {output} (vhost {exported.vhost!r})", err=True)
    for issue in exported.issues:
        click.echo(f"warning: {issue}", err=True)
    if exported.issues:
        raise BrokerError(
            f"vhost {exported.vhost!r} holds {len(exported.issues)} thing(s) topology.yaml "
            "rejects (see the warnings): fix them on the broker or in the file"
        )


@click.command()
@file_option
@click.option("--vhost", default=None, help="Vhost (default: the topology's, then the URL's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch",
    type=float,
    is_flag=False,
    flag_value=2.0,
    default=None,
    help="Refresh every N seconds (default 2) until interrupted.",
)
@click.option(
    "--allow-idle", multiple=True, metavar="REGEX", help="Queues allowed to have no consumer."
)
@click.option(
    "--workers", is_flag=True, help="Celery workers and their active tasks (needs monitoring)."
)
@timeout_option("--workers-timeout", 1.0, "Seconds to wait for workers to answer.")
def status(
    file: Path | None,
    vhost: str | None,
    as_json: bool,
    watch: float | None,
    allow_idle: tuple[str, ...],
    workers: bool,
    workers_timeout: float,
) -> int:
    """Depths, consumers, rates; exit 4 when a DLQ holds messages or a queue is unserved."""
    import json
    import time

    from bus.broker.management import ManagementClient
    from bus.status import UNHEALTHY, collect_status, collect_workers, render_table

    loaded = load(file)
    settings = broker_settings()
    target = vhost or (loaded.model.vhost.name if loaded.model.vhost else None) or settings.vhost
    with ManagementClient.from_settings(settings) as management:
        while True:
            report = collect_status(
                loaded.expanded, settings, management, target, allow_idle=allow_idle
            )
            if workers:
                found = collect_workers(loaded.expanded, settings, target, timeout=workers_timeout)
                report.monitoring, report.workers = found is not None, found
            if as_json:
                click.echo(json.dumps(report.to_data(), indent=2))
            else:
                if watch:
                    click.clear()
                click.echo(render_table(report), nl=False)
            if not watch:
                return 0 if report.healthy else UNHEALTHY
            time.sleep(watch)


COMMANDS: tuple[click.Command, ...] = (plan_command, apply_command, export_command, status)
