"""Event models of the demo domain (the ``model`` of each contract in topology.yaml)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
)

__all__ = [
    "MONEY_PATTERN",
    "CacheInvalidated",
    "CancelOrder",
    "EmailRequested",
    "Money",
    "OrderCreated",
    "OrderPaid",
]

# Money travels as a JSON string of plain decimal digits: a JSON number loses cents in clients
# that parse numbers as binary floats (JavaScript), and one wire form lets the AsyncAPI schema,
# the producer and the consumer say the same thing.
MONEY_PATTERN = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$"
_MONEY = re.compile(MONEY_PATTERN)


def _money_input(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        if not _MONEY.fullmatch(value):
            raise ValueError(f"money must match {MONEY_PATTERN} (a string such as \"10.50\")")
        return value
    if info.mode == "json":
        # On the wire only the string form is valid: what the schema promises is what we accept.
        raise ValueError(f"money must be a JSON string matching {MONEY_PATTERN}, not a number")
    return value  # Python callers may pass Decimal or int


Money = Annotated[
    Decimal,
    BeforeValidator(_money_input),
    Field(ge=0),
    PlainSerializer(lambda amount: format(amount, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["10.50"]}),
]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderCreated(_Event):
    order_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    total: Money
    currency: str = Field(default="EUR", min_length=3, max_length=3)


class OrderPaid(_Event):
    order_id: str = Field(min_length=1)
    amount: Money


class CancelOrder(_Event):
    order_id: str = Field(min_length=1)
    reason: str = ""


class CacheInvalidated(_Event):
    key: str = Field(min_length=1)


class EmailRequested(_Event):
    to: str = Field(min_length=3)
    subject: str
    body: str = ""
