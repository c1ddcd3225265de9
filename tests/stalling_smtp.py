"""An SMTP peer on a loopback socket that answers slowly, or not at all at a chosen step.

aiosmtpd answers promptly; this one exists for what it cannot be made to do: a server that takes
`reply_delay` seconds over every reply, one that holds the connection open without answering
the end of the data (`stall_after_data`), as a hung submission server does, and one that never
answers a given command (`stall_at`, such as "RCPT": before the data).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class StallingSmtp:
    def __init__(
        self, reply_delay: float = 0.0, stall_after_data: bool = False, stall_at: str | None = None
    ) -> None:
        self.reply_delay = reply_delay
        self.stall_after_data = stall_after_data
        self.stall_at = stall_at
        self.port = 0
        self.connections = 0
        self.commands: list[str] = []
        self.got_data = False  # the message itself arrived (up to its final dot)
        self.hung_up = 0  # connections the client closed (or the peer ended)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> StallingSmtp:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._sessions:
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self.connections += 1
        try:
            await self._reply(writer, "220 stall.test ESMTP")
            while line := await reader.readline():
                verb = line.decode("ascii", "replace").strip().split(" ")[0].upper()
                self.commands.append(verb)
                if verb == "QUIT":
                    await self._reply(writer, "221 bye")
                    return
                if verb == self.stall_at:
                    await self._silent(reader)
                    return
                if verb == "DATA":
                    await self._reply(writer, "354 go ahead")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    self.got_data = True
                    if self.stall_after_data:
                        await self._silent(reader)
                        return
                await self._reply(writer, "250 stall.test" if verb in ("EHLO", "HELO") else "250 OK")
        except ConnectionError:
            pass
        finally:
            self.hung_up += 1
            writer.close()

    async def _silent(self, reader: asyncio.StreamReader) -> None:
        """Silent until the client hangs up; what it still says (QUIT) is noted."""
        while line := await reader.readline():
            self.commands.append(line.decode("ascii", "replace").strip().upper())

    async def _reply(self, writer: asyncio.StreamWriter, line: str) -> None:
        await asyncio.sleep(self.reply_delay)
        writer.write(line.encode("ascii") + b"\r\n")
        await writer.drain()
