"""``bus consume --app MODULE:APP [QUEUE ...]``: run a consumer app in the foreground.

The consuming side (``consumers``) is imported when the command runs: the other commands do
not load it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bus.cli.support import broker_settings, file_option, load
from bus.errors import UsageError

if TYPE_CHECKING:
    from consumers.runtime import ConsumerApp

__all__ = ["COMMANDS", "load_app", "run_app"]


def load_app(path: str) -> ConsumerApp:
    """The :class:`ConsumerApp` named by ``package.module:attribute``."""
    from consumers.runtime import ConsumerApp

    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--app must look like MODULE:APP (e.g. consumers.demo:app), got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import consumer app {path!r}: {exc}") from None
    if not isinstance(target, ConsumerApp):
        raise UsageError(f"{path!r} is a {type(target).__name__}, not a consumers.ConsumerApp")
    return target


def run_app(
    path: str,
    *,
    file: Path | None = None,
    queues: Sequence[str] | None = None,
    grace: float | None = None,
    metrics_port: int | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; returns after a clean shutdown, raises a BusError otherwise."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    from consumers.metrics import PrometheusMetrics

    app = load_app(path)
    topology = load(file)
    if metrics_port is not None:
        app.metrics = PrometheusMetrics()
        prometheus_client: Any = importlib.import_module("prometheus_client")
        try:
            prometheus_client.start_http_server(metrics_port)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
    _run(app.run(broker_settings(), topology=topology, queues=queues or None, grace=grace))


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (the ``fast`` extra), else on asyncio.

    ``bus consume`` owns its event loop, so it may choose one: uvloop delivers about 20 %
    more messages per core (docs/performance-baseline.md). ``ConsumerApp.run`` and the
    ``Publisher`` never change the loop of a program that embeds them.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


@click.command("consume")
@file_option
@click.option("--app", "app_path", required=True, metavar="MODULE:APP", help="consumers.demo:app")
@click.option("--grace", type=float, default=None, help="Seconds for running handlers at shutdown.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics here.")
@click.argument("queues", nargs=-1)
def consume_command(
    file: Path | None, app_path: str, grace: float | None, metrics_port: int | None,
    queues: tuple[str, ...],
) -> None:  # fmt: skip
    """Run a consumer app until SIGTERM/SIGINT (exit 0 on a clean shutdown)."""
    run_app(app_path, file=file, queues=queues, grace=grace, metrics_port=metrics_port)


COMMANDS: tuple[click.Command, ...] = (consume_command,)
