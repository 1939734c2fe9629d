"""The ``bus`` command: errors become one ``error: ...`` line and an exit code, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml

from bus.errors import BusError, TopologyError
from bus.graph import render
from bus.topology import LoadedTopology, load_topology

__all__ = ["cli", "main"]

_file_option = click.option(
    "-f",
    "--file",
    "file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Topology file (default: $BUS_TOPOLOGY, then ./topology.yaml).",
)


def _load(file: Path | None) -> LoadedTopology:
    return load_topology(file)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """amqp-bus: a raw-AMQP message bus on RabbitMQ, declared in topology.yaml."""


@cli.command()
@_file_option
@click.option("--expanded", is_flag=True, help="Print the topology with shorthands expanded.")
def validate(file: Path | None, expanded: bool) -> None:
    """Validate the topology file (no broker). Exit 0 valid, 2 invalid."""
    loaded = _load(file)
    if expanded:
        click.echo(
            yaml.safe_dump(loaded.expanded.to_data(), sort_keys=False, allow_unicode=True), nl=False
        )
    else:
        x = loaded.expanded
        click.echo(
            f"{loaded.file}: valid ({len(x.exchanges)} exchanges, {len(x.queues)} queues, "
            f"{len(x.bindings)} bindings, {len(x.events)} events)"
        )


@cli.command()
@_file_option
@click.option(
    "--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True
)
def graph(file: Path | None, fmt: str) -> None:
    """Draw the topology: bindings, alternate and dead-letter edges."""
    click.echo(render(_load(file).expanded, fmt), nl=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: run the CLI and map errors to exit codes."""
    try:
        result: Any = cli.main(args=argv, prog_name="bus", standalone_mode=False)
    except TopologyError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        return exc.exit_code
    except BusError as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line, never a traceback
        click.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        return 1
    return int(result) if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
