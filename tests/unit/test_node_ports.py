"""Throwaway nodes take ports the kernel does not hand out to outgoing connections."""

from __future__ import annotations

from bus.node import free_port_pair


def test_node_ports_lie_below_the_ephemeral_range() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        ephemeral_low = int(ports.read().split()[0])
    for _ in range(50):
        base = free_port_pair(3)
        assert base >= 1024
        # AMQP, management, one extra, and the Erlang distribution port.
        assert max(base + 2, base + 20000) < ephemeral_low
