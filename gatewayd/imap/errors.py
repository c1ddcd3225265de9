"""The failures of an IMAP session. `kind` tells the watcher how to back off."""

from __future__ import annotations


class ImapError(Exception):
    """A failure talking to the server."""

    kind = "protocol"


class ImapAuthError(ImapError):
    kind = "auth"


class ImapConnectionLost(ImapError):
    kind = "network"


class ImapTlsError(ImapError):
    kind = "tls"
