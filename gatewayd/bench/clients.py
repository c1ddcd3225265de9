"""Raw protocol clients for the benchmarks: SSE subscriber, bare IMAP IDLE floor, LMTP sender.

Raw asyncio sockets rather than aiohttp or aioimaplib, so thousands of clients cost little and a
client library's own buffering or parsing never shows up in a measured latency. Every time is
`time.monotonic()`, which is one clock for all processes on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from typing import Protocol

# -- SSE ---------------------------------------------------------------------------------------


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


# -- the floor: a bare IMAP client in IDLE -------------------------------------------------------

_EXISTS = re.compile(rb"^\* (\d+) EXISTS")


class ImapIdleClient:
    """Logs in, selects INBOX, issues IDLE, and records when each `* N EXISTS` arrives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.exists: list[tuple[int, float]] = []  # (message count, monotonic time)
        self.count = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, user: str, password: str, timeout: float = 30.0
    ) -> ImapIdleClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        client = cls(reader, writer)
        try:
            await asyncio.wait_for(client._start(user, password), timeout)
        except BaseException:
            writer.close()
            raise
        return client

    async def _start(self, user: str, password: str) -> None:
        await self._reader.readline()  # greeting
        await self._command(f'a1 LOGIN "{user}" "{password}"')
        for line in await self._command("a2 SELECT INBOX"):
            if match := _EXISTS.match(line):
                self.count = int(match[1])
        self._writer.write(b"a3 IDLE\r\n")
        while not (await self._reader.readline()).startswith(b"+"):
            pass
        self._task = asyncio.create_task(self._read())

    async def _command(self, command: str) -> list[bytes]:
        tag = command.split(" ", 1)[0].encode()
        self._writer.write(command.encode() + b"\r\n")
        lines: list[bytes] = []
        while True:
            line = await self._reader.readline()
            if not line:
                raise ConnectionError("IMAP server closed the connection")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ConnectionError(f"IMAP {command.split()[1]} failed: {line!r}")
                return lines
            lines.append(line)

    async def _read(self) -> None:
        while line := await self._reader.readline():
            at = time.monotonic()
            if match := _EXISTS.match(line):
                self.count = int(match[1])
                self.exists.append((self.count, at))
                self._changed.set()

    def seen_at(self, count: int) -> float | None:
        """When the server first reported at least `count` messages."""
        return next((at for n, at in self.exists if n >= count), None)

    async def wait_count(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < count:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task
        with contextlib.suppress(ConnectionError):
            self._writer.write(b"DONE\r\na4 LOGOUT\r\n")
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class ImapFetchingClient:
    """A second floor: a bare client that, like any fetching watcher, leaves IDLE on EXISTS.

    On `* N EXISTS`: DONE, `UID FETCH last+1:*` of the whole message, IDLE again. `fetched`
    records when each message's FETCH completed: what the IMAP protocol itself costs a client
    that must leave IDLE to fetch (and how Dovecot's debounce treats a session that does).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.fetched: list[float] = []  # completion time of the k-th fetched message
        self._last_uid = 0
        self._tags = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, host: str, port: int, user: str, password: str) -> ImapFetchingClient:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        await reader.readline()
        await client._command(f'LOGIN "{user}" "{password}"')
        await client._command("SELECT INBOX")
        for line in await client._command("UID SEARCH ALL"):
            if line.startswith(b"* SEARCH"):
                client._last_uid = max((int(t) for t in line.split()[2:]), default=0)
        client._task = asyncio.create_task(client._loop())
        return client

    async def _command(self, command: str) -> list[bytes]:
        """Send a command; its untagged lines (literals inlined) once the tagged OK arrives."""
        tag = f"f{next(self._tags)}".encode()
        self._writer.write(tag + b" " + command.encode() + b"\r\n")
        lines: list[bytes] = []
        while True:
            line = await self._reader.readline()
            if not line:
                raise ConnectionError("IMAP server closed the connection")
            if line.rstrip().endswith(b"}") and b"{" in line:
                size = int(line.rstrip()[line.rindex(b"{") + 1 : -1])
                line += await self._reader.readexactly(size) + await self._reader.readline()
            if line.startswith(tag + b" "):
                return lines
            lines.append(line)

    async def _loop(self) -> None:
        while True:
            tag = f"f{next(self._tags)}".encode()
            self._writer.write(tag + b" IDLE\r\n")
            while True:
                line = await self._reader.readline()
                if not line:
                    return
                if _EXISTS.match(line):
                    break
            self._writer.write(b"DONE\r\n")
            while not (await self._reader.readline()).startswith(tag + b" "):
                pass
            lines = await self._command(f"UID FETCH {self._last_uid + 1}:* (UID BODY.PEEK[])")
            done = time.monotonic()
            for line in lines:
                match = re.search(rb"UID (\d+)", line)
                if b" FETCH " in line and match and int(match[1]) > self._last_uid:
                    self._last_uid = int(match[1])
                    self.fetched.append(done)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


# -- LMTP --------------------------------------------------------------------------------------


class LmtpClient:
    """One LMTP connection for many deliveries; `deliver` returns when the server's 250 arrived."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 30.0) -> LmtpClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        client = cls(reader, writer)
        await client._reply(220)
        writer.write(b"LHLO bench.localhost\r\n")
        await client._reply(250)
        return client

    async def _reply(self, expected: int) -> None:
        while True:
            line = await self._reader.readline()
            if not line:
                raise ConnectionError("LMTP server closed the connection")
            if line[3:4] != b"-":
                if int(line[:3]) != expected:
                    raise ConnectionError(f"LMTP: expected {expected}, got {line!r}")
                return

    async def deliver(
        self, recipients: str | list[str], message: bytes, sender: str = "bench@example.org"
    ) -> float:
        """One transaction; with several recipients the same message lands in each, in order."""
        recipients = [recipients] if isinstance(recipients, str) else recipients
        writer = self._writer
        writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
        await self._reply(250)
        for recipient in recipients:
            writer.write(f"RCPT TO:<{recipient}>\r\n".encode())
            await self._reply(250)
        writer.write(b"DATA\r\n")
        await self._reply(354)
        lines = message.replace(b"\r\n", b"\n").split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
        writer.write(body + b"\r\n.\r\n")
        for _ in recipients:  # LMTP: one reply per recipient
            await self._reply(250)
        return time.monotonic()

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError):
            self._writer.write(b"QUIT\r\n")
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


def bench_mail(subject: str, body: str = "Hello from the benchmark.\r\n", size: int = 0) -> bytes:
    """A small plain message; `size` pads the body to about that many bytes."""
    if size > len(body):
        body += ("lorem ipsum dolor sit amet " * (size // 27 + 1))[: size - len(body)] + "\r\n"
    return (
        f"From: Bench Sender <sender@example.org>\r\nTo: agent@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}.{time.time_ns()}@bench.example>\r\n"
        f"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


# -- the fan-out floor -------------------------------------------------------------------------


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
