"""The open-file estimate: every IMAP connection gatewayd may hold at once, counted once."""

from __future__ import annotations

from gatewayd.api.context import REPORT_SESSIONS_AT_ONCE
from gatewayd.config import Config, parse_config
from gatewayd.fdlimit import imap_connections_at_most
from gatewayd.imap.pool import SENT_READS_AT_ONCE


def config(folders: list[list[str]]) -> Config:
    """One mailbox per entry of `folders`, watching those folders."""
    boxes = [
        {
            "id": f"box{n}",
            "imap": {"host": "127.0.0.1", "username": f"u{n}", "password": "p", "folders": names},
        }
        for n, names in enumerate(folders)
    ]
    return parse_config({"agents": [{"id": "a", "mailboxes": boxes}]}, env={})


def estimate(config: Config) -> int:
    return imap_connections_at_most(config.mailboxes(), learning=config.pipeline is not None)


def test_each_folder_counts_its_watching_connection_and_one_to_locate_moved_mail() -> None:
    """NOTIFY shares one connection per mailbox, but may fall back to one per folder. No rule moves
    or copies here, yet each folder may locate: a reload may add such a rule, and the journal may
    hold a move a crash interrupted under earlier rules."""
    mailboxes = config([["INBOX", "Support"], ["INBOX"]]).mailboxes()
    assert imap_connections_at_most(mailboxes, learning=False) == 2 * 3


def test_learning_adds_the_sent_reads_and_reports_at_once_not_per_mailbox() -> None:
    many = config([["INBOX"]] * 50)
    assert estimate(many) == 2 * 50 + SENT_READS_AT_ONCE + REPORT_SESSIONS_AT_ONCE


def test_without_a_sent_folder_nothing_is_set_aside_for_reading_one() -> None:
    boxes = [
        {"id": "box", "imap": {"host": "h", "username": "u", "password": "p", "sent_folder": None}},
    ]
    no_sent = parse_config({"agents": [{"id": "a", "mailboxes": boxes}]}, env={})
    assert estimate(no_sent) == 2 + REPORT_SESSIONS_AT_ONCE


def test_no_mailboxes_no_imap_connections() -> None:
    assert estimate(parse_config({"agents": [{"id": "a"}]}, env={})) == 0
