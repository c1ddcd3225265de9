"""How a message is recognised in another folder after a rule moved or copied it there.

A move keeps the message's bytes, its size and its INTERNALDATE (RFC 3501 COPY, RFC 6851 MOVE) but
not its UID, so the destination's copy is recognised by what it carries: its Message-ID, size,
arrival time and a SHA-256 of its header block (which holds the Received lines a delivery adds, so
two deliveries of one mail differ). The Message-ID alone would also match a second delivery of
the same mail (a list copy); the header digest alone serves a message without one. Only a message
whose header block is longer than the fetch cap and has no Message-ID cannot be recognised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_HEADER_ENDS = (b"\r\n\r\n", b"\n\n")


def header_digest(raw: bytes) -> str | None:
    """SHA-256 of the header block of `raw` (a message or its prefix); None when the prefix cut it."""
    for end in _HEADER_ENDS:
        index = raw.find(end)
        if index >= 0:
            return hashlib.sha256(raw[:index]).hexdigest()
    return None


@dataclass(frozen=True, slots=True)
class Identity:
    message_id: str | None
    size: int | None
    received_at: str | None  # the INTERNALDATE, as the event data carries it
    header_sha256: str | None

    @classmethod
    def of(cls, data: Mapping[str, Any], header_sha256: str | None) -> Identity:
        """From a message's event data and the digest of its header block."""
        size = data.get("size")
        return cls(
            data.get("message_id") or None,
            size if isinstance(size, int) else None,
            data.get("received_at") or None,
            header_sha256,
        )

    @property
    def findable(self) -> bool:
        return bool(self.message_id or self.header_sha256)

    def matches(self, other: Identity) -> bool:
        """Whether `other` is this message: every field both know agrees, and one of them names it."""
        if not (self.findable and other.findable) or self.message_id != other.message_id:
            return False
        pairs = (
            (self.size, other.size),
            (self.received_at, other.received_at),
            (self.header_sha256, other.header_sha256),
        )
        return all(mine is None or theirs is None or mine == theirs for mine, theirs in pairs)
