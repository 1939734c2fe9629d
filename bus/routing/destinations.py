"""Where a binding leads (a queue or an exchange) and the set of them one exchange matched.

Shared by the topic trie, the headers index and the compiled exchanges: each of them hands
the routing loop a :class:`Matched`, split once into queues and exchanges.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from bus.topology.expand import BindingSpec

__all__ = ["NO_MATCH", "Destination", "Matched", "binding_label", "matched"]


class Destination(NamedTuple):
    """The far end of one binding; ``label`` says which binding it was, for traces."""

    name: str
    is_exchange: bool
    label: str


def binding_label(binding: BindingSpec, exchange_type: str) -> str:
    """How a trace names ``binding``: its key, its headers arguments, or ``fanout``."""
    if exchange_type == "headers":
        return "headers " + json.dumps(binding.arguments, sort_keys=True, default=str)
    if exchange_type == "fanout":
        return "fanout"
    return f"key {binding.routing_key!r}"


class Matched(NamedTuple):
    """The bindings a message matched on one exchange, split for the routing loop."""

    dests: Sequence[Destination]
    queues: frozenset[str]
    exchanges: tuple[str, ...]


def matched(dests: Sequence[Destination]) -> Matched:
    return Matched(
        dests,
        frozenset(d.name for d in dests if not d.is_exchange),
        tuple(dict.fromkeys(d.name for d in dests if d.is_exchange)),
    )


NO_MATCH = matched(())
