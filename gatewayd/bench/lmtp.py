"""Delivery for the benchmarks: a raw LMTP client to the sandbox Dovecot, and the mail it sends.

The clock of a latency starts when the server's 250 arrives: `deliver` returns that moment
(`time.monotonic()`, one clock for all processes on the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from email.utils import format_datetime


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


def bench_mail(
    subject: str, body: str = "Hello from the benchmark.\r\n", size: int = 0, headers: str = ""
) -> bytes:
    """A small plain message; `size` pads the body to about that many bytes; `headers`: more
    header lines, each ending in CRLF."""
    if size > len(body):
        body += ("lorem ipsum dolor sit amet " * (size // 27 + 1))[: size - len(body)] + "\r\n"
    return (
        f"From: Bench Sender <sender@example.org>\r\nTo: agent@example.com\r\nSubject: {subject}\r\n{headers}"
        f"Message-ID: <{subject.replace(' ', '.')}.{time.time_ns()}@bench.example>\r\n"
        f"Date: {format_datetime(datetime.now(UTC))}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()
