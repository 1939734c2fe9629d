"""Broker state as plan reads it, written by hand for the plan tests that need no broker."""

from __future__ import annotations

from typing import Any, Literal

from bus.broker.live import LiveState, LiveVhost

__all__ = ["live_state"]


def live_state(source: Literal["management", "amqp"] = "management", **objects: Any) -> LiveState:
    """Vhost ``vh`` (classic by default) as read through ``source``, holding ``objects``
    (``exchanges=``, ``queues=``, ``bindings=``, ``probes=`` ... as in :class:`LiveState`)."""
    return LiveState("vh", source, LiveVhost("vh", "", "classic"), **objects)
