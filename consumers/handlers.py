"""Handler registration: what a handler wants (model, raw message or both) and its options.

The wanted arguments come from the handler's annotations:

- ``async def h(event: OrderCreated)``: the decoded model; only ``OrderCreated`` is accepted,
  another event type on the queue is an invalid message (dead-lettered, no retries).
- ``async def h(event: OrderCreated | OrderPaid)``: either model.
- ``async def h(event: BaseModel)`` (or no annotation): the model of any event contract.
- ``async def h(message: Message)`` or ``raw=True``: the raw :class:`Message`, nothing decoded
  (no content-type or contract check; the handler decides what is valid).
- ``async def h(event: OrderCreated, message: Message)``: both.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel

from consumers.message import Message

__all__ = ["HandlerFunc", "HandlerOptions", "HandlerSpec", "inspect_handler"]

HandlerFunc = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class HandlerOptions:
    """Per-handler settings.

    ``prefetch`` is the per-consumer QoS (``basic.qos`` with ``global=false``; quorum queues
    refuse global QoS). ``concurrency`` is how many deliveries run the handler at the same
    time (at most ``prefetch``); 1 keeps the queue's order. ``idempotent`` skips messages whose
    ``message_id`` an earlier run already handled (see :mod:`consumers.idempotency`).
    """

    prefetch: int = 100
    concurrency: int = 1
    idempotent: bool = False
    raw: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.prefetch <= 65535:
            raise ValueError(f"prefetch must be between 1 and 65535, got {self.prefetch}")
        if not 1 <= self.concurrency <= self.prefetch:
            raise ValueError(
                f"concurrency must be between 1 and prefetch ({self.prefetch}), "
                f"got {self.concurrency}"
            )


@dataclass(frozen=True)
class HandlerSpec:
    queue: str
    func: HandlerFunc
    options: HandlerOptions
    wants_model: bool
    wants_message: bool
    accepted: tuple[type[BaseModel], ...] | None
    """Model classes the handler accepts; None accepts every event contract."""

    @property
    def name(self) -> str:
        return getattr(self.func, "__qualname__", repr(self.func))


def _models(annotation: Any) -> tuple[type[BaseModel], ...] | None:
    """The model classes of an annotation (a class or a union of classes), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return (annotation,)
    origin = typing.get_origin(annotation)
    if origin is Union or isinstance(annotation, types.UnionType):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found.append(arg)
            else:
                return None
        return tuple(found) or None
    return None


def inspect_handler(queue: str, func: HandlerFunc, options: HandlerOptions) -> HandlerSpec:
    """Validate ``func`` and work out the arguments it wants (raises TypeError when unusable)."""
    if not inspect.iscoroutinefunction(func):
        raise TypeError(
            f"handler {func!r} for queue {queue!r} must be an async function (async def): "
            "a blocking handler would stall every consumer and the heartbeats"
        )
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise TypeError(f"cannot resolve the annotations of handler {func!r}: {exc}") from None
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not 1 <= len(params) <= 2:
        raise TypeError(
            f"handler {func!r} for queue {queue!r} must take (event), (message) or "
            f"(event, message), got {len(params)} positional parameters"
        )
    first = hints.get(params[0].name, inspect.Parameter.empty)
    if options.raw or first is Message:
        if len(params) != 1:
            raise TypeError(f"raw handler {func!r} must take exactly one parameter (message)")
        return HandlerSpec(queue, func, options, False, True, None)
    if len(params) == 2 and hints.get(params[1].name, Message) is not Message:
        raise TypeError(f"the second parameter of handler {func!r} must be annotated Message")
    if first is inspect.Parameter.empty or first is BaseModel or first is Any:
        accepted: tuple[type[BaseModel], ...] | None = None
    else:
        accepted = _models(first)
        if accepted is None:
            raise TypeError(
                f"the first parameter of handler {func!r} must be annotated with a pydantic "
                f"model, a union of models, BaseModel or Message; got {first!r}"
            )
        if BaseModel in accepted:
            accepted = None
    return HandlerSpec(queue, func, options, True, len(params) == 2, accepted)
