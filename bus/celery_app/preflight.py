"""The pre-flight check: the consumed queues exist on the broker exactly as Celery mirrors them.

Values are compared by the broker's own rules (:mod:`bus.broker.equality`, the module
``bus plan`` uses), so the check and the plan never disagree on what "the same" means.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery, bootsteps

from bus.broker.equality import argument_differences, same_value
from bus.broker.management import ManagementClient
from bus.broker.passive import check_exchange, check_queue
from bus.broker.plan_model import ABSENT
from bus.celery_app.app_settings import connection_errors, settings_for
from bus.celery_app.config import KombuQueue
from bus.celery_message import binding_routes
from bus.errors import (
    AccessRefusedError,
    BrokerUnavailableError,
    BusError,
    NotFoundError,
    PlanConflictError,
    UsageError,
)
from bus.settings import mask_url

__all__ = ["TopologyPreflight", "preflight"]

log = logging.getLogger("bus.celery_app")


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


def preflight(app: Celery, queues: Iterable[str] | None = None) -> None:
    """Check the app's Celery queues against the live broker; raise on the first mismatch.

    Through the management API: the queue exists with the same durability and exactly the
    same x-arguments, its exchange exists with the same type, and a binding routes the
    queue's Celery routing key to it. When the management API cannot be used (no
    ``management`` tag, plugin off), only the existence of queues and exchanges is checked,
    with passive declares, and a warning says so.

    Raises :class:`~bus.errors.NotFoundError` or :class:`~bus.errors.PlanConflictError`.
    """
    settings = settings_for(app)
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
    _check_passively(app, selected, mask_url(settings.amqp_url))


def _argument_problems(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """The arguments that differ, by the broker's equality rules, one phrase each."""
    problems = []
    for key, want, have in argument_differences(desired, live):
        if have is ABSENT:
            problems.append(f"{key}: expected {want!r}, broker has none")
        elif want is ABSENT:
            problems.append(f"{key}: not in the topology, broker has {have!r}")
        else:
            problems.append(f"{key}: expected {want!r}, broker has {have!r}")
    return problems


def _check_with_management(management: ManagementClient, vhost: str, queue: KombuQueue) -> None:
    in_vhost = f"in vhost {vhost!r}"
    live = management.queue(vhost, queue.name)
    if live is None:
        raise NotFoundError(
            f"Celery queue {queue.name!r} does not exist {in_vhost}: run `bus apply` first"
        )
    problems = _argument_problems(queue.queue_arguments or {}, live.get("arguments") or {})
    if not same_value(bool(queue.durable), bool(live.get("durable"))):
        problems.insert(0, f"durable: expected {queue.durable}, broker has {live.get('durable')}")
    if problems:
        raise PlanConflictError(
            f"Celery queue {queue.name!r} {in_vhost} differs from the topology: "
            f"{'; '.join(problems)} (run `bus plan`)"
        )
    exchange = queue.exchange
    live_x = management.exchange(vhost, exchange.name)
    if live_x is None:
        raise NotFoundError(
            f"exchange {exchange.name!r} of Celery queue {queue.name!r} does not exist "
            f"{in_vhost}: run `bus apply` first"
        )
    if not same_value(exchange.type, live_x.get("type")):
        raise PlanConflictError(
            f"exchange {exchange.name!r} {in_vhost} is {live_x.get('type')!r}, "
            f"the topology says {exchange.type!r} (run `bus plan`)"
        )
    bindings = management.queue_bindings(vhost, exchange.name, queue.name)
    keys = [b.get("routing_key", "") for b in bindings]
    if not binding_routes(exchange.type, keys, queue.routing_key):
        raise NotFoundError(
            f"no binding {in_vhost} routes key {queue.routing_key!r} from exchange "
            f"{exchange.name!r} to Celery queue {queue.name!r}: run `bus apply` first"
        )


def _check_passively(app: Celery, selected: list[KombuQueue], broker: str) -> None:
    errors = connection_errors(app)
    current = ""
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            for queue in selected:
                current = queue.name
                channel = connection.channel()
                try:
                    check_exchange(channel, queue.exchange.name, queue.exchange.type)
                    check_queue(channel, queue.name)
                finally:
                    if channel.is_open:
                        channel.close()
    except errors as exc:
        text = " ".join(str(exc).split())
        if "NOT_FOUND" in text or "404" in text:
            raise NotFoundError(
                f"Celery queue {current!r}: {text}: run `bus apply` first"
            ) from None
        raise BrokerUnavailableError(f"pre-flight check against {broker} failed: {text}") from None
