"""Dead letters: find the dead-letter queues, look into them, send their messages back.

::

    from bus.dlq import Selection, list_dead_letters, show, replay

    for queue in list_dead_letters(topology.expanded, settings):
        print(queue.name, queue.depth, queue.reasons)
    report = replay(settings, "billing.orders.dlq", Selection(reasons=("handler",)))

Reading never consumes: messages are taken unacked and handed back by closing the channel,
which puts them back in place and in order (see :mod:`bus.dlq_read`). Replaying moves a
message: the dead letter is acked only once the broker confirmed its copy (see
:mod:`bus.dlq_replay`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bus.broker.management import ManagementClient
from bus.dlq_read import BROKER_HEADERS, BROKER_PREFIXES, FAILURE_HEADERS, DeadLetter, QueuePass
from bus.errors import BusError, NotFoundError, UsageError
from bus.settings import BusSettings
from bus.topology.expand import ExpandedTopology

__all__ = [
    "EVERYTHING",
    "DeadLetter",
    "DeadLetterQueue",
    "Selection",
    "age_text",
    "check_delivery_limit",
    "dead_letter_queues",
    "delivery_limit",
    "list_dead_letters",
    "queue_facts",
    "render_dead_letters",
    "replay_headers",
    "replay_target",
    "show",
]

DEFAULT_SCAN = 10_000


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command acts on; empty fields select everything."""

    reasons: tuple[str, ...] = ()
    exception_types: tuple[str, ...] = ()
    message_ids: tuple[str, ...] = ()
    limit: int | None = None

    def matches(self, dead: DeadLetter) -> bool:
        if self.reasons and dead.reason not in self.reasons:
            return False
        if self.exception_types:
            found = dead.exception_type or ""
            short = found.rpartition(".")[2]
            if found not in self.exception_types and short not in self.exception_types:
                return False
        return not self.message_ids or dead.message_id in self.message_ids

    def describe(self) -> str:
        parts = [f"reason in {list(self.reasons)}"] if self.reasons else []
        if self.exception_types:
            parts.append(f"exception type in {list(self.exception_types)}")
        if self.message_ids:
            parts.append(f"message id in {list(self.message_ids)}")
        if self.limit is not None:
            parts.append(f"at most {self.limit}")
        return ", ".join(parts) or "every message"


@dataclass
class DeadLetterQueue:
    """What ``bus dlq list`` says about one dead-letter queue."""

    name: str
    source: str
    depth: int | None
    scanned: int = 0
    oldest_age_seconds: float | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    exception_types: dict[str, int] = field(default_factory=dict)
    note: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "queue": self.name,
            "dead_letters_of": self.source,
            "depth": self.depth,
            "scanned": self.scanned,
            "oldest_age_seconds": self.oldest_age_seconds,
            "reasons": self.reasons,
            "exception_types": self.exception_types,
            "note": self.note,
        }


EVERYTHING = Selection()


def dead_letter_queues(topology: ExpandedTopology) -> dict[str, str]:
    """Every dead-letter queue of the topology -> what it holds the dead letters of.

    The queues ``dead_letter: true`` generated, and every queue bound (directly or through
    exchange-to-exchange bindings) to an exchange some queue names as its DLX.
    """
    found: dict[str, str] = {}
    for name, policy in topology.failure.items():
        if policy.dead_letter_queue is not None:
            found[policy.dead_letter_queue] = name
    sources: dict[str, list[str]] = {}
    for spec in topology.queues.values():
        dlx = spec.dead_letter_exchange
        if dlx is not None and spec.role != "retry":
            sources.setdefault(dlx, []).append(spec.name)
    for dlx, owners in sorted(sources.items()):
        seen, todo = {dlx}, [dlx]
        while todo:
            exchange = todo.pop()
            for binding in topology.bindings:
                if binding.source != exchange:
                    continue
                if binding.destination_type == "queue":
                    found.setdefault(binding.destination, ", ".join(sorted(owners)))
                elif binding.destination not in seen:
                    seen.add(binding.destination)
                    todo.append(binding.destination)
    return dict(sorted(found.items()))


def delivery_limit(management: ManagementClient | None, vhost: str, queue: str) -> int | None:
    """The delivery limit of a quorum queue (argument, policy, or 4.x's default of 20)."""
    return queue_facts(management, vhost, queue)[1]


def queue_facts(
    management: ManagementClient | None, vhost: str, queue: str
) -> tuple[bool, int | None]:
    """(may be a quorum queue, its delivery limit). Unknown without the management API:
    then it is treated as quorum (read whole) with no known limit."""
    if management is None:
        return True, None
    info = management.queue(vhost, queue)
    if info is None or info.get("type") != "quorum":
        return False, None
    limits = []
    argument = (info.get("arguments") or {}).get("x-delivery-limit")
    if isinstance(argument, int):
        limits.append(argument)
    policy = (info.get("effective_policy_definition") or {}).get("delivery-limit")
    if isinstance(policy, int):
        limits.append(policy)
    if limits:
        return True, min(limits)  # the broker applies the lower of the two
    version = str(management.overview().get("rabbitmq_version", "3"))
    return True, 20 if int(version.split(".")[0] or 3) >= 4 else None


def check_delivery_limit(settings: BusSettings, queue: str, limit: int | None) -> None:
    """Refuse to read a quorum queue whose head message is near its delivery limit.

    Every read returns the messages it does not ack, and each return raises their
    ``x-delivery-count``; past the limit the broker drops them (a DLQ rarely has a DLX of
    its own). This check reads the head (one return) and the command reads once more (a
    second); the head must still be readable by the next check afterwards (a third), so
    reading is refused once ``count + 3 > limit``.
    """
    if limit is None:
        return
    with QueuePass(settings, queue, connection_name="amqp-bus-dlq-check") as reading:
        # The whole queue, never a prefix: see _whole.
        messages = reading.read(reading.depth)
    counts = [m.delivery_count for m in messages if m.delivery_count is not None]
    count = max(counts) if counts else None
    if count is not None and count + 3 > limit:
        raise UsageError(
            f"queue {queue!r} is a quorum queue with delivery limit {limit} and one of its "
            f"messages has been returned {count + 1} times: reading it again could let the "
            "broker drop it. Raise its limit with a policy (delivery-limit) first, then show, "
            "replay or purge it"
        )


def list_dead_letters(
    topology: ExpandedTopology,
    settings: BusSettings,
    management: ManagementClient | None = None,
    *,
    scan: int = DEFAULT_SCAN,
) -> list[DeadLetterQueue]:
    """Depth, oldest age and counts by reason / exception type of every dead-letter queue.

    Counts cover the first ``scan`` messages of each queue (all of them by default up to
    10 000); reading them changes nothing but a quorum queue's ``x-delivery-count``.
    """
    report: list[DeadLetterQueue] = []
    for name, source in dead_letter_queues(topology).items():
        entry = DeadLetterQueue(name, source, None)
        report.append(entry)
        try:
            quorum, limit = queue_facts(management, settings.vhost, name)
            check_delivery_limit(settings, name, limit)
            with QueuePass(settings, name, connection_name="amqp-bus-dlq-list") as reading:
                entry.depth = reading.depth
                messages = reading.read(_whole(quorum, min(scan, reading.depth), reading.depth))
        except NotFoundError:
            entry.note = "missing on the broker (run bus apply)"
            continue
        except UsageError as exc:
            entry.note = f"not scanned: {exc}"
            continue
        entry.scanned = len(messages)
        ages = [age for age in (m.age() for m in messages) if age is not None]
        entry.oldest_age_seconds = round(max(ages), 3) if ages else None
        entry.reasons = dict(Counter(m.reason or "(none)" for m in messages).most_common())
        entry.exception_types = dict(
            Counter(m.exception_type or "(none)" for m in messages).most_common()
        )
        if entry.scanned < entry.depth:
            entry.note = f"counts cover the first {entry.scanned} of {entry.depth} messages"
    return report


def show(
    settings: BusSettings,
    queue: str,
    selection: Selection = EVERYTHING,
    *,
    count: int = 10,
    scan: int = DEFAULT_SCAN,
    management: ManagementClient | None = None,
) -> tuple[int, list[DeadLetter]]:
    """(depth, the first ``count`` selected messages among the first ``scan``); consumes none."""
    quorum, limit = queue_facts(management, settings.vhost, queue)
    check_delivery_limit(settings, queue, limit)
    plain_read = not (selection.reasons or selection.exception_types or selection.message_ids)
    with QueuePass(settings, queue, connection_name="amqp-bus-dlq-show") as reading:
        wanted = count if plain_read else scan
        messages = reading.read(_whole(quorum, min(wanted, reading.depth), reading.depth))
        return reading.depth, [m for m in messages if selection.matches(m)][:count]


def _whole(quorum: bool, wanted: int, depth: int) -> int:
    """How many to read: on a quorum queue always all of it. RabbitMQ 3.10.8 appends the
    messages a closed channel returns to the *tail* of a quorum queue (checked: read 1 of 5,
    close: it comes back last), so only a read of the whole queue keeps the order; a classic
    queue puts them back in their places and a prefix is enough."""
    return depth if quorum else wanted


def replay_target(dead: DeadLetter, *, to_exchange: bool) -> tuple[str, str]:
    """(exchange, routing key) a replayed copy goes to; raises :class:`BusError` when unknown.

    Default: the queue it failed in, through the default exchange, so only that queue's
    consumer sees it again. ``to_exchange``: where it was first published
    (``x-original-exchange`` / ``x-original-routing-key``, else the ``x-death`` entry of the
    queue it failed in).
    """
    failed = dead.failed_queue
    if not to_exchange:
        if failed is None:
            raise BusError("no x-failed-queue and no x-death: the queue it failed in is unknown")
        return "", failed
    exchange, key = (
        dead.headers.get("x-original-exchange"),
        dead.headers.get("x-original-routing-key"),
    )
    if isinstance(exchange, str) and isinstance(key, str):
        return exchange, key
    for death in dead.deaths:
        keys = death.get("routing-keys")
        if death.get("queue") == failed and isinstance(keys, list) and keys:
            return str(death.get("exchange") or ""), str(keys[0])
    raise BusError(
        "no x-original-exchange/x-original-routing-key and no x-death entry for the queue it "
        f"failed in ({failed!r}): replay it to its queue instead (without --to-exchange)"
    )


def replay_headers(dead: DeadLetter) -> dict[str, Any]:
    """The copy's headers: failure and broker-owned headers dropped, ``x-replayed`` + 1."""
    headers = {
        name: value
        for name, value in dead.headers.items()
        if name not in FAILURE_HEADERS
        and name not in BROKER_HEADERS
        and not name.startswith(BROKER_PREFIXES)
    }
    headers["x-replayed"] = dead.replayed + 1
    return headers


def selected_in(messages: Iterable[DeadLetter], selection: Selection) -> list[DeadLetter]:
    return [m for m in messages if selection.matches(m)]


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}={n}" for name, n in counts.items()) or "-"


def render_dead_letters(report: Iterable[DeadLetterQueue]) -> list[str]:
    """The lines of ``bus dlq list``: one per dead-letter queue, notes below."""
    lines = [f"{'queue':<32} {'depth':>7} {'oldest':>7}  reasons / exception types"]
    for q in report:
        depth = "-" if q.depth is None else str(q.depth)
        lines.append(
            f"{q.name:<32} {depth:>7} {age_text(q.oldest_age_seconds):>7}  "
            f"{_counts(q.reasons)} / {_counts(q.exception_types)}"
        )
        if q.note:
            lines.append(f"{'':<32} {'':>7} {'':>7}  ({q.note})")
    return lines
