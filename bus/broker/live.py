"""The live state of one vhost as plain data: what plan compares a topology with.

Kept apart from :mod:`bus.broker.inspect` (which reads it) so that :mod:`bus.broker.session`
can name a live binding without importing the reader, which itself needs a session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DestinationType",
    "LiveBinding",
    "LiveExchange",
    "LivePolicy",
    "LiveQueue",
    "LiveState",
    "LiveVhost",
    "PolicyFields",
    "Probe",
    "QueueUsage",
    "normalise_queue_type",
]

DestinationType = Literal["queue", "exchange"]


@dataclass(frozen=True)
class LiveVhost:
    """The vhost itself, from the management API."""

    name: str
    description: str
    default_queue_type: str  # "classic", "quorum" or "stream"; "undefined" resolved to classic


@dataclass(frozen=True)
class LiveExchange:
    """An exchange as the broker holds it (``alternate-exchange`` is among the arguments)."""

    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LiveQueue:
    """A queue as the broker holds it; ``type`` is ``classic``, ``quorum`` or ``stream``."""

    name: str
    type: str
    durable: bool
    auto_delete: bool
    exclusive: bool
    # Normalised: ``x-queue-type`` always present.
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LiveBinding:
    """A binding from exchange ``source`` to a queue or exchange; ``properties_key`` is the
    management API's name for it (what deleting it over HTTP needs)."""

    source: str
    destination: str
    destination_type: DestinationType
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)
    properties_key: str | None = None


@dataclass(frozen=True)
class PolicyFields:
    """What a policy is made of, on the broker (:class:`LivePolicy`) or in the topology
    (:class:`~bus.broker.plan_model.PolicySpec`): the same fields, compared one to one."""

    name: str
    pattern: str
    apply_to: str
    priority: int
    definition: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LivePolicy(PolicyFields):
    """A policy as the broker holds it."""


@dataclass(frozen=True)
class QueueUsage:
    """Exact counts from a passive declare (the HTTP counters are statistics and lag)."""

    messages: int
    consumers: int


@dataclass(frozen=True)
class Probe:
    """What AMQP could tell about one desired object."""

    exists: bool
    refusal: str | None = None  # the broker's reply when the redeclare was refused
    unverified: str | None = None  # why the compared fields could not be checked


@dataclass
class LiveState:
    vhost: str
    source: Literal["management", "amqp"]
    vhost_info: LiveVhost | None
    exchanges: dict[str, LiveExchange] = field(default_factory=dict)
    queues: dict[str, LiveQueue] = field(default_factory=dict)
    # Exclusive and server-named queues: listed so that prune can stay away from them.
    private_queues: dict[str, LiveQueue] = field(default_factory=dict)
    bindings: list[LiveBinding] = field(default_factory=list)
    policies: dict[str, LivePolicy] = field(default_factory=dict)
    exchange_types: frozenset[str] | None = None
    # AMQP fallback only: per (kind, name) of a desired exchange or queue.
    probes: dict[tuple[str, str], Probe] = field(default_factory=dict)
    # Why the management API could not be used (AMQP fallback only).
    fallback_reason: str | None = None

    @property
    def vhost_exists(self) -> bool:
        return self.vhost_info is not None


def normalise_queue_type(value: object) -> str:
    """The vhost default as a queue type: ``undefined`` (or nothing) means classic."""
    if isinstance(value, str) and value in ("classic", "quorum", "stream"):
        return value
    return "classic"
