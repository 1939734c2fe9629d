"""The topology Celery app: :func:`build_app` (lazy) and :func:`configure_app` (an existing app).

Both install the same guards once per app: delayed publishes refused, the non-declaring
control and events classes, the pre-flight bootstep, and py-amqp's header guard.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, Unpack

from celery import Celery

from bus import _pyamqp_guard
from bus.celery_app.app_settings import record_settings
from bus.celery_app.config import celery_config, resolve_topology
from bus.celery_app.preflight import TopologyPreflight
from bus.celery_tracing import install_worker_tracing
from bus.errors import PublishError
from bus.settings import BusSettings
from bus.topology import TopologySource

__all__ = ["CeleryOptions", "build_app", "configure_app"]


def _reject_delays(send_task: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(name: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("countdown") or kwargs.get("eta") is not None:
            raise PublishError(
                f"task {name}: countdown/eta is not supported on topology queues (the worker "
                "runs without Celery's delayed-delivery exchanges); nothing was sent"
            )
        return send_task(name, *args, **kwargs)

    guarded.__wrapped__ = send_task  # type: ignore[attr-defined]
    return guarded


# Dotted names Celery resolves on first use; the package re-exports both classes.
_CONTROL = "bus.celery_app:TopologyControl"
_EVENTS = "bus.celery_app:TopologyEvents"


def _install(app: Celery, settings: BusSettings | None) -> None:
    if settings is not None:
        record_settings(app, settings)
    if getattr(app, "_bus_installed", False):
        return
    # Process-wide: a worker must survive a delivery whose header py-amqp cannot decode.
    _pyamqp_guard.install()
    # Instance attribute: Task.apply_async and Task.retry both publish through app.send_task.
    app.send_task = _reject_delays(app.send_task)
    app.control_cls, app.events_cls = _CONTROL, _EVENTS
    # Created before this call (with kombu's declaring mailbox): built again on next use.
    app.__dict__.pop("control", None)
    app.__dict__.pop("events", None)
    app.steps["worker"].add(TopologyPreflight)
    # Signals: they fire only in a worker running a task, and do nothing with tracing off.
    install_worker_tracing()
    app._bus_installed = True


class CeleryOptions(TypedDict, total=False):
    """The keywords of :func:`build_app` and :func:`configure_app` that go on to
    :func:`~bus.celery_app.config.celery_config` (see there)."""

    routes: Mapping[str, str] | None
    default_queue: str | None
    monitoring: bool | None
    prefetch_multiplier: int | None


def configure_app(
    app: Celery,
    topology: TopologySource = None,
    *,
    settings: BusSettings | None = None,
    **options: Unpack[CeleryOptions],
) -> Celery:
    """Configure an existing Celery app for the topology's Celery queues (now, not lazily)."""
    settings = settings or BusSettings()
    _install(app, settings)
    app.conf.update(celery_config(resolve_topology(topology), settings, **options))
    return app


def build_app(
    topology: TopologySource = None,
    *,
    settings: BusSettings | None = None,
    main: str = "amqp-bus",
    **options: Unpack[CeleryOptions],
) -> Celery:
    """A Celery app for the topology's Celery queues.

    The topology (default :func:`~bus.celery_app.config.default_topology_file`) and the settings
    (``BUS_*``) are read when the app's configuration is first used, so importing a module that
    builds the app neither reads files nor connects.
    """
    # Used later: a misspelt keyword is refused now, as celery_config would refuse it then.
    inspect.signature(celery_config).bind_partial(**options)
    app = Celery(main, control=_CONTROL, events=_EVENTS)
    _install(app, settings)

    def lazy_config() -> dict[str, Any]:
        resolved = settings or BusSettings()
        record_settings(app, resolved)
        return celery_config(resolve_topology(topology), resolved, **options)

    app.add_defaults(lazy_config)
    return app
