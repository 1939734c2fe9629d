"""Event models of the demo domain (the ``model`` of each contract in topology.yaml)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CacheInvalidated", "CancelOrder", "EmailRequested", "OrderCreated", "OrderPaid"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderCreated(_Event):
    order_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    total: Decimal = Field(ge=0)
    currency: str = Field(default="EUR", min_length=3, max_length=3)


class OrderPaid(_Event):
    order_id: str = Field(min_length=1)
    amount: Decimal = Field(ge=0)


class CancelOrder(_Event):
    order_id: str = Field(min_length=1)
    reason: str = ""


class CacheInvalidated(_Event):
    key: str = Field(min_length=1)


class EmailRequested(_Event):
    to: str = Field(min_length=3)
    subject: str
    body: str = ""
