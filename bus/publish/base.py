"""What both publishing flavours are before any I/O: options, resolving, properties.

:class:`PublisherBase` is to :class:`~bus.publish.aio.AsyncPublisher` (aio-pika) and
:class:`~bus.publish.blocking.BlockingPublisher` (pika) what httpx's base client is to its
sync and async clients: the constructor and its checks, the mapping of ``publish`` and
``send_task`` calls onto wire messages (:class:`~bus.publish.message.Resolver`) and the
properties each message carries. The flavours add the I/O only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

from pydantic import BaseModel

from bus.publish.message import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Body,
    KeptProperties,
    Outgoing,
    PublishOptions,
    Resolved,
    Resolver,
    TaskOptions,
    TopologyLike,
)
from bus.publish.outcomes import DEFAULT_CONFIRM_TIMEOUT, DEFAULT_WINDOW, default_app_id
from bus.publish.wire import check_short_string
from bus.settings import BusSettings

__all__ = ["PublisherBase", "PublisherOptions", "as_datetime", "as_seconds", "item_id"]


class PublisherOptions(TypedDict, total=False):
    """The constructor keywords of every publisher (see :class:`PublisherBase`)."""

    exchanges: Iterable[str]
    app_id: str | None
    confirm_timeout: float
    max_message_size: int
    window: int
    connection_name: str | None
    resolver: Resolver | None


class PublisherBase:
    """Settings, resolver and defaults of one publisher; see the module docstring.

    ``resolver`` replaces the one built from ``topology`` (a public hook: the DLQ replay's
    resolver keeps a dead letter's properties, see :class:`~bus.publish.message.KeptProperties`).
    """

    default_connection_name = "amqp-bus-publisher"

    def __init__(
        self,
        settings: BusSettings,
        topology: TopologyLike | None = None,
        **options: Unpack[PublisherOptions],
    ) -> None:
        self._init(settings, topology, **options)

    def _init(
        self,
        settings: BusSettings,
        topology: TopologyLike | None,
        *,
        exchanges: Iterable[str] = (),
        app_id: str | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        window: int = DEFAULT_WINDOW,
        connection_name: str | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        if confirm_timeout <= 0:
            raise ValueError("confirm_timeout must be positive")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.settings = settings
        self.resolver = resolver if resolver is not None else Resolver(topology, max_message_size)
        self.app_id = app_id or default_app_id()
        check_short_string(self.app_id, "app_id")
        self.confirm_timeout = confirm_timeout
        self.window = window
        self.connection_name = connection_name or self.default_connection_name
        self._exchanges = list(exchanges)
        # The broker refuses a user_id other than the connection's user (406).
        self._user = settings.credentials()[0]

    def seconds(self, confirm_timeout: float | None) -> float:
        """The deadline of one publish: its own, else the publisher's."""
        return self.confirm_timeout if confirm_timeout is None else confirm_timeout

    def exchanges_to_check(self) -> list[str]:
        """Every exchange the start-up check covers: the contracts' and ``exchanges=``."""
        return self.resolver.exchanges(self._exchanges)

    def resolve(
        self,
        target: BaseModel | str,
        routing_key: str | None,
        body: Body | None,
        options: PublishOptions,
    ) -> Resolved:
        """The wire message of one ``publish`` call."""
        return self.resolver.call(target, routing_key, body, **options)

    def resolve_item(self, item: Outgoing | BaseModel) -> Resolved:
        """The wire message of one ``publish_many`` item."""
        return self.resolver.item(item)

    def resolve_task(
        self,
        queue: str,
        task: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        **options: Unpack[TaskOptions],
    ) -> Resolved:
        """The wire message of one ``send_task`` call (Celery protocol 2, plain AMQP)."""
        return self.resolver.task(
            queue,
            task,
            args,
            kwargs,
            task_id=options.get("task_id"),
            origin=self.app_id,
            ignore_result=options.get("ignore_result", True),
            reply_to=options.get("reply_to"),
            expires=options.get("expires"),
        )

    def kept_user_id(self, kept: KeptProperties) -> str | None:
        """A kept ``user_id`` goes out only when it is the connection's user (else 406)."""
        return kept.user_id if kept.user_id == self._user else None


def item_id(item: object) -> str | None:
    """The ``message_id`` of a ``publish_many`` item that was never resolved."""
    return item.message_id if isinstance(item, Outgoing) else None


def as_datetime(value: datetime | int | None) -> datetime | None:
    """A kept timestamp for aiormq (pika gives seconds since the epoch)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value, UTC)


def as_seconds(value: datetime | int | None) -> int | None:
    """A kept timestamp for pika (aiormq gives a datetime)."""
    if value is None or isinstance(value, int):
        return value
    return int(value.timestamp())
