"""Header values from the command line: ``NAME=VALUE`` or ``NAME:TYPE=VALUE``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bus.errors import RoutingError

__all__ = ["HEADER_TYPES", "parse_header_option"]

HEADER_TYPES = ("str", "int", "bool", "null", "json", "timestamp")


def parse_header_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` (a string) or ``NAME:TYPE=VALUE`` with TYPE one of str, int, bool,
    null (AMQP void; the value is ignored), json (arrays, tables, numbers, ...) or timestamp
    (AMQP timestamp: epoch seconds or an ISO 8601 time, UTC unless it names a zone).

    The broker compares header values with their type (``5`` does not match ``"5"``), so
    the type is explicit; a name without a known ``:TYPE`` suffix is taken whole.
    """
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise RoutingError(f"header {text!r}: expected NAME=VALUE or NAME:TYPE=VALUE")
    base, colon, kind = name.rpartition(":")
    if not colon or kind not in HEADER_TYPES or not base:
        return name, raw
    if kind == "str":
        return base, raw
    if kind == "int":
        try:
            return base, int(raw)
        except ValueError:
            raise RoutingError(f"header {base!r}: {raw!r} is not an integer") from None
    if kind == "bool":
        lowered = raw.lower()
        if lowered not in ("true", "false"):
            raise RoutingError(f"header {base!r}: {raw!r} is not true or false")
        return base, lowered == "true"
    if kind == "null":
        return base, None
    if kind == "timestamp":
        return base, _timestamp(base, raw)
    try:
        return base, json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RoutingError(f"header {base!r}: invalid JSON ({exc.msg})") from None


def _timestamp(name: str, raw: str) -> datetime:
    try:
        if raw.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(raw), UTC)
        value = datetime.fromisoformat(raw)
    except (ValueError, OverflowError, OSError):
        raise RoutingError(
            f"header {name!r}: {raw!r} is not epoch seconds or an ISO 8601 time"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
