"""A three-node RabbitMQ cluster of throwaway local nodes, started and stopped by the tests."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bus.broker.management import ManagementClient
from bus.node import LocalNode
from bus.settings import BusSettings, with_vhost
from tests.support.started import StartedInWith


class LocalCluster(StartedInWith):
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

    def others(self, first: LocalNode) -> list[LocalNode]:
        return [node for node in self.nodes if node is not first]

    def settings(self, first: LocalNode, vhost: str = "/", **options: Any) -> BusSettings:
        """Settings that reach the cluster through ``first``, then the other nodes.

        The management roots are listed explicitly: derived from the AMQP hosts they would be
        127.0.0.1:15672, the shared broker's API.
        """
        order = [first, *self.others(first)]
        return BusSettings(
            amqp_url=with_vhost(first.amqp_url, vhost),
            amqp_nodes=[f"127.0.0.1:{node.amqp_port}" for node in order[1:]],
            management_url=",".join(node.management_url for node in order),
            **options,
        )

    def env(self, first: LocalNode, vhost: str = "/") -> dict[str, str]:
        """The ``BUS_*`` variables of :meth:`settings`, for ``bus`` subprocesses."""
        settings = self.settings(first, vhost)
        return {
            "BUS_AMQP_URL": settings.amqp_url,
            "BUS_AMQP_NODES": ",".join(settings.amqp_nodes),
            "BUS_MANAGEMENT_URL": str(settings.management_url),
        }

    def management(self) -> ManagementClient:
        """The management API of the first node that runs (any node sees the whole cluster)."""
        node = next(node for node in self.nodes if node.node_pid is not None)
        return ManagementClient(node.management_url, "guest", "guest")

    def leader(self, vhost: str, queue: str) -> LocalNode:
        """The node that leads quorum queue ``queue`` (management API ``leader`` field)."""
        with self.management() as api:
            info = api.queue(vhost, queue)
        if info is None or not info.get("leader"):
            raise AssertionError(f"quorum queue {queue!r} in {vhost!r} has no leader: {info}")
        return self.node_named(str(info["leader"]))

    def heal(self) -> None:
        """Restart every node a test killed and left down (e.g. when it failed half-way)."""
        for node in self.nodes:
            if node.node_pid is None:
                self.restart(node)

    def restart(self, node: LocalNode, timeout: float = 120.0) -> None:
        """Start a killed node again on its data folder and wait until it is back in."""
        node.restart_process(timeout)
        # The node remembers its cluster in its data folder; this proves it rejoined.
        node.ctl("await_online_nodes", str(len(self.nodes)), "--timeout", "60", timeout=timeout)

    def stop(self) -> None:
        def stop_one(node: LocalNode) -> None:
            with contextlib.suppress(Exception):
                node.stop()

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(stop_one, self.nodes))
