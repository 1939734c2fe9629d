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

One module per job: :mod:`~bus.celery_app.config` (the Celery settings of a topology),
:mod:`~bus.celery_app.components` (the non-declaring consumer, mailbox and event dispatcher),
:mod:`~bus.celery_app.app` (building and configuring an app), :mod:`~bus.celery_app.preflight`,
:mod:`~bus.celery_app.monitoring` (remote inspection, worker metrics) and
:mod:`~bus.celery_app.worker` (``bus worker``). Celery finds the components by the dotted
names ``bus.celery_app:...``, which these re-exports keep valid.
"""

from bus.celery_app.app import build_app, configure_app
from bus.celery_app.components import (
    TopologyConsumer,
    TopologyControl,
    TopologyEventDispatcher,
    TopologyEvents,
    TopologyMailbox,
)
from bus.celery_app.config import celery_config, celery_queues
from bus.celery_app.monitoring import (
    INSPECT_CONFIGURE_REGEX,
    WORKER_CONFIGURE_REGEX,
    WorkerMetrics,
    inspect_active,
    serve_worker_metrics,
)
from bus.celery_app.preflight import TopologyPreflight, preflight
from bus.celery_app.worker import load_app, run_worker, start_celery, worker_argv

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
