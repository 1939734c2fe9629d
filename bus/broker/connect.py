"""Connections from settings: aio-pika (async) and pika (sync), TLS verified when ``amqps://``.

Certificate verification is always on for ``amqps://``: there is no setting that turns it off.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pika
from aio_pika.abc import AbstractRobustConnection

from bus.errors import AccessRefusedError, BrokerError, BrokerUnavailableError
from bus.settings import BusSettings, mask_url

__all__ = ["connect_async", "connect_sync", "pika_parameters", "ssl_context", "translate_error"]


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
    params = pika.URLParameters(settings.amqp_url)
    params.heartbeat = settings.heartbeat
    params.socket_timeout = settings.connect_timeout
    params.stack_timeout = settings.connect_timeout
    params.blocked_connection_timeout = settings.connect_timeout
    params.client_properties = _client_properties(name)
    context = ssl_context(settings)
    if context is not None:
        params.ssl_options = pika.SSLOptions(context, urlsplit(settings.amqp_url).hostname)
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
    try:
        return pika.BlockingConnection(pika_parameters(settings, name))
    except (pika.exceptions.AMQPError, OSError, ssl.SSLError) as exc:
        raise translate_error(exc, settings.amqp_url) from None


async def connect_async(settings: BusSettings, name: str = "amqp-bus") -> AbstractRobustConnection:
    """A robust aio-pika connection (reconnects by itself) with TLS verified."""
    url = settings.amqp_url
    separator = "&" if "?" in url else "?"
    if "heartbeat=" not in url:
        url = f"{url}{separator}heartbeat={settings.heartbeat}"
    try:
        return await aio_pika.connect_robust(
            url,
            ssl_context=ssl_context(settings),
            timeout=settings.connect_timeout,
            client_properties=_client_properties(name),
        )
    except (aio_pika.exceptions.AMQPError, OSError, ssl.SSLError, TimeoutError) as exc:
        raise translate_error(exc, settings.amqp_url) from None
