"""The rules engine with a fake IMAP connection and the real journal: never twice, never lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import parse_config
from gatewayd.imap.act import Placement
from gatewayd.imap.session import ImapConnectionLost, ImapError
from gatewayd.message import FetchedMessage
from gatewayd.message.identity import Identity
from gatewayd.pipeline import Pipeline, StageSpec
from gatewayd.rules.engine import RulesStage
from gatewayd.rules.execute import ActionInterrupted, message_key
from gatewayd.rules.load import load_rules
from gatewayd.send.outbox import Outbox
from gatewayd.store.journal import DONE, PLACED, SENDING, UNKNOWN
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.sqlite_journal import SqliteRuleJournal
from tests.stalling_smtp import StallingSmtp

RAW = b"From: Bob <bob@example.org>\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nHi.\r\n"


class FakeActions:
    """MailActions that records every call; `present` and `located` say what the server holds."""

    folder = "INBOX"
    uidvalidity = 1

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.present_uids = {7}
        self.located: Placement | None = None
        self.fail: BaseException | None = None
        self.callbacks: list[Callable[[], Awaitable[None]]] = []

    @property
    def gmail(self) -> bool:
        return False

    def _do(self, *call: Any) -> None:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail

    async def store(self, uid: int, add: bool, flags: Sequence[str]) -> None:
        self._do("store", uid, add, tuple(flags))

    async def store_labels(self, uid: int, add: bool, labels: Sequence[str]) -> None:
        self._do("labels", uid, add, tuple(labels))

    async def copy(self, uid: int, folder: str, create: bool) -> Placement:
        self._do("copy", uid, folder)
        return Placement(folder, 9, 100)

    async def move(self, uid: int, folder: str, create: bool) -> Placement:
        self._do("move", uid, folder)
        self.present_uids.discard(uid)
        return Placement(folder, 9, 101)

    async def present(self, uid: int) -> bool:
        return uid in self.present_uids

    async def fetch(self, uid: int, max_bytes: int) -> FetchedMessage | None:
        return FetchedMessage("INBOX", uid, 1, RAW, len(RAW), (), None) if uid in self.present_uids else None

    async def locate(self, folder: str, identity: Identity) -> Placement | None:
        self.calls.append(("locate", folder, identity.message_id))
        return self.located

    def after_store(self, callback: Callable[[], Awaitable[None]]) -> None:
        self.callbacks.append(callback)

    async def settle(self) -> None:
        for callback in self.callbacks:
            await callback()
        self.callbacks.clear()


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    journal = SqliteRuleJournal(tmp_path / "events.db")
    store = SqliteEventStore(tmp_path / "events.db")
    await journal.open()
    await store.open()
    published: list[Any] = []
    yield {"journal": journal, "store": store, "published": published, "tmp": tmp_path}
    await store.close()
    await journal.close()


def setup(parts: dict[str, Any], then: list[Any], **mailbox: Any) -> tuple[Pipeline, Any]:
    box = {
        "id": "box",
        "imap": {"host": "localhost", "tls": "none", "username": "u", "password": "p"},
        **mailbox,
    }
    data = {"agents": [{"id": "a", "mailboxes": [box]}], "rules": [{"name": "r", "then": then}]}
    config = parse_config(data, env={}, base_dir=parts["tmp"])
    (mailbox_config,) = config.mailboxes()
    outbox = Outbox(parts["journal"], {"box": mailbox_config}, parts["store"], parts["published"].extend)
    stage = RulesStage(
        load_rules(config), parts["journal"], outbox, None, parts["store"], parts["published"].extend
    )
    return Pipeline([StageSpec(stage, 60)]), mailbox_config


def fetched(uid: int = 7, raw: bytes = RAW) -> FetchedMessage:
    return FetchedMessage("INBOX", uid, 1, raw, len(raw), (), None)


def from_(sender: str, uid: int, return_path: str | None = None) -> FetchedMessage:
    envelope = f"Return-Path: <{return_path}>\r\n" if return_path else ""
    raw = f"{envelope}From: {sender}\r\nSubject: hello\r\nMessage-ID: <m{uid}@example.org>\r\n\r\nHi.\r\n"
    return fetched(uid, raw.encode())


async def test_a_message_seen_again_is_never_acted_on_twice(parts: dict[str, Any]) -> None:
    pipeline, mailbox = setup(parts, [{"add_keywords": "seen"}, {"move": "Archive"}])
    actions = FakeActions()
    event = await pipeline.process(mailbox, fetched(), actions)
    assert actions.calls == [("store", 7, True, ("seen",)), ("move", 7, "Archive")]
    assert event is not None and (event.data["folder"], event.data["uid"]) == ("Archive", 101)
    # Re-fetched before the checkpoint moved (a reconnect): the same event, no action.
    again = FakeActions()
    repeat = await pipeline.process(mailbox, fetched(), again)
    assert repeat is not None and repeat.data["rules_applied"] == event.data["rules_applied"]
    assert (repeat.data["folder"], repeat.data["uid"]) == ("Archive", 101)
    assert again.calls == []
    # The copy that arrived in Archive is not announced again (and no rule runs on it).
    arrived = FetchedMessage("Archive", 101, 9, RAW, len(RAW), (), None)
    assert await pipeline.process(mailbox, arrived, FakeActions()) is None


async def test_the_last_steps_outcome_is_journaled_with_the_result(parts: dict[str, Any]) -> None:
    # Each commit of the journal is synced before the next thing happens, on the path of every
    # message a rule acts on: the last step's outcome and the rules' result share one.
    pipeline, mailbox = setup(parts, [{"add_keywords": "seen"}, {"move": "Archive"}])
    journal = parts["journal"]
    commits: list[str] = []
    await journal.trace(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    actions = FakeActions()
    event = await pipeline.process(mailbox, fetched(), actions)
    await actions.settle()
    await journal.trace(None)
    assert event is not None and (event.data["folder"], event.data["uid"]) == ("Archive", 101)
    # begin; the keyword: started, done; the move: started, the copy placed in Archive, done with
    # the result; then, once the event is stored, finish.
    assert len(commits) == 7
    entry = await journal.get(message_key("box", "INBOX", 1, 7))
    assert entry is not None and entry.state == DONE and entry.result is not None
    assert entry.steps == {
        0: {"state": "done", "outcome": "ok"},
        1: {"state": "done", "outcome": "ok", "folder": "Archive", "uid": 101, "uidvalidity": 9},
    }
    assert entry.result["data"]["uid"] == 101


async def test_recovery_resolves_an_interrupted_move_by_looking(parts: dict[str, Any]) -> None:
    pipeline, mailbox = setup(parts, [{"move": "Archive"}, {"tag": "t"}])
    journal = parts["journal"]
    broken = FakeActions()
    broken.fail = ImapConnectionLost("connection lost")
    with pytest.raises(ActionInterrupted):  # an ImapError: the watcher reconnects
        await pipeline.process(mailbox, fetched(), broken)
    (entry,) = await journal.open_entries("box", "INBOX")
    assert entry.steps == {0: {"state": "started"}}  # the outcome is not known: not guessed
    # After the reconnect the message is gone from INBOX: the move happened; find where.
    after = FakeActions()
    after.present_uids = set()
    after.located = Placement("Archive", 9, 55)
    await pipeline.recover(mailbox, after)
    assert [c[0] for c in after.calls] == ["locate"]
    (stored,) = parts["published"]
    assert (stored.data["folder"], stored.data["uid"], stored.data["recovered"]) == ("Archive", 55, True)
    assert stored.data["labels"] == ["t"] and await journal.open_entries("box", "INBOX") == []
    # Recovering again publishes nothing.
    await pipeline.recover(mailbox, FakeActions())
    assert len(parts["published"]) == 1


async def test_recovery_redoes_a_move_that_did_not_happen(parts: dict[str, Any]) -> None:
    pipeline, mailbox = setup(parts, [{"move": "Archive"}])
    broken = FakeActions()
    broken.fail = ImapConnectionLost("connection lost")
    with pytest.raises(ActionInterrupted):
        await pipeline.process(mailbox, fetched(), broken)
    after = FakeActions()  # the message is still in INBOX
    await pipeline.recover(mailbox, after)
    assert after.calls == [("move", 7, "Archive")]
    assert parts["published"][0].data["uid"] == 101


async def test_a_refused_action_is_an_error_in_the_event_not_a_lost_message(parts: dict[str, Any]) -> None:
    pipeline, mailbox = setup(parts, [{"move": "Nope"}, {"tag": "still"}])
    actions = FakeActions()
    actions.fail = ImapError("UID MOVE failed: NO [TRYCREATE] Mailbox doesn't exist: Nope")
    event = await pipeline.process(mailbox, fetched(), actions)
    assert event is not None
    (move, _tag) = event.data["rules_applied"][0]["actions"]
    assert move["outcome"] == "error" and "TRYCREATE" in move["error"]
    assert event.data["folder"] == "INBOX" and event.data["labels"] == ["still"]


async def test_an_interrupted_send_is_never_sent_again(parts: dict[str, Any]) -> None:
    smtp = {"host": "127.0.0.1", "port": 9, "tls": "none"}
    pipeline, mailbox = setup(parts, [{"auto_reply": "Thanks."}], smtp=smtp, address="me@gw.example")
    journal = parts["journal"]
    actions = FakeActions()
    stage = pipeline.stages[0].stage
    # Journal the plan as the stage does (no SMTP here), then make it look as a crash mid-send
    # leaves it: the step started, the mail `sending`, no result.
    stage._outbox = None  # type: ignore[attr-defined]
    await pipeline.process(mailbox, fetched(), actions)
    (entry,) = await journal.open_entries("box", "INBOX")
    item = await journal.outbox_get(entry.key, 0)
    assert item is not None
    await journal.step(entry.key, 0, {"state": "started"})
    await journal.outbox_update(item.id, SENDING, attempts=1)
    await journal._write([("UPDATE rule_journal SET result = NULL WHERE key = ?", (entry.key,))])
    await pipeline.recover(mailbox, FakeActions())
    assert (await journal.outbox_get(entry.key, 0)).state == UNKNOWN
    (event,) = parts["published"]
    reply = event.data["rules_applied"][0]["actions"][0]
    assert reply["outcome"] == "error" and "not sent again" in reply["error"]


class Trainer:
    def __init__(self) -> None:
        self.trained: list[tuple[str, str | None]] = []

    def train(self, message: Any, label: str, mailbox_id: str | None = None) -> bool:
        self.trained.append((label, mailbox_id))
        return True


async def test_report_trains_the_learning_once(parts: dict[str, Any]) -> None:
    pipeline, mailbox = setup(parts, [{"report": "spam"}, {"move": "Junk"}])
    trainer = Trainer()
    pipeline.stages[0].stage._learning = trainer  # type: ignore[attr-defined]
    event = await pipeline.process(mailbox, fetched(), FakeActions())
    assert event is not None and trainer.trained == [("spam", "box")]
    report = event.data["rules_applied"][0]["actions"][0]
    assert (report["outcome"], report["learned"]) == ("ok", True)
    await pipeline.process(mailbox, fetched(), FakeActions())
    assert len(trainer.trained) == 1


async def test_recovery_after_a_restart_finds_what_was_left_open_then_costs_no_query(
    parts: dict[str, Any],
) -> None:
    then = [{"move": "Archive"}, {"tag": "t"}]
    pipeline, mailbox = setup(parts, then)
    broken = FakeActions()
    broken.fail = ImapConnectionLost("connection lost")
    with pytest.raises(ActionInterrupted):
        await pipeline.process(mailbox, fetched(), broken)
    # The process ends there; the next one opens the same file with a journal of its own.
    await parts["journal"].close()
    journal = SqliteRuleJournal(parts["tmp"] / "events.db")
    await journal.open()
    try:
        parts["journal"] = journal
        pipeline, mailbox = setup(parts, then)
        after = FakeActions()  # still in INBOX: the move did not happen
        await pipeline.recover(mailbox, after)
        assert after.calls == [("move", 7, "Archive")]
        (stored,) = parts["published"]
        assert (stored.data["uid"], stored.data["recovered"], stored.data["labels"]) == (101, True, ["t"])
        # Nothing is open any more: the next syncs' recovery asks SQLite nothing.
        reads: list[str] = []
        await journal.trace(reads.append)
        await pipeline.recover(mailbox, FakeActions())
        await pipeline.recover(mailbox, FakeActions())
        assert reads == [] and len(parts["published"]) == 1
    finally:
        await journal.close()


async def test_a_server_that_stalls_at_the_data_holds_up_only_one_message(parts: dict[str, Any]) -> None:
    async with StallingSmtp(stall_after_data=True) as hung:
        smtp = {"host": "127.0.0.1", "port": hung.port, "tls": "none", "timeout_seconds": 1}
        pipeline, mailbox = setup(parts, [{"auto_reply": "Thanks."}], smtp=smtp, address="me@gw.example")
        first = await pipeline.process(mailbox, from_("bob@example.org", 7), FakeActions())
        second = await pipeline.process(mailbox, from_("carol@example.org", 8), FakeActions())
    assert first is not None and second is not None
    stalled = first.data["rules_applied"][0]["actions"][0]
    assert stalled["outcome"] == "error" and stalled["error"].startswith("data:")
    # It may have been delivered: the server counts as down, the next mail waits in the queue.
    queued = second.data["rules_applied"][0]["actions"][0]
    assert queued["outcome"] == "pending" and hung.connections == 1


async def test_one_auto_reply_per_sender_whatever_the_return_path(parts: dict[str, Any]) -> None:
    smtp = {"host": "127.0.0.1", "port": 9, "tls": "none"}
    pipeline, mailbox = setup(parts, [{"auto_reply": "Thanks."}], smtp=smtp, address="me@gw.example")
    pipeline.stages[0].stage._outbox = None  # type: ignore[attr-defined]  # composed and journaled only
    alice = "Alice <alice@example.com>"
    first = await pipeline.process(
        mailbox, from_(alice, 7, "bounce-1-alice=example.com@lists.example"), FakeActions()
    )
    second = await pipeline.process(
        mailbox, from_(alice, 8, "bounce-2-alice=example.com@lists.example"), FakeActions()
    )
    assert first is not None and second is not None
    assert first.data["rules_applied"][0]["actions"][0]["to"] == ["bounce-1-alice=example.com@lists.example"]
    skipped = second.data["rules_applied"][0]["actions"][0]
    assert skipped["outcome"] == "skipped" and "alice@example.com" in skipped["reason"]


class GatedMove(FakeActions):
    """A MOVE whose answer comes when the test says, as `outcome` (a placement or an error)."""

    def __init__(self, outcome: Placement | BaseException) -> None:
        super().__init__()
        self.landed = asyncio.Event()
        self.answer = asyncio.Event()
        self.outcome = outcome

    async def move(self, uid: int, folder: str, create: bool) -> Placement:
        self.landed.set()
        await self.answer.wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("outcome", "announced"),
    [
        (Placement("Archive", 9, 101), False),  # moved there: the mover's event is the one
        (Placement("Archive", 9, 55), True),  # moved, but that is another message
        (ImapError("NO [OVERQUOTA] no room"), True),  # the move failed: it is another message
        (ImapConnectionLost("connection lost"), False),  # unknown: the intent's recovery finds it
    ],
    ids=["moved", "moved-elsewhere", "failed", "interrupted"],
)
async def test_a_message_arriving_while_a_move_of_it_is_in_flight_waits_for_its_outcome(
    parts: dict[str, Any], outcome: Placement | BaseException, announced: bool
) -> None:
    pipeline, mailbox = setup(parts, [{"move": "Archive"}])
    mover = GatedMove(outcome)
    moving = asyncio.create_task(pipeline.process(mailbox, fetched(), mover))
    await mover.landed.wait()
    # The destination's watcher fetches the same message in Archive before the MOVE's answer.
    arrived = FetchedMessage("Archive", 101, 9, RAW, len(RAW), (), None)
    destination = asyncio.create_task(pipeline.process(mailbox, arrived, FakeActions()))
    await asyncio.sleep(0.05)
    assert not destination.done()  # it waits for the mover
    mover.answer.set()
    with contextlib.suppress(ActionInterrupted):
        await moving
    event = await destination
    assert (event is not None) is announced
    entry = await parts["journal"].get(message_key("box", "Archive", 9, 101))
    assert (entry is not None and entry.state == PLACED) is not announced


class ArchiveActions(FakeActions):
    folder = "Archive"
    uidvalidity = 9


async def test_the_destination_looks_for_an_interrupted_move_but_not_for_one_in_flight(
    parts: dict[str, Any],
) -> None:
    pipeline, mailbox = setup(parts, [{"move": "Archive"}])
    mover = GatedMove(ImapConnectionLost("connection lost"))
    moving = asyncio.create_task(pipeline.process(mailbox, fetched(), mover))
    await mover.landed.wait()
    # In flight: the intent is open, but the sync that fetches the message here waits for its
    # outcome; no second connection to look for it.
    in_flight = ArchiveActions()
    await pipeline.recover(mailbox, in_flight)
    assert in_flight.calls == []
    mover.answer.set()
    with pytest.raises(ActionInterrupted):
        await moving
    # Interrupted (as after a crash): the intent stays open, and Archive looks for the message.
    after = ArchiveActions()
    after.located = Placement("Archive", 9, 101)
    await pipeline.recover(mailbox, after)
    assert after.calls == [("locate", "Archive", "<m1@example.org>")]
    entry = await parts["journal"].get(message_key("box", "Archive", 9, 101))
    assert entry is not None and entry.state == PLACED
