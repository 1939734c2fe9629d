"""``bus migrate QUEUE`` and ``bus apply --migrate``: the command side of :mod:`bus.migrate`.

``migrate_command`` is a click command the ``bus`` group registers; :func:`apply_migrate` is
what ``bus apply --migrate`` calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bus.cli.support import broker_settings, file_option, load
from bus.errors import UsageError
from bus.settings import BusSettings
from bus.topology import LoadedTopology

__all__ = ["COMMANDS", "apply_migrate", "migrate_command"]


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def apply_migrate(
    loaded: LoadedTopology,
    settings: BusSettings,
    *,
    prune: bool = False,
    recreate_empty: bool = False,
    allow_data_loss: bool = False,
    dry_run: bool = False,
    queues: list[str] | None = None,
) -> None:
    """``bus apply --migrate [--prune] [--dry-run]``: apply, moving conflicting queues live."""
    from bus.migrate import migrate

    if recreate_empty or allow_data_loss:
        raise UsageError(
            "--migrate keeps every message: it cannot be combined with --recreate-empty or "
            "--allow-data-loss"
        )
    migrate(
        loaded, settings, queues=queues, prune=prune, dry_run=dry_run,
        on_plan=lambda p: click.echo(p.render(show_unchanged=False), nl=False), say=_echo,
    )  # fmt: skip


@click.command("migrate")
@file_option
@click.option("--dry-run", is_flag=True, help="Print the steps and stop: change nothing.")
@click.argument("queues", nargs=-1, required=True)
def migrate_command(file: Path | None, dry_run: bool, queues: tuple[str, ...]) -> None:
    """Move QUEUE (and its dead-letter and retry queues) to its new properties, keeping its
    messages: a blue/green move through QUEUE.migrating. Run again after a stop to finish.
    Messages may reorder. Exit 0, 1 broker error or other conflict, 2 invalid."""
    apply_migrate(load(file), broker_settings(), dry_run=dry_run, queues=list(queues))


COMMANDS: tuple[click.Command, ...] = (migrate_command,)
