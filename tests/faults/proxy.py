"""A TCP proxy in the test process that can cut or blackhole the connections it carries.

It runs its own event loop in a thread, so synchronous (pika) and asynchronous (aio-pika)
clients can both go through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

from tests.support.started import StartedInWith


class FaultProxy(StartedInWith):
    """Forwards 127.0.0.1:<port> to ``target``.

    - :meth:`cut` closes both sockets of every live pair (the client sees EOF / reset).
    - :meth:`blackhole` stops forwarding but keeps the sockets open (a half-open link that
      only heartbeats can detect); :meth:`heal` resumes forwarding for new and old pairs.
    - :meth:`refuse` makes new connections fail at once until :meth:`accept` (broker "down").
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._refusing = False
        self.connections = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        sock: socket.socket = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                # Blackholed: hold the bytes back, keep both sockets open.
                await self._forwarding.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def _call(self, fn: object) -> None:
        async def run() -> None:
            assert callable(fn)
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def cut(self) -> int:
        """Close every live connection; returns how many pairs were cut."""
        pairs = list(self._pairs)

        def abort() -> None:
            for client, upstream in pairs:
                client.transport.abort()
                upstream.transport.abort()

        self._call(abort)
        return len(pairs)

    def blackhole(self) -> None:
        """Hold back every byte from now on: in force when this returns."""
        self._call(self._forwarding.clear)

    def heal(self) -> None:
        """Forward again, the held-back bytes first: in force when this returns."""
        self._call(self._forwarding.set)

    def refuse(self) -> None:
        self._refusing = True
        self.cut()

    def accept(self) -> None:
        self._refusing = False

    def stop(self) -> None:
        self.heal()
        self.cut()
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, user: str = "guest", password: str = "guest", vhost: str = "") -> str:
        from urllib.parse import quote

        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"
