"""Contract suite for `EventStore` backends, plus a few SQLite-specific checks at the end.

Every contract test takes the `store` fixture, which is parametrized by backend name so a
PostgreSQL backend only has to add itself to `BACKENDS` (and to `_backdate`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import gatewayd.store.sqlite as sqlite_backend
import gatewayd.store.sqlite_schema as sqlite_schema
from gatewayd.events import Event, NewEvent, compact_json, parse_rfc3339, rfc3339
from gatewayd.store import (
    Checkpoint,
    EventQuery,
    EventStore,
    FolderHistory,
    InvalidEventId,
    StoreUnavailable,
    matches,
)
from gatewayd.store.instance_lock import InstanceLock, StoreInUse
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.tokens import SqliteTokenStore
from tests.waiting import hold_loop_until

BACKENDS = ["sqlite"]

MakeStore = Callable[[], Awaitable[EventStore]]


@pytest.fixture(params=BACKENDS)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Opens a store on the same location each call (to test reopening); closes all after."""
    opened: list[EventStore] = []

    async def make() -> EventStore:
        if request.param == "sqlite":
            store: EventStore = SqliteEventStore(tmp_path / "state" / "events.db")
        else:  # pragma: no cover - a new backend must add itself here
            raise AssertionError(request.param)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> EventStore:
    return await make_store()


def _backdate(store: EventStore, seqs: list[int], created_at: str) -> None:
    """Rewrite created_at behind the store's back (there is no API to do it, on purpose)."""
    if isinstance(store, SqliteEventStore):
        with sqlite3.connect(store.path) as db:
            db.executemany("UPDATE events SET created_at = ? WHERE seq = ?", [(created_at, s) for s in seqs])
        db.close()
        return
    raise AssertionError(f"no backdate helper for {type(store).__name__}")  # pragma: no cover


def ev(
    agent: str = "a1",
    *,
    type_: str = "message.received",
    mailbox: str | None = "m1",
    key: str | None = None,
    sender: str | None = None,
    **data: Any,
) -> NewEvent:
    return NewEvent(type_, agent, mailbox, dict(data), dedupe_key=key, from_address=sender)


ALL = EventQuery(agent_ids=("a1", "a2", "a3"))


async def read_all(store: EventStore, query: EventQuery = ALL) -> list[Event]:
    return await store.read_after(query, 0, 10_000)


# -- append, ids, ordering ---------------------------------------------------------------------


async def test_append_assigns_increasing_ids_and_round_trips(store: EventStore) -> None:
    before = rfc3339()
    stored = await store.append([ev(n=1), ev("a2", n=2, text="héllo ✓"), ev(mailbox=None, n=3)])
    after = rfc3339()

    assert [e.data for e in stored] == [{"n": 1}, {"n": 2, "text": "héllo ✓"}, {"n": 3}]
    seqs = [e.seq for e in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    for event in stored:
        assert event.id.isascii() and store.seq_of(event.id) == event.seq
        assert before <= event.created_at <= after
        assert parse_rfc3339(event.created_at).tzinfo is not None
    assert stored[2].mailbox_id is None
    # What is read back is exactly what append reported.
    assert await read_all(store) == stored

    more = await store.append([ev(n=4)])
    assert more[0].seq > seqs[-1]
    assert await store.last_seq() == more[0].seq


async def test_a_lone_surrogate_in_event_data_is_stored_as_a_replacement_character(store: EventStore) -> None:
    # No UTF-8 can carry one; whatever put it there, the event must still be stored.
    data: dict[str, Any] = {"subject": "a\ud800b", "odd\udfff": ["\udc80"]}
    [stored] = await store.append([NewEvent("message.received", "a1", "m1", data)])
    [read] = await read_all(store)
    sanitized = {"subject": "a\ufffdb", "odd\ufffd": ["\ufffd"]}
    assert read.data == sanitized
    assert stored.sse_frame == read.sse_frame  # what live subscribers get is what replay gives


async def test_append_nothing_returns_empty(store: EventStore) -> None:
    assert await store.append([]) == []
    assert await store.last_seq() == 0
    assert await read_all(store) == []


async def test_dedupe_across_appends(store: EventStore) -> None:
    first = await store.append([ev(key="k1", n=1)])
    again = await store.append([ev(key="k1", n=2), ev(key="k2", n=3)])

    assert len(first) == 1
    assert [e.data for e in again] == [{"n": 3}]  # only the new key is reported
    assert [e.data for e in await read_all(store)] == [{"n": 1}, {"n": 3}]


async def test_dedupe_within_one_batch(store: EventStore) -> None:
    stored = await store.append([ev(key="k", n=1), ev(key="k", n=2), ev(n=3), ev(n=4)])

    assert [e.data for e in stored] == [{"n": 1}, {"n": 3}, {"n": 4}]
    assert await read_all(store) == stored
    # Events without a key are never deduplicated.
    assert len(await store.append([ev(n=3)])) == 1


async def test_skipped_duplicates_use_up_no_seq(store: EventStore) -> None:
    [first] = await store.append([ev(key="k")])
    assert await store.append([ev(key="k"), ev(key="k")]) == []
    assert await store.last_seq() == first.seq  # a skipped event was never issued a seq
    [second] = await store.append([ev(key="k"), ev(key="other")])
    assert second.seq == first.seq + 1


async def test_dedupe_key_is_global_not_per_agent(store: EventStore) -> None:
    await store.append([ev("a1", key="same")])
    assert await store.append([ev("a2", key="same")]) == []


# -- checkpoints and atomicity ---------------------------------------------------------------


async def test_checkpoint_none_then_value_then_updated(store: EventStore) -> None:
    assert await store.get_checkpoint("m1", "INBOX") is None

    # An empty batch still writes the checkpoint.
    assert await store.append([], Checkpoint("m1", "INBOX", 7, 10)) == []
    assert await store.get_checkpoint("m1", "INBOX") == Checkpoint("m1", "INBOX", 7, 10)

    await store.append([ev()], Checkpoint("m1", "INBOX", 8, 3))
    assert await store.get_checkpoint("m1", "INBOX") == Checkpoint("m1", "INBOX", 8, 3)
    # Keyed by (mailbox, folder): other folders and mailboxes are independent.
    assert await store.get_checkpoint("m1", "Sent") is None
    assert await store.get_checkpoint("m2", "INBOX") is None


@pytest.mark.parametrize("failing", ["data", "event", "checkpoint"])
async def test_failed_append_stores_nothing(store: EventStore, failing: str) -> None:
    await store.append([ev(n=0)], Checkpoint("m1", "INBOX", 1, 1))
    batch = [ev(key="k1", n=1, message_id="<1@x>", folder="INBOX"), ev(n=2)]
    checkpoint = Checkpoint("m1", "INBOX", 1, 5)
    if failing == "data":
        batch.append(ev(n=3, bad=object()))  # not JSON-serializable
    elif failing == "event":
        # Fails inside the transaction, after the first events were inserted.
        batch.append(NewEvent("message.received", object(), "m1", {}))  # type: ignore[arg-type]
    else:
        # Fails on the very last statement, after every event was inserted.
        checkpoint = Checkpoint("m1", "INBOX", object(), 5)  # type: ignore[arg-type]

    with pytest.raises((TypeError, ValueError, sqlite3.Error)):
        await store.append(batch, checkpoint)

    assert [e.data for e in await read_all(store)] == [{"n": 0}]
    assert await store.get_checkpoint("m1", "INBOX") == Checkpoint("m1", "INBOX", 1, 1)
    assert await store.known_message_ids("m1", "INBOX", ["<1@x>"]) == set()
    # The store is still usable, and the dedupe key of the failed batch was not consumed.
    retried = await store.append(batch[:2], Checkpoint("m1", "INBOX", 1, 5))
    assert [e.data for e in retried] == [{"n": 1, "message_id": "<1@x>", "folder": "INBOX"}, {"n": 2}]
    assert await store.get_checkpoint("m1", "INBOX") == Checkpoint("m1", "INBOX", 1, 5)


# -- known Message-IDs -------------------------------------------------------------------------


async def test_known_message_ids(store: EventStore) -> None:
    await store.append(
        [
            ev(key="k1", message_id="<a@x>", folder="INBOX"),
            ev(key="k2", message_id="<b@x>", folder="Archive"),
            ev(key="k3", mailbox="m2", message_id="<c@x>", folder="INBOX"),
            ev(message_id="<nokey@x>", folder="INBOX"),  # no dedupe key: not an announcement
            ev(key="k5", message_id="", folder="INBOX"),  # empty Message-ID: ignored
            ev(key="k6", message_id=42, folder="INBOX"),  # not a string: ignored
        ]
    )
    asked = ["<a@x>", "<b@x>", "<c@x>", "<nokey@x>", "", "<unknown@x>"]
    assert await store.known_message_ids("m1", "INBOX", asked) == {"<a@x>"}
    assert await store.known_message_ids("m1", "Archive", asked) == {"<b@x>"}
    assert await store.known_message_ids("m2", "INBOX", asked) == {"<c@x>"}
    assert await store.known_message_ids("m1", "INBOX", []) == set()


async def test_known_message_ids_folder_from_checkpoint(store: EventStore) -> None:
    # Without data["folder"], the checkpoint says which folder the batch came from.
    await store.append([ev(key="k1", message_id="<a@x>")], Checkpoint("m1", "Lists", 3, 9))
    # A checkpoint of another mailbox does not apply.
    await store.append([ev(key="k2", message_id="<b@x>")], Checkpoint("m9", "INBOX", 3, 9))

    assert await store.known_message_ids("m1", "Lists", ["<a@x>", "<b@x>"]) == {"<a@x>"}
    assert await store.known_message_ids("m1", "INBOX", ["<a@x>", "<b@x>"]) == set()


async def test_known_message_ids_follow_the_newest_announcement(store: EventStore) -> None:
    # The same message announced twice (say, re-delivered under a new key): pruning the older
    # event must not forget it while the newer one is stored; pruning both does.
    await store.append([ev(key="k1", message_id="<a@x>", folder="INBOX")])
    await store.append([ev(key="k2", message_id="<a@x>", folder="INBOX")])
    assert await store.prune(None, 1) == 1
    assert await store.known_message_ids("m1", "INBOX", ["<a@x>"]) == {"<a@x>"}
    assert await store.prune(None, 0) == 1
    assert await store.known_message_ids("m1", "INBOX", ["<a@x>"]) == set()


async def test_folder_history(store: EventStore) -> None:
    nothing = FolderHistory(newest_arrival=None, first_watched=None)
    assert await store.folder_history("m1", "INBOX", 7) == nothing
    [first, _] = await store.append(
        [
            ev(type_="mailbox.connected", folder="INBOX", uidvalidity=5),
            ev(type_="mailbox.connected", folder="INBOX", uidvalidity=5),  # a reconnect: not the first
        ]
    )
    watched = parse_rfc3339(first.created_at)
    assert await store.folder_history("m1", "INBOX", 7) == FolderHistory(None, watched)
    await store.append([ev(key="k1", folder="INBOX", uidvalidity=5, received_at="2026-11-21T10:00:00Z")])
    await store.append(
        [
            ev(key="k0", folder="INBOX", uidvalidity=5, received_at=None),  # no arrival known
            ev(type_="mailbox.disconnected", folder="INBOX", reason="lost"),  # not a sync
            ev(
                key="k2", folder="Archive", uidvalidity=5, received_at="2026-11-21T11:00:00Z"
            ),  # another folder
            ev(key="k3", mailbox="m2", folder="INBOX", uidvalidity=5, received_at="2026-11-21T11:00:00Z"),
        ]
    )
    arrival = parse_rfc3339("2026-11-21T10:00:00Z")
    assert await store.folder_history("m1", "INBOX", 7) == FolderHistory(arrival, watched)
    # Under the UIDVALIDITY asked about: not the folder's past.
    unauthenticated = "message.received.unauthenticated"
    later = "2026-11-21T12:00:00Z"
    await store.append(
        [ev(key="k4", type_=unauthenticated, folder="INBOX", uidvalidity=7, received_at=later)]
    )
    assert await store.folder_history("m1", "INBOX", 7) == FolderHistory(arrival, watched)
    assert (await store.folder_history("m1", "INBOX", 5)).newest_arrival == parse_rfc3339(later)
    assert await store.folder_history("m1", "Lists", 7) == nothing


async def test_known_message_ids_many(store: EventStore) -> None:
    ids = [f"<{i}@x>" for i in range(1200)]
    await store.append([ev(key=m, message_id=m, folder="INBOX") for m in ids[::2]])
    assert await store.known_message_ids("m1", "INBOX", ids) == set(ids[::2])


# -- filters -----------------------------------------------------------------------------------


@pytest.fixture
async def seeded(store: EventStore) -> list[Event]:
    return await store.append(
        [
            ev("a1", mailbox="m1", type_="message.received", sender="bob@example.org"),  # 0
            ev("a1", mailbox="m2", type_="message.received.unauthenticated", sender="eve@evil.test"),  # 1
            ev("a2", mailbox="m1", type_="message.received", sender="alice@example.org"),  # 2
            ev("a1", mailbox="m1", type_="mailbox.connected"),  # 3
            ev("a2", mailbox=None, type_="closing"),  # 4
            ev("a1", mailbox="m2", type_="message.received", sender="carol@sub.example.org"),  # 5
            ev("a3", mailbox="m3", type_="message.received", sender="bob@example.org"),  # 6
            ev("a1", mailbox="m1", type_="odd?type"),  # 7
            ev("a1", mailbox="m1", type_="oddXtype"),  # 8
            ev("a1", mailbox="m1", type_="odd[x]type"),  # 9
            ev("a1", mailbox="m1", type_="message", sender="bob@example.org.evil"),  # 10
            ev("a1", mailbox="m1", type_="message.received", sender="Dave@Example.ORG"),  # 11
        ]
    )


async def picked(store: EventStore, seeded: list[Event], **query: Any) -> list[int]:
    """Indexes (into `seeded`) of what read_after returns.

    Also checks that read_before agrees, and that the live filter `matches` (which expects the
    caller to lower-case from_filter) picks the same events, so replay and live never differ.
    """
    q = EventQuery(**query)
    forward = await store.read_after(q, 0, 100)
    backward = await store.read_before(q, None, 100)
    assert backward == forward[::-1]
    live = replace(q, from_filter=q.from_filter.lower()) if q.from_filter else q
    assert [e for e in seeded if matches(live, e)] == forward
    index = {e.seq: i for i, e in enumerate(seeded)}
    return [index[e.seq] for e in forward]


async def test_filter_agents_isolated(store: EventStore, seeded: list[Event]) -> None:
    assert await picked(store, seeded, agent_ids=("a2",)) == [2, 4]
    assert await picked(store, seeded, agent_ids=("a3",)) == [6]
    assert await picked(store, seeded, agent_ids=("a2", "a3")) == [2, 4, 6]
    assert await picked(store, seeded, agent_ids=("a3", "a2", "a3")) == [2, 4, 6]
    assert await picked(store, seeded, agent_ids=("nobody",)) == []
    many = ("x1", "a3", "x2", "a2", "x3", "x4", "x5")
    assert await picked(store, seeded, agent_ids=many) == [2, 4, 6]
    # No agents means nothing at all, never "everything".
    assert await picked(store, seeded, agent_ids=()) == []


async def test_filter_mailbox(store: EventStore, seeded: list[Event]) -> None:
    assert await picked(store, seeded, agent_ids=("a1", "a2"), mailbox_ids=("m2",)) == [1, 5]
    assert await picked(store, seeded, agent_ids=("a1", "a2", "a3"), mailbox_ids=("m2", "m3")) == [1, 5, 6]
    # An agent cannot reach another agent's mailbox through the mailbox filter.
    assert await picked(store, seeded, agent_ids=("a2",), mailbox_ids=("m2", "m3")) == []


async def test_filter_type_exact_and_globs(store: EventStore, seeded: list[Event]) -> None:
    agents = ("a1", "a2")
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("message.received",)) == [0, 2, 5, 11]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("message.*",)) == [0, 1, 2, 5, 11]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("message*",)) == [0, 1, 2, 5, 10, 11]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("*.unauthenticated",)) == [1]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("mailbox.*", "closing")) == [3, 4]
    assert await picked(store, seeded, agent_ids=("a2",), type_patterns=("*",)) == [2, 4]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("message.receive",)) == []


async def test_filter_type_only_star_is_special(store: EventStore, seeded: list[Event]) -> None:
    agents = ("a1",)
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("odd?type",)) == [7]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("odd?*",)) == [7]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("odd[x]type",)) == [9]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("odd[x]*",)) == [9]
    assert await picked(store, seeded, agent_ids=agents, type_patterns=("odd*type",)) == [7, 8, 9]


async def test_filter_from_address_and_domain(store: EventStore, seeded: list[Event]) -> None:
    agents = ("a1", "a2", "a3")
    assert await picked(store, seeded, agent_ids=agents, from_filter="bob@example.org") == [0, 6]
    # Stored lower-cased, so mixed-case senders and filters match.
    assert await picked(store, seeded, agent_ids=agents, from_filter="DAVE@example.org") == [11]
    # A domain matches exactly that domain: no subdomains, no lookalike suffixes.
    assert await picked(store, seeded, agent_ids=agents, from_filter="@example.org") == [0, 2, 6, 11]
    assert await picked(store, seeded, agent_ids=agents, from_filter="@EXAMPLE.org") == [0, 2, 6, 11]
    assert await picked(store, seeded, agent_ids=agents, from_filter="@sub.example.org") == [5]
    assert await picked(store, seeded, agent_ids=agents, from_filter="@nowhere.test") == []
    assert await picked(store, seeded, agent_ids=agents, from_filter="bob@example") == []


async def test_filters_combine(store: EventStore, seeded: list[Event]) -> None:
    assert await picked(
        store,
        seeded,
        agent_ids=("a1", "a3"),
        mailbox_ids=("m1", "m3"),
        type_patterns=("message.*",),
        from_filter="@example.org",
    ) == [0, 6, 11]
    assert await picked(
        store,
        seeded,
        agent_ids=("a1",),
        mailbox_ids=("m1",),
        type_patterns=("message.*",),
        from_filter="bob@example.org",
    ) == [0]
    assert (
        await picked(store, seeded, agent_ids=("a2",), type_patterns=("message.*",), from_filter="@evil.test")
        == []
    )
    many = ("a1", "a2", "a3", "x1", "x2", "x3")
    assert await picked(
        store,
        seeded,
        agent_ids=many,
        mailbox_ids=("m1", "m3"),
        type_patterns=("message.*",),
        from_filter="@example.org",
    ) == [0, 2, 6, 11]


@pytest.fixture
async def scored(store: EventStore) -> list[Event]:
    def spam(score: Any, agent: str = "a1") -> NewEvent:
        return ev(agent, spam={"verdict": "ham", "score": score})

    return await store.append(
        [
            spam(0),  # 0
            spam(4.5),  # 1
            spam(5),  # 2: an int
            spam(12.25, "a2"),  # 3
            spam(-3.5),  # 4
            ev("a1"),  # 5: no spam data at all
            ev("a1", spam=None),  # 6: the stage failed
            spam(None),  # 7: no score
            spam("9"),  # 8: a string is not a score
            spam(True),  # 9: nor is a boolean
            ev("a1", spam=[1, 2]),  # 10: nor is anything that is not a mapping
            spam(5.000001),  # 11
        ]
    )


async def test_filter_spam_bounds_are_inclusive(store: EventStore, scored: list[Event]) -> None:
    agents = ("a1", "a2")
    assert await picked(store, scored, agent_ids=agents, min_spam=5) == [2, 3, 11]
    assert await picked(store, scored, agent_ids=agents, max_spam=5) == [0, 1, 2, 4]
    assert await picked(store, scored, agent_ids=agents, min_spam=4.5, max_spam=5) == [1, 2]
    assert await picked(store, scored, agent_ids=agents, min_spam=-1e6) == [0, 1, 2, 3, 4, 11]
    assert await picked(store, scored, agent_ids=agents, min_spam=6, max_spam=5) == []
    # The bounds never widen what the agents restrict.
    assert await picked(store, scored, agent_ids=("a2",), max_spam=100) == [3]
    many = ("a1", "a2", "x1", "x2", "x3")
    assert await picked(store, scored, agent_ids=many, min_spam=0, max_spam=4.5) == [0, 1]


async def test_filter_spam_without_a_numeric_score_never_passes_a_bound(
    store: EventStore, scored: list[Event]
) -> None:
    unscored = [5, 6, 7, 8, 9, 10]
    everything = await picked(store, scored, agent_ids=("a1", "a2"))
    assert set(unscored) <= set(everything)
    for bounds in ({"min_spam": -1e6}, {"max_spam": 1e6}, {"min_spam": -1e6, "max_spam": 1e6}):
        assert not set(unscored) & set(await picked(store, scored, agent_ids=("a1", "a2"), **bounds))


async def test_filter_spam_combines_with_the_others(store: EventStore) -> None:
    stored = await store.append(
        [
            ev("a1", mailbox="m1", sender="bob@example.org", spam={"score": 11}),
            ev("a1", mailbox="m2", sender="bob@example.org", spam={"score": 11}),
            ev("a1", mailbox="m1", sender="eve@evil.test", spam={"score": 11}),
            ev("a1", mailbox="m1", type_="message.received.unauthenticated", spam={"score": 11}),
            ev("a1", mailbox="m1", sender="bob@example.org", spam={"score": 1}),
        ]
    )
    assert await picked(
        store,
        stored,
        agent_ids=("a1",),
        mailbox_ids=("m1",),
        type_patterns=("message.received",),
        from_filter="@example.org",
        min_spam=10,
    ) == [0]


# -- paging ------------------------------------------------------------------------------------


async def test_read_after_pages(store: EventStore) -> None:
    stored = await store.append([ev(f"a{1 + i % 3}", n=i) for i in range(25)])
    many = EventQuery(tuple(f"a{i}" for i in range(1, 9)))  # also past the per-agent plan
    for query in (EventQuery(("a1",)), EventQuery(("a1", "a3")), ALL, many):
        expected = [e for e in stored if e.agent_id in query.agent_ids]
        got: list[Event] = []
        after = 0
        while page := await store.read_after(query, after, 4):
            assert len(page) <= 4
            got.extend(page)
            after = page[-1].seq
        assert got == expected
    assert await store.read_after(ALL, stored[-1].seq, 10) == []
    assert await store.read_after(ALL, 0, 0) == []
    assert await store.read_after(ALL, stored[9].seq, 3) == stored[10:13]


async def test_read_before_pages(store: EventStore) -> None:
    stored = await store.append([ev(f"a{1 + i % 2}", n=i) for i in range(13)])
    newest_first = stored[::-1]
    assert await store.read_before(ALL, None, 5) == newest_first[:5]

    got: list[Event] = []
    before: int | None = None
    while page := await store.read_before(ALL, before, 5):
        got.extend(page)
        before = page[-1].seq
    assert got == newest_first

    only_a2 = await store.read_before(EventQuery(("a2",)), stored[7].seq, 2)
    assert only_a2 == [stored[5], stored[3]]
    assert await store.read_before(ALL, stored[0].seq, 5) == []
    assert await store.read_before(ALL, None, 0) == []


# -- time and retention ------------------------------------------------------------------------


async def test_seq_at(store: EventStore) -> None:
    assert await store.seq_at(rfc3339()) == 0
    first = await store.append([ev(n=1), ev(n=2)])
    await asyncio.sleep(0.003)  # created_at has millisecond precision
    second = await store.append([ev(n=3)])
    assert first[0].created_at < second[0].created_at

    boundary = second[0].created_at
    assert await store.seq_at(boundary) == first[-1].seq  # strictly before
    plus_two = parse_rfc3339(boundary).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert plus_two.endswith("+02:00")
    assert await store.seq_at(plus_two) == first[-1].seq
    assert await store.seq_at(boundary.replace("Z", "z")) == first[-1].seq
    assert await store.seq_at(first[0].created_at) == 0
    assert await store.seq_at("2000-01-01T02:00:00+02:00") == 0
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert await store.seq_at(future) == second[0].seq
    with pytest.raises(ValueError):
        await store.seq_at("yesterday")
    with pytest.raises(ValueError):
        await store.seq_at("2024-01-01T00:00:00")  # no offset


async def test_first_and_last_seq_across_pruning(store: EventStore) -> None:
    assert (await store.first_seq(), await store.last_seq()) == (0, 0)
    stored = await store.append([ev(n=i) for i in range(5)])
    seqs = [e.seq for e in stored]
    assert (await store.first_seq(), await store.last_seq()) == (seqs[0], seqs[-1])

    assert await store.prune(None, 2) == 3
    assert (await store.first_seq(), await store.last_seq()) == (seqs[3], seqs[-1])
    assert [e.seq for e in await read_all(store)] == seqs[3:]

    # Everything pruned: last_seq is remembered and first_seq points past it.
    assert await store.prune(None, 0) == 2
    assert await read_all(store) == []
    assert await store.last_seq() == seqs[-1]
    assert await store.first_seq() == seqs[-1] + 1

    # Seqs are never reused, not even after the newest rows were deleted.
    new = await store.append([ev(n=99)])
    assert new[0].seq > seqs[-1]
    assert (await store.first_seq(), await store.last_seq()) == (new[0].seq, new[0].seq)


async def test_skipped_seqs_are_never_issued_nor_taken_for_pruned_ones(store: EventStore) -> None:
    stored = await store.append([ev(n=i) for i in range(3)])
    skipped = await store.skip_lost_seqs()
    assert skipped > 0 and await store.last_seq() >= stored[-1].seq + skipped
    [new] = await store.append([ev(n=3)])
    assert new.seq > stored[-1].seq + skipped
    assert await store.pruned_through() == 0
    # Retention takes everything before the skip: a resume point at its last event lost nothing.
    assert await store.prune(None, 1) == 3
    assert await store.pruned_through() == stored[-1].seq
    assert await store.first_seq() == new.seq


async def test_prune_by_count(store: EventStore) -> None:
    stored = await store.append([ev(n=i) for i in range(10)])
    assert await store.prune(None, None) == 0
    assert await store.prune(None, 100) == 0
    assert await store.prune(None, 4) == 6
    assert await read_all(store) == stored[6:]
    assert await store.prune(None, 4) == 0
    with pytest.raises(ValueError):
        await store.prune(None, -1)


async def test_prune_by_age(store: EventStore) -> None:
    stored = await store.append(
        [ev(key=f"k{i}", message_id=f"<{i}@x>", folder="INBOX", n=i) for i in range(6)]
    )
    old = rfc3339(datetime.now(UTC) - timedelta(hours=2))
    _backdate(store, [e.seq for e in stored[:4]], old)

    assert await store.prune(3 * 3600, None) == 0  # nothing is 3 h old
    assert await store.prune(3600, None) == 4
    assert await read_all(store) == stored[4:]
    # The announced Message-IDs of pruned events go with them; the rest stay.
    ids = [f"<{i}@x>" for i in range(6)]
    assert await store.known_message_ids("m1", "INBOX", ids) == {"<4@x>", "<5@x>"}
    # Age and count together: both limits apply.
    assert await store.prune(3600, 1) == 1
    assert await read_all(store) == stored[5:]
    assert await store.last_seq() == stored[-1].seq


# -- durability, concurrency, ids, health ------------------------------------------------------


async def test_reopen_keeps_everything(make_store: MakeStore) -> None:
    store = await make_store()
    stored = await store.append(
        [ev("a2"), ev(key="k1", message_id="<a@x>", folder="INBOX")], Checkpoint("m1", "INBOX", 5, 42)
    )
    await store.prune(None, 1)  # pruning is durable too
    await store.close()

    reopened = await make_store()
    assert await read_all(reopened) == stored[1:]
    assert await reopened.get_checkpoint("m1", "INBOX") == Checkpoint("m1", "INBOX", 5, 42)
    assert await reopened.last_seq() == stored[-1].seq
    assert await reopened.append([ev(key="k1")]) == []  # dedupe survives too
    assert await reopened.known_message_ids("m1", "INBOX", ["<a@x>"]) == {"<a@x>"}
    assert (await reopened.append([ev()]))[0].seq == stored[-1].seq + 1


async def test_concurrent_appends_are_serialized(store: EventStore) -> None:
    async def writer(task: int) -> list[Event]:
        out: list[Event] = []
        for batch in range(5):
            out += await store.append(
                [ev(f"a{1 + task % 3}", task=task, batch=batch, i=i) for i in range(2)],
                Checkpoint(f"m{task}", "INBOX", 1, batch + 1),
            )
            await asyncio.sleep(0)
        return out

    results = await asyncio.gather(*(writer(t) for t in range(20)))

    seqs = sorted(e.seq for events in results for e in events)
    assert len(seqs) == 200
    assert seqs == list(range(seqs[0], seqs[0] + 200))  # unique and gap-free
    # Each task's events are in its own append order, and each batch is contiguous.
    for events in results:
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        for a, b in zip(events[::2], events[1::2], strict=True):
            assert b.seq == a.seq + 1
    everything = await read_all(store)
    assert [e.seq for e in everything] == seqs
    for task in range(20):
        assert await store.get_checkpoint(f"m{task}", "INBOX") == Checkpoint(f"m{task}", "INBOX", 1, 5)


async def test_reads_during_appends_see_whole_batches(store: EventStore) -> None:
    done = asyncio.Event()

    async def writer() -> None:
        for i in range(30):
            await store.append([ev(batch=i, i=j) for j in range(3)])
            await asyncio.sleep(0)  # an append may finish without yielding (on the loop)
        done.set()

    async def reader() -> int:
        checks = 0
        while not done.is_set():
            events = await read_all(store)
            assert len(events) % 3 == 0, "saw part of a batch"
            checks += 1
            await asyncio.sleep(0)
        return checks

    _, checks = await asyncio.gather(writer(), reader())
    assert checks > 0
    assert len(await read_all(store)) == 90


@pytest.mark.parametrize(
    "bad", ["", "abc", "-1", "+1", "1.0", " 1", "1 ", "1\n", "0x10", "١٢", "1" * 20, "9223372036854775808"]
)
def test_invalid_event_ids_raise(bad: str, tmp_path: Path) -> None:
    # seq_of is synchronous and needs no open store.
    store: EventStore = SqliteEventStore(tmp_path / "unused.db")
    with pytest.raises(InvalidEventId):
        store.seq_of(bad)
    assert issubclass(InvalidEventId, ValueError)


async def test_seq_of_valid_ids(store: EventStore) -> None:
    assert store.seq_of("0") == 0
    assert store.seq_of("42") == 42
    assert store.seq_of("007") == 7
    assert store.seq_of("9223372036854775807") == 2**63 - 1
    with pytest.raises(InvalidEventId):
        store.seq_of(17)  # type: ignore[arg-type]
    [event] = await store.append([ev()])
    assert store.seq_of(event.id) == event.seq


async def test_ping(make_store: MakeStore) -> None:
    store = await make_store()
    assert await store.ping() is True
    await store.close()
    assert await store.ping() is False


# -- SQLite specifics --------------------------------------------------------------------------


async def test_sqlite_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "events.db"  # parent directories are created
    store = SqliteEventStore(str(path))
    await store.open()
    await store.append([ev()])
    await store.close()

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_backend.SCHEMA_VERSION
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    db.close()
    assert {"events_agent_seq", "events_mailbox_seq", "events_created_at"} <= indexes


async def test_sqlite_migrates_version_1_and_fills_spam_scores(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    db = sqlite3.connect(path)
    for statement in sqlite_backend._SCHEMA_V1.split(";"):
        db.execute(statement)
    rows = [
        ("message.received", json.dumps({"spam": {"score": 7.5}})),
        ("message.received", json.dumps({"spam": {"score": "high"}})),
        ("mailbox.connected", json.dumps({"folder": "INBOX"})),
    ]
    db.executemany(
        "INSERT INTO events (type, created_at, agent_id, mailbox_id, data) VALUES (?, ?, 'a1', 'm1', ?)",
        [(type_, rfc3339(), data) for type_, data in rows],
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()

    store = SqliteEventStore(path)
    await store.open()
    try:
        assert [e.seq for e in await store.read_after(EventQuery(("a1",), min_spam=7.5), 0, 10)] == [1]
        assert len(await store.read_after(EventQuery(("a1",)), 0, 10)) == 3
        [new] = await store.append([ev(spam={"score": 8})])
        assert await store.read_after(EventQuery(("a1",), min_spam=8), 0, 10) == [new]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_backend.SCHEMA_VERSION == 3
    db.close()


async def test_sqlite_migrating_to_version_3_counts_every_seq_below_the_oldest_as_pruned(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    db = sqlite3.connect(path)
    for script in sqlite_schema._MIGRATIONS[:2]:
        for statement in script.split(";"):
            db.execute(statement)
    db.executemany(
        "INSERT INTO events (type, created_at, agent_id, data) VALUES ('note', ?, 'a1', '{}')",
        [(rfc3339(),)] * 5,
    )
    db.execute("DELETE FROM events WHERE seq <= 2")  # pruned by a gatewayd of version 2
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    store = SqliteEventStore(path)
    await store.open()
    try:
        assert (await store.pruned_through(), await store.first_seq(), await store.last_seq()) == (2, 3, 5)
    finally:
        await store.close()


async def test_sqlite_opens_a_file_holding_only_tokens_made_before_the_first_run(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    tokens = SqliteTokenStore(path)
    await tokens.open()  # `gatewayd token create` before `gatewayd run` ever did
    issued = await tokens.create("support", "default", ["read"])
    await tokens.close()
    store = SqliteEventStore(path)
    await store.open()
    try:
        assert await store.append([ev(n=1)])
    finally:
        await store.close()
    tokens = SqliteTokenStore(path)
    await tokens.open()
    try:
        assert await tokens.get([issued.record.id]) == {issued.record.id: issued.record}
    finally:
        await tokens.close()


async def test_sqlite_stamps_its_file_and_refuses_another_programs(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "events.db", tmp_path / "theirs.db"
    store = SqliteEventStore(ours)
    await store.open()
    await store.close()
    db = sqlite3.connect(ours)
    assert db.execute("PRAGMA application_id").fetchone() == (sqlite_backend.APPLICATION_ID,)
    db.close()
    db = sqlite3.connect(theirs)
    db.execute("PRAGMA application_id=1")  # another program's format, no table yet
    db.close()
    with pytest.raises(StoreUnavailable, match="not a gatewayd store"):
        await SqliteEventStore(theirs).open()
    with pytest.raises(StoreUnavailable, match="not a gatewayd store"):
        await SqliteTokenStore(theirs).open()


async def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={sqlite_backend.SCHEMA_VERSION + 1}")
    db.close()
    store = SqliteEventStore(path)
    with pytest.raises(StoreUnavailable, match="schema version 4 is newer than this gatewayd's"):
        await store.open()


async def test_sqlite_stores_event_data_as_its_json_text(tmp_path: Path) -> None:
    # The append binds the JSON's UTF-8 bytes and stores them as TEXT: the same column a str gives.
    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    await store.open()
    data: dict[str, Any] = {"subject": 'héllo ✓ 😀 "q" \u2028', "odd\udfff": ["a\x00b"], "n": 1.5}
    try:
        await store.append([NewEvent("message.received", "a1", "m1", data)])
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        [(kind, text)] = db.execute("SELECT typeof(data), data FROM events").fetchall()
    finally:
        db.close()
    assert kind == "text"
    assert text == compact_json(data)


async def test_sqlite_refuses_a_file_not_in_utf8(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA encoding='UTF-16le'")
    db.execute("CREATE TABLE events (seq INTEGER)")  # a gatewayd table name: not refused as foreign
    db.close()
    with pytest.raises(StoreUnavailable, match="not UTF-8"):
        await SqliteEventStore(path).open()


async def test_sqlite_prunes_in_batches(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "PRUNE_BATCH", 3)
    stored = await store.append([ev(n=i) for i in range(11)])
    appended: list[Event] = []

    first_batch_done = asyncio.Event()
    prune_batch = SqliteEventStore._prune_batch

    def prune_batch_and_tell(*args: Any) -> int:
        removed = prune_batch(*args)
        loop.call_soon_threadsafe(first_batch_done.set)
        return removed

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(SqliteEventStore, "_prune_batch", staticmethod(prune_batch_and_tell))

    async def append_meanwhile() -> None:
        await first_batch_done.wait()
        appended.extend(await store.append([ev(n=100)]))

    results = await asyncio.gather(store.prune(None, 1), append_meanwhile())
    # 10 of the first 11 go (the cutoff is fixed when pruning starts); the concurrent append
    # got in between batches and survives.
    assert results[0] == 10
    assert await read_all(store) == [stored[-1], *appended]


async def test_sqlite_append_waits_for_a_lock_held_elsewhere_off_the_loop(tmp_path: Path) -> None:
    """An append normally commits on the loop; when another connection holds the write lock, it
    waits on the writer's thread instead, and the loop keeps running meanwhile."""
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO checkpoints VALUES ('other', 'INBOX', 1, 1)")
        append = asyncio.ensure_future(store.append([ev(n=1)], Checkpoint("m1", "INBOX", 1, 1)))
        ticks = 0
        for _ in range(20):  # the loop is free while the append waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not append.done()
        other.execute("COMMIT")
        stored = await asyncio.wait_for(append, 5)
        assert ticks == 20 and [e.data for e in stored] == [{"n": 1}]
        assert await store.get_checkpoint("other", "INBOX") == Checkpoint("other", "INBOX", 1, 1)
        assert await store.get_checkpoint("m1", "INBOX") == Checkpoint("m1", "INBOX", 1, 1)
        # And the next append, with the lock free, commits at once.
        assert [e.seq for e in await store.append([ev(n=2)])] == [stored[0].seq + 1]
    finally:
        other.close()
        await store.close()


def count_transactions(store: SqliteEventStore) -> list[str]:
    """The transactions begun on the writer's connection on the loop from now on."""
    begun: list[str] = []
    conn = store._writer._on_loop
    assert conn is not None
    conn.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    return begun


async def test_sqlite_appends_made_at_once_share_one_transaction(tmp_path: Path) -> None:
    """Appends made in the same turn of the loop (watchers of several mailboxes ready at once)
    commit together: one transaction, each caller its own events, in the order they were made."""
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    try:
        begun = count_transactions(store)
        results = await asyncio.gather(
            *(
                store.append([ev(mailbox=f"m{n}", n=n, key=f"k{n}")], Checkpoint(f"m{n}", "INBOX", 7, n))
                for n in range(1, 6)
            ),
            store.append([ev(mailbox="m1", n=6, key="k1")]),  # a key the same group already stored
        )
        assert len(begun) == 1
        assert [[e.data["n"] for e in stored] for stored in results] == [[1], [2], [3], [4], [5], []]
        assert [stored[0].seq for stored in results[:5]] == [1, 2, 3, 4, 5]
        assert len({stored[0].created_at for stored in results[:5]}) == 1
        for n in range(1, 6):
            assert await store.get_checkpoint(f"m{n}", "INBOX") == Checkpoint(f"m{n}", "INBOX", 7, n)
        # One at a time, each append is its own transaction, committed before it returns.
        await store.append([ev(n=7)])
        await store.append([ev(n=8)])
        assert len(begun) == 3
        assert [e.data["n"] for e in await read_all(store)] == [1, 2, 3, 4, 5, 7, 8]
    finally:
        await store.close()


async def test_sqlite_a_lone_append_commits_without_waiting_for_the_loop(tmp_path: Path) -> None:
    """Nothing else ready to run in this turn of the loop: no append could join, so it commits at
    once (the coroutine finishes without suspending), and what it returns is stored."""
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    try:
        append = store.append([ev(n=1)], Checkpoint("m1", "INBOX", 1, 1))
        with pytest.raises(StopIteration) as finished:
            append.send(None)
        [stored] = finished.value.value
        assert await read_all(store) == [stored]
        # With another callback ready, it waits for the loop's next turn, in case that appends too.
        asyncio.get_running_loop().call_soon(lambda: None)
        later = store.append([ev(n=2)])
        answer = later.send(None)  # suspended on its group's answer
        assert isinstance(answer, asyncio.Future) and not answer.done()
        answer.cancel()  # as its task's cancellation does
        later.close()
        begun = count_transactions(store)
        await asyncio.sleep(0)  # the group's turn: nothing left in it to commit
        assert begun == [] and await read_all(store) == [stored]
    finally:
        await store.close()


async def test_sqlite_appends_made_while_a_group_waits_for_the_lock_commit_after_it(tmp_path: Path) -> None:
    """A group that finds the write lock taken waits for it on the writer's thread; the appends
    made meanwhile form the next group, which commits after it, so seqs follow the calls."""
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(store.append([ev(n=1)], Checkpoint("m1", "INBOX", 1, 1)))
        await asyncio.sleep(0.05)  # on the writer's thread, waiting for the lock
        begun = count_transactions(store)
        later = [asyncio.ensure_future(store.append([ev(mailbox=f"m{n}", n=n)])) for n in (2, 3)]
        await asyncio.sleep(0.05)
        assert not first.done() and not any(task.done() for task in later)
        other.execute("COMMIT")
        stored = [e for task in (first, *later) for e in await asyncio.wait_for(task, 5)]
        assert [(e.seq, e.data["n"]) for e in stored] == [(1, 1), (2, 2), (3, 3)]
        assert len(begun) == 1  # the two later appends: one transaction, on the loop
    finally:
        other.close()
        await store.close()


async def test_sqlite_a_failing_append_fails_alone_in_its_group(tmp_path: Path) -> None:
    """When a group's transaction fails, its appends run again one by one: the error reaches only
    the append that caused it, and the others are stored. (A trigger refuses one agent's events.)"""
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.agent_id = 'a2'"
        " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    other.close()
    try:
        begun = count_transactions(store)
        good, bad, also_good = await asyncio.gather(
            store.append([ev(n=1)], Checkpoint("m1", "INBOX", 1, 1)),
            store.append([ev("a2", mailbox="m2", n=2)], Checkpoint("m2", "INBOX", 1, 1)),
            store.append([ev(mailbox="m3", n=3)], Checkpoint("m3", "INBOX", 1, 1)),
            return_exceptions=True,
        )
        assert len(begun) == 4  # the group's, then each append's own
        assert isinstance(bad, sqlite3.IntegrityError) and "refused by the test" in str(bad)
        assert isinstance(good, list) and isinstance(also_good, list)
        assert [e.data for e in good + also_good] == [{"n": 1}, {"n": 3}]
        assert [e.data for e in await read_all(store)] == [{"n": 1}, {"n": 3}]
        assert await store.get_checkpoint("m2", "INBOX") is None
        assert await store.get_checkpoint("m3", "INBOX") == Checkpoint("m3", "INBOX", 1, 1)
        assert await store.ping() is True  # a refused row is not a failing store
    finally:
        await store.close()


async def test_sqlite_an_append_cancelled_before_its_group_commits_is_not_stored(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    try:
        kept = asyncio.ensure_future(store.append([ev(n=1)]))
        checkpoint = Checkpoint("m2", "INBOX", 1, 2)
        dropped = asyncio.ensure_future(store.append([ev(mailbox="m2", n=2)], checkpoint))
        await asyncio.sleep(0)  # both wait for their group, which commits on the loop's next turn
        dropped.cancel()
        assert [e.data for e in await kept] == [{"n": 1}]
        with pytest.raises(asyncio.CancelledError):
            await dropped
        assert [e.data for e in await read_all(store)] == [{"n": 1}]
        assert await store.get_checkpoint("m2", "INBOX") is None
    finally:
        await store.close()


async def test_sqlite_close_commits_the_appends_already_made(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    append = asyncio.ensure_future(store.append([ev(n=1)], Checkpoint("m1", "INBOX", 1, 1)))
    await asyncio.sleep(0)  # made; its group commits on the loop's next turn
    await store.close()
    [stored] = await append
    reopened = SqliteEventStore(tmp_path / "events.db")
    await reopened.open()
    try:
        assert await read_all(reopened) == [stored]
    finally:
        await reopened.close()


async def test_sqlite_ping_fails_while_appends_fail(tmp_path: Path) -> None:
    """Reads still work while another process holds the write lock past the busy timeout, but the
    store is failing: ping says so until an append succeeds again."""
    store = SqliteEventStore(tmp_path / "events.db", busy_timeout_ms=50)
    await store.open()
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.append([ev(n=1)])
        assert await store.ping() is False
        other.execute("ROLLBACK")
        assert await store.ping() is False  # nothing written since
        await store.append([ev(n=2)])
        assert await store.ping() is True
    finally:
        other.close()
        await store.close()


async def test_sqlite_appends_return_in_seq_order_when_one_went_to_the_writer(tmp_path: Path) -> None:
    """An append waiting for a lock held elsewhere commits on the writer's thread; one made after
    that commit but before its result reaches the loop must not return (and be published) first,
    or a live stream would drop the earlier event as already sent."""
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    other = sqlite3.connect(store.path, isolation_level=None)
    returned: list[int] = []

    async def append_and_publish(n: int) -> None:
        returned.extend(event.seq for event in await store.append([ev(n=n)]))

    try:
        other.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(append_and_publish(1))
        await asyncio.sleep(0.05)  # it finds the lock taken and waits for it on the writer's thread
        assert not first.done()
        other.execute("COMMIT")
        # Hold the loop until the thread has committed: its result now waits in the loop's queue.
        last_seq = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
        hold_loop_until(lambda: other.execute(last_seq).fetchone() == (1,), what="the thread's commit")
        second = asyncio.ensure_future(append_and_publish(2))
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert returned == [1, 2]
        assert [e.seq for e in await store.append([ev(n=3)])] == [3]
    finally:
        other.close()
        await store.close()


async def test_sqlite_checkpoints_the_wal_of_appends_made_on_the_loop(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    wal = tmp_path / "events.db-wal"
    try:
        for i in range(3000):  # back to back: the checkpoints must not need a quiet moment
            await store.append([ev(n=i, text="x" * 2000)], Checkpoint("m1", "INBOX", 1, i))
        # The appends wrote about 110 MB of pages to the WAL; it was checkpointed and restarted
        # instead of growing with them (about 4 MB at the end).
        assert wal.stat().st_size < 16_000_000
        assert len(await read_all(store)) == 3000
    finally:
        await store.close()


async def test_sqlite_checkpoints_the_wal_of_group_appends(tmp_path: Path) -> None:
    # A catch-up commits its messages in groups: the WAL is checkpointed by the pages written,
    # not by the number of appends (60 appends of 100 events each never reached 100 appends).
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    wal = tmp_path / "events.db-wal"
    try:
        for group in range(60):
            events = [ev(n=n, text="x" * 3000) for n in range(group * 100, group * 100 + 100)]
            await store.append(events, Checkpoint("m1", "INBOX", 1, group * 100 + 99))
        # About 6,000 pages (25 MB) went through the WAL; checkpointed every ~900 pages, it stays
        # a few MB.
        assert wal.stat().st_size < 12_000_000
        assert len(await read_all(store)) == 6000
    finally:
        await store.close()


async def test_a_replayed_event_is_framed_byte_for_byte_as_the_live_one(store: EventStore) -> None:
    # A replay copies the stored JSON into its frames as bytes; live subscribers get frames
    # encoded from the event as appended. Both must be the same bytes.
    data: dict[str, Any] = {
        "subject": 'héllo ✓ 😀 "quoted" back\\slash',
        "lines": "one\ntwo\r\nthree\t\u2028\u0000",
        "nested": {"list": [1, 2.5, None, True, "ü"]},
    }
    [stored] = await store.append([NewEvent("message.received", "a1", "m1", data)])
    [read] = await read_all(store)
    assert read.sse_frame == stored.sse_frame
    assert read.sse_chunk == stored.sse_chunk
    assert read.to_json() == stored.to_json()
    assert read.data_json == stored.data_json
    assert read.data == data
    assert json.loads(read.sse_frame.decode().split("data: ", 1)[1])["data"] == data


def test_sqlite_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from gatewayd.events import NewEvent
        from gatewayd.store import Checkpoint
        from gatewayd.store.sqlite import SqliteEventStore

        async def main():
            store = SqliteEventStore({str(path)!r})
            await store.open()
            for i in range(5):
                await store.append(
                    [NewEvent("message.received", "a1", "m1", {{"n": i}})], Checkpoint("m1", "INBOX", 1, i)
                )
            os.kill(os.getpid(), signal.SIGKILL)  # no close(), no WAL checkpoint

        asyncio.run(main())
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT data FROM events ORDER BY seq").fetchall()
        checkpoint = db.execute("SELECT last_uid FROM checkpoints").fetchone()
    db.close()
    assert [json.loads(r[0]) for r in rows] == [{"n": i} for i in range(5)]
    assert checkpoint == (4,)


async def test_sqlite_replays_a_large_log_completely_in_order(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    await store.open()
    try:
        count = 100_000
        created_at = rfc3339()
        data = json.dumps({"message_id": "<x@example.org>", "subject": "Hello", "uid": 1, "folder": "INBOX"})
        with sqlite3.connect(store.path) as db:
            db.executemany(
                "INSERT INTO events (type, created_at, agent_id, mailbox_id, from_address, data)"
                " VALUES ('message.received', ?, ?, 'm1', 'bob@example.org', ?)",
                ((created_at, f"a{i % 2}", data) for i in range(count)),
            )
        db.close()

        query = EventQuery(agent_ids=("a0", "a1"))
        seen, after, ordered = 0, 0, True
        while page := await store.read_after(query, after, 1000):
            seen += len(page)
            increasing = all(a.seq < b.seq for a, b in itertools.pairwise(page))
            ordered = ordered and page[0].seq > after and increasing
            after = page[-1].seq
    finally:
        await store.close()
    # Its speed is measured by `gatewayd bench replay`, not asserted here.
    assert seen == count and ordered


def test_one_instance_lock_per_store(tmp_path: Path) -> None:
    store = tmp_path / "state" / "events.db"
    first, second = InstanceLock(store), InstanceLock(store)
    first.acquire()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert (tmp_path / "state" / "events.db.lock").read_text() == f"{os.getpid()}\n{boot}\n"
    held_by_us = rf"another gatewayd \(pid {os.getpid()}\) is running with the event store"
    with pytest.raises(StoreInUse, match=held_by_us):
        second.acquire()
    first.release()
    first.release()  # twice is harmless
    second.acquire()  # free again
    second.release()


def test_the_instance_lock_tells_a_stop_without_release_in_an_earlier_boot(tmp_path: Path) -> None:
    lock = InstanceLock(tmp_path / "events.db")
    lock.acquire()
    assert not lock.may_have_lost_commits  # a new store
    held = lock.path.read_text()
    lock.release()
    lock.acquire()
    assert not lock.may_have_lost_commits  # released: a clean stop
    lock.release()
    # Ended without release (the kernel drops the flock, the file keeps its text): in this boot
    # (kill -9) SQLite lost nothing; in an earlier one, or before the boot was recorded, it may have.
    for left, lost in ((held, False), (f"{os.getpid()}\nan-earlier-boot\n", True), ("4242\n", True)):
        lock.path.write_text(left)
        lock.acquire()
        assert lock.may_have_lost_commits is lost, left
        lock.release()
