"""Consumer apps the security tests start through ``bus consume --app tests.security.apps:...``."""

from __future__ import annotations

from consumers import ConsumerApp
from producers.events import OrderCreated

__all__ = ["billing"]

billing = ConsumerApp("security-billing", grace=1)


@billing.handler("billing.orders")
async def on_order(event: OrderCreated) -> None:
    """Never reached in the tests that use it: start-up fails first."""
