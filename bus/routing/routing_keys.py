"""The routing keys a message carries: its key, then the ``CC`` and ``BCC`` header arrays.

``BCC`` is removed before the exchanges see the headers; a ``CC``/``BCC`` header that is not
an array is refused by the broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bus.errors import RoutingError
from bus.routing.header_terms import amqp_tag

__all__ = ["split_headers"]

_ROUTING_HEADERS = ("CC", "BCC")


def split_headers(
    routing_key: str, headers: Mapping[str, Any] | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Routing keys (the key, then CC, then BCC) and the headers the exchanges see."""
    if not headers:
        return (routing_key,), {}
    keys = [routing_key]
    for name in _ROUTING_HEADERS:
        if name not in headers:
            continue
        value = headers[name]
        if not isinstance(value, list | tuple):
            raise RoutingError(
                f"header {name!r} must be an array of routing keys: the broker refuses "
                f"the message (unacceptable_type_in_header, {amqp_tag(value)})"
            )
        # Only longstr entries route; the broker skips other types silently.
        keys.extend(v for v in value if isinstance(v, str))
    visible = {k: v for k, v in headers.items() if k != "BCC"}
    return tuple(keys), visible
