"""The router: routes publishes, and the dead-lettered copies of what they reached.

Publishing straight to an internal exchange is refused; reaching one through a binding, an
alternate exchange or a dead-letter exchange is fine.

Dead-lettering (``on="reject"|"expire"``): each reached queue with ``x-dead-letter-exchange``
republishes there with ``x-dead-letter-routing-key`` or the original keys (CC included);
``expire`` never lands back in the queue it expired from (the broker's cycle detection drops
it), ``reject`` may. One hop from a fresh message. From 4.0 the copy also carries
``x-last-death-reason/queue/exchange``, and the broker's ``x-death`` is not seen by the
exchanges that route the copy (it is on the delivered copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bus.errors import RoutingError
from bus.routing.exchange import CompiledExchange, compile_exchanges
from bus.routing.exchange_graph import walk
from bus.routing.route import DeadLetterReason, Hop, Route
from bus.routing.routing_keys import split_headers
from bus.topology.expand import BindingSpec, ExpandedTopology
from bus.versions import RabbitVersion, RuleSet, as_version

__all__ = ["Router"]


class Router:
    """Routes publishes over an expanded topology; build once, route many times.

    ``Router(expanded).route("events", "order.created")`` -> :class:`Route`. ``rabbitmq``
    is the broker's version (``"4.0"``, ``"4.0.5"``, a :class:`~bus.versions.RabbitVersion`;
    default 3.10.8): its matching rules apply.
    """

    def __init__(
        self, topology: ExpandedTopology, *, rabbitmq: RabbitVersion | str | None = None
    ) -> None:
        self.topology = topology
        self.version = as_version(rabbitmq)
        self.rules: RuleSet = self.version.rules
        self.queues = frozenset(topology.queues)
        self._exchanges: dict[str, CompiledExchange] = compile_exchanges(topology)

    @property
    def exchanges(self) -> frozenset[str]:
        """Every exchange name the router knows, built-in ``amq.*`` ones included."""
        return frozenset(self._exchanges)

    def exchange_type(self, name: str) -> str:
        if name == "":
            return "direct"
        return self._get(name).type

    def is_internal(self, name: str) -> bool:
        return name != "" and self._get(name).internal

    def alternate_exchange(self, name: str) -> str | None:
        return None if name == "" else self._get(name).alternate

    def _get(self, name: str) -> CompiledExchange:
        try:
            return self._exchanges[name]
        except KeyError:
            raise RoutingError(f"unknown exchange {name!r}") from None

    def route(
        self,
        exchange: str,
        routing_key: str = "",
        headers: Mapping[str, Any] | None = None,
        *,
        on: DeadLetterReason | None = None,
    ) -> Route:
        """The queues a publish reaches, with its trace; ``on`` adds where the copy in each
        reached queue goes when rejected (without requeue) or expired."""
        keys, visible = split_headers(routing_key, headers)
        if exchange != "" and self._get(exchange).internal:
            raise RoutingError(
                f"exchange {exchange!r} is internal: the broker refuses direct publishes "
                "(403 ACCESS_REFUSED)"
            )
        route = self._route(exchange, keys, visible)
        if on is None:
            return route
        dead = {q: self._dead_letter(route, q, visible, on) for q in sorted(route.queues)}
        return Route(
            route.exchange,
            route.routing_keys,
            route.queues,
            route.steps,
            {q: r for q, r in dead.items() if r is not None},
            route.headers,
        )

    def _route(
        self,
        exchange: str,
        keys: tuple[str, ...],
        headers: Mapping[str, Any],
        unseen: tuple[str, ...] = (),
    ) -> Route:
        """``unseen``: headers the copy carries that the exchanges do not see."""
        return walk(self._exchanges, self.queues, self.rules, exchange, keys, headers, unseen)

    def dead_letter(
        self,
        queue: str,
        exchange: str,
        routing_key: str,
        headers: Mapping[str, Any] | None,
        on: DeadLetterReason,
    ) -> Route | None:
        """Where a message in ``queue`` (published to ``exchange`` with ``routing_key`` and
        ``headers``) goes when rejected or expired; None when ``queue`` has no DLX."""
        if queue not in self.queues:
            raise RoutingError(f"unknown queue {queue!r}")
        keys, visible = split_headers(routing_key, headers)
        origin = Route(exchange, keys, frozenset({queue}), ())
        return self._dead_letter(origin, queue, visible, on)

    def _dead_letter(
        self, route: Route, queue: str, headers: Mapping[str, Any], on: DeadLetterReason
    ) -> Route | None:
        args = self.topology.queues[queue].arguments
        if "x-dead-letter-exchange" not in args:
            return None
        dlx = str(args["x-dead-letter-exchange"])
        dl_key = args.get("x-dead-letter-routing-key")
        dl_headers = dict(headers)
        if isinstance(dl_key, str):
            keys: tuple[str, ...] = (dl_key,)
            dl_headers.pop("CC", None)
        else:
            keys = route.routing_keys
        reason = "rejected" if on == "reject" else "expired"
        dl_headers.setdefault("x-first-death-reason", reason)
        dl_headers.setdefault("x-first-death-queue", queue)
        dl_headers.setdefault("x-first-death-exchange", route.exchange)
        if self.rules == "4.0":
            # 4.0 also names the latest death (measured on 4.0.5; 3.10.8 has no such headers).
            dl_headers["x-last-death-reason"] = reason
            dl_headers["x-last-death-queue"] = queue
            dl_headers["x-last-death-exchange"] = route.exchange
        dl_headers["x-death"] = [
            {
                "count": 1,
                "reason": reason,
                "queue": queue,
                "exchange": route.exchange,
                "routing-keys": list(route.routing_keys),
            }
        ]
        shown = ", ".join(repr(k) for k in keys)
        hop = Hop("dead-letter", queue, dlx, "exchange", f"({reason}, key {shown})")
        # 4.0 keeps the broker's own x-death beside the headers while it routes the copy (a
        # headers binding on x-death does not see it; measured on 4.0.5), 3.10 does not.
        unseen = ("x-death",) if self.rules == "4.0" else ()
        inner = self._route(dlx, keys, dl_headers, unseen)
        queues = inner.queues
        steps = list(inner.steps)
        if on == "expire" and queue in queues:
            queues = queues - {queue}
            steps.append(
                Hop("unrouted", dlx, queue, "queue", f"cycle back to {queue}: the broker drops it")
            )
        return Route(dlx, keys, queues, tuple(steps), {}, inner.headers, hop)

    def queues_for(
        self, exchange: str, routing_key: str = "", headers: Mapping[str, Any] | None = None
    ) -> frozenset[str]:
        """Shorthand for ``route(...).queues``."""
        return self.route(exchange, routing_key, headers).queues

    def bindings_from(self, exchange: str) -> Iterable[BindingSpec]:
        return (b for b in self.topology.bindings if b.source == exchange)
