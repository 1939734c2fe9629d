"""Topology texts the consumer and migration suites share.

Most of them are one topic exchange ``events``, a few queues, and the ``order.created``
contract (:class:`producers.events.OrderCreated`): only the queues differ, so only the queues
are written out where they are used.
"""

from __future__ import annotations

import textwrap

__all__ = ["ORDER_CREATED", "order_topology"]

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
