"""The latency floors: bare IMAP clients in IDLE on the same Dovecot as gatewayd.

Raw asyncio streams rather than aioimaplib, so a client library's own buffering or parsing never
shows up in a floor. Every time is `time.monotonic()`, which is one clock for all processes on the
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time

from gatewayd.imap.untagged import selected_events

_EXISTS = re.compile(rb"^\* (\d+) EXISTS")
_LITERAL = re.compile(rb"\{(\d+)\}\r?\n$")


class ImapIdleClient:
    """Logs in, selects INBOX, issues IDLE, and records when each `* N EXISTS` arrives."""

    # NOTIFY SET's argument before IDLE, if any (ImapPushClient).
    notify: str | None = None

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
        if self.notify:
            await self._command(f"a0 NOTIFY SET {self.notify}")
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
            elif literal := _LITERAL.search(line):  # a pushed message: its text is no response line
                await self._reader.readexactly(int(literal[1]))

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


class ImapPushClient(ImapIdleClient):
    """A third floor: a bare client that gets each new message with its push, as gatewayd does
    (NOTIFY SET with the same FETCH items, RFC 5465 5.2), and records when each EXISTS arrives.

    Dovecot takes longer over such a session's sync after a push, which delays the start of its
    next notification window: what gatewayd's windows pay for the message, before its own time.
    """

    notify = selected_events(262144)  # gatewayd's `fetch_max_bytes` default


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
