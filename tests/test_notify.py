"""NOTIFY bookkeeping of an IMAP connection: which folder a `* STATUS` names, and what to sync."""

from __future__ import annotations

import pytest

from gatewayd.imap.untagged import Untagged, status_folder


@pytest.mark.parametrize(
    ("line", "folder"),
    [
        (b"* STATUS Archive (MESSAGES 2 UIDNEXT 3)", "Archive"),
        (b"* STATUS INBOX (UIDNEXT 3 UIDVALIDITY 7)", "INBOX"),
        (b'* STATUS "Sent Items" (MESSAGES 1)', "Sent Items"),
        (b'* STATUS "a \\"quoted\\" \\\\ name" (MESSAGES 1)', 'a "quoted" \\ name'),
        (b"* STATUS Entw&APw-rfe (UIDNEXT 4)", "Entwürfe"),  # modified UTF-7, decoded
        (b"* STATUS {5}", None),  # a literal: not parsed, so every folder gets checked
        (b"* STATUS", None),
    ],
)
def test_status_folder(line: bytes, folder: str | None) -> None:
    assert status_folder(line) == folder


def session_with(notified: set[str | None]) -> Untagged:
    """Bookkeeping that saw a `* STATUS` for each of these folders (None: one it cannot read)."""
    forwarded: list[bytes] = []
    untagged = Untagged(forwarded.append)
    for folder in notified:
        untagged.note(b"* STATUS {5}" if folder is None else f"* STATUS {folder} (UIDNEXT 3)".encode())
    assert len(forwarded) == len(notified)  # every line goes on to aioimaplib
    return untagged


def test_take_notified_maps_names_and_clears() -> None:
    folders = ["INBOX", "Archive", "Junk"]
    session = session_with({"Archive", "inbox"})  # INBOX is case-insensitive, the rest is not
    assert session.take_notified(folders) == {"Archive", "INBOX"}
    assert session.take_notified(folders) == set()
    assert session_with({"junk"}).take_notified(folders) == set(folders)  # unknown: check them all
    assert session_with({None}).take_notified(folders) == set(folders)
