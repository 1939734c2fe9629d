"""RabbitMQ versions: what a topology, the simulator and the consumers must know per version.

The bus is proven on two brokers (``docs/rabbitmq-versions.md`` holds every difference with
the way it was measured): RabbitMQ 3.10.8 (Debian bookworm) and 4.0.5 (Debian trixie). Each
version maps to the rule set of the newest proven version not above it, so 3.11-3.13 use
3.10.8's rules and 4.1-4.3 use 4.0.5's; rules that only the release notes state (not measured
here) say so in their message.

- :class:`RabbitVersion` parses ``"4.0"``, ``"4.0.5"`` or the management API's
  ``rabbitmq_version``.
- :func:`effective_delivery_limit`: a quorum queue without ``x-delivery-limit`` has no limit
  on 3.x and a limit of 20 on 4.x (the management API of 4.0.5 shows ``delivery_limit: 20``).
- :func:`version_issues`: every object of an expanded topology a version refuses, ignores or
  deprecates, with the reason; ``bus check --rabbitmq/--target`` and ``bus plan`` report them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bus.errors import BrokerError, UsageError
from bus.topology.expand import ExpandedTopology, QueueSpec
from bus.topology.model import Policy

__all__ = [
    "DEFAULT_VERSION",
    "PROVEN_VERSIONS",
    "QUORUM_DEFAULT_DELIVERY_LIMIT",
    "RabbitVersion",
    "RuleSet",
    "VersionIssue",
    "as_version",
    "broker_version",
    "effective_delivery_limit",
    "has_dead_letter_exchange",
    "policy_for",
    "version_issues",
]

RuleSet = Literal["3.10", "4.0"]
Severity = Literal["error", "warning"]

# RabbitMQ 4.0 gives quorum queues without x-delivery-limit this limit (measured on 4.0.5:
# the management API shows delivery_limit 20 for such a queue; 3.10.8 has no limit at all).
QUORUM_DEFAULT_DELIVERY_LIMIT = 20

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class RabbitVersion:
    """A RabbitMQ release, ``major.minor[.patch]``; ordered like releases."""

    major: int
    minor: int
    patch: int | None = None

    @classmethod
    def parse(cls, text: str) -> RabbitVersion:
        """``"4.0"``, ``"4.0.5"``, ``"3.13.7+12.g0abc"`` (the API's spelling of a dev build)."""
        match = _VERSION.match(text)
        if match is None:
            raise UsageError(f"RabbitMQ version {text!r}: expected MAJOR.MINOR[.PATCH]")
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), None if patch is None else int(patch))

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}"
        return base if self.patch is None else f"{base}.{self.patch}"

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)

    @property
    def rules(self) -> RuleSet:
        """The proven rule set this version follows (the newest proven one not above it)."""
        return "4.0" if self.at_least(4, 0) else "3.10"


# The versions every rule of the simulator and the planner was measured on.
PROVEN_VERSIONS = (RabbitVersion(3, 10, 8), RabbitVersion(4, 0, 5))
# What the simulator assumes when nobody names a version (its behaviour before versions).
DEFAULT_VERSION = PROVEN_VERSIONS[0]


def as_version(value: RabbitVersion | str | None) -> RabbitVersion:
    if value is None:
        return DEFAULT_VERSION
    return value if isinstance(value, RabbitVersion) else RabbitVersion.parse(value)


def broker_version(overview: Mapping[str, Any]) -> RabbitVersion:
    """The version in a management API ``/api/overview`` answer."""
    text = overview.get("rabbitmq_version")
    if not isinstance(text, str) or _VERSION.match(text) is None:
        raise BrokerError(f"the management API reports no RabbitMQ version ({text!r})")
    return RabbitVersion.parse(text)


# -- delivery limits and dead-letter exchanges -------------------------------------------------


def policy_for(queue: QueueSpec, policies: Mapping[str, Policy]) -> Policy | None:
    """The policy RabbitMQ applies to ``queue``: the matching one of highest priority."""
    matching = [
        p
        for p in policies.values()
        if p.apply_to in ("queues", "all") and re.search(p.pattern, queue.name)
    ]
    return max(matching, key=lambda p: p.priority, default=None)


def _limit_value(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def effective_delivery_limit(
    queue: QueueSpec,
    policies: Mapping[str, Policy],
    version: RabbitVersion | str | None = None,
) -> int | None:
    """How many deliveries a message of ``queue`` gets before the broker dead-letters or
    drops it; None for no limit (classic and stream queues, quorum queues on 3.x without
    one, a negative limit on 4.x). Argument and policy both set: the lower wins, as the
    quorum queue resolves them."""
    if queue.type != "quorum":
        return None
    found = [
        v
        for v in (
            _limit_value(queue.arguments.get("x-delivery-limit")),
            _limit_value(_policy_definition(queue, policies).get("delivery-limit")),
        )
        if v is not None
    ]
    if not found:
        return QUORUM_DEFAULT_DELIVERY_LIMIT if as_version(version).at_least(4, 0) else None
    limit = min(found)
    return None if limit < 0 else limit


def _policy_definition(queue: QueueSpec, policies: Mapping[str, Policy]) -> Mapping[str, Any]:
    policy = policy_for(queue, policies)
    return policy.definition if policy is not None else {}


def has_dead_letter_exchange(queue: QueueSpec, policies: Mapping[str, Policy]) -> bool:
    """Does ``queue`` dead-letter (by argument or by its policy) rather than drop?"""
    if "x-dead-letter-exchange" in queue.arguments:
        return True
    return "dead-letter-exchange" in _policy_definition(queue, policies)


# -- what a version refuses, ignores or deprecates ---------------------------------------------


@dataclass(frozen=True)
class VersionIssue:
    """One object a RabbitMQ version treats differently from what the topology expects.

    ``where`` is the path of the field in topology.yaml (a generated queue points at the
    shorthand of the queue that generated it).
    """

    kind: Literal["queue", "policy"]
    name: str
    field: str
    severity: Severity
    message: str
    where: tuple[str | int, ...]
    value: object = None


def _queue_path(queue: QueueSpec, field_name: str) -> tuple[str | int, ...]:
    if queue.owner is not None:
        shorthand = "dead_letter" if queue.role == "dead-letter" else "retry"
        return ("queues", queue.owner, shorthand)
    return ("queues", queue.name, field_name)


def _queue_issues(expanded: ExpandedTopology, version: RabbitVersion) -> Iterator[VersionIssue]:
    policies = expanded.policies
    v4, v43 = version.at_least(4, 0), version.at_least(4, 3)
    for q in expanded.queues.values():

        def issue(
            field_name: str, severity: Severity, message: str, value: object, q: QueueSpec = q
        ) -> VersionIssue:
            return VersionIssue(
                "queue", q.name, field_name, severity, message, _queue_path(q, field_name), value
            )

        if "x-queue-mode" in q.arguments and v4:
            yield issue(
                "queue_mode",
                "error" if v43 else "warning",
                (
                    "x-queue-mode is refused by RabbitMQ 4.3 (release notes, not measured here)"
                    if v43
                    else f"x-queue-mode is ignored by RabbitMQ {version} (classic queues "
                    "store messages the same way whatever the mode); drop queue_mode"
                ),
                q.arguments["x-queue-mode"],
            )
        if q.arguments.get("x-queue-version") == 1 and v4:
            yield issue(
                "queue_version",
                "warning",
                f"classic queue storage version 1 was removed in RabbitMQ 4.0: {version} "
                "creates the queue as version 2 (measured on 4.0.5: storage_version 2); "
                "drop queue_version",
                1,
            )
        if q.type == "classic" and not q.durable and v4:
            yield issue(
                "durable",
                "error" if v43 else "warning",
                (
                    "transient non-exclusive queues are denied by default from RabbitMQ 4.3 "
                    "(deprecated feature transient_nonexcl_queues; release notes): the "
                    "declaration fails unless the operator permits it; make it durable"
                    if v43
                    else f"transient non-exclusive queues are deprecated in RabbitMQ {version} "
                    "(feature transient_nonexcl_queues) and denied by default from 4.3; "
                    "make it durable"
                ),
                False,
            )
        if q.type == "quorum" and q.role == "queue" and v4:
            limit = effective_delivery_limit(q, policies, version)
            explicit = "x-delivery-limit" in q.arguments or "delivery-limit" in (
                _policy_definition(q, policies)
            )
            if not explicit and not has_dead_letter_exchange(q, policies):
                yield issue(
                    "delivery_limit",
                    "warning",
                    f"no delivery_limit: RabbitMQ {version} applies its default of {limit} "
                    "(3.x had none), and the queue has no dead-letter exchange, so a message "
                    f"delivered {limit} times is DROPPED; set delivery_limit or dead_letter",
                    limit,
                )


def _policy_issues(expanded: ExpandedTopology, version: RabbitVersion) -> Iterator[VersionIssue]:
    v4, v43 = version.at_least(4, 0), version.at_least(4, 3)
    if not v4:
        return
    for name, policy in expanded.policies.items():
        for key, value in policy.definition.items():
            at = ("policies", name, "definition", key)
            if key.startswith("ha-"):
                yield VersionIssue(
                    "policy", name, f"definition.{key}", "error",
                    f"{key}: classic queue mirroring was removed in RabbitMQ 4.0; {version} "
                    "refuses the whole policy (measured on 4.0.5: 400 'not recognised policy "
                    "settings'); use quorum queues instead",
                    at, value,
                )  # fmt: skip
            elif key == "queue-mode":
                yield VersionIssue(
                    "policy", name, f"definition.{key}", "error" if v43 else "warning",
                    "queue-mode is refused by RabbitMQ 4.3 (release notes, not measured here)"
                    if v43
                    else f"queue-mode is ignored by RabbitMQ {version}; drop it",
                    at, value,
                )  # fmt: skip
            elif key == "queue-version" and value == 1:
                yield VersionIssue(
                    "policy", name, f"definition.{key}", "warning",
                    "classic queue storage version 1 was removed in RabbitMQ 4.0: queues "
                    "stay version 2 (measured on 4.0.5); drop it",
                    at, value,
                )  # fmt: skip


def version_issues(
    expanded: ExpandedTopology, version: RabbitVersion | str | None
) -> list[VersionIssue]:
    """Every object of ``expanded`` that RabbitMQ ``version`` refuses (error), or ignores or
    deprecates (warning)."""
    target = as_version(version)
    return [*_policy_issues(expanded, target), *_queue_issues(expanded, target)]
