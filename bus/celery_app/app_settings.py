"""What a Celery app is connected to: the bus settings it was built with, its client errors."""

from __future__ import annotations

import weakref
from urllib.parse import urlsplit

from celery import Celery

from bus.settings import BusSettings

__all__ = ["connection_errors", "record_settings", "settings_for"]

# The settings an app was configured with, for the pre-flight check in the worker process.
_SETTINGS: weakref.WeakKeyDictionary[Celery, BusSettings] = weakref.WeakKeyDictionary()


def record_settings(app: Celery, settings: BusSettings) -> None:
    _SETTINGS[app] = settings


def settings_for(app: Celery) -> BusSettings:
    # Reading the conf first runs build_app's lazy configuration, which records the settings.
    url = app.conf.broker_url
    base = _SETTINGS.get(app) or BusSettings()
    urls = [str(u) for u in url] if isinstance(url, list | tuple) else str(url).split(";")
    urls = [u.strip() for u in urls if u.strip()]
    if not urls or not urls[0].startswith(("amqp://", "amqps://")) or urls == base.amqp_urls:
        return base
    hosts = (urlsplit(u).netloc.rpartition("@")[2] for u in urls[1:])
    nodes = tuple(host for host in hosts if host)
    return base.model_copy(update={"amqp_url": urls[0], "amqp_nodes": nodes})


def connection_errors(app: Celery) -> tuple[type[BaseException], ...]:
    # ensure_connection wraps a refused or failed connection in kombu's OperationalError.
    from kombu.exceptions import OperationalError

    conn = app.connection_for_read()
    try:
        errors = tuple(conn.connection_errors) + tuple(conn.channel_errors)
        return (*errors, OSError, OperationalError)
    finally:
        conn.release()
