"""``bus migrate QUEUE`` and ``bus apply --migrate``: the command side of :mod:`bus.migrate`.

``migrate_command`` is a click command the ``bus`` group registers; :func:`apply_migrate` is
what ``bus apply --migrate`` calls. ``python -m bus.migrate_cli QUEUE`` runs the command on
its own (the kill-and-resume test runs it as a child process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bus.errors import UsageError
from bus.settings import BusSettings

__all__ = ["apply_migrate", "migrate_command"]


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def apply_migrate(
    file: Path | None,
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
    from bus.topology import load_topology

    if recreate_empty or allow_data_loss:
        raise UsageError(
            "--migrate keeps every message: it cannot be combined with --recreate-empty or "
            "--allow-data-loss"
        )
    migrate(
        load_topology(file), settings, queues=queues, prune=prune, dry_run=dry_run,
        on_plan=lambda p: click.echo(p.render(show_unchanged=False), nl=False), say=_echo,
    )  # fmt: skip


@click.command("migrate")
@click.option(
    "-f", "--file", "file", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Topology file (default: $BUS_TOPOLOGY, then ./topology.yaml).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the steps and stop: change nothing.")
@click.argument("queues", nargs=-1, required=True)
def migrate_command(file: Path | None, dry_run: bool, queues: tuple[str, ...]) -> None:
    """Move QUEUE (and its dead-letter and retry queues) to its new properties, keeping its
    messages: a blue/green move through QUEUE.migrating. Run again after a stop to finish.
    Messages may reorder. Exit 0, 1 broker error or other conflict, 2 invalid."""
    from bus.cli_support import broker_settings

    apply_migrate(file, broker_settings(), dry_run=dry_run, queues=list(queues))


if __name__ == "__main__":  # pragma: no cover - exercised as a child process by the tests
    from bus.cli import cli, main

    cli.add_command(migrate_command)
    sys.exit(main(["migrate", *sys.argv[1:]]))
