"""The failures of an IMAP session, and how they are told. `kind` tells the watcher how to back off."""

from __future__ import annotations

from collections.abc import Sequence


class ImapError(Exception):
    """A failure talking to the server."""

    kind = "protocol"


class ImapAuthError(ImapError):
    kind = "auth"


class ImapConnectionLost(ImapError):
    kind = "network"


class ImapTlsError(ImapError):
    kind = "tls"


def describe(exc: BaseException) -> str:
    # Never str() an aioimaplib command error: a Command's repr includes its arguments.
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__


def response_text(lines: Sequence[bytes | bytearray]) -> str:
    """What the server said, short enough for an error message."""
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines)[:200]
