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
5. Otherwise (no dead-letter exchange at all): ``basic.nack`` with requeue after a back-off
   (doubling per delivery, capped), logged at ERROR each time. On a quorum queue the
   ``delivery_limit`` is the guard: the final allowed delivery is logged as such, because the
   broker drops the message after it when there is no DLX. On a classic queue there is no guard:
   the message comes back after each back-off until a handler accepts it or an operator moves it.

If a republish of rule 2 or 3 is not confirmed (nack, return, timeout, lost connection), the
original is not acked; it is requeued after a back-off (rule 5's timing) and nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.topology.expand import FailurePolicy, RetryStep

__all__ = [
    "Backoff",
    "DeadLetter",
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

    def delay(self, attempts: int) -> float:
        # Bounding the exponent keeps huge delivery counts from overflowing the float.
        return float(min(self.cap, self.base * 2 ** min(attempts, 32)))


@dataclass(frozen=True)
class Retry:
    step: RetryStep


@dataclass(frozen=True)
class DeadLetter:
    exchange: str


@dataclass(frozen=True)
class Reject:
    exchange: str


@dataclass(frozen=True)
class Requeue:
    delay: float
    final: bool
    """True when the quorum delivery limit makes this the last delivery the broker allows."""


FailureAction = Retry | DeadLetter | Reject | Requeue


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
    (None when absent); ``attempts`` how often this process already requeued the message,
    used for the back-off when the broker does not count deliveries (classic queues).
    """
    if not permanent and 0 <= retry_count < len(policy.retry):
        return Retry(policy.retry[retry_count])
    if policy.dead_letter_exchange is not None and policy.dead_letter_queue is not None:
        return DeadLetter(policy.dead_letter_exchange)
    if policy.dead_letter_exchange is not None:
        return Reject(policy.dead_letter_exchange)
    count = delivery_count if delivery_count is not None else attempts
    final = (
        policy.delivery_limit is not None
        and delivery_count is not None
        and delivery_count >= policy.delivery_limit
    )
    return Requeue(backoff.delay(count), final)
