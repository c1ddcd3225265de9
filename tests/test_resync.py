"""Which messages a UIDVALIDITY resync announces (gatewayd.imap.resync)."""

from __future__ import annotations

from datetime import UTC, datetime

from gatewayd.imap.resync import new_uids
from gatewayd.store import FolderHistory

# The newest announced message arrived at 10:00:00 (INTERNALDATE, whole seconds, the server's clock).
ANNOUNCED = FolderHistory(newest_arrival=datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC), first_watched=None)


def test_after_announced_mail_by_message_id_and_the_server_clock() -> None:
    headers = {
        1: ("<old@x>", "21-Nov-2026 09:00:00 +0000"),  # announced before
        2: (None, "21-Nov-2026 09:30:00 +0000"),  # no Message-ID, arrived before
        3: ("<new@x>", "21-Nov-2026 10:05:00 +0000"),
        4: ("<old@x>", "21-Nov-2026 10:06:00 +0000"),  # a copy of announced mail, after new mail
        5: (None, "21-Nov-2026 11:06:00 +0100"),  # no Message-ID, arrived after (10:06 UTC)
        6: ("<pruned@x>", "20-Nov-2026 08:00:00 +0000"),  # unknown, but old: pruned or never watched
        7: ("<odd@x>", "not a date"),  # unreadable arrival: old
        # Never announced, in the newest one's second (it arrived while that one was processed).
        8: ("<same-second@x>", "21-Nov-2026 10:00:00 +0000"),
        # Without a Message-ID in that second: it cannot be told from announced mail; quiet.
        9: (None, "21-Nov-2026 10:00:00 +0000"),
        10: ("<old@x>", "21-Nov-2026 10:00:00 +0000"),  # the announced one itself
    }
    assert new_uids(headers, {"<old@x>"}, ANNOUNCED) == [3, 5, 8]


def test_nothing_announced_yet_counts_from_the_first_connect_with_a_margin() -> None:
    watched = FolderHistory(
        newest_arrival=None, first_watched=datetime(2026, 11, 21, 10, 0, 0, 500000, tzinfo=UTC)
    )
    headers = {
        1: ("<before@x>", "21-Nov-2026 09:50:00 +0000"),  # in the folder before it was watched
        2: ("<skewed@x>", "21-Nov-2026 09:59:30 +0000"),  # a server clock 30 s behind: within the margin
        3: (None, "21-Nov-2026 10:02:00 +0000"),
    }
    assert new_uids(headers, set(), watched) == [2, 3]


def test_no_history_announces_nothing() -> None:
    nothing = FolderHistory(newest_arrival=None, first_watched=None)
    assert new_uids({1: ("<new@x>", "21-Nov-2026 10:05:00 +0000")}, set(), nothing) == []
