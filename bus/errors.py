"""The one error hierarchy of amqp-bus.

Every error the bus raises on purpose derives from :class:`BusError`. The CLI
maps each class to an exit code (``exit_code``) and prints ``error: <message>``
on one line; a traceback means a bug.

::

    BusError (1)
    ├── UsageError (2)                 bad command-line or settings input
    ├── TopologyError (2)              topology.yaml is invalid; carries every issue
    ├── RoutingError (2)               a simulated publish the broker would refuse
    ├── ContractError (1)              an event/model does not match a contract
    ├── PlanConflictError (1)          the live broker conflicts with the topology
    ├── PlanUnverifiedError (1)        plan --detailed-exitcode could not compare everything
    ├── BrokerError (1)                talking to RabbitMQ failed
    │   ├── BrokerUnavailableError     nothing answers / connection refused
    │   ├── AccessRefusedError         the broker user lacks a permission
    │   ├── NotFoundError              an exchange or queue does not exist
    │   └── ManagementAPIError         the HTTP management API answered an error
    └── PublishError (1)               a message was not safely published
        ├── UnroutableError            returned by the broker (mandatory, no route)
        ├── PublishNackedError         the broker nacked the publish
        ├── PublishTimeoutError        no confirm within the deadline
        ├── MessageTooLargeError       refused before sending
        └── UnsendableMessageError (2) a name, key, property or header AMQP cannot carry;
                                       refused before sending
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "AccessRefusedError",
    "BrokerError",
    "BrokerUnavailableError",
    "BusError",
    "ContractError",
    "ManagementAPIError",
    "MessageTooLargeError",
    "NotFoundError",
    "NotSentError",
    "PlanConflictError",
    "PlanUnverifiedError",
    "PublishError",
    "PublishNackedError",
    "PublishTimeoutError",
    "RoutingError",
    "TopologyError",
    "TopologyIssue",
    "UnroutableError",
    "UnsendableMessageError",
    "UsageError",
    "parse_access_refused",
]


class BusError(Exception):
    """Base of every error amqp-bus raises on purpose."""

    exit_code: int = 1


class UsageError(BusError):
    """Bad command-line arguments or settings."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class TopologyIssue:
    """One problem in a topology file, located by line and column (1-based)."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.column}: {where}{self.message}"


class TopologyError(BusError):
    """The topology file is invalid. ``issues`` lists every problem found."""

    exit_code = 2

    def __init__(self, issues: list[TopologyIssue]) -> None:
        self.issues = sorted(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class RoutingError(BusError):
    """The routing simulator cannot route this publish: unknown or internal exchange, or
    headers the broker refuses (e.g. a ``CC`` header that is not an array)."""

    exit_code = 2


class ContractError(BusError):
    """An event or model does not match any contract of the topology."""


class PlanConflictError(BusError):
    """The live broker holds objects that conflict with the topology."""


class PlanUnverifiedError(BusError):
    """A drift check (``bus plan --detailed-exitcode``) could not compare every object:
    it fails rather than pass without checking."""


class BrokerError(BusError):
    """Talking to RabbitMQ failed."""


class BrokerUnavailableError(BrokerError):
    """No broker answers at the configured address."""


class AccessRefusedError(BrokerError):
    """The broker refused an operation for lack of permission.

    Built with :meth:`from_reply`, the message names the permission and the object:
    ``access refused: write permission on exchange 'events' in vhost 'v' for user 'u'``.
    """

    permission: str | None = None
    kind: str | None = None
    name: str | None = None

    @classmethod
    def from_reply(
        cls,
        reply_text: str,
        permission: str,
        *,
        kind: str,
        name: str,
        vhost: str,
        user: str,
        detail: str = "",
    ) -> AccessRefusedError:
        """From the broker's 403 text; the object it names wins over ``kind`` / ``name``."""
        refused = parse_access_refused(reply_text)
        if refused is not None:
            kind, name, vhost, user = refused
        what = f"{kind} {name!r}"
        if kind == "exchange" and name == "amq.default":
            what += " (the default exchange)"
        text = (
            f"access refused: {permission} permission on {what} in vhost {vhost!r} "
            f"for user {user!r}"
        )
        error = cls(f"{text}; {detail}" if detail else text)
        error.permission, error.kind, error.name = permission, kind, name
        return error


# RabbitMQ's 403 text: "ACCESS_REFUSED - access to exchange 'x' in vhost 'v' refused for user 'u'"
_REFUSED = re.compile(
    r"access to (?P<kind>exchange|queue|topic) '(?P<name>.*?)' in vhost '(?P<vhost>.*?)' "
    r"refused for user '(?P<user>.*?)'"
)


def parse_access_refused(text: str) -> tuple[str, str, str, str] | None:
    """(kind, name, vhost, user) of a broker ACCESS_REFUSED text, or None."""
    match = _REFUSED.search(text)
    if match is None:
        return None
    return match["kind"], match["name"], match["vhost"], match["user"]


class NotFoundError(BrokerError):
    """An exchange, queue or vhost the operation needs does not exist."""


class ManagementAPIError(BrokerError):
    """The management HTTP API answered with an error."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class PublishError(BusError):
    """A message was not safely published; the caller must not assume delivery."""


class UnroutableError(PublishError):
    """The broker returned a mandatory message: no queue is bound for it."""

    def __init__(self, exchange: str, routing_key: str, reply_text: str) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.reply_text = reply_text
        super().__init__(
            f"unroutable: exchange {exchange!r} routing key {routing_key!r}: {reply_text}"
        )


class PublishNackedError(PublishError):
    """The broker nacked the publish (e.g. a full queue with reject-publish)."""


class PublishTimeoutError(PublishError):
    """No confirm arrived within the deadline (e.g. a blocked connection)."""


class NotSentError(PublishError):
    """Never written: an earlier message of an in-order batch lost its channel or connection,
    so this one was held back (sending it on a new channel could overtake an unconfirmed one)."""


class MessageTooLargeError(PublishError):
    """The message exceeds the configured maximum size; nothing was sent."""


class UnsendableMessageError(PublishError):
    """A value AMQP cannot carry as given (a name, routing key, property or header name over
    255 bytes, a header value of no AMQP type); refused before anything was sent."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}: nothing was sent")
