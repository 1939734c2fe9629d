"""One AMQP connection for plan probes and apply, with channels replaced after a refusal.

A 404/406/403 closes the channel it happened on. Callers declare one object per call, so
a refusal costs one channel and names exactly one object; the next call opens a new channel
on the same connection.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import pika
import pika.exceptions

from bus.broker.connect import connect_sync, translate_error
from bus.broker.live import LiveBinding, QueueUsage
from bus.broker.passive import check_exchange, check_queue
from bus.errors import BrokerUnavailableError
from bus.settings import BusSettings, mask_url, with_vhost
from bus.topology.expand import BindingSpec, ExchangeSpec, QueueSpec

__all__ = ["AmqpSession", "ChannelRefused"]

T = TypeVar("T")


class ChannelRefused(Exception):
    """The broker closed the channel with ``reply_code`` (404, 405, 406, 403...)."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        super().__init__(f"{reply_code} {reply_text}")


class AmqpSession:
    """A pika connection to one vhost; :meth:`call` runs one operation on a live channel."""

    def __init__(self, settings: BusSettings, vhost: str, name: str = "amqp-bus") -> None:
        self.url = with_vhost(settings.amqp_url, vhost)
        self.settings = settings.model_copy(update={"amqp_url": self.url})
        self.connection: Any = connect_sync(self.settings, name)
        self._channel: Any = None

    def _live_channel(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self._channel = self.connection.channel()
        return self._channel

    def call(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation(channel)``; a channel-level refusal raises :class:`ChannelRefused`."""
        try:
            return operation(self._live_channel())
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            raise ChannelRefused(exc.reply_code, exc.reply_text) from None
        except pika.exceptions.ConnectionClosedByBroker as exc:
            # 503 COMMAND_INVALID (unknown exchange type) and 320 (broker shutdown) end here.
            raise BrokerUnavailableError(
                f"the broker closed the connection to {mask_url(self.url)}: "
                f"{exc.reply_code} {exc.reply_text}"
            ) from None
        except (pika.exceptions.AMQPError, OSError, ssl.SSLError) as exc:
            raise translate_error(exc, self.url) from None

    # -- one object per call -----------------------------------------------------------------
    def passive_exchange(self, name: str) -> None:
        self.call(lambda ch: check_exchange(ch, name))

    def passive_queue(self, name: str) -> QueueUsage:
        """Ready messages and consumers of an existing queue."""
        return self.call(lambda ch: check_queue(ch, name))

    def declare_exchange(self, x: ExchangeSpec) -> None:
        self.call(
            lambda ch: ch.exchange_declare(
                x.name, x.type, durable=x.durable, auto_delete=x.auto_delete,
                internal=x.internal, arguments=x.arguments or None,
            )
        )  # fmt: skip

    def declare_queue(self, q: QueueSpec) -> None:
        self.call(
            lambda ch: ch.queue_declare(
                q.name, durable=q.durable, auto_delete=q.auto_delete, arguments=q.arguments
            )
        )

    def bind(self, b: BindingSpec | LiveBinding) -> None:
        self._on_binding("bind", b)

    def unbind(self, b: BindingSpec | LiveBinding) -> None:
        self._on_binding("unbind", b)

    def _on_binding(self, verb: Literal["bind", "unbind"], b: BindingSpec | LiveBinding) -> None:
        """``queue.bind`` / ``exchange.bind`` (or ``unbind``), as the destination type says."""
        args = dict(b.arguments) or None
        method = f"{b.destination_type}_{verb}"  # queue_bind, exchange_unbind, ...
        self.call(lambda ch: getattr(ch, method)(b.destination, b.source, b.routing_key, args))

    def delete_queue(self, name: str) -> None:
        self.call(lambda ch: ch.queue_delete(name))

    def delete_exchange(self, name: str, *, if_unused: bool = True) -> None:
        self.call(lambda ch: ch.exchange_delete(name, if_unused=if_unused))

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except (pika.exceptions.AMQPError, OSError):
            pass  # closing a connection the broker already dropped

    def __enter__(self) -> AmqpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
