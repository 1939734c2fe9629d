"""``bus demo``: the whole bus end to end on a vhost of its own (see :mod:`bus.demo`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

import click
from pydantic import ValidationError

from bus.cli.support import file_option, load
from bus.errors import UsageError
from bus.settings import BrokerChoiceSettings, BusSettings

__all__ = ["COMMANDS"]

Settings = TypeVar("Settings", BusSettings, BrokerChoiceSettings)


def _read_settings(kind: type[Settings], prefix: str) -> Settings:
    try:
        return kind()
    except ValidationError as exc:
        problems = "; ".join(
            f"{prefix}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"invalid settings: {problems}") from None


@click.command()
@file_option
@click.option("--vhost", default=None, help="Use this vhost (default: a new one, deleted after).")
@click.option("--keep", is_flag=True, help="Keep the demo vhost and its messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def demo(file: Path | None, vhost: str | None, keep: bool, as_json: bool) -> int:
    """The whole bus end to end; exit 1 if an expected delivery did not happen."""
    import json

    from bus.demo import render_table, run_demo

    err = sys.stderr
    interactive = err.isatty()

    def progress(line: str) -> None:
        if interactive:
            err.write("\r\033[K" + line)
            err.flush()
        elif line:
            err.write(line + "\n")

    loaded = load(file)
    report = run_demo(
        loaded,
        _read_settings(BusSettings, "BUS_"),
        _read_settings(BrokerChoiceSettings, "BUS_TEST_"),
        vhost=vhost,
        keep=keep,
        echo=lambda line: click.echo(line, err=True),
        progress=progress,
    )
    if as_json:
        click.echo(json.dumps(report.to_data(), indent=2))
    else:
        click.echo(render_table(report), nl=False)
    return 0 if report.ok else 1


COMMANDS: tuple[click.Command, ...] = (demo,)
