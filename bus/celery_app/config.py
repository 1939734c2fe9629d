"""The Celery configuration of a topology: kombu queues that mirror the declared ones exactly.

Nothing here talks to the broker. :func:`celery_queues` describes the queues marked
``celery:`` (``no_declare=True``, type, routing key and x-arguments copied as declared) and
:func:`celery_config` the settings that keep Celery passive, confirmed and JSON-only.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kombu import entity as _kombu_entity

from bus.celery_message import SAFE_TASK_SETTINGS, celery_routes
from bus.errors import UsageError
from bus.settings import BusSettings, TopologySettings
from bus.topology import ExpandedTopology, TopologySource, expanded_topology

__all__ = [
    "KombuQueue",
    "TopologySource",
    "celery_config",
    "celery_queues",
    "default_topology_file",
    "resolve_topology",
    "use_topology_file",
]

# kombu ships py.typed but leaves these constructors unannotated; Any keeps --strict honest
# about it without a cast at every call.
KombuQueue: Any = _kombu_entity.Queue
_Exchange: Any = _kombu_entity.Exchange


# Set by ``bus worker -f FILE`` before it imports the app module: an app built without a
# topology then reads that file. Process state, not $BUS_TOPOLOGY: the worker runs in this
# process, and the prefork pool's children are forked from it after the app is configured.
_topology_file: Path | None = None


def use_topology_file(path: Path | None) -> None:
    """Make apps built without a topology read ``path`` (None: back to the default)."""
    global _topology_file
    _topology_file = path


def default_topology_file() -> Path:
    """The file of :func:`use_topology_file`, else ``$BUS_TOPOLOGY``, else ``./topology.yaml``."""
    return _topology_file or TopologySettings().topology


def resolve_topology(topology: TopologySource) -> ExpandedTopology:
    return expanded_topology(topology if topology is not None else default_topology_file())


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
        # Time limits keep Celery's default (ack): a requeue there would loop forever on a
        # classic queue.
        **SAFE_TASK_SETTINGS,
        "worker_prefetch_multiplier": prefetch_multiplier,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_enable_remote_control": monitoring,
        "worker_send_task_events": monitoring,
        "task_send_sent_event": False,
        "worker_consumer": "bus.celery_app:TopologyConsumer",
        "bus_monitoring": monitoring,
    }
    return config
