"""The outbox across a clean shutdown, against the real Dovecot and SMTP peers: an auto-reply cut
off before the data is sent once after the restart; one cut off after the data never again. And
across an on-demand watcher that stops while its reply is being sent: the reply goes out without
the watcher, once; its mailbox, or its folder, removed from the configuration, the reply is given
up, and said so."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.config import Config
from gatewayd.rules.execute import message_key
from gatewayd.sandbox.dovecot import Dovecot
from gatewayd.store.journal import FAILED, UNKNOWN, OutboxItem
from gatewayd.store.sqlite_journal import SqliteRuleJournal
from tests.conftest import TOKEN, gateway_config
from tests.smtp_sink import LOCAL_DOMAIN, SmtpSink
from tests.sse import mail, open_stream
from tests.stalling_smtp import StallingSmtp
from tests.waiting import idle, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOB = "bob@example.org"
RULES = [{"name": "ack", "then": [{"auto_reply": {"body": "Got it.", "period_days": 1}}]}]
# Longer than the test: only the shutdown ends an attempt the peer stalls.
STALLED_SECONDS = 120


def config(tmp_path: Path, dovecot: Dovecot, user: str, port: int) -> Config:
    smtp = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "timeout_seconds": STALLED_SECONDS,
        "retry_initial_seconds": 0.2,
        "retry_max_seconds": 0.5,
    }
    return gateway_config(tmp_path, dovecot, [user], rules=RULES, smtp=smtp, address=f"{user}@{LOCAL_DOMAIN}")


def on_demand_config(
    tmp_path: Path,
    dovecot: Dovecot,
    users: list[str],
    sink: SmtpSink,
    retry_seconds: float,
    folders: Sequence[str] = ("INBOX",),
) -> Config:
    """Watched while a client streams the mailbox, and no longer the moment it leaves."""
    smtp = sink.smtp_config() | {
        "timeout_seconds": STALLED_SECONDS,
        "retry_initial_seconds": retry_seconds,
        "retry_max_seconds": retry_seconds,
    }
    return gateway_config(
        tmp_path,
        dovecot,
        users,
        watch="on_demand",
        on_demand_linger_seconds=0,
        rules=RULES,
        smtp=smtp,
        address=f"{users[0]}@{LOCAL_DOMAIN}" if users else None,
        imap={"folders": list(folders)},
    )


async def leave_while_held(gw: Any, dovecot: Dovecot, user: str, sink: SmtpSink) -> None:
    """A client streams the mailbox; Bob's mail comes, and the client leaves while the sink holds
    the reply (before the data): the watcher stops, cutting the reply off."""
    mailbox_id = f"{user}-inbox"
    sink.hold_next()
    async with aiohttp.ClientSession() as session:
        stream = await open_stream(session, gw.url, {"mailbox": mailbox_id})
        await wait_for(lambda: idle(gw, mailbox_id), what="watcher idle")
        await dovecot.deliver_async(user, mail("question", sender=f"Bob <{BOB}>"), sender=BOB)
        await wait_for(lambda: sink.held == 1, timeout=30, what="the sink to hold the reply")
        stream.response.close()
    await wait_for(lambda: not gw.daemon.pool.is_watching(mailbox_id), what="the watcher to stop")


async def events(url: str, types: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        params = {"types": types, "limit": "500"}
        async with session.get(f"{url}/v1/events", headers=AUTH, params=params) as response:
            assert response.status == 200, await response.text()
            return list((await response.json())["events"])


async def until_events(url: str, types: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(found := await events(url, types)) < count:
        if loop.time() > deadline:
            raise AssertionError(f"expected {count} {types} events, got {found}")
        await asyncio.sleep(0.05)
    return found


async def stop_while_stalled(
    tmp_path: Path, dovecot: Dovecot, user: str, start_gateway: Any, stalled: StallingSmtp, stalls: Any
) -> None:
    """Bob's mail answered inline through `stalled`, and the daemon stopped (SIGTERM's path) once
    `stalls()` says the peer holds the reply."""
    gw = await start_gateway(config(tmp_path, dovecot, user, stalled.port))
    await wait_for(lambda: idle(gw), what="watcher idle")
    await dovecot.deliver_async(user, mail("question", sender=f"Bob <{BOB}>"), sender=BOB)
    await wait_for(stalls, timeout=30, what="the peer to stall the reply")
    await gw.daemon.stop()


async def reply_in_outbox(tmp_path: Path, event: dict[str, Any]) -> OutboxItem:
    """The outbox's record of the event's auto-reply (the daemon stopped)."""
    data = event["data"]
    journal = SqliteRuleJournal(tmp_path / "events.db")
    await journal.open()
    try:
        key = message_key(event["mailbox_id"], data["folder"], data["uidvalidity"], data["uid"])
        item = await journal.outbox_get(key, 0)
    finally:
        await journal.close()
    assert item is not None
    return item


async def test_a_reply_cut_off_before_the_data_by_a_shutdown_goes_out_once_after_the_restart(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    async with StallingSmtp(stall_at="RCPT") as stalled:
        await stop_while_stalled(
            tmp_path, dovecot, user, start_gateway, stalled, lambda: "RCPT" in stalled.commands
        )
        assert not stalled.got_data
    gw = await start_gateway(config(tmp_path, dovecot, user, sink.port))
    (action,) = await until_events(gw.url, "message.action", 1)
    (received,) = await events(gw.url, "message.received*")
    reply = received["data"]["auto_reply"]
    # `ok` when the outbox's retry, which waits for no watcher, went out before the recovery looked.
    assert reply["outcome"] in ("pending", "ok") and received["data"]["recovered"] is True, received["data"]
    assert action["data"]["outcome"] == "ok" and action["data"]["attempts"] == 2, action["data"]
    assert action["data"]["sent_message_id"] == reply["message_id"]
    (sent,) = sink.received
    assert sent.recipients == [BOB]
    # The sender's reservation stayed the reply's: Bob's next mail within the period is not answered.
    await dovecot.deliver_async(user, mail("another question", sender=f"Bob <{BOB}>"), sender=BOB)
    (again,) = [e for e in await until_events(gw.url, "message.received*", 2) if e["data"]["uid"] == 2]
    (skipped,) = [a for rule in again["data"]["rules_applied"] for a in rule["actions"]]
    assert skipped["outcome"] == "skipped" and again["data"]["auto_reply"] is None, again["data"]
    assert len(sink.received) == 1


async def test_a_reply_cut_off_after_the_data_by_a_shutdown_is_never_sent_again(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    async with StallingSmtp(stall_after_data=True) as stalled:
        await stop_while_stalled(tmp_path, dovecot, user, start_gateway, stalled, lambda: stalled.got_data)
    gw = await start_gateway(config(tmp_path, dovecot, user, sink.port))
    (received,) = await until_events(gw.url, "message.received*", 1)
    (reply,) = [a for rule in received["data"]["rules_applied"] for a in rule["actions"]]
    assert reply["outcome"] == "error" and "may have been delivered" in reply["error"], reply
    await gw.daemon.stop()
    item = await reply_in_outbox(tmp_path, received)
    assert (item.state, item.attempts) == (UNKNOWN, 1)
    assert sink.received == [] and stalled.connections == 1


async def test_a_reply_cut_off_by_its_on_demand_watcher_stopping_goes_out_without_the_watcher(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    gw = await start_gateway(on_demand_config(tmp_path, dovecot, [user], sink, retry_seconds=0.2))
    await leave_while_held(gw, dovecot, user, sink)
    # Nobody watches the mailbox: the outbox retries the reply all the same.
    (action,) = await until_events(gw.url, "message.action", 1)
    assert action["data"]["outcome"] == "ok" and action["data"]["attempts"] == 2, action["data"]
    (sent,) = sink.received
    assert sent.recipients == [BOB]
    assert await events(gw.url, "message.received*") == []  # announced once watched again
    async with aiohttp.ClientSession() as session:
        await open_stream(session, gw.url, {"mailbox": f"{user}-inbox"})
        (received,) = await until_events(gw.url, "message.received*", 1)
    reply = received["data"]["auto_reply"]
    assert reply["outcome"] == "ok" and reply["message_id"] == action["data"]["sent_message_id"], reply
    assert len(sink.received) == 1 and len(await events(gw.url, "message.action")) == 1


@pytest.mark.parametrize("removed", ["mailbox", "folder"])
async def test_a_reply_cut_off_by_its_watcher_stopping_is_given_up_when_its_mailbox_or_folder_is_removed(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink, removed: str
) -> None:
    mailbox_id = f"{user}-inbox"
    gw = await start_gateway(on_demand_config(tmp_path, dovecot, [user], sink, retry_seconds=3600))
    await leave_while_held(gw, dovecot, user, sink)
    await gw.daemon.stop()  # before the reply's retry
    # Configured still, though nobody watches it now (on demand): left open (closed at start-up).
    gw = await start_gateway(on_demand_config(tmp_path, dovecot, [user], sink, retry_seconds=3600))
    assert await events(gw.url, "message.action") == []
    await gw.daemon.stop()
    if removed == "mailbox":
        restarted = on_demand_config(tmp_path, dovecot, [], sink, retry_seconds=0.2)
        reason = f'mailbox "{mailbox_id}" was removed from the configuration'
    else:  # the mailbox stays, and its SMTP server, watching another folder
        restarted = on_demand_config(tmp_path, dovecot, [user], sink, retry_seconds=0.2, folders=["Archive"])
        reason = f'folder "INBOX" was removed from the configuration of mailbox "{mailbox_id}"'
    gw = await start_gateway(restarted)
    (action,) = await until_events(gw.url, "message.action", 1)
    data = action["data"]
    assert action["mailbox_id"] == mailbox_id and data["to"] == [BOB], action
    assert data["outcome"] == "failed" and data["attempts"] == 1 and reason in data["error"], data
    if removed == "folder":  # watched, the mailbox does nothing more for the message
        async with aiohttp.ClientSession() as session:
            await open_stream(session, gw.url, {"mailbox": mailbox_id})
            await wait_for(lambda: idle(gw, mailbox_id), what="watcher idle")
        assert (
            await events(gw.url, "message.received*") == []
            and len(await events(gw.url, "message.action")) == 1
        )
    await gw.daemon.stop()
    with sqlite3.connect(tmp_path / "events.db") as db:  # closed, not left open forever
        assert db.execute("SELECT state FROM rule_journal").fetchall() == [("done",)]
        assert db.execute("SELECT state FROM outbox").fetchall() == [(FAILED,)]
        assert db.execute("SELECT count(*) FROM auto_replies").fetchall() == [(0,)]  # Bob may be answered
    assert sink.received == []
