"""A connection lost while a command waits for its answer, through a loopback relay to the real
Dovecot that cuts the connection when the command goes by (a failure the server cannot produce);
one the server closes in IDLE (`doveadm kick`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import shutil
import subprocess
import weakref
from pathlib import Path
from typing import Any

import pytest

from gatewayd.imap.session import ImapConnectionLost, ImapSession
from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import gateway_config
from tests.waiting import idle, wait_for

DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"


async def test_a_command_whose_connection_is_lost_raises_connection_lost(
    dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(dovecot.host, dovecot.imap_port)

        async def upstream() -> None:
            while line := await client_reader.readline():
                if b" STATUS " in line:  # the command is sent: cut both ways before any answer
                    client_writer.transport.abort()
                    server_writer.transport.abort()
                    return
                server_writer.write(line)

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                client_writer.write(data)

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(upstream(), downstream())

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (mailbox,) = gateway_config(tmp_path, dovecot, [user]).mailboxes()
    session = await ImapSession.open(dataclasses.replace(mailbox.imap, port=port))
    try:
        with pytest.raises(ImapConnectionLost):
            await session.status("INBOX")
    finally:
        session.abort()
        server.close()
        await server.wait_closed()


async def test_a_session_lost_in_idle_is_let_go_of(dovecot: Dovecot, user: str, idle_gateway: Any) -> None:
    # aioimaplib's IDLE timer (set for days) kept every session whose connection was lost in IDLE,
    # with its buffers, until the process ended; then asyncio logged each one's IDLE task as
    # "Task exception was never retrieved".
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unhandled.append(context))
    (watcher,) = idle_gateway.daemon.pool._watchers[f"{user}-inbox"]
    lost = weakref.ref(watcher._session)
    kick = [DOVEADM, "-c", str(dovecot.config_path), "kick", user]
    await asyncio.to_thread(subprocess.run, kick, check=True, capture_output=True)
    await wait_for(lambda: idle_gateway.daemon.pool.health()[0]["reconnects"] == 1, what="a reconnect")
    await wait_for(lambda: idle(idle_gateway), what="the watcher idle again")
    gc.collect()
    assert lost() is None
    assert [context["message"] for context in unhandled] == []


@pytest.mark.parametrize("held", [b"", b" LOGIN "], ids=["before-the-greeting", "during-login"])
async def test_a_connection_cancelled_while_it_opens_is_closed(
    dovecot: Dovecot, user: str, tmp_path: Path, held: bytes
) -> None:
    """A watcher stopped while it connects (the NOTIFY retry ending an account's fall-back) once
    left its half-open connection established for good: CancelledError passed every except."""
    reached = asyncio.Event()
    closed = asyncio.Event()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(dovecot.host, dovecot.imap_port)

        async def upstream() -> None:
            while line := await client_reader.readline():
                if held in line:
                    reached.set()
                    continue  # held: the server never answers
                server_writer.write(line)
            closed.set()

        async def downstream() -> None:
            if not held:
                reached.set()
                return  # the greeting is held back
            while data := await server_reader.read(65536):
                client_writer.write(data)

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(upstream(), downstream())
        server_writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (mailbox,) = gateway_config(tmp_path, dovecot, [user]).mailboxes()
    opening = asyncio.create_task(ImapSession.open(dataclasses.replace(mailbox.imap, port=port)))
    try:
        await asyncio.wait_for(reached.wait(), 10)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await asyncio.wait_for(closed.wait(), 10)  # the client closed its end
    finally:
        server.close()
        await server.wait_closed()
