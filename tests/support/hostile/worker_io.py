"""Sending the worker's hostile kinds and reading their dead letters back (py-amqp, guarded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

from tests.support.hostile.worker_kinds import Kind, Sent

__all__ = ["DUPLICATE", "KindSender", "Outcome", "RawProperties", "drain_dead_letters"]


class RawProperties(pika.BasicProperties):
    """pika properties whose content header is the given bytes, as they are."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self._raw = raw

    def encode(self) -> list[bytes]:
        return [self._raw]


@dataclass
class Outcome:
    kind: Kind
    tag: str
    token: str
    published: bool = False
    refused: str = ""
    dead_reason: str = ""
    handled: bool = False

    @property
    def result(self) -> str:
        seen = [
            name
            for name, hit in (
                ("refused", bool(self.refused)),
                ("dead-lettered", bool(self.dead_reason)),
                ("handled", self.handled),
            )
            if hit
        ]
        return "+".join(seen) if seen else "LOST"

    def line(self) -> str:
        detail = self.refused or self.dead_reason
        return f"{self.kind.name:42} {self.kind.queue:14} {self.result:14} {detail}"


class KindSender:
    """Publishes kinds with confirms on one pika connection, reopened after a refusal."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def _open(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
            self._channel = None
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def send(self, exchange: str, routing_key: str, sent: Sent) -> str:
        """Publish; returns "" when confirmed, else why the broker refused it."""
        channel = self._open()
        try:
            channel.basic_publish(
                exchange, routing_key, sent.body, RawProperties(sent.encoded()), mandatory=True
            )
        except (pika.exceptions.AMQPChannelError, pika.exceptions.AMQPConnectionError) as exc:
            self._channel = None
            return f"{type(exc).__name__}: {exc}"
        return ""

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()


DUPLICATE = "||"


def drain_dead_letters(url: str, queue: str, prefix: str = "k") -> dict[str, str]:
    """Every message of ``queue`` (consumed): kind tag -> dead-letter reason.

    Read with py-amqp behind the guard: the dead letters keep the bytes that broke it.
    """
    import amqp

    from bus import _pyamqp_guard

    _pyamqp_guard.install()
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    found: dict[str, str] = {}
    with amqp.Connection(
        f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=vhost,
    ) as connection:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            props = message.properties
            tag = next(
                (v for v in (props.get("message_id"), props.get("correlation_id"))
                 if isinstance(v, str) and v.startswith(prefix)),
                "?",
            )  # fmt: skip
            headers = props.get("application_headers") or {}
            reason = str(headers.get("x-first-death-reason", "?"))
            if "x-bus-rejected" in headers:
                reason = f"copied by the worker ({headers['x-bus-rejected']})"
            if _pyamqp_guard.UNDECODABLE in props:
                reason += f" ({_pyamqp_guard.UNDECODABLE}: {props[_pyamqp_guard.UNDECODABLE]})"
            # A second copy of one tag (a message requeued and dead-lettered twice) shows.
            found[tag] = f"{found[tag]} {DUPLICATE} {reason}" if tag in found else reason
    return found
