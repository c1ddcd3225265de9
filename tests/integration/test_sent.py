"""Learning from the Sent folder against the real Dovecot: its recipients become correspondents."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.imap.sent import SENT_BACKFILL, SentLearner
from gatewayd.imap.session import ImapSession
from gatewayd.pipeline.learning import LearningStore, SentMark
from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import TOKEN, append, gateway_config
from tests.sse import SseReader, mail
from tests.waiting import idle, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sent_mail(to: str, **headers: str) -> bytes:
    return mail("our reply", sender="Agent <agent@example.com>", To=to, **headers).replace(
        b"To: agent@example.com\r\n", b"", 1
    )


def sent_to(gw: Any, user: str, address: str) -> bool:
    mailbox_id = f"{user}-inbox"
    return bool(gw.daemon.learning.for_mailbox(mailbox_id).reputation(address, mailbox_id)["sent_to"])


async def test_a_correspondent_from_the_sent_folder_is_scored_as_one(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    own = f"{user}@example.com"
    append(
        dovecot, user, "Sent", sent_mail("Carol <carol@partner.example>", Cc=own, Bcc="dave@partner.example")
    )
    config = gateway_config(tmp_path, dovecot, [user], address=own)
    gw = await start_gateway(config)
    await wait_for(lambda: sent_to(gw, user, "carol@partner.example"), what="the Sent folder learnt")
    assert sent_to(gw, user, "dave@partner.example")
    # Mail forged "from" the mailbox itself must not pass as a correspondent's.
    assert not sent_to(gw, user, own)
    await wait_for(lambda: idle(gw), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail("re: our reply", sender="Carol <Carol@partner.example>"))
        await dovecot.deliver_async(user, mail("hello", sender="Erin <erin@elsewhere.example>"))
        known, stranger = await reader.messages(2)
    assert known.json["data"]["sender_reputation"]["sent_to"] is True
    assert "REPUTATION_SENT_TO" in {f["symbol"] for f in known.json["data"]["spam"]["findings"]}
    assert stranger.json["data"]["sender_reputation"]["sent_to"] is False
    assert "REPUTATION_SENT_TO" not in {f["symbol"] for f in stranger.json["data"]["spam"]["findings"]}


async def test_mail_sent_while_watching_is_learnt_at_the_next_probe(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    # A short read timeout: the watcher leaves IDLE on silence that often, and checks the folder.
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap={"read_timeout_seconds": 3}))
    await wait_for(lambda: idle(gw), what="watcher idle")
    reconnects = gw.daemon.pool.health()[0]["reconnects"]
    await asyncio.to_thread(append, dovecot, user, "Sent", sent_mail("frank@partner.example"))
    await wait_for(lambda: sent_to(gw, user, "frank@partner.example"), what="the new sent mail learnt")
    # Learnt over the watcher's STATUS and a connection of its own: the watcher never left.
    assert gw.daemon.pool.health()[0]["reconnects"] == reconnects


async def test_several_folders_over_notify_learn_too(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    imap = {"folders": ["INBOX", "Archive"], "read_timeout_seconds": 3}
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap=imap))
    await wait_for(lambda: idle(gw), what="watchers idle")
    assert all(watcher["notify"] for watcher in gw.daemon.pool.health())
    await asyncio.to_thread(append, dovecot, user, "Sent", sent_mail("ivan@partner.example"))
    await wait_for(lambda: sent_to(gw, user, "ivan@partner.example"), what="the new sent mail learnt")
    assert all(watcher["reconnects"] == 0 for watcher in gw.daemon.pool.health())


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "without-notify"])
async def test_a_busy_mailbox_learns_its_sent_mail_promptly(
    dovecot: Dovecot, dovecot_without_notify: Dovecot, tmp_path: Path, start_gateway: Any, notify: bool
) -> None:
    # Mail every few hundred ms: the connection is never silent for a read timeout, and with NOTIFY
    # each message is processed without leaving IDLE, so the Sent folder was checked only at the
    # IDLE renewal (29 minutes). A reply to what the mailbox sent came scored as a stranger's.
    server = dovecot if notify else dovecot_without_notify
    user = f"busy{uuid.uuid4().hex[:8]}"
    server.add_user(user)
    gw = await start_gateway(gateway_config(tmp_path, server, [user], imap={"read_timeout_seconds": 3}))
    await wait_for(lambda: idle(gw), what="watcher idle")
    busy = asyncio.Event()
    delivered = 0

    async def keep_busy() -> None:
        nonlocal delivered
        while True:
            await server.deliver_async(user, mail(f"busy {delivered}"))
            delivered += 1
            if delivered == 10:
                busy.set()
            await asyncio.sleep(0.3)

    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        mail_flow = asyncio.create_task(keep_busy())
        try:
            await asyncio.wait_for(busy.wait(), 15)
            await asyncio.to_thread(append, server, user, "Sent", sent_mail("grace@partner.example"))
            # Far below the IDLE renewal: a few read timeouts and a login, on a busy machine.
            await wait_for(lambda: sent_to(gw, user, "grace@partner.example"), 20, "the sent mail learnt")
            await server.deliver_async(user, mail("re: our reply", sender="Grace <grace@partner.example>"))
            reply = None
            while reply is None:
                (frame,) = await reader.messages(1)
                if frame.json["data"]["subject"] == "re: our reply":
                    reply = frame.json["data"]
        finally:
            mail_flow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mail_flow
    assert reply["sender_reputation"]["sent_to"] is True
    assert "REPUTATION_SENT_TO" in {f["symbol"] for f in reply["spam"]["findings"]}
    assert gw.daemon.pool.health()[0]["reconnects"] == 0


@pytest.mark.parametrize("folders", [["INBOX"], ["INBOX", "Archive"]], ids=["one-folder", "several-folders"])
async def test_notify_reports_new_sent_mail_without_waiting_for_a_probe(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, folders: list[str]
) -> None:
    # A long read timeout: no probe comes within the test; the server's STATUS for the Sent folder
    # starts the read while the watcher stays in IDLE.
    imap = {"folders": folders, "read_timeout_seconds": 60}
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap=imap))
    await wait_for(lambda: idle(gw), what="watchers idle")
    await asyncio.to_thread(append, dovecot, user, "Sent", sent_mail("heidi@partner.example"))
    await wait_for(lambda: sent_to(gw, user, "heidi@partner.example"), 20, "the new sent mail learnt")
    await asyncio.to_thread(append, dovecot, user, "Sent", sent_mail("judy@partner.example"))
    await wait_for(lambda: sent_to(gw, user, "judy@partner.example"), 20, "the next sent mail learnt")
    assert all(watcher["reconnects"] == 0 for watcher in gw.daemon.pool.health())


async def test_a_busy_watched_sent_folder_is_learnt_too(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    # The Sent folder is the watched one: its new mail comes pushed whole and is processed in IDLE,
    # never silent for a probe; the check leaves IDLE between two pushes once it is due.
    imap = {"folders": ["Sent"], "read_timeout_seconds": 3}
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap=imap))
    await wait_for(lambda: idle(gw), what="watcher idle")

    async def keep_sending() -> None:
        count = 0
        while True:
            await asyncio.to_thread(append, dovecot, user, "Sent", sent_mail(f"peer{count}@partner.example"))
            count += 1
            await asyncio.sleep(0.2)

    sending = asyncio.create_task(keep_sending())
    try:
        await asyncio.sleep(4)  # longer than the read timeout: past the check made at connect
        await asyncio.to_thread(append, dovecot, user, "Sent", sent_mail("ken@partner.example"))
        await wait_for(lambda: sent_to(gw, user, "ken@partner.example"), 20, "the sent mail learnt")
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending


class Recorded:
    """A real LearningStore, with what it was asked to learn written down."""

    def __init__(self, store: LearningStore) -> None:
        self.store = store
        self.learnt: list[tuple[set[str], SentMark | None]] = []

    def sent_mark(self, mailbox_id: str) -> SentMark | None:
        return self.store.sent_mark(mailbox_id)

    def learn_sent(self, mailbox_id: str, addresses: Iterable[str], mark: SentMark | None = None) -> None:
        addresses = set(addresses)
        self.store.learn_sent(mailbox_id, addresses, mark)
        self.learnt.append((addresses, mark))


async def read_started(learner: SentLearner) -> None:
    """Until the background read the last check started, if any, has ended."""
    if learner._task is not None:
        await asyncio.wait_for(learner._task, 15)


async def learn_once(dovecot: Dovecot, user: str, tmp_path: Path, **imap: Any) -> Recorded:
    """One SentLearner (as after a start) over its own store: check, and wait for what it read."""
    (mailbox,) = gateway_config(tmp_path, dovecot, [user], imap=imap).mailboxes()
    recorded = Recorded(LearningStore(tmp_path / "learning.db"))
    learner = SentLearner(mailbox, recorded)
    session = await ImapSession.open(mailbox.imap)
    try:
        await learner.check(session)
        await read_started(learner)
    finally:
        await learner.close()
        await session.logout()
        recorded.store.close()
    return recorded


async def test_a_restart_reads_only_what_was_sent_since(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    append(dovecot, user, "Sent", sent_mail("alice@partner.example"))
    first = await learn_once(dovecot, user, tmp_path)
    assert [addresses for addresses, _ in first.learnt] == [{"alice@partner.example"}]
    assert first.learnt[0][1] is not None and first.learnt[0][1].last_uid == 1

    # Nothing new: a restart reads nothing and learns nothing.
    assert (await learn_once(dovecot, user, tmp_path)).learnt == []

    append(dovecot, user, "Sent", sent_mail("bob@partner.example"))
    again = await learn_once(dovecot, user, tmp_path)
    assert [addresses for addresses, _ in again.learnt] == [{"bob@partner.example"}]
    with LearningStore(tmp_path / "learning.db") as store:
        assert store.reputation("alice@partner.example", f"{user}-inbox")["sent_to"] is True
        mark = store.sent_mark(f"{user}-inbox")
    assert mark is not None and (mark.folder, mark.last_uid) == ("Sent", 2)


async def test_the_first_read_is_bounded(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    append(dovecot, user, "Sent", *(sent_mail(f"r{i}@partner.example") for i in range(SENT_BACKFILL + 5)))
    recorded = await learn_once(dovecot, user, tmp_path)
    learnt = set().union(*(addresses for addresses, _ in recorded.learnt))
    assert len(learnt) == SENT_BACKFILL and "r4@partner.example" not in learnt
    assert "r5@partner.example" in learnt and f"r{SENT_BACKFILL + 4}@partner.example" in learnt


async def test_a_missing_sent_folder_is_harmless(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gatewayd.imap.sent")
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap={"sent_folder": "No Such"}))
    await wait_for(lambda: idle(gw), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail("still watched"))
        (event,) = await reader.messages(1)
    assert event.json["data"]["subject"] == "still watched"
    assert gw.daemon.pool.health()[0]["reconnects"] == 0
    (record,) = caplog.records
    assert record.getMessage().startswith(f"{user}-inbox: not learning from sent mail: cannot read")
    assert "No Such" in record.getMessage()


async def test_a_refused_folder_is_logged_once_and_the_session_goes_on(
    dovecot: Dovecot, user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gatewayd.imap.sent")
    (mailbox,) = gateway_config(tmp_path, dovecot, [user], imap={"sent_folder": "No Such"}).mailboxes()
    with LearningStore(tmp_path / "learning.db") as store:
        # Checked as often as called (a watcher's checks are read_timeout_seconds apart).
        learner = SentLearner(replace(mailbox, imap=replace(mailbox.imap, read_timeout_seconds=0.001)), store)
        session = await ImapSession.open(mailbox.imap)
        try:
            for _ in range(3):  # a watcher's connect and probes
                await asyncio.sleep(0.01)
                await learner.check(session)
            assert (await session.select("INBOX")).folder == "INBOX"
        finally:
            await session.logout()
    assert len(caplog.records) == 1


async def test_learning_off_reads_nothing(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    append(dovecot, user, "Sent", sent_mail("grace@partner.example"))
    assert (await learn_once(dovecot, user, tmp_path, sent_folder=False)).learnt == []


async def test_a_failed_read_is_logged_once_and_tried_again(
    dovecot: Dovecot, user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gatewayd.imap.sent")
    append(dovecot, user, "Sent", sent_mail("heidi@partner.example"))
    (mailbox,) = gateway_config(tmp_path, dovecot, [user]).mailboxes()
    with socket.socket() as probe:  # a port nothing listens on: the read's own connection fails
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with LearningStore(tmp_path / "learning.db") as store:
        # Checked as often as called (a watcher's checks are read_timeout_seconds apart).
        unreachable = replace(mailbox.imap, port=closed, read_timeout_seconds=0.001)
        learner = SentLearner(replace(mailbox, imap=unreachable), store)
        session = await ImapSession.open(mailbox.imap)
        try:
            for _ in range(2):
                await asyncio.sleep(0.01)  # past the 1 ms between checks: each one is made
                await learner.check(session)
                await read_started(learner)
            assert store.reputation("heidi@partner.example", mailbox.id)["sent_to"] is False
            learner.mailbox = mailbox  # the server is reachable again
            await asyncio.sleep(0.01)
            await learner.check(session)
            await read_started(learner)
            assert store.reputation("heidi@partner.example", mailbox.id)["sent_to"] is True
        finally:
            await session.logout()
    (record,) = caplog.records
    assert "cannot learn from sent mail" in record.getMessage() and not record.exc_info


async def test_close_ends_a_read_that_outlives_one_cancellation(
    dovecot: Dovecot, user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's wait_for can swallow a cancellation that comes as its IMAP read ends, and the
    read goes on; injected here (no server can time it) as a read that ignores the first one."""
    (mailbox,) = gateway_config(tmp_path, dovecot, [user]).mailboxes()
    recorded = Recorded(LearningStore(tmp_path / "learning.db"))
    learner = SentLearner(mailbox, recorded)
    cancellations = 0

    async def stubborn_read(folder: str, uidnext: int | None, uidvalidity: int | None) -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations > 1:
                    raise

    monkeypatch.setattr(learner, "_learn", stubborn_read)
    learner._start("Sent", None, None)
    await asyncio.sleep(0)  # the read is running
    closing = asyncio.create_task(learner.close())
    try:
        done, _ = await asyncio.wait([closing], timeout=10)
        assert done, "close() still waits for a read that outlived its one cancellation"
        assert cancellations == 2
    finally:
        closing.cancel()
        recorded.store.close()
