"""What happens to a delivery whose handler failed or whose payload is invalid.

A pure function of the queue's :class:`~bus.topology.FailurePolicy` and the delivery's counters,
so the rules can be read and tested without a broker. The rules (also in ``consumers.runtime``):

1. The handler returned: ack (batched with ``multiple`` only over finished deliveries).
2. The handler raised, and the queue has ``retry`` steps left (``x-retry-count`` < number of
   steps): republish a copy, with publisher confirms, to delay queue number ``x-retry-count``
   through the default exchange, with ``x-retry-count`` + 1; then ack the original.
3. No step left, or a *permanent* failure (the payload is invalid: wrong content type, bad JSON,
   schema mismatch, unknown or unaccepted event type; or the handler raised
   :class:`RejectMessage`), and the queue has a dead-letter queue (``dead_letter: true``):
   republish a copy, confirmed, to its dead-letter exchange with ``x-exception-type``,
   ``x-exception-message``, ``x-failure-reason``, ``x-failed-queue``; then ack the original.
4. Otherwise, if the queue has an ``x-dead-letter-exchange`` of its own (no DLQ of ours):
   ``basic.reject`` without requeue; the broker dead-letters it (``x-death`` reason ``rejected``).
5. Otherwise (no dead-letter exchange at all) a permanent failure is *dropped*: ``basic.reject``
   without requeue, logged at ERROR with the message's id or digest. Requeuing a payload that
   can never be handled only starves the valid messages queued behind it (they wait, then
   expire through the queue's TTL). A handler failure is requeued (``basic.nack``) after a
   back-off (doubling per delivery, capped), logged at ERROR each time, at most
   ``max_requeues`` times: the broker's ``x-delivery-count`` on a quorum queue, this process's
   count per message (``message_id``, else a digest of the message) on a classic queue. The
   delivery after that is dropped too, loudly. A quorum ``delivery_limit`` lower than that bound
   stays the guard: the final allowed delivery is logged as such, because the broker drops the
   message after it when there is no DLX.

If a republish of rule 2 or 3 is not confirmed (nack, return, timeout, lost connection), the
original is not acked; it is requeued after a back-off (rule 5's timing) and nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.topology.expand import FailurePolicy, RetryStep

__all__ = [
    "Backoff",
    "DeadLetter",
    "Drop",
    "FailureAction",
    "Reject",
    "RejectMessage",
    "Requeue",
    "Retry",
    "decide",
]


class RejectMessage(Exception):
    """Raise from a handler to skip the retry ladder: the message is dead-lettered at once."""


@dataclass(frozen=True)
class Backoff:
    """Delay before a requeue: ``base * 2**attempts`` seconds, at most ``cap``."""

    base: float = 1.0
    cap: float = 60.0
    max_requeues: int = 5
    """Requeues of one failing message on a queue without a dead-letter exchange (rule 5)."""

    def delay(self, attempts: int) -> float:
        # Bounding the exponent keeps huge delivery counts from overflowing the float.
        return float(min(self.cap, self.base * 2 ** min(attempts, 32)))


@dataclass(frozen=True)
class Retry:
    """Rule 2: republish a copy to the queue's next retry step, then ack the original."""

    step: RetryStep


@dataclass(frozen=True)
class DeadLetter:
    """Rule 3: republish a copy with the failure headers to our dead-letter exchange."""

    exchange: str


@dataclass(frozen=True)
class Reject:
    """Rule 4: ``basic.reject`` without requeue; the broker dead-letters to ``exchange``."""

    exchange: str


@dataclass(frozen=True)
class Drop:
    """Rule 5, a permanent failure or the last requeue: ``basic.reject`` without requeue on a
    queue without a dead-letter exchange; the broker drops it."""

    why: str


@dataclass(frozen=True)
class Requeue:
    """Rule 5, a handler failure: ``basic.nack`` with requeue after ``delay`` seconds."""

    delay: float
    final: bool
    """True when the quorum delivery limit makes this the last delivery the broker allows."""


FailureAction = Retry | DeadLetter | Reject | Drop | Requeue


def decide(
    policy: FailurePolicy,
    *,
    retry_count: int,
    delivery_count: int | None,
    permanent: bool,
    backoff: Backoff,
    attempts: int = 0,
) -> FailureAction:
    """The action for one failed delivery (see the module docstring for the rules).

    ``retry_count`` is ``x-retry-count``; ``delivery_count`` the quorum ``x-delivery-count``
    (None when absent, or on a classic queue where a publisher could have forged it);
    ``attempts`` how often this process already requeued the message, used for the back-off
    and the bound when the broker does not count deliveries (classic queues).
    """
    if not permanent and 0 <= retry_count < len(policy.retry):
        return Retry(policy.retry[retry_count])
    if policy.dead_letter_exchange is not None and policy.dead_letter_queue is not None:
        return DeadLetter(policy.dead_letter_exchange)
    if policy.dead_letter_exchange is not None:
        return Reject(policy.dead_letter_exchange)
    if permanent:
        return Drop("the payload can never be handled")
    count = delivery_count if delivery_count is not None else attempts
    if count >= backoff.max_requeues:
        return Drop(f"it failed on {count + 1} deliveries (max_requeues={backoff.max_requeues})")
    final = (
        policy.delivery_limit is not None
        and delivery_count is not None
        and delivery_count >= policy.delivery_limit
    )
    return Requeue(backoff.delay(count), final)
