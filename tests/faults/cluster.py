"""A three-node RabbitMQ cluster of throwaway local nodes, started and stopped by the tests."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from bus.node import LocalNode


class LocalCluster:
    """``size`` throwaway nodes joined with ``join_cluster``; the first has the management API."""

    def __init__(self, size: int = 3, *, config: str = "") -> None:
        self.nodes = [
            LocalNode(prefix=f"bus-cluster{index}", config=config, management=True)
            for index in range(size)
        ]

    @property
    def amqp_urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    def start(self) -> LocalCluster:
        try:
            # Nodes boot in parallel: each takes several seconds of mostly waiting.
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(LocalNode.start, self.nodes))
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
            first.ctl("await_online_nodes", str(len(self.nodes)), "--timeout", "60", timeout=90)
        except Exception:
            self.stop()
            raise
        return self

    def running_nodes(self) -> list[str]:
        for node in self.nodes:
            if node.node_pid is None:
                continue
            out = node.ctl("eval", "rabbit_nodes:all_running().", check=False)
            if out.strip().startswith("["):
                return sorted(
                    part.strip(" '[]\n") for part in out.split(",") if part.strip(" []\n")
                )
        return []

    def node_named(self, name: str) -> LocalNode:
        return next(node for node in self.nodes if node.name == name)

    def stop(self) -> None:
        def stop_one(node: LocalNode) -> None:
            with contextlib.suppress(Exception):
                node.stop()

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(stop_one, self.nodes))

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
