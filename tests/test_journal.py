"""The rules journal's contract (gatewayd.store.journal.RuleJournal), against SQLite: a suite any
other backend must pass too."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.store.journal import (
    DONE,
    HELD,
    OPEN,
    PLACED,
    RETRY,
    SENDING,
    SENT,
    OutgoingMail,
    Reservation,
)
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.sqlite_journal import SqliteRuleJournal

# PRAGMA synchronous's values.
NORMAL, FULL = 1, 2


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SqliteRuleJournal]:
    store = SqliteRuleJournal(tmp_path / "events.db")
    await store.open()
    yield store
    await store.close()


def reply(
    step: int, to: str = "bob@example.org", period: float = 3600, sender: str | None = None
) -> OutgoingMail:
    limited = (to, sender) if sender else (to,)
    return OutgoingMail(
        step, "auto_reply", "me@gw.example", (to,), b"raw", f"<r{step}@gw>", Reservation(limited, period)
    )


async def begin(journal: SqliteRuleJournal, key: str, *mails: OutgoingMail, uid: int = 1):
    return await journal.begin(
        key,
        agent_id="agent",
        mailbox_id="box",
        folder="INBOX",
        uidvalidity=7,
        uid=uid,
        record={"plan": {"steps": []}},
        mails=mails,
    )


async def test_begin_is_idempotent_and_steps_accumulate(journal: SqliteRuleJournal) -> None:
    entry = await begin(journal, "k1")
    assert (entry.state, entry.steps, entry.result) == (OPEN, {}, None)
    await journal.step("k1", 0, {"state": "started"})
    await journal.step("k1", 0, {"state": "done", "outcome": "ok"})
    await journal.step("k1", 1, {"state": "started"})
    again = await begin(journal, "k1", reply(5))  # already journaled: nothing changes
    assert again.steps == {0: {"state": "done", "outcome": "ok"}, 1: {"state": "started"}}
    assert await journal.outbox_get("k1", 5) is None
    assert [e.key for e in await journal.open_entries("box", "INBOX")] == ["k1"]
    await journal.complete("k1", {"data": {"x": 1}, "drop": False})
    await journal.finish(["k1"])
    done = await journal.get("k1")
    assert done is not None and done.state == DONE and done.result == {"data": {"x": 1}, "drop": False}
    assert await journal.open_entries("box", "INBOX") == []


async def test_complete_journals_the_steps_it_is_given_in_the_same_transaction(
    journal: SqliteRuleJournal,
) -> None:
    await begin(journal, "k1")
    await journal.step("k1", 0, {"state": "started"})
    commits: list[str] = []
    await journal.trace(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    await journal.complete("k1", {"data": {"x": 1}, "drop": False}, {0: {"state": "done", "outcome": "ok"}})
    await journal.trace(None)
    assert commits == ["COMMIT"]
    entry = await journal.get("k1")
    assert entry is not None and entry.steps == {0: {"state": "done", "outcome": "ok"}}
    assert entry.result == {"data": {"x": 1}, "drop": False}


async def test_one_auto_reply_per_sender_per_period(journal: SqliteRuleJournal) -> None:
    await begin(journal, "k1", reply(0), uid=1)
    item = await journal.outbox_get("k1", 0)
    assert item is not None and item.state == HELD and item.recipients == ("bob@example.org",)
    # Same sender (any case), within the period: denied, and the step says why, atomically.
    second = await begin(journal, "k2", reply(0, "BOB@example.org"), uid=2)
    assert second.steps[0]["outcome"] == "skipped" and "within the period" in second.steps[0]["reason"]
    assert await journal.outbox_get("k2", 0) is None
    # Another sender is fine; a period of 0 never denies.
    await begin(journal, "k3", reply(0, "carol@example.org"), uid=3)
    assert await journal.outbox_get("k3", 0) is not None
    await begin(journal, "k4", reply(0, "bob@example.org", period=0), uid=4)
    assert await journal.outbox_get("k4", 0) is not None
    # A reply that failed for good gives the sender back (only the reservation it took).
    await journal.release_reservation("box", "k1")  # k4 holds it now: kept
    denied = await begin(journal, "k5", reply(0), uid=5)
    assert denied.steps[0]["outcome"] == "skipped"
    await journal.release_reservation("box", "k4")
    allowed = await begin(journal, "k6", reply(0), uid=6)
    assert allowed.steps == {} and await journal.outbox_get("k6", 0) is not None


async def test_a_reply_counts_against_the_sender_and_the_reply_target(journal: SqliteRuleJournal) -> None:
    alice = "alice@example.com"
    await begin(journal, "k1", reply(0, "srs0=ab12=alice@fwd.example", sender=alice), uid=1)
    # Another SRS/VERP Return-Path for the same sender: denied, naming the address already used.
    second = await begin(journal, "k2", reply(0, "srs0=cd34=alice@fwd.example", sender=alice), uid=2)
    assert second.steps[0]["outcome"] == "skipped" and alice in second.steps[0]["reason"]
    # Someone else whose replies go to that same target: denied too.
    third = await begin(journal, "k3", reply(0, "srs0=ab12=alice@fwd.example", sender="eve@x.org"), uid=3)
    assert third.steps[0]["outcome"] == "skipped"
    assert await journal.outbox_get("k2", 0) is None and await journal.outbox_get("k3", 0) is None
    # A denied reservation took nothing; a reply that failed for good gives back all it took.
    await journal.release_reservation("box", "k1")
    allowed = await begin(journal, "k4", reply(0, "srs0=ef56=alice@fwd.example", sender=alice), uid=4)
    assert allowed.steps == {} and await journal.outbox_get("k4", 0) is not None


async def test_outbox_retries_and_orphans(journal: SqliteRuleJournal) -> None:
    await begin(journal, "k1", reply(0), uid=1)
    await begin(journal, "k2", reply(0, "carol@example.org"), uid=2)
    first = await journal.outbox_get("k1", 0)
    second = await journal.outbox_get("k2", 0)
    assert first is not None and second is not None
    now = time.time()
    await journal.outbox_update(first.id, RETRY, attempts=1, next_attempt_at=now - 1, last_error="451")
    await journal.outbox_update(second.id, RETRY, attempts=1, next_attempt_at=now + 60)
    # The mail of a message still open (a stop cut its attempt short) is due all the same: its
    # delivery needs no watcher.
    assert [i.id for i in await journal.outbox_due(now)] == [first.id]
    assert await journal.outbox_next_due() == pytest.approx(now - 1)
    await journal.finish(["k1"])
    assert [i.id for i in await journal.outbox_due(now)] == [first.id]
    assert [i.id for i in await journal.outbox_due(now + 61)] == [first.id, second.id]
    # A `sending` item of a finished message was a background attempt cut short; of an open
    # message it belongs to the recovery of that message.
    await journal.outbox_update(first.id, SENDING, attempts=2)
    await begin(journal, "k3", reply(0, "dave@example.net"), uid=3)
    third = await journal.outbox_get("k3", 0)
    assert third is not None
    await journal.outbox_update(third.id, SENDING, attempts=1)
    assert [i.id for i in await journal.outbox_orphans()] == [first.id]
    await journal.outbox_update(first.id, SENT)
    assert (await journal.outbox_get("k1", 0)).state == SENT  # type: ignore[union-attr]


async def test_open_folders_are_those_with_open_entries(journal: SqliteRuleJournal) -> None:
    assert await journal.open_folders() == set()
    await begin(journal, "k1")
    await journal.place("other\x1fINBOX\x1f7\x1f1", "other", "INBOX", 7, 1)
    await journal.begin(
        "k2", agent_id="agent", mailbox_id="box", folder="Été", uidvalidity=7, uid=2, record={}
    )
    assert await journal.open_folders() == {("box", "INBOX"), ("box", "Été")}
    await journal.finish(["k1"])
    assert await journal.open_folders() == {("box", "Été")}


async def test_placed_never_overwrites_and_prune_keeps_open_entries(journal: SqliteRuleJournal) -> None:
    await begin(journal, "k1")
    await journal.place("k1", "box", "INBOX", 7, 1)
    assert (await journal.get("k1")).state == OPEN  # type: ignore[union-attr]
    await journal.place("box\x1fArchive\x1f9\x1f3", "box", "Archive", 9, 3)
    placed = await journal.get("box\x1fArchive\x1f9\x1f3")
    assert placed is not None and placed.state == PLACED
    assert await journal.prune(-1) == 1  # everything but the open entry
    assert await journal.get("k1") is not None and await journal.get("box\x1fArchive\x1f9\x1f3") is None


async def test_committed_records_survive_a_reopen(tmp_path: Path) -> None:
    first = SqliteRuleJournal(tmp_path / "events.db")
    await first.open()
    await begin(first, "k1", reply(0))
    await first.step("k1", 0, {"state": "started"})
    await first.close()
    second = SqliteRuleJournal(tmp_path / "events.db")
    await second.open()
    try:
        entry = await second.get("k1")
        assert entry is not None and entry.steps == {0: {"state": "started"}}
        assert (await second.outbox_get("k1", 0)).message == b"raw"  # type: ignore[union-attr]
    finally:
        await second.close()


async def test_its_commits_are_synced_to_disk_and_the_event_logs_are_not(tmp_path: Path) -> None:
    # An intent (a begin, a step's `started`, an outbox item's `sending`) must be on disk before
    # its action, across a power loss too: FULL syncs the WAL at every commit of the journal's
    # connection. The event log's appends, in the same file, stay NORMAL (no fsync per event).
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    journal = SqliteRuleJournal(tmp_path / "events.db")
    await journal.open()
    try:
        await begin(journal, "k1", reply(0))
        await journal.step("k1", 0, {"state": "started"})
        assert await journal._run(lambda conn: conn.execute("PRAGMA synchronous").fetchall()) == [(FULL,)]
        writer = store._writer
        assert writer._on_loop is not None
        assert writer._on_loop.execute("PRAGMA synchronous").fetchone() == (NORMAL,)
        on_thread = await writer.run(lambda: writer.thread_conn.execute("PRAGMA synchronous").fetchone())
        assert on_thread == (NORMAL,)
    finally:
        await journal.close()
        await store.close()


async def test_each_method_is_one_call_to_the_journals_thread(
    journal: SqliteRuleJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A round trip to a thread costs about as much CPU as a small transaction: a message's journal
    # traffic, one call per method, not one per statement (as aiosqlite made it, 19 for one action).
    calls: list[str] = []
    real = journal._call

    async def counted(function: Any, *args: Any) -> Any:
        calls.append(getattr(function, "__name__", "?"))
        return await real(function, *args)

    monkeypatch.setattr(journal, "_call", counted)
    entry = await begin(journal, "k1", reply(0))
    assert entry.state == OPEN and entry.record == {"plan": {"steps": []}}  # read back in the same call
    await journal.step("k1", 0, {"state": "started"})
    await journal.step("k1", 0, {"state": "done", "outcome": "ok"})
    await journal.complete("k1", {"data": {}, "drop": False})
    await journal.finish(["k1"])
    assert len(calls) == 5
    found = await journal.get("k1")
    assert found is not None and found.state == DONE and found.steps[0]["outcome"] == "ok"
    assert len(calls) == 6  # the entry and its steps, together


async def count_reads(journal: SqliteRuleJournal) -> list[str]:
    """The SELECTs the journal sends to SQLite from now on."""
    sent: list[str] = []
    await journal.trace(lambda sql: sent.append(sql) if sql.lstrip().upper().startswith("SELECT") else None)
    return sent


async def test_a_folder_without_open_entries_is_answered_without_a_query(
    journal: SqliteRuleJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = await count_reads(journal)
    assert await journal.open_entries("box", "INBOX") == []
    await begin(journal, "k1")
    await journal.place("box\x1fArchive\x1f9\x1f3", "box", "Archive", 9, 3)  # placed: never open
    reads.clear()
    assert await journal.open_entries("box", "Archive") == []
    assert await journal.open_entries("other", "INBOX") == []
    assert reads == []
    assert await journal.open_entries("other") == []
    assert reads == []
    assert [e.key for e in await journal.open_entries("box", "INBOX")] == ["k1"]
    assert reads  # the folder of an open entry is read
    assert [e.key for e in await journal.open_entries("box")] == ["k1"]  # every folder of the mailbox
    await journal.finish(["k1"])
    await begin(journal, "k1")  # journaled before and finished: begin changes nothing
    reads.clear()
    assert await journal.open_entries("box", "INBOX") == []
    assert reads == []


async def test_a_key_without_an_entry_is_answered_without_a_query(
    journal: SqliteRuleJournal, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """get() runs for every new message: a key never journaled nor placed costs no read; one that
    was (here, or by a process before: read at open) is read; a pruned one is forgotten."""
    placed = "box\x1fArchive\x1f9\x1f3"
    reads = await count_reads(journal)
    assert await journal.get("box\x1fINBOX\x1f7\x1f1") is None
    assert reads == []
    await begin(journal, "k1")
    await journal.finish(["k1"])
    await journal.place(placed, "box", "Archive", 9, 3)
    reads.clear()
    assert (await journal.get("k1")).state == DONE  # type: ignore[union-attr]
    assert (await journal.get(placed)).state == PLACED  # type: ignore[union-attr]
    assert reads
    again = SqliteRuleJournal(tmp_path / "events.db")  # the next process, on the same file
    await again.open()
    try:
        assert (await again.get(placed)).state == PLACED  # type: ignore[union-attr]
        assert await again.get("k1") is not None
    finally:
        await again.close()
    assert await journal.prune(-1) == 2
    reads.clear()
    assert await journal.get("k1") is None and await journal.get(placed) is None
    assert reads == []


async def test_a_failed_begin_costs_one_query_at_most(
    journal: SqliteRuleJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(journal, "_add_mail", broken)
    with pytest.raises(OSError):
        await begin(journal, "k1", reply(0))
    assert await journal.get("k1") is None  # rolled back
    reads = await count_reads(journal)
    assert await journal.open_entries("box", "INBOX") == []
    assert len(reads) == 1
    assert await journal.open_entries("box", "INBOX") == []
    assert len(reads) == 1


async def test_entries_a_previous_process_left_open_are_found(tmp_path: Path) -> None:
    first = SqliteRuleJournal(tmp_path / "events.db")
    await first.open()
    await begin(first, "k1")
    await begin(first, "k2", uid=2)
    await first.finish(["k2"])
    await first.close()  # without finishing k1: what a kill -9 between acting and storing leaves
    # And one written to the file by another process while no journal had it open.
    with sqlite3.connect(tmp_path / "events.db") as other:
        other.execute(
            "INSERT INTO rule_journal (key, agent_id, mailbox_id, folder, uidvalidity, uid, state, record,"
            " created_at, updated_at) VALUES ('k3', 'agent', 'box', 'Archive', 7, 3, ?, '{}', 0, 0)",
            (OPEN,),
        )
    other.close()
    second = SqliteRuleJournal(tmp_path / "events.db")
    await second.open()
    try:
        assert [e.key for e in await second.open_entries("box", "INBOX")] == ["k1"]
        assert [e.key for e in await second.open_entries("box", "Archive")] == ["k3"]
        await second.finish(["k1", "k3"])
        assert await second.open_entries("box", "INBOX") == []
        assert await second.open_entries("box", "Archive") == []
    finally:
        await second.close()
