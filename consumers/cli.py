"""``bus consume --app MODULE:APP [QUEUE ...]``: run a consumer app in the foreground.

Kept out of ``bus/cli.py`` so that the other commands do not import the consuming side.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from bus.errors import UsageError
from bus.settings import BusSettings
from bus.topology import load_topology
from consumers.metrics import PrometheusMetrics
from consumers.runtime import ConsumerApp

__all__ = ["load_app", "run_app"]


def load_app(path: str) -> ConsumerApp:
    """The :class:`ConsumerApp` named by ``package.module:attribute``."""
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
    app = load_app(path)
    topology = load_topology(file)
    if metrics_port is not None:
        app.metrics = PrometheusMetrics()
        prometheus_client: Any = importlib.import_module("prometheus_client")
        try:
            prometheus_client.start_http_server(metrics_port)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
    _run(app.run(BusSettings(), topology=topology, queues=queues or None, grace=grace))


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
