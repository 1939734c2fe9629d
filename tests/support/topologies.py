"""Topology texts the suites share, and where the shipped topology routes the sample events.

Most test topologies are one topic exchange ``events``, a few queues, and the
``order.created`` contract (:class:`producers.events.OrderCreated`): only the queues differ,
so only the queues are written out where they are used.
"""

from __future__ import annotations

import textwrap

__all__ = ["ORDER_CREATED", "SAMPLES_REACH", "order_topology"]

# Read off topology.yaml by hand: one publish of each of producers.demo's sample events
# (order.created, order.paid, order.cancel, a broadcast, an email with priority: high) lands
# here. order.* feeds billing.orders, analytics.all (#) and, through the events -> audit
# exchange binding (order.#), audit.log; order.cancel goes to orders.commands; broadcast fans
# out to both caches; priority=high matches email.priority (x-match any).
SAMPLES_REACH = {
    "billing.orders": 2,
    "analytics.all": 2,
    "audit.log": 2,
    "orders.commands": 1,
    "cache.web": 1,
    "cache.api": 1,
    "email.priority": 1,
}

ORDER_CREATED = (
    "  order.created:\n"
    '    {exchange: events, routing_key: order.created, model: "producers.events:OrderCreated"}\n'
)


def order_topology(queues: str) -> str:
    """``queues`` (the YAML under ``queues:``, any common indentation) between the exchange
    ``events`` (topic) and the ``order.created`` contract."""
    body = textwrap.indent(textwrap.dedent(queues).strip("\n") + "\n", "  ")
    head = "version: 1\nexchanges:\n  events: {type: topic}\nqueues:\n"
    return f"{head}{body}events:\n{ORDER_CREATED}"
