"""Celery's worker consumer, mailbox and event dispatcher, made to declare nothing.

``bus apply`` owns every exchange and queue; these subclasses only refer to them
(``no_declare``). The dotted names in :mod:`bus.celery_app.app` and
:func:`bus.celery_app.config.celery_config` point at the package (``bus.celery_app:...``),
which re-exports them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, ClassVar

from amqp.exceptions import NotFound
from celery.app.control import Control
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer
from celery.worker.consumer.tasks import Tasks
from kombu.exceptions import InconsistencyError
from kombu.pidbox import Mailbox

from bus.celery_guard import guard_task_handler

__all__ = [
    "TopologyConsumer",
    "TopologyControl",
    "TopologyEventDispatcher",
    "TopologyEvents",
    "TopologyMailbox",
]

# The package's logger, as before the split (and as bus.celery_guard logs).
log = logging.getLogger("bus.celery_app")


def _per_consumer_qos(consumer: Any) -> bool:
    return False


class TopologyConsumer(Consumer):  # type: ignore[misc]
    """A worker consumer that declares nothing on the broker.

    - no ``DelayedDelivery`` bootstep (it declares the ``celery_delayed_*`` ladder even with
      ``no_declare=True`` queues);
    - the prefetch set per consumer (``basic.qos`` with ``global=False``). Celery sets it per
      channel unless its own queue list names a quorum queue; quorum queues refuse that (540
      NOT_IMPLEMENTED on ``basic.consume``), and a queue migrated to quorum under a running
      worker (``bus migrate``) is still classic in that list, so the worker would never
      consume it again. Global QoS only lets Celery raise the prefetch for ETA tasks at run
      time, and the bus refuses to send those;
    - a queue missing when it consumes (404) is waited for, like a lost connection;
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
        for step in self.blueprint.steps.values():
            if isinstance(step, Tasks):
                step.qos_global = _per_consumer_qos
        # A queue deleted under the worker (bus migrate's step 4) cancels its consumer; the
        # reconnect's basic.consume then meets 404 until the queue is declared again. Celery
        # ends the worker on a channel error unless every channel error is retried (which
        # would retry ACCESS_REFUSED forever too): retry just this one, as a lost connection.
        errors: tuple[type[BaseException], ...] = getattr(self, "connection_errors", ())
        self.connection_errors = (*errors, NotFound)

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
