"""Rules that need more than one field: queue-type fit, names, references, duplicates.

Each rule yields a :class:`Finding` with the path of the exact field at fault, so the loader
can report ``FILE:LINE:COL`` for it (at the key when the name itself is the problem).
Rules run on the entries that passed the model checks;
names of entries that failed still count as declared, so one typo gives one error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from bus.patterns import pattern_problem
from bus.topology.model import (
    CELERY_MONITORING_EXCHANGES,
    MAX_AGE,
    QUEUE_ARGUMENTS,
    RESERVED_PREFIX,
    TYPED_X_ARGS,
    Queue,
    Topology,
)
from bus.topology.names import derived_names
from bus.topology.source import Path

__all__ = ["BUILTIN_EXCHANGES", "Finding", "as_finding", "check_credentials", "check_topology"]


class Finding(NamedTuple):
    path: Path
    message: str
    at_key: bool = False


BUILTIN_EXCHANGES = {
    "amq.direct": "direct",
    "amq.topic": "topic",
    "amq.fanout": "fanout",
    "amq.headers": "headers",
    "amq.match": "headers",
}
X_MATCH = {"all", "any", "all-with-x", "any-with-x"}
# Policy keys RabbitMQ 3.10 accepts (docs/rabbitmq-behaviour.md section 7).
POLICY_KEYS = {
    "alternate-exchange", "dead-letter-exchange", "dead-letter-routing-key",
    "dead-letter-strategy", "delivery-limit", "expires", "initial-cluster-size", "max-age",
    "max-in-memory-length", "max-in-memory-bytes", "max-length", "max-length-bytes",
    "message-ttl", "overflow", "queue-leader-locator", "queue-mode", "queue-version",
    "stream-max-segment-size-bytes", "ha-mode", "ha-params", "ha-sync-mode",
    "ha-promote-on-shutdown", "ha-promote-on-failure", "ha-sync-batch-size",
    "federation-upstream", "federation-upstream-set",
}  # fmt: skip
_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|credential|api[_-]?key)s?$", re.I)
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


def _name_problem(name: str, kind: str) -> str | None:
    if not name:
        return f"{kind} name must not be empty"
    if len(name.encode("utf-8")) > 255:
        return f"{kind} name is longer than 255 bytes"
    if name.startswith(RESERVED_PREFIX):
        return f"{kind} name {name!r} uses the reserved prefix 'amq.'"
    return None


def check_credentials(data: Any, path: Path = ()) -> Iterator[Finding | tuple[Path, str]]:
    """Credentials belong in the environment: password-like keys and URLs with a password."""
    if isinstance(data, dict):
        for key, value in data.items():
            if _SECRET_KEY.search(str(key)) and value not in (None, ""):
                yield Finding(
                    (*path, key),
                    f"{key!r} looks like a credential: credentials belong in the environment "
                    "(BUS_AMQP_URL), never in topology.yaml",
                    at_key=True,
                )
            else:
                yield from check_credentials(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from check_credentials(value, (*path, index))
    elif isinstance(data, str) and _URL_WITH_PASSWORD.search(data):
        yield path, "a URL with user:password: credentials belong in the environment"


class _Checker:
    def __init__(self, topology: Topology, exchanges: set[str], queues: set[str]) -> None:
        self.t = topology
        self.exchanges = exchanges
        self.queues = queues
        self.derived = {
            derived: owner
            for owner, q in topology.queues.items()
            for derived in derived_names(owner, q)
        }

    def exchange_known(self, name: str) -> bool:
        return name in self.exchanges or name in BUILTIN_EXCHANGES or name in self.derived

    def run(self) -> Iterator[Finding | tuple[Path, str]]:
        yield from self.vhost()
        for name, exchange in self.t.exchanges.items():
            at: Path = ("exchanges", name)
            problem = _name_problem(name, "exchange")
            if problem:
                yield Finding(at, problem, at_key=True)
            if "alternate-exchange" in exchange.arguments:
                yield Finding(
                    (*at, "arguments", "alternate-exchange"),
                    "use the alternate_exchange field, not arguments",
                    at_key=True,
                )
            ae = exchange.alternate_exchange
            if ae is not None and not self.exchange_known(ae):
                yield (*at, "alternate_exchange"), f"alternate exchange {ae!r} is not declared"
        for name, queue in self.t.queues.items():
            yield from self.queue(name, queue)
        yield from self.exchange_bindings()
        yield from self.events()
        yield from self.policies()
        for index, pattern in enumerate(self.t.unmanaged):
            # Evaluated by plan/apply on our CPU against broker names: RE2, linear time.
            problem = pattern_problem(pattern)
            if problem is not None:
                yield ("unmanaged", index), problem
        yield from self.celery_section()

    def vhost(self) -> Iterator[Finding | tuple[Path, str]]:
        if self.t.vhost is not None and self.t.vhost.name is not None:
            name = self.t.vhost.name
            if len(name.encode("utf-8")) > 255:
                yield ("vhost", "name"), "vhost name is longer than 255 bytes"

    def queue(self, name: str, q: Queue) -> Iterator[Finding | tuple[Path, str]]:
        at: Path = ("queues", name)
        problem = _name_problem(name, "queue")
        if problem:
            yield Finding(at, problem, at_key=True)
        if q.exclusive:
            yield (
                (*at, "exclusive"),
                ("exclusive queues belong to one connection and cannot be declared by a topology"),
            )
        if q.type in ("quorum", "stream"):
            if not q.durable:
                yield (*at, "durable"), f"{q.type} queues must be durable"
            if q.auto_delete:
                yield (*at, "auto_delete"), f"{q.type} queues cannot be auto_delete"
        for field_name, (_, types) in QUEUE_ARGUMENTS.items():
            if getattr(q, field_name) is not None and q.type not in types:
                yield (
                    (*at, field_name),
                    (
                        f"{field_name} does not apply to {q.type} queues "
                        f"(only {', '.join(sorted(types))})"
                    ),
                )
        if q.max_age is not None and not MAX_AGE.match(q.max_age):
            yield (*at, "max_age"), f"{q.max_age!r} must look like 7D, 12h or 30m (Y M D h m s)"
        if q.overflow == "reject-publish-dlx" and q.type == "quorum":
            yield (
                (*at, "overflow"),
                (
                    "quorum queues accept reject-publish-dlx but behave as drop-head; "
                    "use reject-publish or drop-head"
                ),
            )
        if q.dead_letter_routing_key is not None and q.dead_letter_exchange is None:
            yield (
                (*at, "dead_letter_routing_key"),
                "dead_letter_routing_key needs dead_letter_exchange",
            )
        if q.dead_letter is not None and q.dead_letter_exchange is not None:
            yield (
                (*at, "dead_letter_exchange"),
                ("use either dead_letter (shorthand) or dead_letter_exchange, not both"),
            )
        if q.type == "stream":
            for shorthand in ("dead_letter", "retry"):
                if getattr(q, shorthand) is not None:
                    yield (*at, shorthand), "stream queues cannot dead-letter"
        if q.retry is not None and q.dead_letter is None and q.dead_letter_exchange is None:
            yield (
                (*at, "retry"),
                (
                    "retry needs a place for the last failure: add dead_letter: true "
                    "(or dead_letter_exchange)"
                ),
            )
        dlx = q.dead_letter_exchange
        if dlx is not None and dlx != "" and not self.exchange_known(dlx):
            yield (*at, "dead_letter_exchange"), f"dead-letter exchange {dlx!r} is not declared"
        for arg in q.arguments:
            if arg in TYPED_X_ARGS:
                yield Finding(
                    (*at, "arguments", arg), f"{arg} has a typed field; use it instead", True
                )
        for derived in derived_names(name, q):
            if derived in self.queues or derived in self.exchanges:
                owner = "dead_letter" if derived.endswith((".dlq", ".dlx")) else "retry"
                yield (*at, owner), f"generates {derived!r}, which is already declared"
        seen: dict[tuple[str, str, str], int] = {}
        for index, binding in enumerate(q.bindings):
            b_at: Path = (*at, "bindings", index)
            if binding.exchange == "":
                yield (
                    (*b_at, "exchange"),
                    ("cannot bind to the default exchange: every queue is bound to it by its name"),
                )
            elif not self.exchange_known(binding.exchange):
                yield (*b_at, "exchange"), f"exchange {binding.exchange!r} is not declared"
            yield from _x_match((*b_at, "arguments"), binding.arguments)
            key = (binding.exchange, binding.routing_key, repr(sorted(binding.arguments.items())))
            if key in seen:
                yield b_at, f"duplicate binding (same as bindings[{seen[key]}])"
            else:
                seen[key] = index
        if q.celery is not None:
            yield from self.celery(at, name, q)

    def celery(self, at: Path, name: str, q: Queue) -> Iterator[Finding | tuple[Path, str]]:
        if q.type == "stream":
            yield (*at, "celery"), "Celery cannot consume stream queues"
            return
        assert q.celery is not None
        if q.celery.routing_key is not None:
            if not any(b.exchange for b in q.bindings):
                yield (*at, "celery"), "a Celery queue needs a binding to an exchange"
            return
        concrete = [b for b in q.bindings if "*" not in b.routing_key and "#" not in b.routing_key]
        if not q.bindings:
            yield (*at, "celery"), "a Celery queue needs a binding to an exchange"
        elif not concrete:
            yield (
                (*at, "celery"),
                (
                    "every binding is a pattern: set celery.routing_key to the concrete key "
                    "Celery publishes with"
                ),
            )

    def celery_section(self) -> Iterator[Finding | tuple[Path, str]]:
        section = self.t.celery
        if section.monitoring:
            for name in CELERY_MONITORING_EXCHANGES:
                if name in self.exchanges:
                    yield Finding(
                        ("exchanges", name),
                        f"{name!r} is declared by celery.monitoring: remove it from exchanges",
                        at_key=True,
                    )
        for name, schedule in section.schedules.items():
            at: Path = ("celery", "schedules", name)
            if not name:
                yield Finding(at, "schedule name must not be empty", at_key=True)
            queue = self.t.queues.get(schedule.queue)
            if queue is not None and queue.celery is not None:
                continue
            if queue is not None:
                problem = "is not marked 'celery:' (no Celery worker serves it)"
            elif schedule.queue in self.queues:
                continue  # declared but invalid: its own error is reported
            elif schedule.queue in self.derived:
                problem = f"is generated for {self.derived[schedule.queue]!r}, not a Celery queue"
            else:
                problem = "is not declared in queues"
            yield (*at, "queue"), f"queue {schedule.queue!r} {problem}"

    def exchange_bindings(self) -> Iterator[Finding | tuple[Path, str]]:
        seen: dict[tuple[str, str, str, str], int] = {}
        for index, b in enumerate(self.t.exchange_bindings):
            at: Path = ("exchange_bindings", index)
            for end in ("source", "destination"):
                name = getattr(b, end)
                if name == "":
                    yield (*at, end), "the default exchange cannot be bound"
                elif not self.exchange_known(name):
                    yield (*at, end), f"exchange {name!r} is not declared"
            yield from _x_match((*at, "arguments"), b.arguments)
            key = (b.source, b.destination, b.routing_key, repr(sorted(b.arguments.items())))
            if key in seen:
                yield at, f"duplicate binding (same as exchange_bindings[{seen[key]}])"
            else:
                seen[key] = index

    def events(self) -> Iterator[Finding | tuple[Path, str]]:
        for name, event in self.t.events.items():
            at: Path = ("events", name)
            if not name:
                yield Finding(at, "event name must not be empty", at_key=True)
            if event.exchange == "":
                if event.routing_key not in self.queues and event.routing_key not in self.derived:
                    yield (
                        (*at, "routing_key"),
                        ("through the default exchange the routing key must name a declared queue"),
                    )
            elif not self.exchange_known(event.exchange):
                yield (*at, "exchange"), f"exchange {event.exchange!r} is not declared"
            elif self.exchange_is_internal(event.exchange):
                yield (
                    (*at, "exchange"),
                    f"exchange {event.exchange!r} is internal: publishing to it is refused",
                )

    def exchange_is_internal(self, name: str) -> bool:
        exchange = self.t.exchanges.get(name)
        return exchange is not None and exchange.internal

    def policies(self) -> Iterator[Finding | tuple[Path, str]]:
        for name, policy in self.t.policies.items():
            at: Path = ("policies", name)
            yield from _regex((*at, "pattern"), policy.pattern)
            for key in policy.definition:
                if key not in POLICY_KEYS:
                    yield (*at, "definition", key), f"{key!r} is not a policy key RabbitMQ knows"


def _regex(at: Path, pattern: str) -> Iterator[Finding | tuple[Path, str]]:
    try:
        re.compile(pattern)
    except re.error as exc:
        yield at, f"invalid regular expression: {exc}"


def _x_match(at: Path, arguments: dict[str, Any]) -> Iterator[Finding | tuple[Path, str]]:
    if "x-match" in arguments and arguments["x-match"] not in X_MATCH:
        yield (*at, "x-match"), f"x-match must be one of {', '.join(sorted(X_MATCH))}"


def check_topology(topology: Topology, exchanges: set[str], queues: set[str]) -> list[Finding]:
    """Every cross-field finding; ``exchanges``/``queues`` are all declared names."""
    return [as_finding(f) for f in _Checker(topology, exchanges, queues).run()]


def as_finding(found: Finding | tuple[Path, str]) -> Finding:
    return found if isinstance(found, Finding) else Finding(found[0], found[1])
