"""Exchange-to-exchange routing: one publish walked through the compiled exchanges.

Every exchange is visited once (cycles end) and every queue is reached once. An exchange
whose own bindings match nothing (queue or exchange destinations alike) forwards to its
alternate exchange; an e2e binding that leads nowhere still counts as a match, so the
alternate exchange is *not* used then (observed on 3.10.8).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any

from bus.routing.exchange import CompiledExchange
from bus.routing.header_terms import message_header_term
from bus.routing.route import Hop, Route, Step
from bus.versions import RuleSet

__all__ = ["walk"]


def walk(
    exchanges: Mapping[str, CompiledExchange],
    queues: frozenset[str],
    rules: RuleSet,
    exchange: str,
    keys: tuple[str, ...],
    headers: Mapping[str, Any],
    unseen: tuple[str, ...] = (),
) -> Route:
    """The route of a message entering ``exchange``; ``queues`` are the topology's (the
    default exchange delivers to them by name). ``unseen``: headers the message carries
    that the exchanges do not see."""
    steps: list[Step] = []
    named: set[str] = set()
    if exchange == "":
        for key in dict.fromkeys(keys):
            if key in queues:
                named.add(key)
                steps.append(Hop("default", "", key, "queue", "queue named by the key"))
        if not named:
            steps.append(Hop("unrouted", "", "", "", "no queue has that name"))
        return Route(exchange, keys, frozenset(named), tuple(steps), {}, headers)
    first = exchanges.get(exchange)
    if first is None:
        steps.append(Hop("unrouted", exchange, "", "", "exchange does not exist: dropped"))
        return Route(exchange, keys, frozenset(), tuple(steps), {}, headers)
    terms: dict[str, Hashable] | None = None
    work: deque[CompiledExchange] = deque([first])
    seen = {exchange}
    reached: list[frozenset[str]] = []
    while work:
        x = work.popleft()
        if x.type == "headers" and terms is None:
            terms = {
                name: message_header_term(value, rules)
                for name, value in headers.items()
                if name not in unseen
            }
        matched = x.match(keys, terms)
        if not matched.dests:
            if x.alternate is None:
                steps.append(Hop("unrouted", x.name, "", "", "no binding matches"))
                continue
            steps.append(Hop("alternate", x.name, x.alternate, "exchange"))
            ae = exchanges.get(x.alternate)
            if ae is None:
                steps.append(Hop("unrouted", x.alternate, "", "", "does not exist: dropped"))
            elif x.alternate not in seen:
                seen.add(x.alternate)
                work.append(ae)
            continue
        steps.append((x.name, matched.dests))
        reached.append(matched.queues)
        for name in matched.exchanges:
            if name not in seen:
                seen.add(name)
                work.append(exchanges[name])
    reached_queues = reached[0] if len(reached) == 1 else frozenset().union(*reached)
    return Route(exchange, keys, reached_queues, tuple(steps), {}, headers)
