"""The outbox's background retries cut short by a stop, against a real SMTP peer that stalls: before
the data the mail goes back to `retry` (its reservation kept); after it, `unknown`, announced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import parse_config
from gatewayd.imap.cancel import cancel_until_done
from gatewayd.send.outbox import Outbox
from gatewayd.store.journal import RETRY, UNKNOWN, OutboxItem, OutgoingMail, Reservation
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.sqlite_journal import SqliteRuleJournal
from tests.stalling_smtp import StallingSmtp
from tests.waiting import wait_for

BOB = "bob@example.org"


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    journal = SqliteRuleJournal(tmp_path / "events.db")
    store = SqliteEventStore(tmp_path / "events.db")
    await journal.open()
    await store.open()
    yield {"journal": journal, "store": store, "published": [], "tmp": tmp_path}
    await store.close()
    await journal.close()


def outbox(parts: dict[str, Any], port: int) -> Outbox:
    smtp = {"host": "127.0.0.1", "port": port, "tls": "none", "timeout_seconds": 120}
    box = {"id": "box", "imap": {"host": "localhost", "tls": "none", "username": "u", "password": "p"}}
    data = {"agents": [{"id": "a", "mailboxes": [{**box, "smtp": smtp, "address": "me@gw.example"}]}]}
    (mailbox,) = parse_config(data, env={}, base_dir=parts["tmp"]).mailboxes()
    return Outbox(parts["journal"], {"box": mailbox}, parts["store"], parts["published"].extend)


async def begin(journal: SqliteRuleJournal, key: str, uid: int) -> OutboxItem | None:
    """A message answered with an auto-reply to Bob: the reply held, or None when Bob's
    reservation is taken."""
    reply = OutgoingMail(
        0,
        "auto_reply",
        "me@gw.example",
        (BOB,),
        b"Subject: re\r\n\r\nHi.\r\n",
        f"<r{uid}@gw>",
        Reservation((BOB,), 3600),
    )
    await journal.begin(
        key,
        agent_id="a",
        mailbox_id="box",
        folder="INBOX",
        uidvalidity=7,
        uid=uid,
        record={"plan": {"steps": []}},
        mails=[reply],
    )
    return await journal.outbox_get(key, 0)


async def due_reply(journal: SqliteRuleJournal) -> None:
    """An auto-reply whose inline attempt failed, of a finished message, due now."""
    item = await begin(journal, "k1", 1)
    assert item is not None
    await journal.finish(["k1"])
    await journal.outbox_update(item.id, RETRY, attempts=1, next_attempt_at=time.time() - 1, last_error="451")


async def test_a_retry_stopped_before_the_data_is_retried_later_and_keeps_its_reservation(
    parts: dict[str, Any],
) -> None:
    journal = parts["journal"]
    async with StallingSmtp(stall_at="RCPT") as stalled:
        await due_reply(journal)
        running = asyncio.create_task(outbox(parts, stalled.port).run())
        await wait_for(lambda: "RCPT" in stalled.commands, what="the peer to stall the retry")
        await cancel_until_done([running])  # the daemon's stop
    after = await journal.outbox_get("k1", 0)
    assert after is not None and (after.state, after.attempts) == (RETRY, 2), after
    assert after.next_attempt_at is not None and not stalled.got_data
    assert parts["published"] == []  # nothing final to announce
    # Still Bob's reply to send: a later mail from Bob gets none of its own.
    assert await begin(journal, "k2", 2) is None


async def test_a_retry_stopped_after_the_data_is_unknown_and_announced(parts: dict[str, Any]) -> None:
    journal = parts["journal"]
    async with StallingSmtp(stall_after_data=True) as stalled:
        await due_reply(journal)
        running = asyncio.create_task(outbox(parts, stalled.port).run())
        await wait_for(lambda: stalled.got_data, what="the peer to stall after the data")
        await cancel_until_done([running])
    after = await journal.outbox_get("k1", 0)
    assert after is not None and (after.state, after.attempts) == (UNKNOWN, 2), after
    (event,) = parts["published"]
    assert event.type == "message.action" and event.data["outcome"] == UNKNOWN
    assert "may have been delivered" in event.data["error"]
