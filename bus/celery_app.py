"""Celery attached to the queues topology.yaml declares, with the broker left untouched.

``bus apply`` owns every exchange, queue and binding. Celery only gets *descriptions* of the
queues marked ``celery:`` (kombu objects with ``no_declare=True`` whose type, routing key and
x-arguments mirror the declared ones exactly) and a worker that declares nothing:

- :class:`TopologyConsumer` drops Celery's native delayed-delivery bootstep, which would
  otherwise declare 29 exchanges, 28 quorum queues and extra bindings whenever a Celery queue
  is a quorum queue (``docs/celery-on-topology.md``, pitfall 2), and keeps gossip,
  mingle, heartbeat (all of which declare exchanges or pidbox queues) off unless asked.
- Countdown / ETA is therefore **not supported**: :func:`configure_app` makes every publish
  with ``countdown`` or ``eta`` fail with :class:`~bus.errors.PublishError` before anything is
  sent. (Celery would otherwise publish it into the ``celery_delayed_27`` exchange, which does
  not exist.) Delay work with the bus's own ``retry:`` queues, or schedule it outside Celery.
- Monitoring (``celery: {monitoring: true}`` in the topology, or ``build_app(monitoring=True)``)
  turns on remote control and task events. The exchanges they use are then declared by
  ``bus apply``; :class:`TopologyControl` and :class:`TopologyEventDispatcher` only refer to
  them (``no_declare``), so a worker needs configure permission on nothing but its own
  exclusive pidbox queue, and an inspecting client on nothing but its reply queue.
- :class:`TopologyPreflight` checks, before the worker starts, that every queue the worker
  will consume exists on the broker with exactly the mirrored arguments, and that its exchange
  and binding are there; a drift ends the start with one ``error: ...`` line instead of the
  reconnect loop Celery falls into (pitfall 1).
"""

from __future__ import annotations

import importlib
import logging
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import click
from celery import Celery, bootsteps, signals
from celery.app.control import Control
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer
from kombu import entity as _kombu_entity
from kombu.exceptions import InconsistencyError
from kombu.pidbox import Mailbox

from bus import _pyamqp_guard
from bus.broker.management import ManagementClient, quote_name
from bus.celery_guard import guard_task_handler
from bus.celery_message import binding_routes, celery_routes
from bus.errors import (
    AccessRefusedError,
    BrokerUnavailableError,
    BusError,
    NotFoundError,
    PlanConflictError,
    PublishError,
    UsageError,
)
from bus.settings import BusSettings, mask_url
from bus.topology import ExpandedTopology, LoadedTopology, load_topology

__all__ = [
    "INSPECT_CONFIGURE_REGEX",
    "WORKER_CONFIGURE_REGEX",
    "TopologyConsumer",
    "TopologyControl",
    "TopologyEventDispatcher",
    "TopologyEvents",
    "TopologyMailbox",
    "TopologyPreflight",
    "WorkerMetrics",
    "build_app",
    "celery_config",
    "celery_queues",
    "configure_app",
    "inspect_active",
    "load_app",
    "preflight",
    "run_worker",
    "serve_worker_metrics",
    "start_celery",
    "worker_argv",
]

log = logging.getLogger(__name__)

# kombu ships py.typed but leaves these constructors unannotated; Any keeps --strict honest
# about it without a cast at every call.
KombuQueue: Any = _kombu_entity.Queue
_Exchange: Any = _kombu_entity.Exchange

TopologySource = LoadedTopology | ExpandedTopology | Path | str | None

# Configure permission with monitoring on (names observed on RabbitMQ 3.10 / Celery 5.7): a
# worker declares only its exclusive pidbox queue "<name>@<host>.celery.pidbox", an
# inspecting client only its exclusive reply queue "<uuid>.reply.celery.pidbox". Neither
# pattern matches the exchanges celery.pidbox, reply.celery.pidbox or celeryev.
WORKER_CONFIGURE_REGEX = r"^[^@]+@.+\.celery\.pidbox$"
INSPECT_CONFIGURE_REGEX = (
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.reply\.celery\.pidbox$"
)

# The settings an app was configured with, for the pre-flight check in the worker process.
_SETTINGS: weakref.WeakKeyDictionary[Celery, BusSettings] = weakref.WeakKeyDictionary()


class TopologyConsumer(Consumer):  # type: ignore[misc]
    """A worker consumer that declares nothing on the broker.

    - no ``DelayedDelivery`` bootstep (it declares the ``celery_delayed_*`` ladder even with
      ``no_declare=True`` queues);
    - gossip and mingle always off (they exist to coordinate workers and would need event
      receiver queues and broadcast replies at every start), heartbeat off unless monitoring
      is on, so ``celery -A ... worker`` without the ``--without-*`` flags stays passive too;
    - a message whose body cannot be decoded (e.g. a pickle) is rejected without requeue, so
      it dead-letters instead of being acknowledged away;
    - so is a message whose content header py-amqp cannot decode (:mod:`bus._pyamqp_guard`,
      installed with the app) or whose headers make Celery's handler raise
      (:mod:`bus.celery_guard`): the worker logs it and keeps serving instead of exiting.
    """

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps: ClassVar[list[str]] = [
            step
            for step in Consumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]

    def __init__(self, *args: Any, worker_options: Mapping[str, Any] | None = None, **kw: Any):
        options = dict(worker_options or {})
        options.update(without_gossip=True, without_mingle=True)
        app = kw.get("app")
        if app is None or not app.conf.get("bus_monitoring", False):
            options.update(without_heartbeat=True)
        super().__init__(*args, worker_options=options, **kw)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        return guard_task_handler(self, super().create_task_handler(*args, **kwargs))

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.critical(
            "cannot decode task message (content type %r): %s; rejected without requeue "
            "(dead-lettered if the queue has a DLX)",
            message.content_type,
            exc,
        )
        message.reject_log_error(log, self.connection_errors, requeue=False)


class TopologyMailbox(Mailbox):
    """kombu's pidbox mailbox referring to ``bus apply``'s exchanges without declaring them.

    kombu declares ``celery.pidbox`` with every broadcast and ``reply.celery.pidbox`` with
    every reply; each declare needs configure permission on the exchange even when it exists
    with the same flags. Queues (the worker's ``<node>.celery.pidbox``, the client's
    ``<oid>.reply.celery.pidbox``) are still declared: they are exclusive to one connection.
    """

    def _get_exchange(self, namespace: str, type: str) -> Any:
        base: Any = super()  # kombu leaves these methods unannotated
        exchange = base._get_exchange(namespace, type)
        exchange.no_declare = True
        return exchange

    def _get_reply_exchange(self, namespace: str) -> Any:
        base: Any = super()
        exchange = base._get_reply_exchange(namespace)
        exchange.no_declare = True
        return exchange

    def _publish_reply(
        self,
        reply: Any,
        exchange: str,
        routing_key: str,
        ticket: str,
        channel: Any = None,
        producer: Any = None,
        **opts: Any,
    ) -> None:
        # kombu's own version builds a fresh Exchange and passes it in declare=[...].
        connection: Any = self.connection
        chan = channel or connection.default_channel
        # InconsistencyError: the client's reply queue is gone, nobody waits for this reply.
        with self.producer_or_acquire(producer, chan) as prod, suppress(InconsistencyError):
            prod.publish(
                reply,
                exchange=exchange,
                routing_key=routing_key,
                headers={"ticket": ticket, "clock": self.clock.forward()},
                retry=True,
                **opts,
            )


class TopologyControl(Control):  # type: ignore[misc]
    """``app.control`` on :class:`TopologyMailbox`."""

    Mailbox = TopologyMailbox


class TopologyEventDispatcher(EventDispatcher):  # type: ignore[misc]
    """Task and worker events published to ``celeryev`` without declaring it first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A copy made for this dispatcher (celery.events.event.get_exchange), safe to change.
        self.exchange.no_declare = True


class TopologyEvents(Events):  # type: ignore[misc]
    """``app.events`` with :class:`TopologyEventDispatcher`."""

    dispatcher_cls = "bus.celery_app:TopologyEventDispatcher"


class TopologyPreflight(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: verify the consumed queues against the broker before anything starts.

    It runs while the worker is being built (after ``-Q`` is applied), so a drift stops the
    start before the banner, the pool or any connection for consuming. ``SystemExit`` is used
    because Celery's worker command turns any other exception into a traceback.
    """

    name = "amqp-bus pre-flight"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        app = parent.app
        if not app.conf.get("bus_preflight", True):
            return
        try:
            preflight(app, list(app.amqp.queues.consume_from or app.amqp.queues))
        except BusError as exc:
            raise SystemExit(f"error: {' '.join(str(exc).split())}") from None


def _resolve(topology: TopologySource) -> ExpandedTopology:
    if isinstance(topology, ExpandedTopology):
        return topology
    if isinstance(topology, LoadedTopology):
        return topology.expanded
    return load_topology(Path(topology) if topology is not None else None).expanded


def celery_queues(topology: ExpandedTopology) -> dict[str, KombuQueue]:
    """One kombu ``Queue`` per Celery queue: exact mirror of the declared queue, never declared.

    The arguments are copied as declared (same keys, values and Python types): Celery detects
    quorum queues from ``x-queue-type`` alone, and an inexact copy would make any redeclare
    fail with PRECONDITION_FAILED.
    """
    result: dict[str, KombuQueue] = {}
    for name, route in celery_routes(topology).items():
        spec = topology.queues[name]
        x = topology.exchanges[route.exchange]
        exchange = _Exchange(
            x.name,
            type=x.type,
            durable=x.durable,
            auto_delete=x.auto_delete,
            arguments=dict(x.arguments) or None,
            no_declare=True,
        )
        result[name] = KombuQueue(
            name,
            exchange=exchange,
            routing_key=route.routing_key,
            queue_arguments=dict(spec.arguments),
            durable=spec.durable,
            auto_delete=spec.auto_delete,
            no_declare=True,
        )
    return result


def _broker_use_ssl(settings: BusSettings) -> dict[str, Any] | None:
    parts = urlsplit(settings.amqp_url)
    if parts.scheme != "amqps":
        return None
    # py-amqp's SNI path turns on hostname checking when server_hostname is given; with
    # CERT_REQUIRED and no CA file it loads the system trust store. Verification cannot be off.
    options: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED,
        # None makes kombu use the host of the URL it connects to: a cluster's failover list
        # has several.
        "server_hostname": parts.hostname if len(settings.amqp_urls) == 1 else None,
    }
    if settings.tls_ca_file is not None:
        options["ca_certs"] = str(settings.tls_ca_file)
    if settings.tls_cert_file is not None:
        options["certfile"] = str(settings.tls_cert_file)
        if settings.tls_key_file is not None:
            options["keyfile"] = str(settings.tls_key_file)
    return options


def celery_config(
    topology: ExpandedTopology,
    settings: BusSettings,
    *,
    routes: Mapping[str, str] | None = None,
    default_queue: str | None = None,
    monitoring: bool | None = None,
    prefetch_multiplier: int | None = None,
) -> dict[str, Any]:
    """The Celery settings for the topology's Celery queues.

    ``routes`` maps task names (or glob patterns) to topology Celery queues; the exchange and
    routing key come from the topology. ``default_queue`` defaults to the first Celery queue.
    ``monitoring`` (remote control and task events) defaults to the topology's
    ``celery.monitoring``; turning it on when the topology does not declare the exchanges
    makes the worker fail at start with NOT_FOUND.
    ``prefetch_multiplier`` defaults to the topology's ``celery.prefetch_multiplier`` (4, as in
    Celery; 1 keeps a long task from holding others back, at a cost on short tasks, see
    bench/celery.py).
    """
    if prefetch_multiplier is None:
        prefetch_multiplier = topology.celery.prefetch_multiplier
    if prefetch_multiplier < 1:
        raise UsageError("prefetch_multiplier must be at least 1")
    if monitoring is None:
        monitoring = topology.celery.monitoring
    queues = celery_queues(topology)
    if not queues:
        raise UsageError("the topology marks no queue with 'celery:'")
    known = ", ".join(sorted(queues))
    default = default_queue or next(iter(queues))
    if default not in queues:
        raise UsageError(
            f"default queue {default!r} is not a Celery queue (Celery queues: {known})"
        )
    task_routes: dict[str, dict[str, str]] = {}
    for task, queue in (routes or {}).items():
        if queue not in queues:
            raise UsageError(
                f"task route {task!r} -> {queue!r}: not a Celery queue (Celery queues: {known})"
            )
        task_routes[task] = {"queue": queue, "routing_key": queues[queue].routing_key}
    default_q = queues[default]
    config: dict[str, Any] = {
        # Several nodes: Celery's failover list (kombu moves to the next URL on a lost
        # connection, round-robin).
        "broker_url": ";".join(settings.amqp_urls),
        "broker_use_ssl": _broker_use_ssl(settings),
        "broker_connection_timeout": settings.connect_timeout,
        "broker_heartbeat": settings.heartbeat,
        "broker_connection_retry_on_startup": True,
        # Off by default in Celery: a publish to a missing exchange would "succeed" and the
        # next valid publish would be lost with it (celery#5410).
        "broker_transport_options": {"confirm_publish": True},
        "task_queues": list(queues.values()),
        "task_default_queue": default,
        "task_default_exchange": default_q.exchange.name,
        "task_default_exchange_type": default_q.exchange.type,
        "task_default_routing_key": default_q.routing_key,
        "task_routes": task_routes,
        "task_create_missing_queues": False,
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that fails for good is rejected without requeue, so it dead-letters instead of
        # being acknowledged away. Time limits keep Celery's default (ack): a requeue there
        # would loop forever on a classic queue.
        "task_acks_on_failure": False,
        "worker_prefetch_multiplier": prefetch_multiplier,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_enable_remote_control": monitoring,
        "worker_send_task_events": monitoring,
        "task_send_sent_event": False,
        "worker_consumer": "bus.celery_app:TopologyConsumer",
        "bus_monitoring": monitoring,
    }
    return config


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


_CONTROL = "bus.celery_app:TopologyControl"
_EVENTS = "bus.celery_app:TopologyEvents"


def _install(app: Celery, settings: BusSettings | None) -> None:
    if settings is not None:
        _SETTINGS[app] = settings
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
    app._bus_installed = True


def configure_app(
    app: Celery,
    topology: TopologySource = None,
    *,
    settings: BusSettings | None = None,
    routes: Mapping[str, str] | None = None,
    default_queue: str | None = None,
    monitoring: bool | None = None,
    prefetch_multiplier: int | None = None,
) -> Celery:
    """Configure an existing Celery app for the topology's Celery queues (now, not lazily)."""
    settings = settings or BusSettings()
    _install(app, settings)
    app.conf.update(
        celery_config(
            _resolve(topology),
            settings,
            routes=routes,
            default_queue=default_queue,
            monitoring=monitoring,
            prefetch_multiplier=prefetch_multiplier,
        )
    )
    return app


def build_app(
    topology: TopologySource = None,
    *,
    settings: BusSettings | None = None,
    routes: Mapping[str, str] | None = None,
    default_queue: str | None = None,
    monitoring: bool | None = None,
    prefetch_multiplier: int | None = None,
    main: str = "amqp-bus",
) -> Celery:
    """A Celery app for the topology's Celery queues.

    The topology (default ``$BUS_TOPOLOGY``, then ``./topology.yaml``) and the settings
    (``BUS_*``) are read when the app's configuration is first used, so importing a module that
    builds the app neither reads files nor connects.
    """
    app = Celery(main, control=_CONTROL, events=_EVENTS)
    _install(app, settings)

    def lazy_config() -> dict[str, Any]:
        resolved = settings or BusSettings()
        _SETTINGS[app] = resolved
        return celery_config(
            _resolve(topology),
            resolved,
            routes=routes,
            default_queue=default_queue,
            monitoring=monitoring,
            prefetch_multiplier=prefetch_multiplier,
        )

    app.add_defaults(lazy_config)
    return app


# -- pre-flight ------------------------------------------------------------------------------


def _typed(value: Any) -> Any:
    """A value with its type made part of equality (``True`` != ``1``, ``"10"`` != ``10``)."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _typed(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("list", tuple(_typed(v) for v in value))
    return (type(value).__name__, value)


def _argument_diff(expected: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    diffs: list[str] = []
    for key in sorted(set(expected) | set(live)):
        if key not in live:
            diffs.append(f"{key}: expected {expected[key]!r}, broker has none")
        elif key not in expected:
            diffs.append(f"{key}: not in the topology, broker has {live[key]!r}")
        elif _typed(expected[key]) != _typed(live[key]):
            diffs.append(f"{key}: expected {expected[key]!r}, broker has {live[key]!r}")
    return diffs


def _settings_for(app: Celery) -> BusSettings:
    # Reading the conf first runs build_app's lazy configuration, which records the settings.
    url = app.conf.broker_url
    base = _SETTINGS.get(app) or BusSettings()
    urls = [str(u) for u in url] if isinstance(url, list | tuple) else str(url).split(";")
    urls = [u.strip() for u in urls if u.strip()]
    if not urls or not urls[0].startswith(("amqp://", "amqps://")) or urls == base.amqp_urls:
        return base
    hosts = (urlsplit(u).netloc.rpartition("@")[2] for u in urls[1:])
    nodes = tuple(host for host in hosts if host)
    return base.model_copy(update={"amqp_url": urls[0], "amqp_nodes": nodes})


def preflight(app: Celery, queues: Iterable[str] | None = None) -> None:
    """Check the app's Celery queues against the live broker; raise on the first mismatch.

    Through the management API: the queue exists with the same durability and exactly the
    same x-arguments, its exchange exists with the same type, and a binding routes the
    queue's Celery routing key to it. When the management API cannot be used (no
    ``management`` tag, plugin off), only the existence of queues and exchanges is checked,
    with passive declares, and a warning says so.

    Raises :class:`~bus.errors.NotFoundError` or :class:`~bus.errors.PlanConflictError`.
    """
    settings = _settings_for(app)
    all_queues: Mapping[str, KombuQueue] = app.amqp.queues
    names = list(queues) if queues is not None else list(all_queues)
    selected = []
    for name in names:
        if name not in all_queues:
            raise UsageError(f"queue {name!r} is not one of the app's Celery queues")
        selected.append(all_queues[name])
    try:
        with ManagementClient.from_settings(settings) as management:
            for queue in selected:
                _check_with_management(management, settings.vhost, queue)
        return
    except (AccessRefusedError, BrokerUnavailableError) as exc:
        log.warning(
            "pre-flight: management API not usable (%s); checking that queues and exchanges "
            "exist only, NOT their arguments",
            exc,
        )
    _check_passively(app, selected, settings)


def _check_with_management(management: ManagementClient, vhost: str, queue: KombuQueue) -> None:
    where = f"in vhost {vhost!r}"
    live = management.queue(vhost, queue.name)
    if live is None:
        raise NotFoundError(
            f"Celery queue {queue.name!r} does not exist {where}: run `bus apply` first"
        )
    problems = _argument_diff(queue.queue_arguments or {}, live.get("arguments") or {})
    if bool(live.get("durable")) != bool(queue.durable):
        problems.insert(0, f"durable: expected {queue.durable}, broker has {live.get('durable')}")
    if problems:
        raise PlanConflictError(
            f"Celery queue {queue.name!r} {where} differs from the topology: "
            f"{'; '.join(problems)} (run `bus plan`)"
        )
    exchange = queue.exchange
    live_x = management.request(
        "GET", f"/exchanges/{quote_name(vhost)}/{quote_name(exchange.name)}", allow_404=True
    )
    if live_x is None:
        raise NotFoundError(
            f"exchange {exchange.name!r} of Celery queue {queue.name!r} does not exist {where}: "
            "run `bus apply` first"
        )
    if live_x.get("type") != exchange.type:
        raise PlanConflictError(
            f"exchange {exchange.name!r} {where} is {live_x.get('type')!r}, "
            f"the topology says {exchange.type!r} (run `bus plan`)"
        )
    bindings = management.request(
        "GET",
        f"/bindings/{quote_name(vhost)}/e/{quote_name(exchange.name)}/q/{quote_name(queue.name)}",
    )
    keys = [b.get("routing_key", "") for b in bindings or []]
    if not binding_routes(exchange.type, keys, queue.routing_key):
        raise NotFoundError(
            f"no binding {where} routes key {queue.routing_key!r} from exchange "
            f"{exchange.name!r} to Celery queue {queue.name!r}: run `bus apply` first"
        )


def _check_passively(app: Celery, selected: list[KombuQueue], settings: BusSettings) -> None:
    errors = _connection_errors(app)
    current = ""
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            for queue in selected:
                current = queue.name
                channel = connection.channel()
                try:
                    channel.exchange_declare(queue.exchange.name, queue.exchange.type, passive=True)
                    channel.queue_declare(queue.name, passive=True)
                finally:
                    if channel.is_open:
                        channel.close()
    except errors as exc:
        text = " ".join(str(exc).split())
        if "NOT_FOUND" in text or "404" in text:
            raise NotFoundError(
                f"Celery queue {current!r}: {text}: run `bus apply` first"
            ) from None
        raise BrokerUnavailableError(
            f"pre-flight check against {mask_url(settings.amqp_url)} failed: {text}"
        ) from None


def _connection_errors(app: Celery) -> tuple[type[BaseException], ...]:
    # ensure_connection wraps a refused or failed connection in kombu's OperationalError.
    from kombu.exceptions import OperationalError

    conn = app.connection_for_read()
    try:
        errors = tuple(conn.connection_errors) + tuple(conn.channel_errors)
        return (*errors, OSError, OperationalError)
    finally:
        conn.release()


def inspect_active(app: Celery, timeout: float = 1.0) -> dict[str, list[dict[str, Any]]]:
    """Active tasks per worker node that replied within ``timeout`` seconds (remote control).

    The client declares its own exclusive reply queue; with the topology's monitoring
    exchanges it needs configure permission for :data:`INSPECT_CONFIGURE_REGEX` only.
    """
    settings = _settings_for(app)
    errors = _connection_errors(app)
    try:
        replies = app.control.inspect(timeout=timeout).active()
    except errors as exc:
        text = " ".join(str(exc).split())
        if "ACCESS_REFUSED" in text:
            raise AccessRefusedError(
                f"inspecting workers: {text} (the user needs configure permission on its "
                f"reply queue: {INSPECT_CONFIGURE_REGEX})"
            ) from None
        if "NOT_FOUND" in text:
            raise NotFoundError(
                f"inspecting workers: {text} (monitoring exchanges missing: run `bus apply` "
                "with celery: {monitoring: true})"
            ) from None
        raise BrokerUnavailableError(
            f"inspecting workers on {mask_url(settings.amqp_url)} failed: {text}"
        ) from None
    return {str(node): list(tasks or []) for node, tasks in (replies or {}).items()}


class WorkerMetrics:
    """Prometheus metrics of the tasks this process runs, fed by Celery's signals.

    - ``bus_celery_tasks_total{task, state}``: finished runs by final state: SUCCESS,
      FAILURE, RETRY, REJECTED (``Reject``), IGNORED; UNKNOWN for a message naming a task
      this worker does not have; INVALID for a message it cannot decode.
    - ``bus_celery_task_seconds{task}``: run time of each run, whatever its state.

    The signals fire where the task runs: with the prefork pool that is a child process,
    whose counters the main process cannot serve, so :func:`run_worker` refuses metrics with
    prefork. ``prometheus-client`` is imported only when this class is created.
    """

    def __init__(self, registry: Any = None, namespace: str = "bus") -> None:
        try:
            prom = importlib.import_module("prometheus_client")
        except ImportError:
            raise UsageError(
                "worker metrics need the prometheus-client package: "
                "pip install 'amqp-bus[prometheus]' (or pip install prometheus-client)"
            ) from None
        kwargs: dict[str, Any] = {"namespace": namespace, "subsystem": "celery"}
        if registry is not None:
            kwargs["registry"] = registry
        self.tasks = prom.Counter("tasks", "Finished task runs.", ["task", "state"], **kwargs)
        self.seconds = prom.Histogram("task_seconds", "Task run time.", ["task"], **kwargs)
        # Per thread, not per task id: a retry keeps its id and, republished at once, can
        # start on another thread before this run's postrun (observed with --pool threads).
        # A stack, because an eager call runs a task inside another on the same thread.
        self._local = threading.local()

    def connect(self) -> WorkerMetrics:
        # weak=False: bound methods would otherwise be dropped with the last reference.
        signals.task_prerun.connect(self._prerun, weak=False)
        signals.task_postrun.connect(self._postrun, weak=False)
        signals.task_unknown.connect(self._unknown, weak=False)
        signals.task_rejected.connect(self._invalid, weak=False)
        return self

    def disconnect(self) -> None:
        signals.task_prerun.disconnect(self._prerun)
        signals.task_postrun.disconnect(self._postrun)
        signals.task_unknown.disconnect(self._unknown)
        signals.task_rejected.disconnect(self._invalid)

    def _stack(self) -> list[float]:
        stack: list[float] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _prerun(self, **_: Any) -> None:
        self._stack().append(time.perf_counter())

    def _postrun(self, task: Any = None, state: str | None = None, **_: Any) -> None:
        stack = self._stack()
        started = stack.pop() if stack else None
        name = str(getattr(task, "name", None) or "?")
        self.tasks.labels(name, state or "?").inc()
        if started is not None:
            self.seconds.labels(name).observe(time.perf_counter() - started)

    def _unknown(self, name: str | None = None, **_: Any) -> None:
        self.tasks.labels(str(name), "UNKNOWN").inc()

    def _invalid(self, **_: Any) -> None:
        self.tasks.labels("?", "INVALID").inc()


def serve_worker_metrics(port: int, host: str = "0.0.0.0") -> WorkerMetrics:
    """Start the metrics endpoint on ``host:port`` (``/metrics``) and connect the signals."""
    metrics = WorkerMetrics()
    prom = importlib.import_module("prometheus_client")
    try:
        prom.start_http_server(port, addr=host)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return metrics.connect()


def worker_argv(
    queues: Iterable[str],
    *,
    concurrency: int | None = None,
    pool: str = "prefork",
    loglevel: str = "INFO",
    hostname: str | None = None,
    heartbeat: bool = False,
) -> list[str]:
    """``celery worker`` arguments for a passive worker on ``queues``.

    ``heartbeat`` keeps worker-heartbeat events (monitoring on), which tools such as Flower
    use to tell a live worker from a gone one.
    """
    argv = [
        "worker",
        "-Q",
        ",".join(queues),
        f"--pool={pool}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if not heartbeat:
        argv.append("--without-heartbeat")
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if hostname is not None:
        argv.append(f"--hostname={hostname}")
    return argv


def start_celery(app: Celery, argv: list[str]) -> int:
    """Run a ``celery`` subcommand for ``app``; returns its exit code.

    ``Celery.start`` drops the code: click 8 returns it from ``main(standalone_mode=False)``
    instead of raising ``Exit``, so a worker ending with "Unrecoverable error" (e.g.
    ACCESS_REFUSED) exited 0 through it.
    """
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    finally:
        celery_command.params[0].default = None
    return code if isinstance(code, int) else 0


def load_app(path: str) -> Celery:
    """The Celery app at ``module:attribute`` (attribute ``app`` when omitted)."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import Celery app module {module_name!r}: {exc}") from None
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, Celery):
        raise UsageError(f"{path!r} is not a Celery app")
    return app


def run_worker(
    app_path: str,
    queues: Iterable[str],
    topology_file: Path | None = None,
    concurrency: int | None = None,
    pool: str = "prefork",
    loglevel: str = "INFO",
    metrics_port: int | None = None,
) -> int:
    """Start a passive worker on topology Celery queues; returns Celery's exit code.

    Every queue must be marked ``celery:`` in the topology (:class:`~bus.errors.UsageError`
    otherwise), and must match the broker (:func:`preflight`), before Celery starts.
    ``metrics_port`` serves :class:`WorkerMetrics` (threads or solo pool only).
    """
    names = [q.strip() for q in queues if q.strip()]
    if not names:
        raise UsageError("no queue given: -Q QUEUE[,QUEUE]")
    if metrics_port is not None and pool == "prefork":
        raise UsageError(
            "--metrics-port needs --pool threads or solo: prefork runs tasks in child "
            "processes whose counters this process cannot serve"
        )
    if topology_file is not None:
        # The app reads its topology lazily from $BUS_TOPOLOGY: make it read the same file.
        os.environ["BUS_TOPOLOGY"] = str(topology_file)
    loaded = load_topology(topology_file)
    marked = celery_routes(loaded.expanded)
    for name in names:
        if name not in loaded.expanded.queues:
            raise UsageError(f"queue {name!r} is not in {loaded.file}")
        if name not in marked:
            raise UsageError(f"queue {name!r} is not marked 'celery:' in {loaded.file}")
    app = load_app(app_path)
    preflight(app, names)
    # Checked just now; the worker bootstep would repeat the same HTTP calls.
    app.conf.bus_preflight = False
    if metrics_port is not None:
        serve_worker_metrics(metrics_port)
    argv = worker_argv(
        names,
        concurrency=concurrency,
        pool=pool,
        loglevel=loglevel,
        heartbeat=bool(app.conf.get("bus_monitoring", False)),
    )
    return start_celery(app, argv)
