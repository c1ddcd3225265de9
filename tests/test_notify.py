"""NOTIFY bookkeeping of the IMAP session: which folder a `* STATUS` names, and what to sync."""

from __future__ import annotations

import pytest

from gatewayd.imap.session import ImapSession, _status_folder


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
    assert _status_folder(line) == folder


def session_with(notified: set[str | None]) -> ImapSession:
    session = object.__new__(ImapSession)
    session._notified = set(notified)
    return session


def test_take_notified_maps_names_and_clears() -> None:
    folders = ["INBOX", "Archive", "Junk"]
    session = session_with({"Archive", "inbox"})  # INBOX is case-insensitive, the rest is not
    assert session.take_notified(folders) == {"Archive", "INBOX"}
    assert session.take_notified(folders) == set()
    assert session_with({"junk"}).take_notified(folders) == set(folders)  # unknown: check them all
    assert session_with({None}).take_notified(folders) == set(folders)
