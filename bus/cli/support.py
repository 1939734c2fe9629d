"""What the ``bus`` commands share: their common options, settings and the drift-check rule.

The commands are the edge where settings are read from the environment (once per command) and
passed down; nothing below ``bus.cli`` reads the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.decorators import FC
from pydantic import ValidationError

from bus.errors import PlanUnverifiedError, UsageError
from bus.settings import BusSettings, TopologySettings
from bus.topology import LoadedTopology, load_topology

if TYPE_CHECKING:
    from bus.broker.plan import Plan

__all__ = [
    "FILE",
    "POSITIVE",
    "broker_settings",
    "file_option",
    "load",
    "output_option",
    "plan_exit_code",
    "settings_problems",
    "timeout_option",
    "topology_option",
    "topology_path",
    "write_output",
]

# A file name (a folder is refused), and a number above zero.
FILE = click.Path(path_type=Path, dir_okay=False)
POSITIVE = click.FloatRange(min=0, min_open=True)


def topology_option(*names: str, purpose: str = "") -> Callable[[FC], FC]:
    """``-f`` (and ``names``): the topology file, found as :func:`topology_path` says."""
    return click.option(
        "-f",
        *names,
        type=FILE,
        default=None,
        help=f"Topology file{purpose} (default: $BUS_TOPOLOGY, then ./topology.yaml).",
    )


file_option = topology_option("--file", "file")


def output_option(text: str) -> Callable[[FC], FC]:
    """``-o FILE``: where a command writes what it would print."""
    return click.option("-o", "--output", type=FILE, default=None, help=text)


def timeout_option(name: str, default: float, text: str) -> Callable[[FC], FC]:
    """A positive number of seconds to wait for something, its default shown."""
    return click.option(name, type=POSITIVE, default=default, show_default=True, help=text)


def topology_path(file: Path | None) -> Path:
    """The topology file a command reads: ``-f FILE``, else ``$BUS_TOPOLOGY``, else the default."""
    return file if file is not None else TopologySettings().topology


def load(file: Path | None) -> LoadedTopology:
    return load_topology(topology_path(file))


def settings_problems(exc: ValidationError) -> str:
    """The messages of a settings error, without the input values (a URL holds a password)."""
    problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
    return f"invalid settings: {problems}"


def broker_settings() -> BusSettings:
    """Settings from the environment; an invalid one is a one-line usage error (exit 2)."""
    try:
        return BusSettings()
    except ValidationError as exc:
        raise UsageError(settings_problems(exc)) from None


def plan_exit_code(result: Plan, detailed_exitcode: bool) -> int:
    """0, or with ``--detailed-exitcode`` 3 when changes are pending.

    A drift check that could not compare everything must not pass: with the flag, any
    unverified object raises :class:`PlanUnverifiedError` (exit 1), never 0 (or 3).
    """
    from bus.broker.plan import Action

    if not detailed_exitcode:
        return 0
    unverified = result.counts()[Action.UNVERIFIED]
    if unverified or not result.verified:
        what = f"{unverified} object(s)" if unverified else "part of the vhost"
        raise PlanUnverifiedError(
            f"{what} could not be verified (see the 'Not verified' lines): the drift check "
            "is incomplete; give the user the management API (tag 'management') and "
            "permissions on the vhost"
        )
    return 3 if result.has_changes else 0


def write_output(text: str, output: Path | None) -> None:
    """Print ``text``, or write it to ``output`` and say so on stderr."""
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output}", err=True)
