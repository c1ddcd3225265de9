"""Which messages a UIDVALIDITY resync announces (gatewayd.imap.resync)."""

from __future__ import annotations

from datetime import UTC, datetime

from gatewayd.imap.resync import new_uids

SYNCED_AT = datetime(2026, 11, 21, 10, 0, 0, 500000, tzinfo=UTC)


def test_new_uids_by_message_id_and_arrival() -> None:
    headers = {
        1: ("<old@x>", "21-Nov-2026 09:00:00 +0000"),  # announced before
        2: (None, "21-Nov-2026 09:30:00 +0000"),  # no Message-ID, arrived before the sync
        3: ("<new@x>", "21-Nov-2026 10:05:00 +0000"),
        4: ("<old@x>", "21-Nov-2026 10:06:00 +0000"),  # a copy of announced mail, after new mail
        5: (None, "21-Nov-2026 11:06:00 +0100"),  # no Message-ID, arrived after (10:06 UTC)
        6: ("<pruned@x>", "20-Nov-2026 08:00:00 +0000"),  # unknown, but old: pruned or never watched
        7: ("<odd@x>", "not a date"),  # unreadable arrival: old
        8: (None, "21-Nov-2026 10:00:00 +0000"),  # the sync's own second: arrived before it
    }
    assert new_uids(headers, {"<old@x>"}, SYNCED_AT) == [3, 5]


def test_no_sync_known_announces_nothing() -> None:
    assert new_uids({1: ("<new@x>", "21-Nov-2026 10:05:00 +0000")}, set(), None) == []
