"""The watcher against a real Dovecot: sharing, on-demand, reconnects, UIDVALIDITY, TLS, polling."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import imaplib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from gatewayd.config import Config
from gatewayd.events import Event, NewEvent
from gatewayd.imap import sync, watch
from gatewayd.imap.session import ImapError, ImapSession
from gatewayd.imap.sync import FETCH_BATCH
from gatewayd.imap.watch import FolderWatcher
from gatewayd.message import FetchedMessage
from gatewayd.pipeline import Pipeline
from gatewayd.sandbox.dovecot import Dovecot
from gatewayd.store import Checkpoint, EventQuery
from gatewayd.store.sqlite import SqliteEventStore
from tests.conftest import TOKEN, append, gateway_config, imap_do
from tests.sse import SseReader, mail
from tests.waiting import idle, wait_for, watcher_states

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def listing(gw: Any, **params: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{gw.url}/v1/events", headers=AUTH, params={"limit": "500", **params})
        assert response.status == 200
        return list(reversed((await response.json())["events"]))


async def wait_events(
    gw: Any, count: int, types: str = "message.*", timeout: float = 20
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(found := await listing(gw, types=types)) < count:
        assert loop.time() < deadline, f"only {len(found)} of {count} {types} events after {timeout}s"
        await asyncio.sleep(0.05)
    return found


def with_server(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, server=dataclasses.replace(config.server, **changes))


async def test_two_subscribers_share_one_on_demand_connection(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    config = gateway_config(tmp_path, dovecot, [user], watch="on_demand", on_demand_linger_seconds=0.3)
    gw = await start_gateway(config)
    pool = gw.daemon.pool
    mailbox_id = f"{user}-inbox"
    assert watcher_states(gw) == ["not_watching"]
    # Mail that arrives before anyone ever watched is not announced (first connect starts at UIDNEXT).
    await dovecot.deliver_async(user, mail("before anyone watched"))
    async with aiohttp.ClientSession() as session:
        first = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        second = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await wait_for(lambda: idle(gw, mailbox_id), what="on-demand watcher idle")
        assert len(pool.health()) == 1  # one (mailbox, folder) connection for both subscribers
        await dovecot.deliver_async(user, mail("shared"))
        got = [(await first.messages(1))[0], (await second.messages(1))[0]]
        assert {frame.id for frame in got} == {got[0].id}
        assert got[0].json["data"]["subject"] == "shared"
        first.response.close()
        second.response.close()
    assert len(await listing(gw, types="message.*")) == 1  # processed once
    await wait_for(lambda: not pool.is_watching(mailbox_id), timeout=10, what="on-demand watcher to log out")
    # Mail arriving while nobody watches is announced when the next subscriber comes.
    await dovecot.deliver_async(user, mail("while unwatched"))
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        frame = (await reader.messages(1))[0]
    assert frame.json["data"]["subject"] == "while unwatched"


async def test_an_on_demand_logout_is_announced_as_disconnected(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    config = gateway_config(tmp_path, dovecot, [user], watch="on_demand", on_demand_linger_seconds=0.3)
    gw = await start_gateway(config)
    mailbox_id = f"{user}-inbox"
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH))
        await wait_for(lambda: idle(gw, mailbox_id), what="on-demand watcher idle")
        reader.response.close()
    await wait_for(lambda: not gw.daemon.pool.is_watching(mailbox_id), timeout=10, what="watcher to log out")
    last = (await listing(gw, types="mailbox.*"))[-1]
    assert last["type"] == "mailbox.disconnected"
    assert last["data"] == {"folder": "INBOX", "reason": "on_demand_idle", "retry_in_ms": None}


async def test_a_shutdown_logout_is_announced_as_disconnected(idle_gateway: Any) -> None:
    await idle_gateway.daemon.stop()
    # The log's last state event for the mailbox is not `mailbox.connected`.
    store = SqliteEventStore(Path(idle_gateway.daemon.config.store.path))
    await store.open()
    try:
        query = EventQuery(agent_ids=("support",), type_patterns=("mailbox.*",))
        [last] = await store.read_before(query, None, 1)
    finally:
        await store.close()
    assert last.type == "mailbox.disconnected"
    assert last.data == {"folder": "INBOX", "reason": "shutdown", "retry_in_ms": None}


async def test_a_shutdown_during_the_first_sync_stores_no_disconnect_without_a_connect(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailbox.connected` comes after the first sync: a stop before it ends leaves no
    `mailbox.disconnected` in the log. (Injected: checking the backlog's message never ends.)"""
    stalled = asyncio.Event()

    async def stall(self: Pipeline, *args: Any, **kwargs: Any) -> NewEvent | None:
        stalled.set()
        await asyncio.Event().wait()  # until the watcher is cancelled
        raise AssertionError("unreachable")

    monkeypatch.setattr(Pipeline, "process", stall)
    await dovecot.deliver_async(user, mail("in the backlog"))
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], backfill=1))
    await asyncio.wait_for(stalled.wait(), 20)
    await gw.daemon.stop()
    store = SqliteEventStore(Path(gw.daemon.config.store.path))
    await store.open()
    try:
        query = EventQuery(agent_ids=("support",), type_patterns=("mailbox.*",))
        types = [event.type for event in await store.read_before(query, None, 10)]
    finally:
        await store.close()
    assert "mailbox.disconnected" not in types, types


async def test_backfill_announces_the_last_n_on_first_connect(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    for i in range(3):
        await dovecot.deliver_async(user, mail(f"old {i}"))
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], backfill=2))
    events = await wait_events(gw, 2)
    await wait_for(lambda: idle(gw), what="watcher idle")
    assert [e["data"]["subject"] for e in await listing(gw, types="message.*")] == ["old 1", "old 2"]
    assert len(events) == 2


async def test_dovecot_restart_under_a_live_watcher(dovecot: Dovecot, user: str, idle_gateway: Any) -> None:
    await dovecot.deliver_async(user, mail("before restart"))
    await wait_events(idle_gateway, 1)
    await asyncio.to_thread(dovecot.restart)
    await dovecot.deliver_async(user, mail("after restart"))
    events = await wait_events(idle_gateway, 2)
    assert [e["data"]["subject"] for e in events] == ["before restart", "after restart"]
    types = [e["type"] for e in await listing(idle_gateway, types="mailbox.*")]
    assert types.count("mailbox.connected") >= 2
    assert "mailbox.disconnected" in types or "mailbox.error" in types
    await wait_for(lambda: idle(idle_gateway), what="watcher idle again")
    assert idle_gateway.daemon.pool.health()[0]["reconnects"] >= 1


async def test_uidvalidity_change_does_not_reannounce_old_mail(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    await dovecot.deliver_async(user, mail("old one"))
    await dovecot.deliver_async(user, mail("old two"))
    first = await wait_events(idle_gateway, 2)
    old_validity = first[0]["data"]["uidvalidity"]

    def rebuild() -> None:
        dovecot.stop()
        dovecot.reset_uidvalidity(user)
        dovecot.start()

    await asyncio.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock: make it differ
    await asyncio.to_thread(rebuild)
    await wait_for(
        lambda: idle_gateway.daemon.pool.health()[0]["uidvalidity"] != old_validity, what="new UIDVALIDITY"
    )
    await wait_for(lambda: idle(idle_gateway), what="watcher idle again")
    await dovecot.deliver_async(user, mail("new one"))
    events = await wait_events(idle_gateway, 3)
    assert [e["data"]["subject"] for e in events] == ["old one", "old two", "new one"]
    assert events[2]["data"]["uidvalidity"] != old_validity
    connected = [e for e in await listing(idle_gateway, types="mailbox.connected")]
    assert connected[-1]["data"]["uidvalidity_changed"] is True


def rebuild_with(dovecot: Dovecot, user: str, arrived: list[bytes]) -> None:
    """A mailbox rebuild (new UIDVALIDITY) with `arrived` put into the Maildir meanwhile, in
    this order after the old mail: they are in the folder before any watcher can reconnect."""
    dovecot.stop()
    dovecot.reset_uidvalidity(user)
    stamp = int(time.time())
    for n, raw in enumerate(arrived):
        (dovecot.maildir(user) / "new" / f"{stamp}.M{n}P1.rebuild").write_bytes(raw)
    dovecot.start()


async def resync_after(gw: Any, dovecot: Dovecot, user: str, old_validity: int, arrived: list[bytes]) -> None:
    await asyncio.sleep(1.1)  # UIDVALIDITY and INTERNALDATE have one-second steps: make them differ
    await asyncio.to_thread(rebuild_with, dovecot, user, arrived)
    await wait_for(lambda: gw.daemon.pool.health()[0]["uidvalidity"] != old_validity, what="new UIDVALIDITY")
    await wait_for(lambda: idle(gw), what="watcher idle again")


async def test_uidvalidity_change_announces_exactly_the_mail_not_announced_before(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    old_one = mail("old one")
    await dovecot.deliver_async(user, old_one)
    await dovecot.deliver_async(user, b"From: bob@example.org\r\nSubject: old without id\r\n\r\nHi.\r\n")
    await dovecot.deliver_async(user, mail("old three"))
    first = await wait_events(idle_gateway, 3)
    # New mail interleaved with a copy of old mail (the same Message-ID, arrived later), and new
    # mail without a Message-ID.
    arrived = [
        mail("new one"),
        old_one.replace(b"Subject: old one", b"Subject: old one again"),
        b"From: bob@example.org\r\nSubject: new without id\r\n\r\nHi.\r\n",
    ]
    await resync_after(idle_gateway, dovecot, user, first[0]["data"]["uidvalidity"], arrived)
    events = await wait_events(idle_gateway, 5)
    subjects = [e["data"]["subject"] for e in events]
    assert subjects == ["old one", "old without id", "old three", "new one", "new without id"]
    assert {e["data"]["uidvalidity"] for e in events[3:]} == {
        idle_gateway.daemon.pool.health()[0]["uidvalidity"]
    }


async def test_uidvalidity_change_with_no_message_id_known_announces_what_arrived_after(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    gw = idle_gateway
    await dovecot.deliver_async(user, mail("old one"))
    await wait_events(gw, 1)
    await asyncio.sleep(1.1)  # INTERNALDATE has whole seconds: "old two" arrives in a later one
    await dovecot.deliver_async(user, mail("old two"))
    first = await wait_events(gw, 2)
    # The announced Message-IDs forgotten (the events that tell the folder's past stay): the
    # server's arrival times alone decide. Mail that arrived before the newest announced one's
    # second stays quiet; in that second it cannot be told from mail never fetched, and is
    # announced again (a duplicate rather than a loss); later mail is new.
    with contextlib.closing(sqlite3.connect(gw.daemon.config.store.path)) as db, db:
        db.execute("DELETE FROM message_ids")
    await resync_after(gw, dovecot, user, first[0]["data"]["uidvalidity"], [mail("new one")])
    events = await wait_events(gw, 4)
    assert [e["data"]["subject"] for e in events] == ["old one", "old two", "old two", "new one"]


async def test_expunged_before_fetch_is_skipped(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    await dovecot.deliver_async(user, mail("kept"))
    config = gateway_config(tmp_path, dovecot, [user])
    session = await ImapSession.open(config.mailboxes()[0].imap)
    try:
        await session.select("INBOX")
        uids = await session.uids_from(1)
        # UID 999999 stands for a message expunged between EXISTS and FETCH.
        fetched = await session.fetch([*uids, 999999], 4096)
    finally:
        await session.logout()
    assert [m.uid for m in fetched] == uids
    assert b"Subject: kept" in fetched[0].raw


async def test_malformed_mime_still_yields_an_event(dovecot: Dovecot, user: str, idle_gateway: Any) -> None:
    garbage = (
        b"From: <<<@@@>>>\r\nSubject: =?bogus-charset?q?=ZZ?=\r\nDate: yesterday-ish\r\n"
        b"Content-Type: multipart/mixed\r\n\r\n--nobound\r\n\xff\xfe\x00 not mime at all\r\n"
    )
    await dovecot.deliver_async(user, garbage)
    good = mail("after the garbage")
    await dovecot.deliver_async(user, good)
    events = await wait_events(idle_gateway, 2)
    broken = events[0]["data"]
    assert broken["date"] is None
    assert broken["uid"] >= 1 and broken["size"] > 0
    assert events[1]["data"]["subject"] == "after the garbage"


async def test_auth_failure_is_reported_and_retried_slowly(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    config = gateway_config(tmp_path, dovecot, [user], imap={"password": "not-the-password-81"})
    gw = await start_gateway(config)
    errors = await wait_events(gw, 1, types="mailbox.error")
    assert errors[0]["data"]["kind"] == "auth"
    assert "not-the-password-81" not in str(errors)
    assert watcher_states(gw) == ["backoff"]
    await asyncio.sleep(1.5)
    assert len(await listing(gw, types="mailbox.error")) == 1  # no hot loop
    assert gw.daemon.pool.health()[0]["reconnects"] == 1


async def test_a_missing_folder_is_retried_slowly_as_a_protocol_error(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    """A watched folder that does not exist waits on someone creating it: it was retried every
    second (then minute) forever, each time a `mailbox.error`. Now a minute first, as a refused
    login; the event's `kind` stays `protocol`."""
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap={"folders": ["Later"]}))
    (error,) = await wait_events(gw, 1, types="mailbox.error")
    # Dovecot answers a plain NO (no [NONEXISTENT]): LIST tells that the folder is missing.
    assert error["data"]["kind"] == "protocol" and "doesn't exist" in error["data"]["reason"], error
    assert 30_000 <= error["data"]["retry_in_ms"] <= 60_000, error
    assert watcher_states(gw) == ["backoff"]
    await asyncio.sleep(1.5)
    assert len(await listing(gw, types="mailbox.error")) == 1  # no fast retry


async def test_a_missing_folder_backs_off_up_to_minutes_then_connects_once_created(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The back-offs scaled down a thousand times (1 s to 60 s for the network, 60 s to 15 min
    for what lasts): each `mailbox.error` of the missing folder says a longer wait, past the
    network's cap, and the folder created meanwhile is watched within that wait."""
    monkeypatch.setattr(watch, "NETWORK_BACKOFF", (0.001, 0.06))
    monkeypatch.setattr(watch, "AUTH_BACKOFF", (0.06, 0.9))
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap={"folders": ["Later"]}))
    errors = (await wait_events(gw, 4, types="mailbox.error"))[:4]
    assert {e["data"]["kind"] for e in errors} == {"protocol"}, errors
    delays = [e["data"]["retry_in_ms"] for e in errors]
    # Steps of 60, 120, 240 and 480 ms, each jittered down to no less than half.
    for attempt, delay in enumerate(delays):
        step = 60 * 2**attempt
        assert step // 2 - 1 <= delay <= step, delays
    assert delays[-1] > 60, delays  # past the network back-off's cap
    await asyncio.to_thread(imap_do, dovecot, user, lambda c: c.create("Later"))
    await wait_for(lambda: idle(gw), timeout=10, what="the created folder watched")
    (connected,) = await listing(gw, types="mailbox.connected")
    assert connected["data"]["folder"] == "Later"
    await asyncio.to_thread(append, dovecot, user, "Later", mail("in the new folder"))
    (event,) = await wait_events(gw, 1)
    assert event["data"]["subject"] == "in the new folder"


@pytest.fixture(scope="module")
def tls_dovecot() -> Iterator[tuple[Dovecot, trustme.CA]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = Dovecot.create()
    server.enable_tls(b"".join(pem.bytes() for pem in cert.cert_chain_pems), cert.private_key_pem.bytes())
    server.start()
    yield server, ca
    server.destroy()


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_tls_verified_against_the_configured_ca(
    tls_dovecot: tuple[Dovecot, trustme.CA], tmp_path: Path, start_gateway: Any, tls: str
) -> None:
    server, ca = tls_dovecot
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = server.imaps_port if tls == "implicit" else server.imap_port
    user = f"tls{tls}"
    config = gateway_config(
        tmp_path, server, [user], imap={"tls": tls, "port": port, "ca_file": str(tmp_path / "ca.pem")}
    )
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="TLS watcher idle")
    await server.deliver_async(user, mail(f"over {tls}"))
    events = await wait_events(gw, 1)
    assert events[0]["data"]["subject"] == f"over {tls}"


async def test_untrusted_certificate_is_refused(
    tls_dovecot: tuple[Dovecot, trustme.CA], tmp_path: Path, start_gateway: Any
) -> None:
    server, _ = tls_dovecot
    config = gateway_config(
        tmp_path, server, ["tlsrefused"], imap={"tls": "implicit", "port": server.imaps_port}
    )
    gw = await start_gateway(config)
    errors = await wait_events(gw, 1, types="mailbox.error")
    assert errors[0]["data"]["kind"] == "tls"
    assert "verif" in errors[0]["data"]["reason"].lower()


async def test_server_without_idle_is_polled(tmp_path: Path, start_gateway: Any) -> None:
    server = Dovecot.create(extra_config="imap_capability = IMAP4rev1 UIDPLUS\n")
    server.start()
    try:
        config = gateway_config(tmp_path, server, ["poller"], imap={"poll_interval_seconds": 0.3})
        gw = await start_gateway(config)
        await wait_for(lambda: watcher_states(gw) == ["polling"], what="watcher polling")
        await server.deliver_async("poller", mail("polled"))
        events = await wait_events(gw, 1)
        assert events[0]["data"]["subject"] == "polled"
        connected = await listing(gw, types="mailbox.connected")
        assert connected[0]["data"]["idle"] is False
    finally:
        await gw.daemon.stop()
        server.destroy()


async def test_slow_subscriber_is_cut_off_and_resumes_without_loss(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    config = with_server(
        gateway_config(tmp_path, dovecot, [user], watch="on_demand"), subscriber_queue_size=20
    )
    gw = await start_gateway(config)
    daemon = gw.daemon
    # A client that sends its request and then never reads.
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(
        f"GET /events?types=bulk.* HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    await writer.drain()
    async with aiohttp.ClientSession() as session:
        fast = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "bulk.*"}))
        await wait_for(lambda: len(daemon.bus) == 2, what="both subscribers")
        padding = "x" * 20_000
        total = 400

        async def publish() -> None:
            for i in range(total):
                event = NewEvent("bulk.test", "support", f"{user}-inbox", {"n": i, "pad": padding})
                daemon.bus.publish(await daemon.store.append([event]))
                await asyncio.sleep(0.002)  # a steady producer; the fast reader keeps up

        async def consume() -> list[Any]:
            return [await fast.until(lambda f: f.event == "bulk.test") for _ in range(total)]

        _, frames = await asyncio.gather(publish(), consume())
        assert [f.json["data"]["n"] for f in frames] == list(range(total))
        # The slow one was cut off: the bus no longer holds it, so memory stays bounded.
        await wait_for(lambda: len(daemon.bus) == 1, what="slow subscriber dropped")
        received = b""
        while chunk := await asyncio.wait_for(reader.read(1 << 16), 10):
            received += chunk
        writer.close()
        last_id = [line for line in received.split(b"\n") if line.startswith(b"id: ")][-1][4:].decode()
        assert int(last_id) < int(frames[-1].id)
        # It resumes from its last id and gets the rest, exactly once.
        resumed = SseReader(
            await session.get(
                f"{gw.url}/events", headers={**AUTH, "Last-Event-ID": last_id}, params={"types": "bulk.*"}
            )
        )
        seen_n = received.count(b"event: bulk.test")
        rest = [await resumed.until(lambda f: f.event == "bulk.test") for _ in range(total - seen_n)]
        assert [f.json["data"]["n"] for f in rest] == list(range(seen_n, total))


async def test_resume_older_than_retention_gets_a_gap_event(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], watch="on_demand"))
    store = gw.daemon.store
    for i in range(5):
        await store.append([NewEvent("note.test", "support", f"{user}-inbox", {"n": i})])
    assert await store.prune(None, 2) == 3
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"since": "1"}))
        gap = await reader.next()
        assert gap.event == "stream.gap" and gap.id is None
        assert (gap.json["requested"], gap.json["reason"]) == ("1", "retention")
        rest = [await reader.until(lambda f: f.event == "note.test") for _ in range(2)]
    assert [f.json["data"]["n"] for f in rest] == [3, 4]
    assert gap.json["first_available_id"] == rest[0].id


async def test_ids_skipped_after_a_power_loss_are_no_gap_once_retention_passed_them(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], watch="on_demand"))
    store = gw.daemon.store
    before = [
        (await store.append([NewEvent("note.test", "support", f"{user}-inbox", {"n": i})]))[0]
        for i in range(3)
    ]
    await store.skip_lost_seqs()
    for i in (3, 4):
        await store.append([NewEvent("note.test", "support", f"{user}-inbox", {"n": i})])
    assert await store.prune(None, 2) == 3  # everything before the skipped ids
    async with aiohttp.ClientSession() as session:
        for since, gap in ((before[-1].id, False), (before[0].id, True)):
            params = {"since": since, "types": "note.*", "max_seconds": "1"}
            reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params=params))
            frames = [await reader.next() for _ in range(3 if gap else 2)]
            assert [f.event for f in frames] == ["stream.gap"] * gap + ["note.test"] * 2, since
            assert [f.json["data"]["n"] for f in frames[gap:]] == [3, 4]


async def test_a_resume_point_beyond_every_stored_id_gets_a_gap_event_then_what_comes(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    # A store restored from a backup, say: the client's ids will be issued again, to other events.
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], watch="on_demand"))
    store = gw.daemon.store
    [first] = await store.append([NewEvent("note.test", "support", f"{user}-inbox", {"n": 0})])
    requested = str(await store.last_seq() + 5)
    async with aiohttp.ClientSession() as session:
        reader = SseReader(
            await session.get(
                f"{gw.url}/events", headers=AUTH, params={"since": requested, "types": "note.*"}
            )
        )
        gap = await reader.next()
        assert gap.event == "stream.gap" and gap.id is None
        assert (gap.json["requested"], gap.json["reason"]) == (requested, "unknown_id")
        assert gap.json["first_available_id"] == first.id
        # Then live from the newest stored event, as the pipeline stores and publishes them.
        gw.daemon.bus.publish(
            await store.append([NewEvent("note.test", "support", f"{user}-inbox", {"n": 1})])
        )
        after = await reader.until(lambda f: f.event == "note.test")
    assert after.json["data"]["n"] == 1


# -- after a push: one UID FETCH n:*, no UID SEARCH ----------------------------------------------


def count_commands(monkeypatch: pytest.MonkeyPatch, target: Any) -> dict[str, int]:
    """How often `target` (an ImapSession, or the class) searches and fetches `n:*` from now on."""
    calls = {"search": 0, "range": 0}
    uids_from, fetch_from = target.uids_from, target.fetch_from

    async def searched(*args: Any) -> list[int]:
        calls["search"] += 1
        return await uids_from(*args)

    async def ranged(*args: Any) -> list[FetchedMessage]:
        calls["range"] += 1
        return await fetch_from(*args)

    # On the class, the plain functions become methods: `self` comes first in args.
    monkeypatch.setattr(target, "uids_from", searched)
    monkeypatch.setattr(target, "fetch_from", ranged)
    return calls


async def test_pushed_mail_is_fetched_without_a_search_each_message_once(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No silence probe during the test: every sync after the first is one a push called for.
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap={"read_timeout_seconds": 120}))
    await wait_for(lambda: idle(gw), what="watcher idle")
    calls = count_commands(monkeypatch, ImapSession)
    subjects = [f"push {i}" for i in range(12)]
    for subject in subjects:
        await dovecot.deliver_async(user, mail(subject))
    events = await wait_events(gw, len(subjects))
    await wait_for(lambda: idle(gw), what="watcher idle again")
    events = await listing(gw, types="message.*")
    assert [e["data"]["subject"] for e in events] == subjects
    uids = [e["data"]["uid"] for e in events]
    assert uids == sorted(set(uids))
    assert calls["search"] == 0 and calls["range"] >= 1
    assert gw.daemon.pool.health()[0]["last_uid"] == uids[-1]


def count_fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every command of a session named "UID FETCH" from now on (what it was asked to fetch)."""
    sent: list[str] = []
    call = ImapSession._call

    async def counted(self: ImapSession, what: str, awaitable: Any, timeout: float | None = None) -> Any:
        if what == "UID FETCH":
            sent.append(what)
        return await call(self, what, awaitable, timeout)

    monkeypatch.setattr(ImapSession, "_call", counted)
    return sent


async def test_new_mail_comes_with_its_push_and_needs_no_fetch(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOTIFY MessageNew with FETCH attributes: Dovecot sends each new message with its EXISTS.
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap={"read_timeout_seconds": 120}))
    await wait_for(lambda: idle(gw), what="watcher idle")
    fetches = count_fetches(monkeypatch)
    bodies = {f"pushed {i}": f"Body number {i}." * (i * 400 + 1) for i in range(3)}
    for subject, body in bodies.items():
        await dovecot.deliver_async(user, mail(subject, body=body))
    events = await wait_events(gw, len(bodies))
    assert fetches == []
    assert [e["data"]["subject"] for e in events] == list(bodies)
    for event in events:
        data = event["data"]
        body = bodies[data["subject"]]
        assert data["body_text_excerpt"].startswith(body[:100])
        assert data["size"] > len(body) and data["spam"]["verdict"] in ("ham", "suspect", "spam")
    uids = [e["data"]["uid"] for e in events]
    assert uids == sorted(set(uids))
    await wait_for(lambda: idle(gw), what="watcher idle again")
    assert gw.daemon.pool.health()[0]["last_uid"] == uids[-1]
    # And a restart announces nothing twice.
    await gw.daemon.stop()
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user]))
    await wait_for(lambda: idle(gw), what="watcher idle after the restart")
    await dovecot.deliver_async(user, mail("after the restart"))
    events = await wait_events(gw, len(bodies) + 1)
    assert [e["data"]["subject"] for e in events] == [*bodies, "after the restart"]


def count_dones(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time a session leaves IDLE from now on."""
    dones: list[str] = []
    idle_done = ImapSession.idle_done

    async def counted(self: ImapSession) -> None:
        if self.idling:
            dones.append("DONE")
        await idle_done(self)

    monkeypatch.setattr(ImapSession, "idle_done", counted)
    return dones


async def test_pushed_mail_is_processed_in_idle_and_a_rule_acting_ends_it(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = [{"name": "flagger", "if": {"subject": "flag me"}, "then": [{"add_flags": "\\Flagged"}]}]
    config = gateway_config(tmp_path, dovecot, [user], rules=rules, imap={"read_timeout_seconds": 120})
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    dones, fetches = count_dones(monkeypatch), count_fetches(monkeypatch)
    assert gw.daemon.pool.health()[0]["push_to_event_ms"] is None  # no push yet
    # One push each: the watcher stays in IDLE throughout.
    for i in range(3):
        await dovecot.deliver_async(user, mail(f"plain {i}"))
        await wait_events(gw, i + 1)
    assert dones == [] and fetches == []
    # gatewayd's own time per message, from the push to the published event.
    spread = gw.daemon.pool.health()[0]["push_to_event_ms"]
    assert spread["count"] == 3 and 0 < spread["p50"] <= spread["p99"] < 10_000
    # A rule that acts needs a command: that ends IDLE, which starts again after it.
    await dovecot.deliver_async(user, mail("flag me"))
    events = await wait_events(gw, 4)
    assert "\\Flagged" in events[-1]["data"]["flags"]
    assert dones == ["DONE"] and fetches == []
    await wait_for(lambda: idle(gw), what="watcher idle again")
    await dovecot.deliver_async(user, mail("plain again"))
    events = await wait_events(gw, 5)
    subjects = [e["data"]["subject"] for e in events]
    assert subjects == [*(f"plain {i}" for i in range(3)), "flag me", "plain again"]
    assert dones == ["DONE"] and fetches == []


async def test_idle_is_renewed_on_time_while_pushes_keep_coming(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pushed mail no longer ends IDLE, so a steady stream must not keep one IDLE past its renewal.
    imap = {"read_timeout_seconds": 120, "idle_renew_seconds": 1}
    config = gateway_config(tmp_path, dovecot, [user], imap=imap)
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    dones = count_dones(monkeypatch)
    subjects = [f"steady {i}" for i in range(8)]
    for subject in subjects:
        await dovecot.deliver_async(user, mail(subject))
        await asyncio.sleep(0.4)
    events = await wait_events(gw, len(subjects))
    assert [e["data"]["subject"] for e in events] == subjects
    assert len(dones) >= 2  # renewed about once a second, pushes or not


async def test_a_server_refusing_to_push_messages_is_fetched_from(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(self: ImapSession, *events: str) -> None:
        raise ImapError("NOTIFY failed: BAD")

    monkeypatch.setattr(ImapSession, "_notify_set", refused)
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap={"read_timeout_seconds": 120}))
    await wait_for(lambda: idle(gw), what="watcher idle")
    fetches = count_fetches(monkeypatch)
    await dovecot.deliver_async(user, mail("fetched"))
    events = await wait_events(gw, 1)
    assert [e["data"]["subject"] for e in events] == ["fetched"]
    assert fetches == ["UID FETCH"]


class Driven:
    """A FolderWatcher on a session of the test's own: `push()` takes what IDLE would have pushed
    (a NOOP brings the EXISTS) and syncs, as the watch loop does after DONE."""

    def __init__(self, dovecot: Dovecot, user: str, tmp_path: Path) -> None:
        self.dovecot, self.user = dovecot, user
        self.config = gateway_config(tmp_path, dovecot, [user], imap={"read_timeout_seconds": 30})
        self.mailbox = self.config.mailboxes()[0]
        self.store = SqliteEventStore(tmp_path / "events.db")
        self.pipeline: Any = Pipeline()
        self.session: ImapSession | None = None
        self.published: list[Event] = []

    async def connect(self, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
        """A new watcher and connection, as after a restart; attached (the initial sync done)."""
        await self.disconnect()
        self.watcher = FolderWatcher(self.mailbox, "INBOX", self.store, self.pipeline, self.published.extend)
        self.session = await ImapSession.open(self.mailbox.imap)
        await self.watcher.attach(self.session)
        return count_commands(monkeypatch, self.session)

    async def push(self) -> None:
        assert self.session is not None
        await self.session.noop()
        await self.watcher.catch_up(self.session)

    async def deliver(self, *subjects: str) -> None:
        for subject in subjects:
            await self.dovecot.deliver_async(self.user, mail(subject))

    async def subjects(self) -> list[str]:
        query = EventQuery(agent_ids=("support",), type_patterns=("message.*",))
        events = await self.store.read_after(query, 0, 1000)
        uids = [e.data["uid"] for e in events]
        assert uids == sorted(set(uids)), "each UID once, in order"
        return [e.data["subject"] for e in events]

    async def checkpoint(self) -> Checkpoint | None:
        return await self.store.get_checkpoint(self.mailbox.id, "INBOX")

    def expunge(self, *subjects: str) -> None:
        """Another client deletes these messages (this one is not told until its next command)."""
        client = imaplib.IMAP4(self.dovecot.host, self.dovecot.imap_port)
        try:
            client.login(self.user, "secret")
            client.select("INBOX")
            for subject in subjects:
                _, found = client.uid("SEARCH", "HEADER", "Subject", f'"{subject}"')
                for uid in found[0].split():
                    client.uid("STORE", uid.decode(), "+FLAGS.SILENT", "(\\Deleted)")
            client.expunge()
        finally:
            client.logout()

    async def disconnect(self) -> None:
        if self.session is not None:
            await self.session.logout()
            self.session = None


@pytest.fixture
async def driven(dovecot: Dovecot, user: str, tmp_path: Path) -> AsyncIterator[Driven]:
    it = Driven(dovecot, user, tmp_path)
    await it.store.open()
    try:
        yield it
    finally:
        await it.disconnect()
        await it.store.close()


async def test_a_push_fetches_the_range_and_only_what_came_back(
    driven: Driven, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = await driven.connect(monkeypatch)
    await driven.deliver("a", "b", "c")
    await driven.push()
    assert await driven.subjects() == ["a", "b", "c"]
    assert calls == {"search": 0, "range": 1}
    # New mail expunged by another client between the push and the fetch: the server still
    # lists the messages this session counts, without content ([EXPUNGEISSUED]): not announced.
    await driven.deliver("d", "e", "f")
    assert driven.session is not None
    await driven.session.noop()
    await asyncio.to_thread(driven.expunge, "e", "f")
    await driven.watcher.catch_up(driven.session)
    assert await driven.subjects() == ["a", "b", "c", "d"]
    checkpoint = await driven.checkpoint()
    # UIDs a..h are 1..8: the checkpoint is the highest UID processed, not the highest fetched.
    assert checkpoint is not None and checkpoint.last_uid == 4
    # Expunged with this session told before the fetch: not even listed.
    await driven.deliver("g", "h")
    await driven.session.noop()
    await asyncio.to_thread(driven.expunge, "g")
    await driven.push()
    assert await driven.subjects() == ["a", "b", "c", "d", "h"]
    assert calls == {"search": 0, "range": 3}
    checkpoint = await driven.checkpoint()
    assert checkpoint is not None and checkpoint.last_uid == 8


async def test_a_range_above_the_highest_uid_announces_nothing(
    driven: Driven, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = await driven.connect(monkeypatch)
    await driven.deliver("kept")
    await driven.push()
    before = await driven.checkpoint()
    assert before is not None
    # One new message, expunged before the fetch: `n:*` with n above every UID returns the
    # highest message there is, "kept", which was announced already.
    await driven.deliver("gone")
    assert driven.session is not None
    await driven.session.noop()
    await asyncio.to_thread(driven.expunge, "gone")
    await driven.push()
    assert calls == {"search": 0, "range": 2}
    assert await driven.subjects() == ["kept"]
    assert await driven.checkpoint() == before
    # And the next message is announced as usual.
    await driven.deliver("next")
    await driven.push()
    assert await driven.subjects() == ["kept", "next"]
    after = await driven.checkpoint()
    assert after is not None and after.last_uid == before.last_uid + 2


async def test_a_burst_over_one_batch_is_searched_and_fetched_in_batches(
    driven: Driven, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = await driven.connect(monkeypatch)
    burst = [f"burst {i}" for i in range(FETCH_BATCH + 5)]
    await driven.deliver(*burst)
    await driven.push()  # more new messages than one batch: UID SEARCH, then batches
    assert calls == {"search": 1, "range": 0}
    assert await driven.subjects() == burst
    await driven.deliver("after the burst")
    await driven.push()
    assert calls == {"search": 1, "range": 1}
    assert await driven.subjects() == [*burst, "after the burst"]


class FailingOnce:
    """A pipeline that raises on the first message with subject `fail_on`; `seen`: every subject."""

    def __init__(self, pipeline: Any, fail_on: str, seen: list[str]) -> None:
        self.pipeline, self.fail_on, self.seen = pipeline, fail_on, seen

    async def process(self, mailbox: Any, message: FetchedMessage, actions: Any = None) -> Any:
        subject = message.raw.split(b"Subject: ")[1].split(b"\r\n")[0].decode()
        self.seen.append(subject)
        if subject == self.fail_on:
            self.fail_on = ""
            raise RuntimeError("the pipeline broke")
        return await self.pipeline.process(mailbox, message, actions)

    async def recover(self, mailbox: Any, actions: Any) -> None:
        await self.pipeline.recover(mailbox, actions)


async def test_a_failure_in_the_middle_of_a_push_and_a_restart_repeat_nothing(
    driven: Driven, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    driven.pipeline = FailingOnce(driven.pipeline, "three", seen)
    calls = await driven.connect(monkeypatch)
    await driven.deliver("one", "two", "three", "four")
    with pytest.raises(RuntimeError):
        await driven.push()
    assert calls == {"search": 0, "range": 1}
    assert await driven.subjects() == ["one", "two"]  # each stored with its own checkpoint
    await driven.deliver("while down")
    calls = await driven.connect(monkeypatch)  # a new process: the initial sync searches
    assert calls == {"search": 0, "range": 0}  # counted from after the initial sync
    assert await driven.subjects() == ["one", "two", "three", "four", "while down"]
    await driven.deliver("five")
    await driven.push()
    assert calls == {"search": 0, "range": 1}
    assert await driven.subjects() == ["one", "two", "three", "four", "while down", "five"]
    assert seen == ["one", "two", "three", "three", "four", "while down", "five"]


def count_appends(monkeypatch: pytest.MonkeyPatch, store: SqliteEventStore) -> list[tuple[int, int | None]]:
    """Each append to `store` from now on: (events stored, checkpoint's last UID)."""
    appends: list[tuple[int, int | None]] = []
    append = store.append

    async def counted(events: Any, checkpoint: Checkpoint | None = None) -> Any:
        stored = await append(events, checkpoint)
        appends.append((len(stored), checkpoint.last_uid if checkpoint else None))
        return stored

    monkeypatch.setattr(store, "append", counted)
    return appends


async def test_a_catch_up_is_stored_in_group_commits_and_a_push_message_by_message(
    driven: Driven, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "GROUP_COMMIT_MESSAGES", 4)
    monkeypatch.setattr(sync, "GROUP_COMMIT_SECONDS", 3600.0)
    await driven.connect(monkeypatch)
    await driven.disconnect()
    backlog = [f"backlog {i}" for i in range(10)]
    await driven.deliver(*backlog)
    appends = count_appends(monkeypatch, driven.store)
    await driven.connect(monkeypatch)  # the initial sync searches: a catch-up
    assert await driven.subjects() == backlog
    # Groups of 4, each with the checkpoint of its last message (UIDs 1-10), then the
    # mailbox.connected event.
    assert appends[:3] == [(4, 4), (4, 8), (2, 10)]
    appends.clear()
    await driven.deliver("p1", "p2")
    await driven.push()  # a push: each message its own commit
    assert appends == [(1, 11), (1, 12)]
    assert await driven.subjects() == [*backlog, "p1", "p2"]


async def test_a_group_is_held_no_longer_than_its_time_bound(
    driven: Driven, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "GROUP_COMMIT_SECONDS", 0.0)
    await driven.connect(monkeypatch)
    await driven.disconnect()
    await driven.deliver("a", "b", "c")
    appends = count_appends(monkeypatch, driven.store)
    await driven.connect(monkeypatch)
    assert appends[:3] == [(1, 1), (1, 2), (1, 3)]


async def test_a_failure_in_the_middle_of_a_catch_up_stores_what_came_before(
    driven: Driven, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "GROUP_COMMIT_SECONDS", 3600.0)
    seen: list[str] = []
    await driven.connect(monkeypatch)
    await driven.disconnect()
    await driven.deliver("one", "two", "three", "four")
    driven.pipeline = FailingOnce(driven.pipeline, "three", seen)
    with pytest.raises(RuntimeError):
        await driven.connect(monkeypatch)
    # The group held "one" and "two": stored with their checkpoint before the error went up.
    assert await driven.subjects() == ["one", "two"]
    checkpoint = await driven.checkpoint()
    assert checkpoint is not None and checkpoint.last_uid == 2
    await driven.connect(monkeypatch)
    assert await driven.subjects() == ["one", "two", "three", "four"]
    assert seen == ["one", "two", "three", "three", "four"]


class SlowToSettle:
    """A pipeline whose every message leaves work for after its event is stored (as a rule's
    journal entry does) that waits until the test lets it finish."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.settling = asyncio.Event()
        self.settle = asyncio.Event()

    async def process(self, mailbox: Any, message: FetchedMessage, actions: Any = None) -> Any:
        actions.after_store(self._after_store)
        return await self.pipeline.process(mailbox, message, actions)

    async def _after_store(self) -> None:
        self.settling.set()
        await self.settle.wait()

    async def recover(self, mailbox: Any, actions: Any) -> None:
        await self.pipeline.recover(mailbox, actions)


async def test_an_event_is_published_once_stored_before_its_rules_settle(
    driven: Driven, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing may come between an append and its publish: meanwhile another mailbox could store
    and publish a later seq, and every live stream would drop this event as already sent."""
    pipeline = SlowToSettle(driven.pipeline)
    driven.pipeline = pipeline
    await driven.connect(monkeypatch)
    await driven.deliver("acted on")
    pushing = asyncio.ensure_future(driven.push())
    try:
        await asyncio.wait_for(pipeline.settling.wait(), 15)
        stored = await driven.store.read_after(EventQuery(agent_ids=("support",)), 0, 10)
        assert [e.seq for e in driven.published] == [e.seq for e in stored]
        assert [e.data["subject"] for e in driven.published if e.type == "message.received"] == ["acted on"]
    finally:
        pipeline.settle.set()
        await pushing


async def test_mail_whose_text_decodes_to_lone_surrogates_is_announced_and_blocks_nothing(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    # UTF-7 (and UTF-16) decode "+2AA-" to a lone surrogate, which no UTF-8 (the event's JSON) can
    # carry: the event used to be unstorable, and the folder stuck behind it for good.
    await dovecot.deliver_async(
        user, mail("=?utf-7?q?+2AA-?=", body="+2AA- +2AA-", Content_Type="text/plain; charset=utf-7")
    )
    await dovecot.deliver_async(user, mail("after it"))
    events = await wait_events(idle_gateway, 2)
    assert [e["data"]["subject"] for e in events] == ["\ufffd", "after it"]
    assert events[0]["data"]["body_text_excerpt"] == "\ufffd \ufffd"
    assert await listing(idle_gateway, types="mailbox.disconnected,mailbox.error") == []


@pytest.mark.parametrize("folder", ["INBOX", "Archive"])
async def test_a_message_that_fails_every_sync_backs_off_further_each_time(
    dovecot: Dovecot,
    user: str,
    tmp_path: Path,
    start_gateway: Any,
    monkeypatch: pytest.MonkeyPatch,
    folder: str,
) -> None:
    # Failure injection: a bug that raises on one message, at every sync that meets it. The
    # watcher had counted each reconnect as established (state "connected" came before the
    # sync) and retried at the base delay forever.
    monkeypatch.setattr(watch, "NETWORK_BACKOFF", (0.2, 60.0))
    process = Pipeline.process

    async def failing(self: Pipeline, mailbox: Any, message: FetchedMessage, *args: Any) -> Any:
        if b"Subject: poison" in message.raw:
            raise RuntimeError("a bug")
        return await process(self, mailbox, message, *args)

    monkeypatch.setattr(Pipeline, "process", failing)
    # Archive: two folders on one NOTIFY connection, the poison in the second one's first sync.
    folders = ["INBOX"] if folder == "INBOX" else ["INBOX", "Archive"]
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], imap={"folders": folders}))
    await wait_for(lambda: idle(gw), what="watcher idle")
    if folder == "INBOX":
        await dovecot.deliver_async(user, mail("poison"))
    else:
        await asyncio.to_thread(append, dovecot, user, folder, mail("poison"))
    found: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + 30
    while len(found) < 3:  # each failure: one event per folder of the connection; INBOX's
        assert asyncio.get_running_loop().time() < deadline, f"only {len(found)} failures: {found}"
        await asyncio.sleep(0.1)
        # The first failure loses an established connection; the next ones fail a first sync.
        found = [
            e
            for e in await listing(gw, types="mailbox.*")
            if e["type"] in ("mailbox.disconnected", "mailbox.error") and e["data"]["folder"] == "INBOX"
        ]
    delays = [e["data"]["retry_in_ms"] for e in found[:3]]
    # Steps of 0.2, 0.4 and 0.8 s, each jittered down to no less than half.
    assert delays[0] <= 200 and 200 <= delays[1] <= 400 and delays[2] >= 400, delays


async def test_a_folder_recreated_under_a_notify_connection_is_announced_as_changed(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    """On its own connection a watcher meets a new UIDVALIDITY when it reconnects, and says so in
    `mailbox.connected`; on a NOTIFY connection shared by folders it meets it at a SELECT, with
    the connection up: the event must come all the same."""
    await asyncio.to_thread(imap_do, dovecot, user, lambda c: c.create("Archive"))
    gw = await start_gateway(
        gateway_config(tmp_path, dovecot, [user], imap={"folders": ["INBOX", "Archive"]})
    )
    await wait_for(lambda: idle(gw), what="watchers idle")
    await asyncio.to_thread(append, dovecot, user, "Archive", mail("old archived"))
    await wait_events(gw, 1)
    await dovecot.deliver_async(user, mail("inbox"))  # INBOX selected again: Archive is not
    await wait_events(gw, 2)
    old_validity = next(w["uidvalidity"] for w in gw.daemon.pool.health() if w["folder"] == "Archive")
    await asyncio.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock: make it differ
    await asyncio.to_thread(imap_do, dovecot, user, lambda c: (c.delete("Archive"), c.create("Archive")))
    await asyncio.to_thread(append, dovecot, user, "Archive", mail("new archived"))
    events = await wait_events(gw, 3)
    assert [e["data"]["subject"] for e in events] == ["old archived", "inbox", "new archived"]
    archive = [
        e["data"] for e in await listing(gw, types="mailbox.connected") if e["data"]["folder"] == "Archive"
    ]
    assert archive[-1]["uidvalidity"] != old_validity
    assert archive[-1]["uidvalidity_changed"] is True and archive[-1]["notify"] is True
    disconnected = await listing(gw, types="mailbox.disconnected")
    assert disconnected == [], "the connection stayed up"
