"""Connections from settings: aio-pika (async) and pika (sync), TLS verified when ``amqps://``.

Certificate verification is always on for ``amqps://``: there is no setting that turns it off.

A cluster (``BUS_AMQP_NODES``): every connection tries the nodes in order, the first node
first. The aio-pika robust connection also moves to another node when its node goes away
(:class:`FailoverConnection`); a pika connection is opened again by its owner after a loss,
which tries the nodes in order once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from bus.errors import AccessRefusedError, BrokerError, BrokerUnavailableError
from bus.settings import BusSettings, mask_url, mask_urls

__all__ = [
    "FailoverConnection",
    "connect_async",
    "connect_sync",
    "pika_parameters",
    "pika_parameters_all",
    "ssl_context",
    "translate_error",
]

log = logging.getLogger(__name__)

# Seconds between reconnection rounds when the URL sets none and there are several nodes:
# aio-pika's 5 s default would leave consumers idle for that long after a node dies, although
# another node is ready at once.
CLUSTER_RECONNECT_INTERVAL = 1.0


def ssl_context(settings: BusSettings) -> ssl.SSLContext | None:
    """A verifying TLS context for ``amqps://`` URLs (CA and client cert from ``BUS_TLS_*``)."""
    if urlsplit(settings.amqp_url).scheme != "amqps":
        return None
    cafile = str(settings.tls_ca_file) if settings.tls_ca_file else None
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.tls_cert_file is not None:
        key = str(settings.tls_key_file) if settings.tls_key_file else None
        context.load_cert_chain(str(settings.tls_cert_file), key)
    return context


def _client_properties(name: str) -> dict[str, Any]:
    return {"connection_name": name, "product": "amqp-bus"}


def pika_parameters(settings: BusSettings, name: str = "amqp-bus") -> pika.URLParameters:
    """pika parameters with heartbeat, timeouts, a blocked-connection timeout and TLS."""
    return _pika_parameters(settings, settings.amqp_url, name)


def pika_parameters_all(settings: BusSettings, name: str = "amqp-bus") -> list[pika.URLParameters]:
    """:func:`pika_parameters` for every node, the first node first.

    ``pika.BlockingConnection`` takes the list and tries each in turn.
    """
    return [_pika_parameters(settings, url, name) for url in settings.amqp_urls]


def _pika_parameters(settings: BusSettings, url: str, name: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.heartbeat = settings.heartbeat
    params.socket_timeout = settings.connect_timeout
    params.stack_timeout = settings.connect_timeout
    params.blocked_connection_timeout = settings.connect_timeout
    params.client_properties = _client_properties(name)
    context = ssl_context(settings)
    if context is not None:
        # Each node's certificate is checked against that node's own host name.
        params.ssl_options = pika.SSLOptions(context, urlsplit(url).hostname)
    return params


def translate_error(exc: BaseException, url: str) -> BrokerError:
    """A client exception as one of ours, with the password masked."""
    text = str(exc) or type(exc).__name__
    masked = mask_url(url)
    if (
        "ACCESS_REFUSED" in text
        or "403" in text
        or isinstance(
            exc,
            pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError,
        )
    ):
        return AccessRefusedError(f"broker refused access at {masked}: {text}")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return BrokerUnavailableError(f"TLS handshake with {masked} failed: {text}")
    return BrokerUnavailableError(f"cannot connect to {masked}: {text}")


def connect_sync(settings: BusSettings, name: str = "amqp-bus") -> pika.BlockingConnection:
    """A pika connection to the first node of ``settings.amqp_urls`` that accepts one."""
    params = pika_parameters_all(settings, name)
    try:
        return pika.BlockingConnection(params if len(params) > 1 else params[0])
    except (pika.exceptions.AMQPError, OSError, ssl.SSLError) as exc:
        raise translate_error(exc, _broker_urls_text(settings)) from None


def _broker_urls_text(settings: BusSettings) -> str:
    """What a connection error names: the URL, or a cluster's URLs masked as one text."""
    urls = settings.amqp_urls
    return urls[0] if len(urls) == 1 else mask_urls(urls)


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that goes round the cluster's nodes instead of waiting for one.

    aio-pika's :class:`~aio_pika.RobustConnection` reconnects to its own ``url`` only, so a
    client whose node died would wait for that node forever. Each connection attempt here
    tries every node once, starting with the node after the one that was lost; between
    rounds the robust connection waits ``reconnect_interval`` as usual. Channels and
    consumers are restored by aio-pika on whichever node answered.
    """

    def __init__(
        self,
        url: URL,
        loop: Any = None,
        *,
        failover_urls: tuple[URL, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(url, loop, **kwargs)
        self.failover_urls: tuple[URL, ...] = failover_urls or (self.url,)
        self._node = 0

    async def _on_connection_close(self, closing: Any) -> None:
        if not (self._close_called or self.is_closed):
            # The node we lost is the likeliest to refuse the next attempt: start after it.
            self._node = (self._node + 1) % len(self.failover_urls)
        await super()._on_connection_close(closing)

    # RobustConnection's private connection step (name-mangled ``__connect_transport``), run
    # for the first connection and for every reconnection attempt. Overriding it is the one
    # place where an attempt can pick its node; tests/unit/test_cluster_settings.py fails if
    # an aio-pika upgrade renames it.
    async def _RobustConnection__connect_transport(self) -> None:
        attempt = super()._RobustConnection__connect_transport  # type: ignore[misc]
        count = len(self.failover_urls)
        # A failed handshake may run the close callback, which moves ``_node``: fix the start.
        first = self._node
        for step in range(count):
            index = (first + step) % count
            self.url = self.failover_urls[index]
            try:
                await attempt()
            except CONNECTION_EXCEPTIONS as exc:  # TimeoutError is an OSError
                if step == count - 1:
                    raise
                log.warning(
                    "AMQP node %s: %s; trying the next node", self, exc or type(exc).__name__
                )
                continue
            self._node = index
            return


def _async_urls(settings: BusSettings) -> list[str]:
    several = len(settings.amqp_urls) > 1
    urls = []
    for url in settings.amqp_urls:
        extra = []
        if "heartbeat=" not in url:
            extra.append(f"heartbeat={settings.heartbeat}")
        if several and "reconnect_interval=" not in url:
            extra.append(f"reconnect_interval={CLUSTER_RECONNECT_INTERVAL:g}")
        if extra:
            separator = "&" if "?" in url else "?"
            url = f"{url}{separator}{'&'.join(extra)}"
        urls.append(url)
    return urls


async def connect_async(settings: BusSettings, name: str = "amqp-bus") -> AbstractRobustConnection:
    """A robust aio-pika connection (reconnects by itself, to any node) with TLS verified."""
    urls = tuple(URL(url) for url in _async_urls(settings))
    # Built here rather than by aio_pika.connect_robust, which would copy failover_urls
    # into the URL's query string.
    connection = FailoverConnection(
        urls[0],
        ssl_context=ssl_context(settings),
        client_properties=_client_properties(name),
        failover_urls=urls,
    )
    try:
        await connection.connect(timeout=settings.connect_timeout)
    except (aio_pika.exceptions.AMQPError, OSError, ssl.SSLError, TimeoutError) as exc:
        await connection.close()
        raise translate_error(exc, _broker_urls_text(settings)) from None
    except BaseException:
        await connection.close()
        raise
    return connection


def close_later(
    close: Callable[[], Awaitable[Any]],
    delay: float,
    pending: set[asyncio.Handle | asyncio.Task[None]],
) -> None:
    """Run ``close`` (a channel's) ``delay`` seconds from now, ignoring its errors.

    For a channel retired after a nack: publishes still awaiting their confirm on it keep it
    until then. ``pending`` holds the timer, then the closing task; the owner cancels what is
    left when it closes the connection, which closes the channel as well.
    """
    loop = asyncio.get_running_loop()

    async def close_quietly() -> None:
        with contextlib.suppress(Exception):
            await close()

    def close_now() -> None:
        pending.discard(handle)
        task = loop.create_task(close_quietly())
        pending.add(task)
        task.add_done_callback(pending.discard)

    handle = loop.call_later(delay, close_now)
    pending.add(handle)
