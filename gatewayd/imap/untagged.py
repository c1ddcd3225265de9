"""What the server says unasked on one connection: EXISTS, EXPUNGE and NOTIFY's STATUS.

aioimaplib drops an EXISTS that arrives during another command, and a `* STATUS` arriving outside
one: `Untagged.note` sees every untagged line first, in IDLE or not, and keeps count. Here too
are the arguments of the NOTIFY SET (RFC 5465) that asks for these notifications; aioimaplib
knows no NOTIFY, so it is registered in its command table as one that runs alone, like SELECT.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import aioimaplib

from gatewayd.imap.fetch import FETCH_ITEMS
from gatewayd.imap.names import decode_mailbox, folder_key, quoted_mailbox

aioimaplib.Commands.setdefault(
    "NOTIFY", aioimaplib.Cmd("NOTIFY", (aioimaplib.AUTH, aioimaplib.SELECTED), aioimaplib.Exec.is_sync)
)

_EXISTS = re.compile(rb"\A\* (\d+) EXISTS\Z")
_EXPUNGE = re.compile(rb"\A\* \d+ EXPUNGE\Z")
_STATUS_UIDNEXT = re.compile(rb"UIDNEXT (\d+)")
_STATUS_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
# `* STATUS name (...)`, the name an atom or a quoted string (a literal is left unparsed).
_STATUS = re.compile(rb'\A\* STATUS (?:"((?:[^"\\]|\\.)*)"|([^\s(){"]+)) \(')


class Untagged:
    """The counts and notifications of one connection; `note` is handed every untagged line."""

    def __init__(self, forward: Callable[[bytes], object]) -> None:
        """`forward`: aioimaplib's own handler, which every line goes on to."""
        self._forward = forward
        # Set whenever the server reports EXISTS, in IDLE or not: aioimaplib drops an EXISTS
        # that arrives during another command, so the watcher checks this after each sync.
        self.exists_seen = False
        # The selected folder's message count as the server last reported it (EXISTS, less one per
        # EXPUNGE since; None after a SELECT, whose EXISTS is the count, not new mail), and a
        # running total of the messages it reported added (each EXISTS above the count: new
        # mail). `arrived` never goes down; the watcher compares it between two syncs of the same
        # SELECT to know how many messages at most are new.
        self.exists: int | None = None
        self.arrived = 0
        # With NOTIFY: the folders a `* STATUS` reported changed, whenever it came (None: a
        # STATUS whose folder name could not be read). Read and cleared by take_notified().
        self._notified: set[str | None] = set()
        # The folder (its `folder_key`) of a STATUS command in flight: its answer is not a
        # notification.
        self.status_query: str | None = None

    def note(self, line: bytes) -> object:
        # Sees every untagged line first, before aioimaplib strips its `* ` markers.
        if line.endswith(b" EXISTS"):
            self.exists_seen = True
            self._count_exists(line)
        elif line.endswith(b" EXPUNGE"):
            if self.exists and _EXPUNGE.match(line):
                self.exists -= 1
        elif line.startswith(b"* STATUS "):
            folder = status_folder(line)
            if folder is None or self.status_query is None or folder_key(folder) != self.status_query:
                self._notified.add(folder)
        return self._forward(line)

    def _count_exists(self, line: bytes) -> None:
        match = _EXISTS.match(line)
        if match is None:
            return
        count = int(match.group(1))
        if self.exists is not None and count > self.exists:
            self.arrived += count - self.exists
        self.exists = count

    def take_notified(self, folders: Sequence[str]) -> set[str]:
        """Which of these folders a STATUS reported since the last call (all of them when a
        STATUS named a folder that cannot be matched, so nothing is ever missed)."""
        notified, self._notified = self._notified, set()
        by_name = {folder_key(folder): folder for folder in folders}
        found = {by_name.get(folder_key(name)) if name is not None else None for name in notified}
        return set(folders) if None in found else {folder for folder in found if folder is not None}


def status_folder(line: bytes) -> str | None:
    """The folder a `* STATUS` line names, decoded (None: a literal, or not such a line)."""
    match = _STATUS.match(line)
    if match is None:
        return None
    quoted, atom = match.groups()
    name = re.sub(rb"\\(.)", rb"\1", quoted) if quoted is not None else atom
    return decode_mailbox(name.decode("utf-8", "replace"))


def status_answer(lines: Sequence[bytes | bytearray], folder: str) -> tuple[int | None, int | None]:
    """(UIDNEXT, UIDVALIDITY) of `folder` in the answer to a STATUS command."""
    for line in lines:
        # aioimaplib kept only what follows `* STATUS `; a notification about another folder
        # may sit here too.
        name = status_folder(b"* STATUS " + bytes(line))
        if name is not None and folder_key(name) == folder_key(folder):
            uidnext, uidvalidity = _STATUS_UIDNEXT.search(line), _STATUS_UIDVALIDITY.search(line)
            return (
                int(uidnext.group(1)) if uidnext else None,
                int(uidvalidity.group(1)) if uidvalidity else None,
            )
    return None, None


def selected_events(max_bytes: int) -> str:
    """NOTIFY's events for the selected folder: each new message pushed whole (RFC 5465 5.2)."""
    return f"(SELECTED (MessageNew {FETCH_ITEMS.format(max_bytes=max_bytes)} MessageExpunge))"


def new_mail_events(folders: Sequence[str]) -> list[str]:
    """NOTIFY's events for new mail only (as `* STATUS`) in these folders, if any."""
    if not folders:
        return []
    return [f"(MAILBOXES ({' '.join(quoted_mailbox(folder) for folder in folders)}) (MessageNew))"]
