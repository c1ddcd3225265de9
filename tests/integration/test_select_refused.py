"""A refused SELECT: which answers mean that the folder does not exist (ImapFolderMissing, which
the watcher retries slowly) and which do not. Other servers' answers are put in place of the
real Dovecot's by a loopback relay (Dovecot itself answers a plain NO for a missing folder)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatewayd.imap.errors import ImapFolderMissing, ImapRefused
from gatewayd.imap.session import ImapSession
from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import gateway_config


@contextlib.asynccontextmanager
async def answering_select(dovecot: Dovecot, answer: bytes | None) -> AsyncIterator[int]:
    """A relay to Dovecot (its port) that replaces the tagged answer to SELECT by `answer` (None:
    Dovecot's own)."""

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(dovecot.host, dovecot.imap_port)
        select_tag: list[bytes] = []

        async def upstream() -> None:
            while line := await client_reader.readline():
                tag, _, rest = line.partition(b" ")
                if rest.upper().startswith(b"SELECT "):
                    select_tag.append(tag)
                server_writer.write(line)

        async def downstream() -> None:
            while line := await server_reader.readline():
                if answer is not None and select_tag and line.startswith(select_tag[-1] + b" "):
                    line = select_tag.pop() + b" " + answer + b"\r\n"
                client_writer.write(line)

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(upstream(), downstream())

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("folder", "answer", "missing"),
    [
        ("Later", None, True),  # Dovecot: a plain NO, and LIST does not show the folder
        ("INBOX", b"NO [NONEXISTENT] Unknown Mailbox: INBOX (Failure)", True),  # the server says so
        ("INBOX", b"NO [TRYCREATE] Mailbox does not exist", True),
        ("INBOX", b"NO [NOPERM] Permission denied", False),  # it exists: not ours to wait for
        ("INBOX", b"NO [UNAVAILABLE] Try again later", False),
        ("INBOX", b"NO Internal error occurred", False),  # a plain NO, but LIST shows it
        ("Later", b"BAD Error in IMAP command SELECT", False),
    ],
)
async def test_which_refused_selects_mean_a_missing_folder(
    dovecot: Dovecot, user: str, tmp_path: Path, folder: str, answer: bytes | None, missing: bool
) -> None:
    (mailbox,) = gateway_config(tmp_path, dovecot, [user]).mailboxes()
    async with answering_select(dovecot, answer) as port:
        session = await ImapSession.open(dataclasses.replace(mailbox.imap, port=port))
        try:
            with pytest.raises(ImapFolderMissing if missing else ImapRefused) as caught:
                await session.select(folder)
        finally:
            session.abort()
    assert caught.value.lasting is missing
    assert caught.value.kind == "protocol"


async def test_a_refused_select_leaves_no_folder_selected(
    dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    """RFC 3501: a SELECT that fails leaves no folder selected; the session must not go on
    reading INBOX's UIDVALIDITY as the selected folder's."""
    (mailbox,) = gateway_config(tmp_path, dovecot, [user]).mailboxes()
    session = await ImapSession.open(mailbox.imap)
    try:
        await session.select("INBOX")
        assert session.selected is not None
        with pytest.raises(ImapFolderMissing):
            await session.select("Nowhere")
        assert session.selected is None
        assert await session.fetch([1], 4096) == []  # nothing selected: nothing read as INBOX's
    finally:
        session.abort()
