"""Exactly once around moves, against the real Dovecot: a message a rule moves into another watched
folder is announced once, from the folder it was moved from, whatever the timing, with or without a
Message-ID, with or without COPYUID (UIDPLUS)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.config import MailboxConfig
from gatewayd.imap import act
from gatewayd.imap.act import MailActions, Placement, SessionActions
from gatewayd.message import ParsedMessage
from gatewayd.pipeline import StageContext, StageResult
from gatewayd.rules.engine import RulesStage
from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import TOKEN, append, gateway_config
from tests.integration.test_rules import Imap
from tests.sse import SseReader, mail, without_message_id
from tests.waiting import idle, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MOVE_RULES = [{"name": "archive", "if": {"folder": "INBOX"}, "then": [{"move": "Archive"}]}]
FOLDERS = {"folders": ["INBOX", "Archive"]}


@pytest.fixture(scope="module")
def dovecot_idle() -> Iterator[Dovecot]:
    """Without NOTIFY: one IDLE connection per folder, the mover and the destination's watcher side
    by side. (Its own temp dir, as in conftest: pytest makes its basetemp 0700 at every start.)"""
    server = Dovecot.create(extra_config="imap_capability = IMAP4rev1 IDLE UIDPLUS MOVE\n")
    server.start()
    yield server
    server.destroy()


def fresh_user(server: Dovecot) -> str:
    user = f"mover{uuid.uuid4().hex[:8]}"
    server.add_user(user)
    return user


@pytest.mark.parametrize("message_id", [True, False], ids=["message-id", "no-message-id"])
async def test_a_move_the_destination_sees_before_its_copyuid_is_announced_once(
    dovecot_idle: Dovecot,
    tmp_path: Path,
    start_gateway: Any,
    monkeypatch: pytest.MonkeyPatch,
    message_id: bool,
) -> None:
    # Archive's watcher has looked for moves into it (none) and lists its new mail when the MOVE
    # lands: the server tells it of the message before INBOX's watcher has read the MOVE's answer
    # and noted where it landed. (With a Message-ID the sync that follows that EXISTS found it by
    # its Message-ID already; without one it was announced twice.)
    server, user = dovecot_idle, fresh_user(dovecot_idle)
    armed, archive_listing, moved, archive_has_it = (asyncio.Event() for _ in range(4))
    recover, move, check = RulesStage.recover, SessionActions.move, RulesStage.check

    async def slow_recover(self: RulesStage, mailbox: MailboxConfig, actions: MailActions) -> None:
        await recover(self, mailbox, actions)
        if armed.is_set() and actions.folder == "Archive":
            archive_listing.set()
            await asyncio.wait_for(moved.wait(), 10)

    async def late_answer(self: SessionActions, uid: int, folder: str, create: bool) -> Placement:
        placement = await move(self, uid, folder, create)
        moved.set()
        with contextlib.suppress(TimeoutError):  # the fixed code waits for this answer instead
            await asyncio.wait_for(archive_has_it.wait(), 2)
        return placement

    async def seeing(self: RulesStage, message: ParsedMessage, context: StageContext) -> StageResult:
        if context.data["folder"] == "Archive" and context.data["subject"] == "file me":
            archive_has_it.set()
        return await check(self, message, context)

    monkeypatch.setattr(RulesStage, "recover", slow_recover)
    monkeypatch.setattr(SessionActions, "move", late_answer)
    monkeypatch.setattr(RulesStage, "check", seeing)
    gw = await start_gateway(gateway_config(tmp_path, server, [user], rules=MOVE_RULES, imap=FOLDERS))
    await wait_for(lambda: idle(gw), what="watchers idle")
    assert [w["notify"] for w in gw.daemon.pool.health()] == [False, False]
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        armed.set()
        await asyncio.to_thread(append, server, user, "Archive", mail("filed by hand"))
        await asyncio.wait_for(archive_listing.wait(), 10)
        moving = mail("file me")
        await server.deliver_async(user, moving if message_id else without_message_id(moving))
        events = await reader.messages(2)
        with pytest.raises(TimeoutError):
            events += await reader.messages(1, timeout=1.0)
    by_subject = {e.json["data"]["subject"]: e.json["data"] for e in events}
    assert sorted(by_subject) == ["file me", "filed by hand"]
    assert by_subject["file me"]["folder"] == "Archive"
    assert by_subject["file me"]["moved_from"]["folder"] == "INBOX"


@pytest.mark.parametrize("message_id", [True, False], ids=["message-id", "no-message-id"])
async def test_a_move_without_copyuid_into_a_watched_folder_is_announced_once_with_its_uid(
    dovecot: Dovecot,
    user: str,
    tmp_path: Path,
    start_gateway: Any,
    monkeypatch: pytest.MonkeyPatch,
    message_id: bool,
) -> None:
    # Dovecot answers with COPYUID even when told to hide UIDPLUS: drop it, as a server without
    # UIDPLUS answers. The Archive watcher used to announce the message as new mail.
    monkeypatch.setattr(act, "_placement", lambda folder, lines: Placement(folder, None, None))
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], rules=MOVE_RULES, imap=FOLDERS))
    await wait_for(lambda: idle(gw), what="watchers idle")
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        async with aiohttp.ClientSession() as session:
            params = {"types": "message.*"}
            reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params=params))
            moving = mail("file me")
            await dovecot.deliver_async(user, moving if message_id else without_message_id(moving))
            (event,) = await reader.messages(1)
            (archived,) = await asyncio.to_thread(imap.uids, "Archive")
            data = event.json["data"]
            assert (data["folder"], data["uid"]) == ("Archive", archived)
            assert data["moved_from"]["folder"] == "INBOX"
            with pytest.raises(TimeoutError):
                await reader.messages(1, timeout=1.5)
    finally:
        await asyncio.to_thread(imap.close)


def logins(server: Dovecot, user: str) -> int:
    """IMAP connections the user opened so far, as Dovecot logged them (short-lived ones too)."""
    log = (server.root / "dovecot.log").read_text(errors="replace")
    return log.count(f"Login: user=<{user}>")


async def test_a_move_in_flight_costs_the_destination_no_connection_of_its_own(
    dovecot_idle: Dovecot, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Archive's watcher syncs (and recovers) while INBOX's MOVE into it awaits its answer: the move's
    # intent is open, but it is in flight, not interrupted. It used to log in a second time to look
    # for the message; the sync waits for the move's outcome instead.
    server, user = dovecot_idle, fresh_user(dovecot_idle)
    moved, archive_recovered = asyncio.Event(), asyncio.Event()
    recover, move = RulesStage.recover, SessionActions.move

    async def watched_recover(self: RulesStage, mailbox: MailboxConfig, actions: MailActions) -> None:
        await recover(self, mailbox, actions)
        if moved.is_set() and actions.folder == "Archive":
            archive_recovered.set()

    async def late_answer(self: SessionActions, uid: int, folder: str, create: bool) -> Placement:
        placement = await move(self, uid, folder, create)
        moved.set()
        await asyncio.wait_for(archive_recovered.wait(), 10)
        return placement

    monkeypatch.setattr(RulesStage, "recover", watched_recover)
    monkeypatch.setattr(SessionActions, "move", late_answer)
    imap = {**FOLDERS, "sent_folder": None}
    gw = await start_gateway(gateway_config(tmp_path, server, [user], rules=MOVE_RULES, imap=imap))
    await wait_for(lambda: idle(gw), what="watchers idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        before = logins(server, user)
        await server.deliver_async(user, mail("file me"))
        (event,) = await reader.messages(1)
        with pytest.raises(TimeoutError):
            await reader.messages(1, timeout=1.0)
    assert archive_recovered.is_set()
    assert (event.json["data"]["folder"], event.json["data"]["moved_from"]["folder"]) == ("Archive", "INBOX")
    assert before > 0 and logins(server, user) == before
