"""Connecting to the IMAP server: TCP or implicit TLS, STARTTLS, login, capabilities.

aioimaplib has no STARTTLS (upgraded here with `loop.start_tls`), sends LOGIN's username bare
(`gatewayd.imap.login` logs in instead) and reads responses in quadratic time (the client is
`gatewayd.imap.protocol`'s). Its loggers are kept at WARNING: it logs every line at
debug, the password too, and stray responses at info.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Protocol, TypeVar

import aioimaplib

from gatewayd.config import TLS_IMPLICIT, TLS_STARTTLS, ImapConfig
from gatewayd.imap.errors import (
    ImapAuthError,
    ImapConnectionLost,
    ImapError,
    ImapTlsError,
    describe,
    response_text,
)
from gatewayd.imap.login import login
from gatewayd.imap.protocol import IMAP4
from gatewayd.tls import client_context

logging.getLogger("aioimaplib").setLevel(logging.WARNING)
logging.getLogger("aioimaplib.aioimaplib").setLevel(logging.WARNING)


class Connection(Protocol):
    """What `connect` makes of the client, before the server's greeting."""

    def connection_lost(self) -> None:
        """The connection broke, whenever it does (aioimaplib's callback); never raises."""

    def abort(self) -> None:
        """Close the connection at once: it failed before it could be used."""


C = TypeVar("C", bound=Connection)


def tls_context(config: ImapConfig) -> ssl.SSLContext:
    return client_context(config.ca_file, config.verify_cert)


async def connect(config: ImapConfig, connection_of: Callable[[aioimaplib.IMAP4], C]) -> C:
    """Connect, upgrade to TLS as configured, log in, and know the server's capabilities once
    logged in. `connection_of` wraps the client before the greeting, so that a connection lost
    at any time is reported to it. Raises an ImapError subclass, the connection aborted; so is
    it when cancelled."""
    connection: C | None = None

    def connection_lost(_exc: Exception | None) -> None:
        if connection is not None:
            connection.connection_lost()

    timeout = config.connect_timeout_seconds
    try:
        client = IMAP4(
            config.host,
            config.port,
            timeout=timeout,
            conn_lost_cb=connection_lost,
            ssl_context=tls_context(config) if config.tls == TLS_IMPLICIT else None,
        )
        connection = connection_of(client)
        await client.wait_hello_from_server()
        if config.tls == TLS_STARTTLS:
            await _starttls(client.protocol, config)
        response = await asyncio.wait_for(
            login(client.protocol, config.username, config.password.reveal()), timeout
        )
        if response.result == "OK" and not any(b"CAPABILITY" in bytes(line) for line in response.lines):
            # The server did not say what it offers once logged in (IDLE, NOTIFY): ask.
            await asyncio.wait_for(client.protocol.capability(), timeout)
    except ImapError:
        _abandon(connection)
        raise
    except asyncio.CancelledError:
        # The watcher stopped while this connected: the socket must not outlive it.
        client._client_task.cancel()  # still connecting: asyncio closes the socket
        _abandon(connection)
        raise
    except ssl.SSLError as exc:
        _abandon(connection)
        raise ImapTlsError(f"TLS failed: {exc.reason or type(exc).__name__}") from None
    except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
        _abandon(connection)
        raise ImapConnectionLost(f"cannot connect to {config.host}:{config.port}: {describe(exc)}") from None
    if response.result != "OK":
        _abandon(connection)
        text = response_text(response.lines[-1:]) if response.lines else response.result
        raise ImapAuthError(f"login refused for {config.username}: {text}")
    return connection


async def _starttls(protocol: aioimaplib.IMAP4ClientProtocol, config: ImapConfig) -> None:
    if "STARTTLS" not in protocol.capabilities:
        raise ImapTlsError("server does not offer STARTTLS")
    command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
    response = await asyncio.wait_for(protocol.execute(command), config.connect_timeout_seconds)
    if response.result != "OK":
        raise ImapTlsError(f"STARTTLS refused: {response_text(response.lines)}")
    loop = asyncio.get_running_loop()
    transport = await loop.start_tls(
        protocol.transport, protocol, tls_context(config), server_hostname=config.host
    )
    protocol.transport = transport
    # Capabilities announced before TLS must not be trusted (RFC 3501 6.2.1).
    await asyncio.wait_for(protocol.capability(), config.connect_timeout_seconds)


def _abandon(connection: Connection | None) -> None:
    if connection is not None:
        connection.abort()
