"""Turn a delivery into the pydantic model of its event contract, or say exactly why not.

The event is named by the AMQP ``type`` property, or, without one, by the one contract whose
exchange, routing key and headers match the delivery (:meth:`Decoder.event_name`); the body
is the model's JSON with ``content_type=application/json``. Every way a payload can be wrong raises
:class:`InvalidMessageError` with a short ``reason``, which becomes the dead-letter header
``x-failure-reason``: ``content-type``, ``unknown-type``, ``json``, ``schema``, ``not-accepted``
(and ``undecodable``, raised by the runtime for properties marked by :mod:`bus.lenient`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from bus.contracts import ContractRegistry
from bus.errors import ContractError

__all__ = ["JSON_CONTENT_TYPE", "Decoder", "InvalidMessageError"]

JSON_CONTENT_TYPE = "application/json"


class InvalidMessageError(ContractError):
    """A delivery that cannot match its contract; retrying it cannot help."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def _is_json(content_type: str | None) -> bool:
    if content_type == JSON_CONTENT_TYPE:
        return True
    if content_type is None:
        return False
    # Parameters such as "; charset=utf-8" are legal on the media type.
    return content_type.split(";", 1)[0].strip().lower() == JSON_CONTENT_TYPE


class Decoder:
    """Event name -> model class, resolved once per name."""

    def __init__(self, contracts: ContractRegistry) -> None:
        self._contracts = contracts
        self._models: dict[str, type[BaseModel]] = {}

    def preload(self) -> None:
        """Import every contract's model now, so a broken model path fails at start-up."""
        for contract in self._contracts:
            self._models[contract.name] = contract.model

    def model_for(self, name: str | None) -> type[BaseModel]:
        if not name:
            raise InvalidMessageError(
                "unknown-type", "message has no 'type' property naming its event"
            )
        model = self._models.get(name)
        if model is None:
            if name not in self._contracts:
                raise InvalidMessageError(
                    "unknown-type", f"unknown event type {name!r}: not in the topology's events"
                )
            model = self._models[name] = self._contracts.by_name(name).model
        return model

    def event_name(
        self, name: str | None, exchange: str, routing_key: str, headers: dict[str, Any] | None
    ) -> str | None:
        """``type`` when the message has one; else the one contract whose exchange, routing key
        and headers match where it was first published (clients such as ``amqp-publish``
        cannot set ``type``); None when none or several match."""
        if name:
            return name
        inferred = self._contracts.infer(exchange, routing_key, headers)
        return inferred.name if inferred is not None else None

    def decode(
        self,
        content_type: str | None,
        name: str | None,
        body: bytes,
        accepted: tuple[type[BaseModel], ...] | None,
    ) -> BaseModel:
        if not _is_json(content_type):
            raise InvalidMessageError(
                "content-type", f"content type {content_type!r} is not {JSON_CONTENT_TYPE!r}"
            )
        model = self.model_for(name)
        if accepted is not None and model not in accepted:
            names = ", ".join(m.__name__ for m in accepted)
            raise InvalidMessageError(
                "not-accepted",
                f"event {name!r} ({model.__name__}) is not accepted by this handler ({names})",
            )
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            reason = "json" if errors and errors[0]["type"] == "json_invalid" else "schema"
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in errors[:5]
            )
            raise InvalidMessageError(reason, f"{name} {reason} error: {detail}") from exc
