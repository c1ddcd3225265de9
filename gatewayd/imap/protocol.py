"""aioimaplib's client protocol with linear-time reading of the server's responses.

aioimaplib 2.0.3 reads what arrives in three ways that cost more than the reading itself:
- every chunk received (up to 256 KiB, message literals included) is formatted for a debug log
  line before the logger is asked whether it wants it, and every command sent likewise;
- `_handle_responses` takes one line, copies the rest of the chunk (`bytes.partition`) and calls
  itself on the copy: a chunk of n lines costs O(n²) copying, and more lines than the
  interpreter's recursion limit raise RecursionError;
- a FETCH asks after each line whether the response is complete by scanning all its lines so
  far and counting parentheses from the last `N FETCH (`: O(n²) in the response's lines.
A UID FETCH of 50 ordinary messages cost ~65 µs a message to read that way. `ImapProtocol` reads
each chunk in one pass over offsets, with the same calls to the line handler and the same
commands' state after every chunk, and `_FetchCommand` counts incrementally what FetchCommand
recounts; the rest is aioimaplib's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import aioimaplib
from aioimaplib.aioimaplib import CRLF, FetchCommand, literal_data_re

LineHandler = Callable[[bytes, "aioimaplib.Command | None"], "aioimaplib.Command | None"]


class _FetchCommand(FetchCommand):
    """FetchCommand whose `wait_data` reads only the lines added since it was last asked."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._scanned = 0  # lines of the response counted so far
        self._opened = self._closed = 0  # parentheses from the last `N FETCH (` line on

    def wait_data(self) -> bool:
        """FetchCommand's answer: the response from its last `N FETCH (` line (the first line when
        there is none) opens more parentheses than it closes. Literals (bytearrays) do not count."""
        lines = self._resp_lines
        for line in lines[self._scanned :]:
            if isinstance(line, bytes):
                if self.FETCH_MESSAGE_DATA_RE.match(line):
                    self._opened = self._closed = 0
                self._opened += line.count(b"(")
                self._closed += line.count(b")")
        self._scanned = len(lines)
        return self._opened != self._closed


class ImapProtocol(aioimaplib.IMAP4ClientProtocol):
    """aioimaplib's protocol, reading responses in linear time (see the module docstring)."""

    # aioimaplib's own, set in its __init__ (unannotated there).
    incomplete_line: bytes
    current_command: aioimaplib.Command | None

    def data_received(self, d: bytes) -> None:
        try:
            self._handle_responses(self.incomplete_line + d, self._handle_line, self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except aioimaplib.IncompleteRead as incomplete_read:
            self.current_command = incomplete_read.cmd
            self.incomplete_line = incomplete_read.data

    def send(self, line: str, scrub: str | None = None) -> None:
        self.transport.write(f"{line}\r\n".encode())

    def _handle_responses(
        self, data: bytes, line_handler: LineHandler, current_cmd: aioimaplib.Command | None = None
    ) -> None:
        """What aioimaplib's recursive `_handle_responses` does with `data`, one line after another."""
        position, end = 0, len(data)
        while True:
            if position == end:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                # A view, not a copy of the rest of the chunk: the command takes what it lacks.
                position = end - len(current_cmd.append_literal_data(memoryview(data)[position:]))
                if current_cmd.wait_literal_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
                # Unlike the empty-data case above, what follows a literal must be a line.
            line_end = data.find(CRLF, position)
            if line_end < 0:
                raise aioimaplib.IncompleteRead(current_cmd, data[position:])
            line = data[position:line_end]
            position = line_end + len(CRLF)
            cmd = line_handler(line, current_cmd)
            begin_literal = literal_data_re.match(line)
            if begin_literal:
                if cmd is None:
                    cmd = aioimaplib.Command("NIL", "unused")
                cmd.begin_literal_data(int(begin_literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None

    async def fetch(
        self, message_set: str, message_parts: str, by_uid: bool = False, timeout: float | None = None
    ) -> aioimaplib.Response:
        return await self.execute(
            _FetchCommand(
                self.new_tag(),
                message_set,
                message_parts,
                prefix="UID" if by_uid else "",
                loop=self.loop,
                timeout=timeout,
            )
        )


class IMAP4(aioimaplib.IMAP4):
    """aioimaplib.IMAP4 speaking through ImapProtocol; implicit TLS with an `ssl_context`."""

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = ImapProtocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )
