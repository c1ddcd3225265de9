"""Fleets against the real Dovecot: a parent's one stream over 50 sub-agents, tokens, NOTIFY.

A parent's token streams the mail of every sub-agent exactly once, in order, filtered on the
server and resumable; a sub-agent's token sees its own subtree only; another tenant never
shows up. The IMAP side keeps one connection per watched (mailbox, folder) whoever subscribes,
and with NOTIFY one connection per account however many folders it watches.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.config import Config, hash_token, parse_config
from gatewayd.imap import watch
from gatewayd.imap.notify import AccountWatcher
from gatewayd.imap.session import ImapSession
from gatewayd.imap.watch import FolderWatcher
from gatewayd.sandbox.dovecot import PASSWORD, Dovecot
from gatewayd.store import EventQuery
from tests.conftest import append, imap_do
from tests.sse import Frame, SseReader, mail
from tests.waiting import idle, wait_for

SUBS = 50
SPAMMER = "*@spammer.example"


def mailbox(dovecot: Dovecot, user: str, watch: str = "always", **imap: Any) -> dict[str, Any]:
    return {
        "id": f"{user}-inbox",
        "watch": watch,
        "on_demand_linger_seconds": 0.5,
        "imap": {
            "host": dovecot.host,
            "port": dovecot.imap_port,
            "tls": "none",
            "username": user,
            "password": PASSWORD,
            "read_timeout_seconds": 5,
            "connect_timeout_seconds": 5,
            **imap,
        },
    }


def fleet_config(tmp_path: Path, agents: list[dict[str, Any]], **server: Any) -> Config:
    data = {
        "server": {"listen": "127.0.0.1:0", "shutdown_grace_seconds": 1, "retry_ms": 500, **server},
        "store": {"path": str(tmp_path / "events.db")},
        "pipeline": {"spam": {"block": [SPAMMER]}},
        "agents": agents,
    }
    return parse_config(data, env={}, base_dir=tmp_path)


def agent(agent_id: str, mailboxes: list[dict[str, Any]], **keys: Any) -> dict[str, Any]:
    return {"id": agent_id, "token_sha256": [hash_token(f"token-{agent_id}")], "mailboxes": mailboxes, **keys}


def auth(agent_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer token-{agent_id}"}


async def open_stream(
    session: aiohttp.ClientSession,
    url: str,
    agent_id: str,
    headers: dict[str, str] | None = None,
    **params: str,
) -> SseReader:
    response = await session.get(
        f"{url}/events", params=params, headers={**auth(agent_id), **(headers or {})}
    )
    assert response.status == 200, await response.text()
    return SseReader(response)


async def exactly(reader: SseReader, count: int) -> list[Frame]:
    """The next `count` message frames, and then none within a short while."""
    frames = await reader.messages(count, timeout=20)
    assert await drain(reader, 0.3) == []
    return frames


async def drain(reader: SseReader, timeout: float) -> list[Frame]:
    """Every further message frame until `timeout` seconds pass without one."""
    frames = []
    while True:
        try:
            frames.append(await reader.until(lambda f: f.event.startswith("message."), timeout))
        except TimeoutError:
            return frames


async def test_a_parent_streams_fifty_sub_agents_exactly_once_in_order(
    dovecot: Dovecot, tmp_path: Path, start_gateway: Any
) -> None:
    tag = uuid.uuid4().hex[:6]
    subs = [f"sub-{i:02d}" for i in range(SUBS)]
    users = {name: f"{tag}{name}" for name in [*subs, "fleet", "helper", "rival"]}
    agents = [
        agent("fleet", [mailbox(dovecot, users["fleet"])], tenant="acme"),
        *[agent(name, [mailbox(dovecot, users[name])], parent="fleet") for name in subs],
        agent("helper", [mailbox(dovecot, users["helper"])], parent="sub-00"),
        agent("rival", [mailbox(dovecot, users["rival"])], tenant="rival"),
    ]
    gw = await start_gateway(fleet_config(tmp_path, agents))
    await wait_for(lambda: idle(gw), timeout=30, what="53 watchers idle")
    assert len(gw.daemon.pool.health()) == SUBS + 3

    # Mail for many sub-agents at once, half of it from a blocked sender (a high spam score).
    targets = [*subs[:40], *subs[:20], "fleet", "helper", "helper", "rival", "rival"]
    sent: list[tuple[str, str]] = []
    for i, name in enumerate(targets):
        sender = "Spam <x@spammer.example>" if i % 2 else "Bob <bob@partner.example>"
        sent.append((name, f"{name} #{i} from {sender.split('@')[1][:-1]}"))
    fleet_subjects = {subject for name, subject in sent if name != "rival"}

    async with aiohttp.ClientSession() as session:
        everything = await open_stream(session, gw.url, "fleet", types="message.*")
        filtered = await open_stream(
            session, gw.url, "fleet", agent="sub-1*,sub-42,helper", types="message.*", min_spam="10"
        )
        from_partner: dict[str, str] = {"from": "@partner.example", "max_spam": "9.9"}
        ham_from = await open_stream(session, gw.url, "fleet", None, **from_partner)
        sub00 = await open_stream(session, gw.url, "sub-00", types="message.*")
        rival = await open_stream(session, gw.url, "rival", types="message.*")
        forbidden = await session.get(f"{gw.url}/events", params={"agent": "fleet"}, headers=auth("sub-00"))
        assert forbidden.status == 403
        assert (
            await session.get(f"{gw.url}/events", params={"agent": "rival"}, headers=auth("fleet"))
        ).status == 403

        async def deliver(name: str, subject: str) -> None:
            sender = "Spam <x@spammer.example>" if "spammer" in subject else "Bob <bob@partner.example>"
            await dovecot.deliver_async(users[name], mail(subject, sender=sender))

        delivery = asyncio.gather(*(deliver(name, subject) for name, subject in sent))
        # The parent's client drops mid-burst and resumes from its last id.
        first = await everything.messages(30, timeout=30)
        everything.response.close()
        resumed = await open_stream(
            session, gw.url, "fleet", headers={"Last-Event-ID": first[-1].event_id}, types="message.*"
        )
        rest = await resumed.messages(len(fleet_subjects) - len(first), timeout=30)
        await delivery
        frames = first + rest
        # Exactly once, in order, and only the subtree.
        ids = [int(f.id or 0) for f in frames]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert Counter(f.json["data"]["subject"] for f in frames) == Counter(fleet_subjects)
        assert {f.json["agent_id"] for f in frames} <= {"fleet", "helper", *subs}
        assert await drain(resumed, 0.3) == []
        keys = [(f.json["mailbox_id"], f.json["data"]["uid"]) for f in frames]
        assert len(set(keys)) == len(keys)

        # The filters hold, on the same events in the same order.
        def score(frame: Frame) -> float:
            return float(frame.json["data"]["spam"]["score"])

        def agent_of(frame: Frame) -> str:
            return str(frame.json["agent_id"])

        want = [
            f.id
            for f in frames
            if (agent_of(f) in {"helper", "sub-42"} or agent_of(f).startswith("sub-1")) and score(f) >= 10
        ]
        assert want and [f.id for f in await exactly(filtered, len(want))] == want
        want = [f.id for f in frames if "partner" in f.json["data"]["from"]["address"] and score(f) <= 9.9]
        assert want and [f.id for f in await exactly(ham_from, len(want))] == want
        # A sub-agent's token: its own subtree only.
        want = [f.id for f in frames if agent_of(f) in {"sub-00", "helper"}]
        assert len(want) == 4 and [f.id for f in await exactly(sub00, len(want))] == want
        # Another tenant gets its own mail, and nothing of the fleet's.
        theirs = {subject for name, subject in sent if name == "rival"}
        assert {f.json["data"]["subject"] for f in await exactly(rival, len(theirs))} == theirs

        # Replaying the whole fleet from an id gives exactly what followed it.
        replay = await open_stream(
            session, gw.url, "fleet", headers={"Last-Event-ID": frames[9].event_id}, types="message.*"
        )
        assert [f.id for f in await exactly(replay, len(frames) - 10)] == [f.id for f in frames[10:]]
        listing = await session.get(
            f"{gw.url}/v1/events",
            headers=auth("fleet"),
            params={"agent": "sub-0*", "types": "message.*", "limit": "500"},
        )
        listed = [e["id"] for e in reversed((await listing.json())["events"])]
        assert listed == [f.id for f in frames if agent_of(f).startswith("sub-0")]
    # One connection per mailbox however many streams, and one event per message in the store.
    assert len(gw.daemon.pool.health()) == SUBS + 3
    everyone = EventQuery(tuple(a["id"] for a in agents), type_patterns=("message.*",))
    assert len(await gw.daemon.store.read_after(everyone, 0, 1000)) == len(sent)


async def test_a_parent_and_a_child_share_one_on_demand_connection(
    dovecot: Dovecot, tmp_path: Path, start_gateway: Any
) -> None:
    user = f"share{uuid.uuid4().hex[:6]}"
    agents = [
        agent("parent", []),
        agent("child", [mailbox(dovecot, user, watch="on_demand")], parent="parent"),
    ]
    gw = await start_gateway(fleet_config(tmp_path, agents))
    pool = gw.daemon.pool
    async with aiohttp.ClientSession() as session:
        parent = await open_stream(session, gw.url, "parent", types="message.*")
        child = await open_stream(session, gw.url, "child", types="message.*")
        await wait_for(lambda: idle(gw), what="the one watcher idle")
        assert len(pool.health()) == 1
        await dovecot.deliver_async(user, mail("seen by both"))
        got = [(await parent.messages(1))[0], (await child.messages(1))[0]]
        assert got[0].id == got[1].id and got[0].json["data"]["subject"] == "seen by both"
        parent.response.close()
        await asyncio.sleep(0.2)
        assert pool.is_watching(f"{user}-inbox")  # the child still subscribes
        child.response.close()
    await wait_for(lambda: not pool.is_watching(f"{user}-inbox"), timeout=10, what="the watcher to log out")
    events = await gw.daemon.store.read_after(EventQuery(("child",), type_patterns=("message.*",)), 0, 10)
    assert len(events) == 1


def imap_connections(port: int) -> int:
    """Established TCP connections to this local port (both ends are on loopback)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(f":{port:04X}") and fields[3] == "01":
            count += 1
    return count


async def test_a_folder_watcher_that_missed_its_cancellation_does_not_hold_up_the_stop(
    dovecot_without_notify: Dovecot, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's wait_for returns the answer instead of raising when a cancellation comes with
    it, so the pool cancels a watcher again until it ends. An account's folders (one connection
    each, without NOTIFY) were cancelled by a task group, once: one that missed it held up the stop
    for good."""
    server = dovecot_without_notify
    user = f"missed{uuid.uuid4().hex[:6]}"
    agents = [agent("support", [mailbox(server, user, folders=["INBOX", "Archive"])])]
    waiting = ImapSession.wait_push
    missed: list[str] = []

    async def wait_push(session: ImapSession, timeout: float) -> list[bytes]:
        try:
            return await waiting(session, timeout)
        except asyncio.CancelledError:
            if missed:
                raise
            # A race no server can be made to produce: the answer came with the cancellation.
            missed.append(session.selected.folder if session.selected else "")
            return []

    monkeypatch.setattr(ImapSession, "wait_push", wait_push)
    gw = await start_gateway(fleet_config(tmp_path, agents))
    await wait_for(lambda: idle(gw), what="every folder idle")
    await asyncio.wait_for(gw.daemon.stop(), 60)
    assert len(missed) == 1
    assert [w["state"] for w in gw.daemon.pool.health()] == ["not_watching"]


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "one-idle-per-folder"])
async def test_several_folders_deliver_exactly_once_with_notify_or_without(
    dovecot: Dovecot, dovecot_without_notify: Dovecot, tmp_path: Path, start_gateway: Any, notify: bool
) -> None:
    server = dovecot if notify else dovecot_without_notify
    user = f"folders{uuid.uuid4().hex[:6]}"
    folders = ["INBOX", "Archive", "Junk"]
    agents = [agent("support", [mailbox(server, user, folders=folders)])]
    before = imap_connections(server.imap_port)
    gw = await start_gateway(fleet_config(tmp_path, agents))
    await wait_for(lambda: idle(gw), what="every folder idle")
    health = gw.daemon.pool.health()
    assert [w["folder"] for w in health] == folders
    assert all(w["notify"] is notify for w in health)
    assert imap_connections(server.imap_port) - before == (1 if notify else len(folders))

    async def burst(round_: int) -> list[str]:
        subjects = []
        for i in range(4):
            for folder in folders:
                subject = f"{folder} {round_}.{i}"
                subjects.append(subject)
                if folder == "INBOX":
                    await server.deliver_async(user, mail(subject))
                else:
                    await asyncio.to_thread(append, server, user, folder, mail(subject))
        return subjects

    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, gw.url, "support", types="message.*")
        subjects = await burst(1)
        await asyncio.sleep(0.3)  # a second burst while the first is being synced
        subjects += await burst(2)
        frames = await reader.messages(len(subjects), timeout=20)
        assert await drain(reader, 0.5) == []
    assert Counter(f.json["data"]["subject"] for f in frames) == Counter(subjects)
    assert {f.json["data"]["subject"]: f.json["data"]["folder"] for f in frames} == {
        s: s.split()[0] for s in subjects
    }
    query = EventQuery(("support",), type_patterns=("mailbox.connected",))
    connected = [e.data for e in await gw.daemon.store.read_after(query, 0, 10)]
    assert sorted(c["folder"] for c in connected) == sorted(folders)
    assert all(c["notify"] is notify for c in connected)


async def test_folders_sharing_a_notify_connection_time_their_pushes(
    dovecot: Dovecot, tmp_path: Path, start_gateway: Any
) -> None:
    user = f"pushed{uuid.uuid4().hex[:6]}"
    folders = ["INBOX", "Archive"]
    # A long read timeout: no silence probe syncs a folder before its push is read.
    agents = [agent("support", [mailbox(dovecot, user, folders=folders, read_timeout_seconds=120)])]
    gw = await start_gateway(fleet_config(tmp_path, agents))
    await wait_for(lambda: idle(gw), what="every folder idle")

    def spreads() -> dict[str, Any]:
        return {w["folder"]: w["push_to_event_ms"] for w in gw.daemon.pool.health() if w["notify"]}

    assert spreads() == {"INBOX": None, "Archive": None}  # no push yet
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, gw.url, "support", types="message.*")
        await dovecot.deliver_async(user, mail("to the inbox"))
        await exactly(reader, 1)
        inbox = spreads()["INBOX"]
        assert inbox["count"] == 1 and 0 < inbox["p50"] < 10_000 and spreads()["Archive"] is None
        await asyncio.to_thread(append, dovecot, user, "Archive", mail("to the archive"))
        await exactly(reader, 1)
    archive = spreads()["Archive"]
    assert archive["count"] == 1 and 0 < archive["p50"] < 10_000 and spreads()["INBOX"] == inbox


async def test_a_folder_missing_for_a_while_costs_notify_only_for_a_while(
    dovecot: Dovecot, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watched folder deleted and created again (bench/soak.py found it) once demoted its
    account to one connection per folder until a restart; now NOTIFY is tried again."""
    monkeypatch.setattr(AccountWatcher, "notify_retry_seconds", 1.0, raising=False)
    # The missing folder's own watcher retries slowly (from a minute): made quick here.
    monkeypatch.setattr(watch, "AUTH_BACKOFF", (0.2, 1.0))
    user = f"gone{uuid.uuid4().hex[:6]}"
    folders = ["INBOX", "Later"]  # Later does not exist yet: SELECT fails, NOTIFY is given up
    before = imap_connections(dovecot.imap_port)
    gw = await start_gateway(
        fleet_config(tmp_path, [agent("support", [mailbox(dovecot, user, folders=folders)])])
    )
    await wait_for(
        lambda: any(w["folder"] == "INBOX" and w["state"] == "idle" for w in gw.daemon.pool.health())
    )
    assert not any(w["notify"] for w in gw.daemon.pool.health())
    await asyncio.to_thread(imap_do, dovecot, user, lambda c: c.create("Later"))

    def shared() -> bool:
        health = gw.daemon.pool.health()
        return all(w["notify"] and w["state"] == "idle" for w in health)

    await wait_for(shared, timeout=20, what="both folders back on one NOTIFY connection")
    assert imap_connections(dovecot.imap_port) - before == 1
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, gw.url, "support", types="message.*")
        await dovecot.deliver_async(user, mail("to INBOX"))
        await asyncio.to_thread(append, dovecot, user, "Later", mail("to Later"))
        frames = await reader.messages(2, timeout=20)
        assert await drain(reader, 0.5) == []
    assert sorted(f.json["data"]["subject"] for f in frames) == ["to INBOX", "to Later"]
    query = EventQuery(("support",), type_patterns=("mailbox.disconnected",))
    reasons = {e.data["reason"] for e in await gw.daemon.store.read_after(query, 0, 100)}
    assert "notify_retry" in reasons and "shutdown" not in reasons


async def test_a_folder_gone_at_a_select_of_the_shared_connection_falls_back_at_once(
    dovecot: Dovecot, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that does not exist is retried slowly (from a minute up). Found missing by the
    SELECT that follows its new-mail notification on the shared connection, it must not make the
    whole account wait that long: the account falls back to one connection per folder at once,
    as when it is missing at the start, and only the missing folder's watcher waits."""
    user = f"race{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(imap_do, dovecot, user, lambda c: c.create("Later"))
    gw = await start_gateway(
        fleet_config(tmp_path, [agent("support", [mailbox(dovecot, user, folders=["INBOX", "Later"])])])
    )
    await wait_for(lambda: all(w["notify"] for w in gw.daemon.pool.health()) and idle(gw))
    catch_up = FolderWatcher.catch_up

    async def deleted_first(
        watcher: FolderWatcher, session: ImapSession, pushed_at: float | None = None
    ) -> None:
        # Failure injection: the folder deleted between its notification and the SELECT.
        if watcher.folder == "Later":
            await asyncio.to_thread(imap_do, dovecot, user, lambda c: c.delete("Later"))
        await catch_up(watcher, session, pushed_at)

    monkeypatch.setattr(FolderWatcher, "catch_up", deleted_first)
    await asyncio.to_thread(append, dovecot, user, "Later", mail("to Later"))

    def fallen_back() -> bool:
        health = {w["folder"]: w for w in gw.daemon.pool.health()}
        return health["INBOX"]["state"] == "idle" and not health["INBOX"]["notify"]

    await wait_for(fallen_back, timeout=10, what="INBOX on its own connection")
    query = EventQuery(("support",), type_patterns=("mailbox.error",))
    # The Later watcher stores its error after its own failed SELECT: INBOX may be idle again first.
    deadline = asyncio.get_running_loop().time() + 10
    while not (errors := await gw.daemon.store.read_after(query, 0, 100)):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.02)
    assert [(e.data["folder"], e.data["kind"]) for e in errors] == [("Later", "protocol")]
    assert errors[0].data["retry_in_ms"] >= 30_000


async def test_a_folder_that_stays_missing_leaves_the_fall_back_alone(
    dovecot: Dovecot, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder deleted for good once had its account try NOTIFY again every
    `notify_retry_seconds`, failing on it again: every folder reconnected twice, for nothing. Now
    NOTIFY is tried again only once every folder's own connection is up."""
    monkeypatch.setattr(AccountWatcher, "notify_retry_seconds", 0.5, raising=False)
    monkeypatch.setattr(watch, "AUTH_BACKOFF", (0.2, 1.0))  # the missing folder's, made quick
    user = f"deleted{uuid.uuid4().hex[:6]}"
    folders = ["INBOX", "Later"]
    await asyncio.to_thread(imap_do, dovecot, user, lambda c: c.create("Later"))
    before = imap_connections(dovecot.imap_port)
    gw = await start_gateway(
        fleet_config(tmp_path, [agent("support", [mailbox(dovecot, user, folders=folders)])])
    )

    def shared() -> bool:
        health = gw.daemon.pool.health()
        return all(w["notify"] and w["state"] == "idle" for w in health)

    async def disconnects() -> Counter[str]:
        query = EventQuery(("support",), type_patterns=("mailbox.disconnected",))
        return Counter(e.data["reason"] for e in await gw.daemon.store.read_after(query, 0, 1000))

    async def connection_events(folder: str) -> list[str]:
        query = EventQuery(("support",), type_patterns=("mailbox.connected", "mailbox.disconnected"))
        events = await gw.daemon.store.read_after(query, 0, 1000)
        return [e.type.removeprefix("mailbox.") for e in events if e.data["folder"] == folder]

    await wait_for(shared, what="both folders on one NOTIFY connection")
    await asyncio.to_thread(imap_do, dovecot, user, lambda c: c.delete("Later"))

    def fallen_back() -> bool:
        health = {w["folder"]: w for w in gw.daemon.pool.health()}
        return health["INBOX"]["state"] == "idle" and not health["INBOX"]["notify"]

    # The silence probe (read_timeout_seconds) finds the folder gone.
    await wait_for(fallen_back, timeout=20, what="one connection per folder")
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, gw.url, "support", types="message.*")
        for round_ in range(3):
            await asyncio.sleep(1.0)  # two retry periods each
            await dovecot.deliver_async(user, mail(f"to INBOX {round_}"))
            assert [f.json["data"]["subject"] for f in await exactly(reader, 1)] == [f"to INBOX {round_}"]
        assert (await disconnects())["notify_retry"] == 0
        assert fallen_back()

        await asyncio.to_thread(imap_do, dovecot, user, lambda c: c.create("Later"))
        await wait_for(shared, timeout=30, what="both folders back on one NOTIFY connection")
        assert imap_connections(dovecot.imap_port) - before == 1
        await asyncio.to_thread(append, dovecot, user, "Later", mail("to Later"))
        assert [f.json["data"]["subject"] for f in await exactly(reader, 1)] == ["to Later"]
    # Each folder's own connection logged out once, to share NOTIFY's again.
    assert (await disconnects())["notify_retry"] == len(folders)
    # INBOX, announced on the shared connection that the missing folder then made the account
    # give up, was said to be disconnected before it connected on its own.
    for folder in folders:
        events = await connection_events(folder)
        assert events == ["connected", "disconnected"] * (len(events) // 2) + ["connected"], folder
