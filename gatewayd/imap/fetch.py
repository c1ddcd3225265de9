"""FETCH responses, as aioimaplib hands them over, turned into FetchedMessages.

aioimaplib keeps a response as a list: each `N FETCH (...` line (its `* ` stripped), the literal
after it as a bytearray, what follows the literal as further lines. `parse_fetch` reads a FETCH
command's answer (`uid_set` writes its UIDs); `PushedMessages` collects the new messages a server
sends unasked, with its push (NOTIFY MessageNew with fetch attributes, RFC 5465 5.2), so that the
sync after the push needs no FETCH round trip.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gatewayd.message import FetchedMessage

# Metadata and the first max_bytes of the message, without setting \Seen.
FETCH_ITEMS = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]<0.{max_bytes}>)"

_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_FETCH_UID = re.compile(rb"[( ]UID (\d+)")
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_FETCH_DATE = re.compile(rb'INTERNALDATE "([^"]*)"')
# What Dovecot sends for a message another session expunged while this one still counts it: no
# body (NIL), with `[EXPUNGEISSUED]` (RFC 5530) on the tagged OK.
_FETCH_NO_BODY = re.compile(rb"BODY\[\](?:<\d+>)? NIL")


def uid_set(uids: Sequence[int]) -> str:
    """Compress UIDs into sorted ranges: 1,2,3,7 -> 1:3,7."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid != prev + 1:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = uid
        prev = uid
    parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)


def parse_fetch(
    lines: Sequence[bytes | bytearray], folder: str, uidvalidity: int, present: bool = False
) -> list[FetchedMessage]:
    """Pair each `N FETCH (...)` line with the literal that follows it.

    `present`: leave out what the server answered for messages already expunged (no body, and
    `[EXPUNGEISSUED]` in the tagged response, the last line).
    """
    messages: list[FetchedMessage] = []
    head: bytes | None = None
    literal = b""
    expunged = present and bool(lines) and b"[EXPUNGEISSUED]" in bytes(lines[-1])
    for line in [*lines, b"0 FETCH ("]:
        if isinstance(line, bytearray):
            literal = bytes(line)
            continue
        if _FETCH_START.match(line):
            if expunged and head is not None and _FETCH_NO_BODY.search(head):
                head = None  # expunged by another session: gone
            if head is not None and (uid := _FETCH_UID.search(head)):
                size = _FETCH_SIZE.search(head)
                flags = _FETCH_FLAGS.search(head)
                date = _FETCH_DATE.search(head)
                messages.append(
                    FetchedMessage(
                        folder=folder,
                        uid=int(uid.group(1)),
                        uidvalidity=uidvalidity,
                        raw=literal,
                        size=int(size.group(1)) if size else len(literal),
                        flags=tuple(flags.group(1).decode("ascii", "replace").split()) if flags else (),
                        internaldate=date.group(1).decode("ascii", "replace") if date else None,
                    )
                )
            head, literal = line, b""
        elif head is not None:
            # Items after a literal continue the same FETCH response on the next line.
            head += b" " + line
    return messages


class PushedMessages:
    """The new messages of the selected folder that the server pushed whole, by UID.

    Lines come as aioimaplib queues them during IDLE, a response possibly split over two pushes
    (a chunk of the socket may end before the literal). Only a response with its literal and
    balanced parentheses counts; responses without a body (a flag change) are not messages. At
    most `limit` messages are kept: past that the sync fetches as usual.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._partial: list[bytes | bytearray] = []
        self._messages: dict[int, FetchedMessage] = {}
        self._overflow = False

    def add(self, lines: Sequence[bytes | bytearray], folder: str, uidvalidity: int) -> None:
        for line in lines:
            if isinstance(line, bytes) and _FETCH_START.match(line):
                self._partial = [line]
            elif self._partial:
                self._partial.append(line)
            else:
                continue  # EXISTS, EXPUNGE, RECENT: not part of a FETCH response
            text = b"".join(part for part in self._partial if isinstance(part, bytes))
            if isinstance(line, bytes) and text.count(b"(") == text.count(b")"):
                response, self._partial = self._partial, []
                if any(isinstance(part, bytearray) for part in response):
                    for message in parse_fetch(response, folder, uidvalidity):
                        self._keep(message)

    def _keep(self, message: FetchedMessage) -> None:
        if len(self._messages) >= self._limit and message.uid not in self._messages:
            self._overflow = True
            return
        self._messages[message.uid] = message

    def take(self, first_uid: int, count: int) -> list[FetchedMessage] | None:
        """The `count` messages from `first_uid` up, ascending, if the pushes brought exactly that
        many (None: fetch them); empties the pool either way."""
        messages = sorted((m for m in self._messages.values() if m.uid >= first_uid), key=lambda m: m.uid)
        overflow = self._overflow
        self.clear()
        return messages if len(messages) == count and not overflow else None

    def clear(self) -> None:
        self._partial, self._messages, self._overflow = [], {}, False
