"""The live state of one vhost, normalised so that it can be compared with a topology.

Read through the management HTTP API (docs/rabbitmq-behaviour.md section 5). Normalisation
(section 4): the default exchange, ``amq.*`` exchanges and default-exchange bindings are
dropped; exclusive and ``amq.gen-*`` queues are kept apart (they belong to one connection and
are never managed); a queue without ``x-queue-type`` gets the type the broker reports, which
is the vhost's default queue type (``undefined`` = classic).

When the management API cannot be used, :func:`probe_objects` checks the desired objects over
AMQP instead: existence by passive declare, and the broker's own compared fields by an active
redeclare of an object that already exists (a no-op when it matches, a 406 naming the first
mismatch when it does not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from bus.broker.live import (
    DestinationType,
    LiveBinding,
    LiveExchange,
    LivePolicy,
    LiveQueue,
    LiveState,
    LiveVhost,
    Probe,
    QueueUsage,
    normalise_queue_type,
)
from bus.broker.management import ManagementClient
from bus.broker.session import AmqpSession, ChannelRefused
from bus.errors import BrokerError
from bus.topology.expand import ExchangeSpec, QueueSpec
from bus.topology.model import RESERVED_PREFIX

# The data it reads into lives in bus.broker.live.
__all__ = ["probe_objects", "queue_usage", "read_live_state"]


def _is_private_queue(raw: dict[str, Any]) -> bool:
    return bool(raw.get("exclusive")) or str(raw.get("name", "")).startswith("amq.gen-")


def _queue(raw: dict[str, Any], default_type: str) -> LiveQueue:
    arguments = dict(raw.get("arguments") or {})
    queue_type = raw.get("type")
    if not isinstance(queue_type, str) or queue_type not in ("classic", "quorum", "stream"):
        queue_type = str(arguments.get("x-queue-type") or default_type)
    arguments.setdefault("x-queue-type", queue_type)
    return LiveQueue(
        name=raw["name"],
        type=queue_type,
        durable=bool(raw.get("durable")),
        auto_delete=bool(raw.get("auto_delete")),
        exclusive=bool(raw.get("exclusive")),
        arguments=arguments,
    )


def read_live_state(management: ManagementClient, vhost: str) -> LiveState:
    """Everything the management API knows about ``vhost``, normalised."""
    raw_vhost = management.vhost(vhost)
    overview = management.overview()
    exchange_types = frozenset(
        str(t["name"]) for t in overview.get("exchange_types", []) if isinstance(t, dict)
    )
    if raw_vhost is None:
        return LiveState(vhost, "management", None, exchange_types=exchange_types)
    info = LiveVhost(
        name=vhost,
        description=str(raw_vhost.get("description") or ""),
        default_queue_type=normalise_queue_type(raw_vhost.get("default_queue_type")),
    )
    state = LiveState(vhost, "management", info, exchange_types=exchange_types)
    for raw in management.list_exchanges(vhost):
        name = raw["name"]
        if name == "" or name.startswith(RESERVED_PREFIX):
            continue
        state.exchanges[name] = LiveExchange(
            name=name,
            type=raw["type"],
            durable=bool(raw.get("durable")),
            auto_delete=bool(raw.get("auto_delete")),
            internal=bool(raw.get("internal")),
            arguments=dict(raw.get("arguments") or {}),
        )
    for raw in management.list_queues(vhost):
        queue = _queue(raw, info.default_queue_type)
        if _is_private_queue(raw):
            state.private_queues[queue.name] = queue
        else:
            state.queues[queue.name] = queue
    for raw in management.list_bindings(vhost):
        if raw.get("source", "") == "":
            continue  # the implicit default-exchange binding every queue has
        destination_type: DestinationType = (
            "exchange" if raw.get("destination_type") == "exchange" else "queue"
        )
        state.bindings.append(
            LiveBinding(
                source=raw["source"],
                destination=raw["destination"],
                destination_type=destination_type,
                routing_key=raw.get("routing_key", ""),
                arguments=dict(raw.get("arguments") or {}),
                properties_key=raw.get("properties_key"),
            )
        )
    for raw in management.policies(vhost):
        state.policies[raw["name"]] = LivePolicy(
            name=raw["name"],
            pattern=raw["pattern"],
            apply_to=raw.get("apply-to", "all"),
            priority=int(raw.get("priority", 0)),
            definition=dict(raw.get("definition") or {}),
        )
    return state


def queue_usage(session: AmqpSession, names: Iterable[str]) -> dict[str, QueueUsage]:
    """Ready messages and consumers of each queue that exists (passive declare, exact)."""
    usage: dict[str, QueueUsage] = {}
    for name in names:
        try:
            usage[name] = session.passive_queue(name)
        except ChannelRefused as exc:
            if exc.reply_code in (404, 405):
                continue  # gone, or exclusive to another connection: nothing to count
            raise BrokerError(f"cannot count messages of queue {name!r}: {exc}") from None
    return usage


def _refused(exc: ChannelRefused) -> Probe:
    if exc.reply_code == 403:
        # A passive declare needs no configure permission, the checking redeclare does.
        return Probe(exists=True, unverified=f"redeclare refused: {exc.reply_text}")
    return Probe(exists=True, refusal=exc.reply_text)


def probe_objects(
    session: AmqpSession,
    exchanges: Iterable[ExchangeSpec],
    queues: Iterable[QueueSpec],
) -> dict[tuple[str, str], Probe]:
    """Existence and the broker's compared fields of desired objects, over AMQP only.

    An existing object is redeclared with its desired properties: the broker either accepts
    (nothing changes, the compared fields match) or refuses with the first mismatch. The
    refusal kills only the channel of that one declare.
    """
    probes: dict[tuple[str, str], Probe] = {}
    for x in exchanges:
        probes[("exchange", x.name)] = _probe(
            partial(session.passive_exchange, x.name), partial(session.declare_exchange, x)
        )
    for q in queues:
        # A passive refusal other than 404 is e.g. 405 RESOURCE_LOCKED (exclusive elsewhere).
        probes[("queue", q.name)] = _probe(
            partial(session.passive_queue, q.name), partial(session.declare_queue, q)
        )
    return probes


def _probe(passive: Callable[[], object], declare: Callable[[], object]) -> Probe:
    """Exists? (passive declare), then the broker's verdict on a matching redeclare."""
    try:
        passive()
    except ChannelRefused as exc:
        return Probe(exists=False) if exc.reply_code == 404 else _refused(exc)
    try:
        declare()
    except ChannelRefused as exc:
        return _refused(exc)
    return Probe(exists=True)
