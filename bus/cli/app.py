"""The ``bus`` command: errors become one ``error: ...`` line and an exit code, no traceback.

Each command group lives in a module of this package that lists its commands in
``COMMANDS``; :data:`COMMAND_MODULES` names those modules, so a new command module is one
line here.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
from pydantic import ValidationError

from bus.cli.support import settings_problems
from bus.errors import BusError, TopologyError
from bus.settings import TracingSettings, install_log_redaction, redact
from bus.tracing import set_tracing

__all__ = ["COMMAND_MODULES", "cli", "main", "run"]

# The modules of bus.cli holding commands (each lists them in COMMANDS).
COMMAND_MODULES = (
    "topology",
    "broker",
    "migrate",
    "publish",
    "consume",
    "demo",
    "contracts",
    "dlq",
    "outbox",
    "celery",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """amqp-bus: a raw-AMQP message bus on RabbitMQ, declared in topology.yaml."""


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(f"bus.cli.{_name}").COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: run the CLI and map errors to exit codes."""
    # Passwords never reach a log line or an error line, whatever library wrote it.
    install_log_redaction()
    try:
        if TracingSettings().tracing:
            set_tracing(True)
        result: Any = cli.main(args=argv, prog_name="bus", standalone_mode=False)
    except TopologyError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        return exc.exit_code
    except BusError as exc:
        click.echo(f"error: {redact(' '.join(str(exc).split()))}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {redact(exc.format_message())}", err=True)
        return exc.exit_code
    except ValidationError as exc:  # BusSettings() from the environment: never echo the input
        click.echo(f"error: {redact(settings_problems(exc))}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line, never a traceback
        click.echo(f"error: internal error: {type(exc).__name__}: {redact(str(exc))}", err=True)
        return 1
    return int(result) if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
