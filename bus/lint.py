"""``bus check``: reachability lint of a valid topology, on the routing simulator.

Errors (exit 1): an event contract that reaches no queue; a dead-letter or alternate exchange
that can reach no queue (the broker accepts both and drops the messages silently).
Warnings (exit 0): a queue no exchange can route to; a binding that can never match; an
event that only reaches its exchange's alternate exchange; an alternate exchange that is
never used. Each finding is ``FILE:LINE:COL: error|warning: message``.

With a RabbitMQ version (``rabbitmq``: the broker it runs on; ``target``: one it may move to)
the simulator uses that version's matching rules, and every object the version refuses
(error) or ignores or deprecates (warning) is reported with the reason
(:func:`bus.versions.version_issues`).

"Can reach" is an over-approximation wherever the key or the headers are unknown (an
alternate exchange sees any key its exchange failed to route; headers are never known), so
an error or a "never matches" warning is only reported when no message at all could route.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cache
from typing import Literal

from bus.errors import RoutingError, TopologyIssue
from bus.routing import (
    Router,
    headers_binding_matches_everything,
    headers_binding_matches_something,
    topic_matches,
)
from bus.topology.expand import BindingSpec
from bus.topology.load import LoadedTopology
from bus.topology.source import Path
from bus.versions import RabbitVersion, VersionIssue, as_version, version_issues

__all__ = ["Finding", "Severity", "exit_code", "lint", "patterns_overlap"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Finding:
    issue: TopologyIssue
    severity: Severity

    def __str__(self) -> str:
        i = self.issue
        where = f"{i.path}: " if i.path else ""
        return f"{i.file}:{i.line}:{i.column}: {self.severity}: {where}{i.message}"


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.severity == "error" for f in findings) else 0


def patterns_overlap(a: str, b: str) -> bool:
    """Is there a routing key both topic patterns match?"""
    wa = tuple(a.split(".")) if a else ()
    wb = tuple(b.split(".")) if b else ()

    @cache
    def go(i: int, j: int) -> bool:
        if i == len(wa) and j == len(wb):
            return True
        if i < len(wa) and wa[i] == "#" and (go(i + 1, j) or (j < len(wb) and go(i, j + 1))):
            return True
        if j < len(wb) and wb[j] == "#" and (go(i, j + 1) or (i < len(wa) and go(i + 1, j))):
            return True
        if i == len(wa) or j == len(wb) or "#" in (wa[i], wb[j]):
            return False
        return (wa[i] == "*" or wb[j] == "*" or wa[i] == wb[j]) and go(i + 1, j + 1)

    return go(0, 0)


# What keys can arrive at an exchange: None = any key; else literal keys and topic patterns.
_Inflow = list[tuple[Literal["key", "pattern"], str]] | None


class _Linter:
    def __init__(self, loaded: LoadedTopology, rabbitmq: RabbitVersion | None = None) -> None:
        self.loaded = loaded
        self.x = loaded.expanded
        self.router = Router(self.x, rabbitmq=rabbitmq)
        self.findings: list[Finding] = []
        self.by_source: dict[str, list[BindingSpec]] = {}
        for b in self.x.bindings:
            self.by_source.setdefault(b.source, []).append(b)

    def report(self, severity: Severity, path: Path, message: str, *, key: bool = False) -> None:
        issue = self.loaded.source.issue(path, message, key=key)
        self.findings.append(Finding(issue, severity))

    # -- semantics helpers ------------------------------------------------------------------

    def can_match(self, binding: BindingSpec, key: str | None) -> bool:
        """Can ``binding`` match a message with routing ``key`` (None: some key)?"""
        kind = self.router.exchange_type(binding.source)
        if kind == "headers":
            return headers_binding_matches_something(binding.arguments)
        if key is None or kind == "fanout":
            return True
        if kind == "direct":
            return binding.routing_key == key
        return topic_matches(binding.routing_key, key)

    def always_routes(self, exchange: str) -> BindingSpec | None:
        """A binding of ``exchange`` every message matches (its AE is then never used)."""
        kind = self.router.exchange_type(exchange)
        for b in self.by_source.get(exchange, ()):
            if kind == "fanout" or (kind == "topic" and b.routing_key in ("#", "#.#")):
                return b
            if kind == "headers" and headers_binding_matches_everything(b.arguments):
                return b
        return None

    def reach(self, exchange: str, key: str | None) -> set[str]:
        """Queues a message published to ``exchange`` with ``key`` may reach."""
        if exchange == "":
            return {key} & set(self.x.queues) if key is not None else set(self.x.queues)
        queues: set[str] = set()
        seen = {exchange}
        work = deque([exchange])
        while work:
            name = work.popleft()
            if name not in self.router.exchanges:
                continue  # a missing AE: the broker drops the message
            matched = [b for b in self.by_source.get(name, ()) if self.can_match(b, key)]
            for b in matched:
                if b.destination_type == "queue":
                    queues.add(b.destination)
                elif b.destination not in seen:
                    seen.add(b.destination)
                    work.append(b.destination)
            ae = self.router.alternate_exchange(name)
            may_miss = not matched or key is None or self.router.exchange_type(name) == "headers"
            if ae is not None and may_miss and self.always_routes(name) is None and ae not in seen:
                seen.add(ae)
                work.append(ae)
        return queues

    # -- rules ------------------------------------------------------------------------------

    def events(self) -> None:
        for name, event in self.loaded.model.events.items():
            try:
                route = self.router.route(event.exchange, event.routing_key, event.headers)
            except RoutingError:
                continue  # internal or unknown exchange: the loader reports it
            at: Path = ("events", name)
            where = "the default exchange" if not event.exchange else f"exchange {event.exchange!r}"
            if not route.queues:
                self.report(
                    "error",
                    at,
                    f"event {name!r} reaches no queue: {where} routes key "
                    f"{event.routing_key!r} nowhere, so every publish is returned as unroutable",
                    key=True,
                )
            elif len(route.trace) > 1 and route.trace[1].kind == "alternate":
                self.report(
                    "warning",
                    at,
                    f"event {name!r} matches no binding of {where}; it only reaches the "
                    f"alternate exchange's queues ({', '.join(sorted(route.queues))})",
                    key=True,
                )

    def dead_letter_exchanges(self) -> None:
        for name, queue in self.loaded.model.queues.items():
            dlx = queue.dead_letter_exchange
            if dlx is None or queue.dead_letter is not None:
                continue  # the dead_letter shorthand always has its own DLQ
            dl_key = queue.dead_letter_routing_key
            at: Path = ("queues", name, "dead_letter_exchange")
            if dlx == "":
                if dl_key is not None and dl_key not in self.x.queues:
                    self.report(
                        "error",
                        ("queues", name, "dead_letter_routing_key"),
                        f"dead-lettered messages go to the default exchange with key "
                        f"{dl_key!r}, which names no queue: they are dropped",
                    )
                continue
            if not self.reach(dlx, dl_key):
                with_key = f" with key {dl_key!r}" if dl_key is not None else ""
                self.report(
                    "error",
                    at,
                    f"dead-letter exchange {dlx!r} routes{with_key} to no queue: "
                    "dead-lettered messages are dropped",
                )

    def alternate_exchanges(self) -> None:
        for name, exchange in self.loaded.model.exchanges.items():
            ae = exchange.alternate_exchange
            if ae is None:
                continue
            at: Path = ("exchanges", name, "alternate_exchange")
            catch_all = self.always_routes(name)
            if catch_all is not None:
                self.report(
                    "warning",
                    at,
                    f"alternate exchange {ae!r} is never used: the binding to "
                    f"{catch_all.destination!r} matches every message",
                )
            elif not self.reach(ae, None):
                self.report(
                    "error",
                    at,
                    f"alternate exchange {ae!r} routes to no queue: unroutable messages "
                    "are dropped instead of kept",
                )

    def reachable(self) -> tuple[set[str], set[str]]:
        """Exchanges and queues some publish can get to (any key, any headers)."""
        exchanges = {n for n in self.router.exchanges if not self.router.is_internal(n)}
        queues: set[str] = set()
        work = deque(exchanges)
        while work:
            name = work.popleft()
            found: set[str] = set()
            for b in self.by_source.get(name, ()):
                if not self.can_match(b, None):
                    continue
                if b.destination_type == "queue":
                    if b.destination not in queues:
                        queues.add(b.destination)
                        found.update(self.dead_letter_targets(b.destination))
                else:
                    found.add(b.destination)
            ae = self.router.alternate_exchange(name)
            if ae is not None and self.always_routes(name) is None:
                found.add(ae)
            for target in found:
                if target.startswith("queue:"):
                    queues.add(target[6:])
                elif target in self.router.exchanges and target not in exchanges:
                    exchanges.add(target)
                    work.append(target)
        return exchanges, queues

    def dead_letter_targets(self, queue: str) -> set[str]:
        args = self.x.queues[queue].arguments
        dlx = args.get("x-dead-letter-exchange")
        if not isinstance(dlx, str):
            return set()
        if dlx == "":
            dl_key = args.get("x-dead-letter-routing-key")
            return {f"queue:{dl_key}"} if isinstance(dl_key, str) else set()
        return {dlx}

    def unreachable(self) -> None:
        exchanges, queues = self.reachable()
        by_name = {e.routing_key for e in self.loaded.model.events.values() if e.exchange == ""}
        for name, spec in self.x.queues.items():
            # Retry queues are filled by republishing through the default exchange;
            # dead-letter queues follow their owner.
            if spec.role != "queue" or name in queues or name in by_name:
                continue
            self.report(
                "warning",
                ("queues", name),
                f"queue {name!r} is not reachable from any exchange: only a publish by name "
                "through the default exchange gets a message into it",
                key=True,
            )
        self.bindings(exchanges, queues)

    def inflow(self, exchange: str, exchanges: set[str], queues: set[str]) -> _Inflow:
        """Keys that can arrive at an internal exchange from the reachable ``exchanges``
        and ``queues`` (one step back, so a superset; None = any key)."""
        items: list[tuple[Literal["key", "pattern"], str]] = []
        for b in self.x.bindings:
            if b.destination_type != "exchange" or b.destination != exchange:
                continue
            if b.source not in exchanges:
                continue
            kind = self.router.exchange_type(b.source)
            if kind == "direct":
                items.append(("key", b.routing_key))
            elif kind == "topic":
                items.append(("pattern", b.routing_key))
            else:
                return None
        for name in exchanges:
            if self.router.alternate_exchange(name) == exchange:
                return None
        for spec in self.x.queues.values():
            if spec.name in queues and spec.arguments.get("x-dead-letter-exchange") == exchange:
                dl_key = spec.arguments.get("x-dead-letter-routing-key")
                if not isinstance(dl_key, str):
                    return None
                items.append(("key", dl_key))
        return items

    def key_can_arrive(self, binding: BindingSpec, inflow: _Inflow) -> bool:
        kind = self.router.exchange_type(binding.source)
        if inflow is None or kind in ("fanout", "headers"):
            return True
        for what, value in inflow:
            if kind == "direct":
                ok = value == binding.routing_key if what == "key" else None
                if ok is None:
                    ok = topic_matches(value, binding.routing_key)
            elif what == "key":
                ok = topic_matches(binding.routing_key, value)
            else:
                ok = patterns_overlap(binding.routing_key, value)
            if ok:
                return True
        return False

    def bindings(self, reachable_exchanges: set[str], reachable_queues: set[str]) -> None:
        located: list[tuple[Path, BindingSpec]] = []
        for name, queue in self.loaded.model.queues.items():
            for index, qb in enumerate(queue.bindings):
                spec = BindingSpec(qb.exchange, name, "queue", qb.routing_key, dict(qb.arguments))
                located.append((("queues", name, "bindings", index), spec))
        for index, eb in enumerate(self.loaded.model.exchange_bindings):
            spec = BindingSpec(
                eb.source, eb.destination, "exchange", eb.routing_key, dict(eb.arguments)
            )
            located.append((("exchange_bindings", index), spec))
        inflows: dict[str, _Inflow] = {}
        for at, b in located:
            if b.source not in reachable_exchanges:
                self.report(
                    "warning",
                    at,
                    f"binding can never match: exchange {b.source!r} is internal and no "
                    "binding, alternate exchange or dead-letter exchange leads to it",
                )
            elif not self.can_match(b, None):
                self.report(
                    "warning",
                    (*at, "arguments"),
                    "binding can never match: x-match any ignores x- arguments, so there "
                    "is nothing to compare (use any-with-x to match on x- headers)",
                )
            elif self.router.is_internal(b.source):
                if b.source not in inflows:
                    inflows[b.source] = self.inflow(b.source, reachable_exchanges, reachable_queues)
                if not self.key_can_arrive(b, inflows[b.source]):
                    self.report(
                        "warning",
                        (*at, "routing_key"),
                        f"binding can never match: no key that reaches internal exchange "
                        f"{b.source!r} matches {b.routing_key!r}",
                    )

    def run(self) -> list[Finding]:
        self.events()
        self.dead_letter_exchanges()
        self.alternate_exchanges()
        self.unreachable()
        return sorted(set(self.findings))


def _issue_key(issue: VersionIssue) -> tuple[str, str, str, str]:
    return (issue.kind, issue.name, issue.field, issue.severity)


def lint(
    loaded: LoadedTopology,
    *,
    rabbitmq: RabbitVersion | str | None = None,
    target: RabbitVersion | str | None = None,
) -> list[Finding]:
    """Every finding of a valid topology, sorted by position: reachability (on the rules of
    ``rabbitmq``, default 3.10.8), what ``rabbitmq`` refuses or deprecates, and what moving
    to ``target`` would break beyond that."""
    current = None if rabbitmq is None else as_version(rabbitmq)
    linter = _Linter(loaded, current)
    seen: set[tuple[str, str, str, str]] = set()
    if current is not None:
        for issue in version_issues(linter.x, current):
            seen.add(_issue_key(issue))
            linter.report(issue.severity, issue.where, issue.message)
    if target is not None:
        moved = as_version(target)
        for issue in version_issues(linter.x, moved):
            if _issue_key(issue) not in seen:
                message = f"moving to RabbitMQ {moved}: {issue.message}"
                linter.report(issue.severity, issue.where, message)
    return linter.run()
