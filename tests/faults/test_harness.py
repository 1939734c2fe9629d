"""The fault harness itself: the proxy really cuts and blackholes, the checker really judges."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import unquote, urlsplit

import pika
import pytest

from tests.faults.checker import TotalQueue
from tests.faults.proxy import FaultProxy


def test_checker_flags_lost_unexpected_and_unresolved() -> None:
    check = TotalQueue()
    for message_id in ("a", "b", "c", "d"):
        check.on_sent(message_id)
    check.on_confirmed("a")
    check.on_confirmed("b")
    check.on_failed("c")
    check.on_consumed("a")
    check.on_consumed("a")
    check.on_consumed("zz")
    assert check.lost == {"b"}
    assert check.unexpected == {"zz"}
    assert check.unresolved == {"d"}
    assert check.duplicates == 1
    assert not check.ok
    with pytest.raises(AssertionError):
        check.assert_ok()


def test_proxy_carries_amqp_and_cut_breaks_it(amqp_url: str) -> None:
    # The session's broker (local, container or throwaway node), not a fixed 127.0.0.1:5672.
    target = urlsplit(amqp_url)
    assert target.hostname
    assert target.port
    user, password = unquote(target.username or "guest"), unquote(target.password or "guest")
    with FaultProxy(target.hostname, target.port) as proxy:
        connection = pika.BlockingConnection(pika.URLParameters(proxy.url(user, password)))
        assert connection.is_open
        assert proxy.cut() == 1
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connection.channel().queue_declare("", exclusive=True)
        connection = pika.BlockingConnection(pika.URLParameters(proxy.url(user, password)))
        connection.close()


def test_blackhole_holds_bytes_until_healed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        received: list[bytes] = []

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                received.append(conn.recv(10))

        thread = threading.Thread(target=serve)
        thread.start()
        with FaultProxy("127.0.0.1", port) as proxy:
            client = socket.create_connection(("127.0.0.1", proxy.port))
            proxy.blackhole()
            client.sendall(b"hello")
            time.sleep(0.3)
            assert received == []
            proxy.heal()
            thread.join(5)
            client.close()
        assert received == [b"hello"]
