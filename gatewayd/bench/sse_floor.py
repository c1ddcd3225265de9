"""The fan-out floor: the least any Python SSE server could do to write one frame to N sockets."""

from __future__ import annotations

import asyncio


class FloorSseServer:
    """The fan-out floor: one asyncio process that writes one prepared frame to N sockets.

    It speaks just enough HTTP for `SseConnection` (chunked, like aiohttp): no auth, no queue,
    no per-subscriber task, no JSON; the least any Python SSE server could do.
    """

    def __init__(self) -> None:
        self.transports: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1") -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _FloorProtocol(self), host, 0, backlog=4096)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def broadcast(self, payload: bytes) -> None:
        chunk = b"%x\r\n%s\r\n" % (len(payload), payload)
        for transport in self.transports:
            transport.write(chunk)

    async def close(self) -> None:
        for transport in list(self.transports):
            transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _FloorProtocol(asyncio.Protocol):
    def __init__(self, server: FloorSseServer) -> None:
        self._server = server
        self._head: bytes | None = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._head is None or self._transport is None:
            return
        self._head += data
        if b"\r\n\r\n" in self._head:
            self._head = None
            first = b": connected\n\n"
            self._transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n" % (len(first), first)
            )
            self._server.transports.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.transports.discard(self._transport)
