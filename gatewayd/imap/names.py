"""Folder names and strings as IMAP sends them: quoted strings, and modified UTF-7 (RFC 3501 5.1.3).

Config, events and the rest of gatewayd use folder names as people write them (UTF-8, `&` as
itself); only the commands and the answers on the wire use modified UTF-7, which this module
converts to and from.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

# A run of modified UTF-7: `&-` is `&`, `&<modified base64>-` is UTF-16.
_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")


def folder_key(name: str) -> str:
    """The folder a name means, for comparing two names: INBOX in any case is INBOX (RFC 3501 5.1),
    every other name is exact."""
    return "INBOX" if name.upper() == "INBOX" else name


def spelling_key(name: str) -> str:
    """What the spellings that may name one folder share, for doubt rather than identity: decoded
    from modified UTF-7, in NFC, without case (a server may ignore it beyond INBOX) nor a trailing
    `/` or `.` (a hierarchy delimiter there: some servers drop it, Dovecot refuses the name)."""
    loose = unicodedata.normalize("NFC", decode_mailbox(name)).casefold()
    return loose.rstrip("/.") or loose


def quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501 4.3); the caller keeps CR, LF and NUL out."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quoted_mailbox(name: str) -> str:
    """A folder name as a command argument: modified UTF-7, quoted."""
    return quote(encode_mailbox(name))


def encode_mailbox(name: str) -> str:
    """A folder name in IMAP's modified UTF-7: `&` and non-ASCII are encoded."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mailbox(name: str) -> str:
    """A folder name as the server sent it, decoded; a run that is not valid modified UTF-7
    is kept as it came (a server may send UTF-8 or a malformed name)."""

    def decode(match: re.Match[str]) -> str:
        encoded = match.group(1)
        if not encoded:
            return "&"
        try:
            padded = encoded.replace(",", "/") + "=" * (-len(encoded) % 4)
            return base64.b64decode(padded, validate=True).decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError):
            return match.group(0)

    return _SHIFTED.sub(decode, name)
