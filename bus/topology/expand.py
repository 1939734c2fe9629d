"""Shorthands (``dead_letter``, ``retry``) turned into the concrete objects the broker holds.

The result is what ``bus apply`` declares, what the routing simulator routes over and what
Celery mirrors. Generated objects are ordinary exchanges, queues and bindings; ``role`` and
``owner`` only say where they came from.

Layout for a queue ``Q`` with ``dead_letter: true`` and ``retry: {delays: [1s, 10s]}``:

- exchange ``Q.dlx`` (fanout) -> queue ``Q.dlq``; ``Q`` gets ``x-dead-letter-exchange: Q.dlx``,
  so a reject without requeue, an expiry or a quorum delivery limit lands in ``Q.dlq`` with the
  original routing key kept.
- queues ``Q.retry.1s`` and ``Q.retry.10s``: ``x-message-ttl`` of the delay,
  ``x-dead-letter-exchange: ""`` (the default exchange) and ``x-dead-letter-routing-key: Q``.
  The consumer runtime republishes a failed message to the delay queue through the default
  exchange; when the TTL expires the broker moves it back into ``Q``. Quorum delay queues use
  ``at-least-once`` dead-lettering (with ``x-overflow: reject-publish``, which it requires) so the
  move back cannot lose the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bus.topology.model import (
    CELERY_MONITORING_EXCHANGES,
    CelerySection,
    EventContract,
    Exchange,
    Policy,
    Queue,
    QueueType,
    Topology,
    Vhost,
)
from bus.topology.names import dead_letter_exchange, dead_letter_queue, retry_queue

__all__ = [
    "BindingKey",
    "BindingSpec",
    "ExchangeSpec",
    "ExpandedTopology",
    "FailurePolicy",
    "QueueSpec",
    "RetryStep",
    "binding_key",
    "expand",
]

Role = Literal["queue", "dead-letter", "retry"]


@dataclass(frozen=True)
class ExchangeSpec:
    """An exchange as the topology declares it."""

    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def alternate_exchange(self) -> str | None:
        value = self.arguments.get("alternate-exchange")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class QueueSpec:
    """A queue as the topology declares it, its broker arguments resolved; ``role`` and
    ``owner`` say whether it is a topology queue or the dead-letter/retry queue of one."""

    name: str
    type: QueueType
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)
    role: Role = "queue"
    owner: str | None = None
    celery_routing_key: str | None = None

    @property
    def dead_letter_exchange(self) -> str | None:
        value = self.arguments.get("x-dead-letter-exchange")
        return value if isinstance(value, str) else None


def _typed(value: object) -> object:
    """A hashable form of a binding argument in which the type is part of the value.

    The broker tells ``1``, ``"1"`` and ``true`` apart (docs/rabbitmq-behaviour.md section 2);
    a table's key order does not matter to it.
    """
    if isinstance(value, dict):
        return ("table", tuple(sorted((str(k), _typed(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("array", tuple(_typed(v) for v in value))
    return (type(value).__name__, value)


BindingKey = tuple[str, str, str, str, object]


def binding_key(
    source: str,
    destination_type: str,
    destination: str,
    routing_key: str,
    arguments: Mapping[str, Any],
) -> BindingKey:
    """What makes two bindings the same binding on the broker (typed, order-free arguments).

    The one definition: plan matches desired against live bindings with it
    (:func:`bus.broker.equality.key_of`) and :meth:`BindingSpec.identity` returns it.
    """
    return (source, destination_type, destination, routing_key, _typed(dict(arguments)))


@dataclass(frozen=True)
class BindingSpec:
    source: str
    destination: str
    destination_type: Literal["queue", "exchange"]
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)

    def identity(self) -> BindingKey:
        """What makes two bindings the same binding on the broker (:func:`binding_key`)."""
        return binding_key(
            self.source, self.destination_type, self.destination, self.routing_key, self.arguments
        )


@dataclass(frozen=True)
class RetryStep:
    attempt: int
    delay_ms: int
    queue: str


@dataclass(frozen=True)
class FailurePolicy:
    """What happens to a failed delivery of one queue (read by the consumer runtime)."""

    dead_letter_exchange: str | None
    dead_letter_queue: str | None
    retry: tuple[RetryStep, ...] = ()
    delivery_limit: int | None = None


@dataclass
class ExpandedTopology:
    vhost: Vhost | None
    exchanges: dict[str, ExchangeSpec]
    queues: dict[str, QueueSpec]
    bindings: list[BindingSpec]
    events: dict[str, EventContract]
    policies: dict[str, Policy]
    unmanaged: list[str]
    failure: dict[str, FailurePolicy]
    # Schedules for `bus beat` and the monitoring switch the Celery app reads.
    celery: CelerySection = field(default_factory=CelerySection)

    def to_data(self) -> dict[str, Any]:
        """Plain data for ``bus validate --expanded`` (YAML-serialisable, deterministic)."""
        return {
            "exchanges": {
                x.name: {
                    "type": x.type,
                    "durable": x.durable,
                    "auto_delete": x.auto_delete,
                    "internal": x.internal,
                    "arguments": dict(x.arguments),
                }
                for x in self.exchanges.values()
            },
            "queues": {
                q.name: {
                    "type": q.type,
                    "durable": q.durable,
                    "auto_delete": q.auto_delete,
                    "arguments": dict(q.arguments),
                    **({"generated_by": f"{q.owner} ({q.role})"} if q.owner else {}),
                    **(
                        {"celery_routing_key": q.celery_routing_key} if q.celery_routing_key else {}
                    ),
                }
                for q in self.queues.values()
            },
            "bindings": [
                {
                    "source": b.source,
                    "destination": b.destination,
                    "destination_type": b.destination_type,
                    "routing_key": b.routing_key,
                    **({"arguments": dict(b.arguments)} if b.arguments else {}),
                }
                for b in self.bindings
            ],
            "events": {
                name: e.model_dump(exclude_defaults=True) for name, e in self.events.items()
            },
            "policies": {name: p.model_dump() for name, p in self.policies.items()},
        }


def _exchange(name: str, x: Exchange) -> ExchangeSpec:
    return ExchangeSpec(name, x.type, x.durable, x.auto_delete, x.internal, x.broker_arguments())


def _celery_key(q: Queue) -> str | None:
    if q.celery is None:
        return None
    if q.celery.routing_key is not None:
        return q.celery.routing_key
    for b in q.bindings:
        if "*" not in b.routing_key and "#" not in b.routing_key:
            return b.routing_key
    return None


def expand(topology: Topology) -> ExpandedTopology:
    exchanges = {name: _exchange(name, x) for name, x in topology.exchanges.items()}
    queues: dict[str, QueueSpec] = {}
    bindings: list[BindingSpec] = []
    failure: dict[str, FailurePolicy] = {}

    for name, q in topology.queues.items():
        args = q.broker_arguments()
        dlx, dlq = q.dead_letter_exchange, None
        if q.dead_letter is not None:
            dlx, dlq = dead_letter_exchange(name), dead_letter_queue(name)
            args["x-dead-letter-exchange"] = dlx
        queues[name] = QueueSpec(
            name, q.type, q.durable, q.auto_delete, args, celery_routing_key=_celery_key(q)
        )
        if q.dead_letter is not None and dlx is not None and dlq is not None:
            exchanges[dlx] = ExchangeSpec(dlx, "fanout")
            dlq_type: QueueType = q.dead_letter.queue_type or q.type
            dlq_args: dict[str, Any] = {"x-queue-type": dlq_type}
            if q.dead_letter.message_ttl is not None:
                dlq_args["x-message-ttl"] = q.dead_letter.message_ttl
            if q.dead_letter.max_length is not None:
                dlq_args["x-max-length"] = q.dead_letter.max_length
            queues[dlq] = QueueSpec(
                dlq, dlq_type, arguments=dlq_args, role="dead-letter", owner=name
            )
            bindings.append(BindingSpec(dlx, dlq, "queue"))
        steps: list[RetryStep] = []
        if q.retry is not None:
            for attempt, delay in enumerate(q.retry.delays, start=1):
                retry_name = retry_queue(name, delay)
                steps.append(RetryStep(attempt, delay, retry_name))
                retry_args: dict[str, Any] = {
                    "x-queue-type": q.type,
                    "x-message-ttl": delay,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": name,
                }
                if q.type == "quorum":
                    retry_args["x-dead-letter-strategy"] = "at-least-once"
                    retry_args["x-overflow"] = "reject-publish"
                queues[retry_name] = QueueSpec(
                    retry_name, q.type, arguments=retry_args, role="retry", owner=name
                )
        for b in q.bindings:
            bindings.append(
                BindingSpec(b.exchange, name, "queue", b.routing_key, dict(b.arguments))
            )
        failure[name] = FailurePolicy(dlx, dlq, tuple(steps), q.delivery_limit)

    if topology.celery.monitoring:
        # Declared here so that workers (remote control, events) never need configure rights
        # on them; flags mirror what Celery itself declares, so its redeclares are no-ops.
        for x_name, (x_type, durable) in CELERY_MONITORING_EXCHANGES.items():
            exchanges[x_name] = ExchangeSpec(x_name, x_type, durable=durable)

    for eb in topology.exchange_bindings:
        bindings.append(
            BindingSpec(eb.source, eb.destination, "exchange", eb.routing_key, dict(eb.arguments))
        )
    return ExpandedTopology(
        vhost=topology.vhost,
        exchanges=exchanges,
        queues=queues,
        bindings=bindings,
        events=dict(topology.events),
        policies=dict(topology.policies),
        unmanaged=list(topology.unmanaged),
        failure=failure,
        celery=topology.celery,
    )
