"""Event contracts: event name -> exchange, routing key and the pydantic model of the body.

The AMQP ``type`` property carries the event name, the body is the model's JSON and nothing
else, so any client in any language can publish or read the events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from bus.errors import ContractError
from bus.importing import import_object
from bus.topology.model import EventContract

if TYPE_CHECKING:
    from bus.topology.expand import ExpandedTopology

__all__ = ["Contract", "ContractRegistry", "import_model"]


def import_model(path: str) -> type[BaseModel]:
    """The pydantic model class named by ``package.module:ClassName``."""
    try:
        target = import_object(path)
    except (ImportError, AttributeError) as exc:
        raise ContractError(f"cannot import event model {path!r}: {exc}") from None
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise ContractError(f"event model {path!r} is not a pydantic model")
    return target


def _same(live: Any, declared: Any) -> bool:
    # A header value must match with its type: True is not 1, and 5 is not "5".
    return type(live) is type(declared) and bool(live == declared)


@dataclass(frozen=True)
class Contract:
    name: str
    exchange: str
    routing_key: str
    model_path: str
    headers: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def model(self) -> type[BaseModel]:
        return import_model(self.model_path)


class ContractRegistry:
    """Lookup of contracts by event name and by model class (models imported lazily)."""

    def __init__(
        self,
        events: Mapping[str, EventContract],
        exchange_types: Mapping[str, str] | None = None,
    ) -> None:
        self._by_name = {
            name: Contract(name, e.exchange, e.routing_key, e.model, dict(e.headers))
            for name, e in events.items()
        }
        # Fanout and headers exchanges ignore the routing key, so a publisher may send any.
        self._exchange_types = dict(exchange_types or {})
        self._by_model: dict[type[BaseModel], Contract] | None = None
        self._ambiguous: dict[type[BaseModel], list[str]] = {}

    @classmethod
    def of(cls, expanded: ExpandedTopology) -> ContractRegistry:
        """The registry of a topology, knowing its exchange types (for :meth:`matching`)."""
        types = {name: spec.type for name, spec in expanded.exchanges.items()}
        return cls(expanded.events, types)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def by_name(self, name: str) -> Contract:
        try:
            return self._by_name[name]
        except KeyError:
            raise ContractError(f"unknown event {name!r}: not in the topology's events") from None

    def matching(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any] | None = None
    ) -> list[Contract]:
        """The contracts a message without ``type`` may be: same exchange; same routing key
        unless the exchange ignores keys (fanout, headers); the contract's headers present
        with the same values."""
        headers = headers or {}
        key_matters = self._exchange_types.get(exchange) not in ("fanout", "headers")
        return [
            c
            for c in self._by_name.values()
            if c.exchange == exchange
            and (not key_matters or c.routing_key == routing_key)
            and all(
                name in headers and _same(headers[name], value) for name, value in c.headers.items()
            )
        ]

    def infer(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any] | None = None
    ) -> Contract | None:
        """The one contract matching a message without ``type``; None when none or several do."""
        found = self.matching(exchange, routing_key, headers)
        return found[0] if len(found) == 1 else None

    def for_model(self, model: type[BaseModel] | BaseModel) -> Contract:
        """The one contract whose model is ``model`` (a class or an instance)."""
        cls = model if isinstance(model, type) else type(model)
        if self._by_model is None:
            index: dict[type[BaseModel], list[Contract]] = {}
            for contract in self._by_name.values():
                index.setdefault(contract.model, []).append(contract)
            ambiguous = {m: cs for m, cs in index.items() if len(cs) > 1}
            self._by_model = {m: cs[0] for m, cs in index.items() if m not in ambiguous}
            self._ambiguous = {m: [c.name for c in cs] for m, cs in ambiguous.items()}
        if cls in self._by_model:
            return self._by_model[cls]
        if cls in self._ambiguous:
            names = ", ".join(self._ambiguous[cls])
            raise ContractError(
                f"{cls.__name__} is the model of several events ({names}): name the event"
            )
        raise ContractError(f"{cls.__module__}.{cls.__qualname__} matches no event contract")

    def decode(self, name: str, body: bytes) -> BaseModel:
        """Validate a JSON body against the model of event ``name``.

        Raises :class:`ContractError` for an unknown event and pydantic's ``ValidationError``
        for a body that does not match (malformed JSON included).
        """
        return self.by_name(name).model.model_validate_json(body)

    @staticmethod
    def encode(event: BaseModel) -> bytes:
        return event.model_dump_json().encode("utf-8")
