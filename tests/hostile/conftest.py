"""One throwaway RabbitMQ node for the hostile-input tests (they may break its dead-lettering)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.node import LocalNode, rabbitmq_installed


@pytest.fixture(scope="session")
def hostile_node() -> Iterator[LocalNode]:
    if not rabbitmq_installed():
        pytest.skip("needs the rabbitmq-server binary")
    # Stats every 0.5 s: the consumer counts read from the management API are fresh.
    with LocalNode(
        prefix="bus-hostile", management=True, config="collect_statistics_interval = 500"
    ) as node:
        yield node
