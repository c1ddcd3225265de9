"""The SSE subscriber of the benchmarks: one raw-socket client of `/events`, framing its events.

Raw asyncio sockets rather than aiohttp, so thousands of clients cost little and a
client library's own buffering or parsing never shows up in a measured latency. Every time is
`time.monotonic()`, which is one clock for all processes on the machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class EventSink(Protocol):
    def on_event(self, index: int, event_id: str, event_type: str, data: bytes, at: float) -> None: ...

    def on_closing(self, index: int, at: float) -> None: ...


class _Dechunker:
    """HTTP/1.1 chunked transfer decoding, incremental (aiohttp streams SSE chunked)."""

    __slots__ = ("_buf", "_left", "_skip", "finished")

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # payload bytes still to come in the current chunk
        self._skip = 0  # CRLF bytes still to skip after a chunk
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size and not self.finished:
            if self._skip:
                take = min(self._skip, size - pos)
                self._skip -= take
                pos += take
            elif self._left:
                take = min(self._left, size - pos)
                out.append(buf[pos : pos + take])
                self._left -= take
                pos += take
                if not self._left:
                    self._skip = 2
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                length = int(buf[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                if length == 0:
                    self.finished = True
                self._left = length
        self._buf = buf[pos:] if pos < size else b""
        return b"".join(out)


class SseConnection(asyncio.Protocol):
    """One SSE subscriber over a raw socket.

    `count_only` mode just counts `id:` lines (the replay client: 100,000 frames must not be
    limited by the client's parsing); otherwise each framed event goes to the sink with the time
    its last byte arrived. With `defer`, received bytes are only stamped and kept until
    `flush()`, so thousands of clients in one process read as fast as they can while measured.
    """

    def __init__(
        self,
        index: int,
        request: bytes,
        sink: EventSink | None = None,
        count_only: bool = False,
        close_on_closing: bool = False,
        defer: bool = False,
    ) -> None:
        self.index = index
        self._defer = defer
        self._pending: list[tuple[float, bytes]] = []
        self._request = request
        self._sink = sink
        self._count_only = count_only
        self._close_on_closing = close_on_closing
        self._head: bytes | None = b""  # None once the response headers are read
        self._dechunk: _Dechunker | None = None
        self._frames = b""
        self._carry = b""
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.headers_received: asyncio.Future[int] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.status = 0
        self.t_first_byte: float | None = None
        self.t_first_event: float | None = None
        self.t_last_event: float | None = None
        self.events = 0
        self.bytes = 0

    @staticmethod
    def request(host: str, port: int, path: str, token: str, last_event_id: str | None = None) -> bytes:
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            f"Authorization: Bearer {token}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headers_received.done():
            self.headers_received.set_exception(ConnectionError(f"closed before the response: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        at = time.monotonic()
        if self.t_first_byte is None:
            self.t_first_byte = at
        if self._head is not None:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head
                return
            self._head = None
            header_block, data = head[:end].decode("latin-1"), head[end + 4 :]
            self.status = int(header_block.split(" ", 2)[1])
            if "transfer-encoding: chunked" in header_block.lower():
                self._dechunk = _Dechunker()
            self.headers_received.set_result(self.status)
            if self.status != 200:
                self.close()
                return
        if self._defer:
            self._pending.append((at, data))
        else:
            self._consume(data, at)

    def flush(self) -> None:
        """Parse what `defer` kept, with the times it arrived."""
        pending, self._pending = self._pending, []
        for at, data in pending:
            self._consume(data, at)

    def _consume(self, data: bytes, at: float) -> None:
        if self._dechunk is not None:
            data = self._dechunk.feed(data)
        if not data:
            return
        self.bytes += len(data)
        if self._count_only:
            self._count(data, at)
        else:
            self._parse(data, at)

    def _count(self, data: bytes, at: float) -> None:
        # Frames end with a blank line, so every event's `id:` follows a `\n`.
        found = (self._carry + data).count(b"\nid: ")
        self._carry = data[-4:]
        if found:
            if self.t_first_event is None:
                self.t_first_event = at
            self.t_last_event = at
            self.events += found

    def _parse(self, data: bytes, at: float) -> None:
        frames = (self._frames + data).split(b"\n\n")
        self._frames = frames.pop()
        for frame in frames:
            event_id, event_type, payload = None, "message", b""
            for line in frame.split(b"\n"):
                if line.startswith(b"id: "):
                    event_id = line[4:].decode()
                elif line.startswith(b"event: "):
                    event_type = line[7:].decode()
                elif line.startswith(b"data: "):
                    payload = line[6:]
            if event_type == "closing":
                if self._sink is not None:
                    self._sink.on_closing(self.index, at)
                if self._close_on_closing:
                    self.close()
            elif event_id is not None:
                self.events += 1
                if self.t_first_event is None:
                    self.t_first_event = at
                self.t_last_event = at
                if self._sink is not None:
                    self._sink.on_event(self.index, event_id, event_type, payload, at)


async def open_sse(
    host: str,
    port: int,
    path: str,
    token: str,
    index: int = 0,
    sink: EventSink | None = None,
    count_only: bool = False,
    close_on_closing: bool = False,
    defer: bool = False,
    timeout: float = 30.0,
) -> SseConnection:
    """Connect and wait for a 200 response; raises ConnectionError otherwise."""
    loop = asyncio.get_running_loop()
    request = SseConnection.request(host, port, path, token)
    _, conn = await asyncio.wait_for(
        loop.create_connection(
            lambda: SseConnection(index, request, sink, count_only, close_on_closing, defer), host, port
        ),
        timeout,
    )
    status = await asyncio.wait_for(conn.headers_received, timeout)
    if status != 200:
        raise ConnectionError(f"GET {path}: HTTP {status}")
    return conn
