"""The failures of an IMAP session, and how they are told. `kind` tells the watcher how to back off."""

from __future__ import annotations

from collections.abc import Sequence


class ImapError(Exception):
    """A failure talking to the server."""

    kind = "protocol"
    # It lasts until someone acts (the account's owner, an administrator), not seconds: the
    # watcher retries slowly.
    lasting = False


class ImapRefused(ImapError):
    """The server answered a command NO or BAD (`result`), with its response code if it gave one
    (`code`, e.g. NONEXISTENT: RFC 5530)."""

    def __init__(self, message: str, result: str, code: str | None) -> None:
        super().__init__(message)
        self.result = result
        self.code = code


class ImapFolderMissing(ImapError):
    """SELECT refused a folder that does not exist. Its `kind` stays "protocol" (the events say so)."""

    lasting = True


class ImapAuthError(ImapError):
    kind = "auth"
    lasting = True


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
