"""The bus and the SSE stream without IMAP: indexed fan-out, one waiter per stream, and every way
a stream ends (shutdown, revocation, max_seconds, overflow), against the real HTTP application."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gatewayd.api.app import create_app
from gatewayd.api.context import Gateway, SlowClient
from gatewayd.api.stream import REPLAY_FIRST_PAGE, REPLAY_PAGE
from gatewayd.bus import Bus
from gatewayd.config import hash_token, parse_config
from gatewayd.events import Event, NewEvent
from gatewayd.store import EventQuery, matches
from gatewayd.store.sqlite import SqliteEventStore
from tests.api_server import ACME_ADMIN, GLOBEX_ADMIN, fleet, serving
from tests.sse import Frame, SseReader
from tests.waiting import hold_loop_until

TOKEN = "fanout-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAP = {"host": "127.0.0.1", "port": 1, "tls": "none", "password": "p"}  # never used


def event(seq: int, agent: str, mailbox: str | None, type_: str = "message.received", **data: Any) -> Event:
    return Event(seq, str(seq), type_, "2026-01-01T00:00:00.000Z", agent, mailbox, data, None)


# -- the bus -------------------------------------------------------------------------------------


def test_indexed_publish_delivers_exactly_what_matches_would() -> None:
    rng = random.Random(7)
    agents, mailboxes = ["a", "b", "c"], ["m1", "m2", "m3", None]
    types = ["message.received", "mailbox.connected", "message.reported"]
    bus = Bus()
    subscribers: list[tuple[EventQuery | None, Any]] = []
    for _ in range(60):
        kind = rng.randrange(4)
        if kind == 3:
            subscribers.append((None, bus.subscribe(lambda e: e.type == "mailbox.connected", 0)))
            continue
        query = EventQuery(
            agent_ids=tuple(rng.sample(agents, rng.randint(1, 2))),
            mailbox_ids=tuple(rng.sample(["m1", "m2", "m3"], rng.randint(1, 2))) if kind == 1 else (),
            type_patterns=("message.*",) if kind == 2 else (),
        )
        subscribers.append((query, bus.subscribe_query(query, 0)))
    # Unsubscribing keeps the index right (groups emptied and refilled).
    for _query, subscription in subscribers[::5]:
        bus.unsubscribe(subscription)
    kept = [entry for i, entry in enumerate(subscribers) if i % 5]
    assert len(bus) == len(kept)
    published = [
        event(n, rng.choice(agents), rng.choice(mailboxes), rng.choice(types)) for n in range(1, 201)
    ]
    bus.publish(published[:100])
    for one in published[100:]:
        bus.publish([one])
    for subscribed, subscription in kept:
        if subscribed is None:
            wanted = [e for e in published if e.type == "mailbox.connected"]
        else:
            wanted = [e for e in published if matches(subscribed, e)]
        assert subscription.take() == wanted
    for _query, subscription in subscribers[::5]:
        assert subscription.take() == []


async def test_a_full_queue_overflows_once_and_wakes_its_reader() -> None:
    bus = Bus()
    cut: list[int] = []
    query = EventQuery(agent_ids=("a",))
    subscription = bus.subscribe_query(query, 2, lambda: cut.append(1))
    waiting = asyncio.ensure_future(subscription.wait())
    await asyncio.sleep(0)
    bus.publish([event(n, "a", "m") for n in (1, 2, 3, 4)])
    await asyncio.wait_for(waiting, 1)
    assert subscription.overflowed and cut == [1]
    assert [e.seq for e in subscription.take()] == [1, 2]
    # Overflowed: nothing more is queued, and wait() no longer blocks.
    bus.publish([event(5, "a", "m")])
    assert subscription.take() == []
    await asyncio.wait_for(subscription.wait(), 1)


async def test_wake_ends_a_wait_and_get_returns_events_in_order() -> None:
    bus = Bus()
    subscription = bus.subscribe(lambda e: True, 0)
    waiting = asyncio.ensure_future(subscription.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    subscription.wake()
    await asyncio.wait_for(waiting, 1)
    getting = asyncio.ensure_future(subscription.get())
    await asyncio.sleep(0)
    bus.publish([event(1, "a", None), event(2, "b", "m")])
    assert (await asyncio.wait_for(getting, 1)).seq == 1
    assert (await subscription.get()).seq == 2 and subscription.pending() == 0


# -- the stream ----------------------------------------------------------------------------------


class _NoWatchers:
    def acquire(self, mailbox_ids: Any) -> None:
        pass

    def release(self, mailbox_ids: Any) -> None:
        pass

    def health(self) -> list[dict[str, object]]:
        return []


class Env:
    def __init__(self, gateway: Gateway, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.gateway, self.server, self.session = gateway, server, session

    @property
    def url(self) -> str:
        return str(self.server.make_url("/events"))

    async def publish(self, count: int, mailbox: str = "m1") -> list[Event]:
        new = [NewEvent("message.received", "a", mailbox, {"n": n, "text": 'é\n"x"'}) for n in range(count)]
        stored = await self.gateway.store.append(new)
        self.gateway.bus.publish(stored)
        return stored

    async def open(self, **params: str) -> tuple[aiohttp.ClientResponse, SseReader]:
        response = await self.session.get(self.url, headers=AUTH, params=params)
        assert response.status == 200, await response.text()
        return response, SseReader(response)

    async def streams(self, count: int) -> None:
        """Until `count` streams wait live (or longer replays are done)."""
        for _ in range(500):
            if len(self.gateway.streams) == count and all(
                getattr(s, "_subscription", None) is not None for s in self.gateway.streams
            ):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} live streams expected, {len(self.gateway.streams)} open")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    data = {
        "store": {"path": str(tmp_path / "events.db")},
        "server": {"subscriber_queue_size": 20, "shutdown_grace_seconds": 1, "max_streams_per_token": None},
        "agents": [
            {
                "id": "a",
                "token_sha256": [hash_token(TOKEN)],
                "mailboxes": [
                    {"id": mailbox, "imap": IMAP | {"username": mailbox}} for mailbox in ("m1", "m2")
                ],
            }
        ],
    }
    config = parse_config(data, env={}, base_dir=tmp_path)
    store = SqliteEventStore(config.store.path)
    await store.open()
    gateway = Gateway(config, store, Bus(), _NoWatchers())  # type: ignore[arg-type]
    server = TestServer(create_app(gateway), handler_cancellation=True)
    await server.start_server()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        yield Env(gateway, server, session)
    finally:
        gateway.grace_over.set()
        await session.close()
        await server.close()
        await store.close()


async def test_live_events_then_a_ping_after_quiet(env: Env) -> None:
    response, reader = await env.open(ping="1", mailbox="m1")
    await env.streams(1)
    stored = await env.publish(3)
    await env.publish(2, mailbox="m2")  # filtered out
    frames = [await reader.next() for _ in range(3)]
    assert [f.id for f in frames] == [e.id for e in stored]
    assert [f.json for f in frames] == [e.envelope() for e in stored]
    loop = asyncio.get_running_loop()
    started = loop.time()
    comments = len(reader.comments)
    more = await env.publish(1)
    assert (await reader.next()).id == more[0].id
    # Nothing else comes: the next thing on the wire is a ping, no sooner than a second after the
    # event (the ping timer runs from the last write, however many events came before).
    while "ping" not in reader.comments[comments:]:
        with pytest.raises(TimeoutError):
            await reader.next(timeout=0.2)
        assert loop.time() - started < 30, "no ping"
    assert reader.comments[comments:] == ["ping"]
    assert loop.time() - started >= 0.9
    response.close()


async def test_the_default_ping_interval_never_exceeds_the_servers_maximum(tmp_path: Path) -> None:
    """An operator lowers server.max_ping_seconds for a proxy that cuts idle connections sooner
    than the default 15 s: streams that ask for no interval must ping within it too."""
    async with serving(fleet(tmp_path, bot_parent="acme", max_ping_seconds=1)) as api:
        headers = {"Authorization": f"Bearer {ACME_ADMIN}"}
        response = await api.session.get(f"{api.url}/events", headers=headers, params={"types": "message.*"})
        assert response.status == 200
        reader = SseReader(response)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while "ping" not in reader.comments:
            with pytest.raises(TimeoutError):
                await reader.next(timeout=0.5)
            assert loop.time() - started < 10, "no ping within 10 s (the default 15 s interval)"
        response.close()


async def test_max_seconds_ends_the_stream_without_a_closing_event(env: Env) -> None:
    response, reader = await env.open(max_seconds="1", ping="30")
    await env.streams(1)
    stored = await env.publish(1)
    assert (await reader.next()).id == stored[0].id
    with pytest.raises(EOFError):
        await reader.next(timeout=5)
    response.close()


async def test_shutdown_sends_closing_with_the_last_id_then_waits_for_the_grace(env: Env) -> None:
    stored = await env.publish(2)
    response, reader = await env.open(since="0", ping="30")
    assert [(await reader.next()).id for _ in range(2)] == [e.id for e in stored]
    await env.streams(1)
    env.gateway.begin_closing()
    closing = await reader.next()
    assert closing.event == "closing" and closing.id is None
    assert closing.json["reason"] == "shutdown" and closing.json["last_event_id"] == stored[-1].id
    # Held open until the grace is over.
    await asyncio.sleep(0.2)
    assert len(env.gateway.streams) == 1
    env.gateway.grace_over.set()
    with pytest.raises(EOFError):
        await reader.next(timeout=5)
    response.close()


async def test_an_ended_stream_gets_closing_with_its_reason(env: Env) -> None:
    first, first_reader = await env.open(ping="30")
    second, second_reader = await env.open(ping="30", mailbox="m2")
    await env.streams(2)
    stored = await env.publish(1)
    assert (await first_reader.next()).id == stored[0].id
    for stream in list(env.gateway.streams):
        stream.end("token_revoked")
    # The second was sent nothing: its resume point is where it started (the empty store's 0).
    for reader, last in ((first_reader, stored[0].id), (second_reader, "0")):
        closing = await reader.next()
        assert closing.event == "closing" and closing.id is None
        assert closing.json["reason"] == "token_revoked" and closing.json["last_event_id"] == last
        with pytest.raises(EOFError):
            await reader.next(timeout=5)
    first.close()
    second.close()


@pytest.mark.parametrize("resume", ["live", "since_0", "last_event_id"])
async def test_closing_before_any_event_names_where_the_stream_started(env: Env, resume: str) -> None:
    """A stream sent no event yet closes with its starting point, never null: reconnecting with it
    gets exactly what came after (nothing missed, nothing repeated)."""
    before = await env.publish(3, mailbox="m1")
    # Each stream watches m2, where nothing is stored: a replay sends nothing either.
    params, headers = {"ping": "30", "mailbox": "m2"}, dict(AUTH)
    start = before[-1].id
    if resume == "since_0":
        params["since"], start = "0", "0"
    elif resume == "last_event_id":
        headers["Last-Event-ID"] = start = before[0].id
    response = await env.session.get(env.url, headers=headers, params=params)
    assert response.status == 200, await response.text()
    await env.streams(1)
    await env.publish(1, mailbox="m1")  # after the start, but filtered out
    for stream in list(env.gateway.streams):
        stream.end("token_revoked")
    closing = await SseReader(response).next()
    assert closing.event == "closing" and closing.json["last_event_id"] == start
    response.close()
    after = await env.publish(2, mailbox="m2")
    again = await env.session.get(env.url, headers={**AUTH, "Last-Event-ID": start}, params=params)
    reader = SseReader(again)
    assert [(await reader.next()).id for _ in range(2)] == [e.id for e in after]
    again.close()


def hold_second_page(env: Env, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """A replay's reads after its first page wait until the returned event is set."""
    second_page = asyncio.Event()
    read_after = env.gateway.store.read_after

    async def read_after_gated(query: EventQuery, after_seq: int, limit: int) -> list[Event]:
        if after_seq:
            await second_page.wait()
        return await read_after(query, after_seq, limit)

    monkeypatch.setattr(env.gateway.store, "read_after", read_after_gated)
    return second_page


async def test_shutdown_stops_a_replay_and_sends_closing_with_the_last_id_written(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = await env.publish(REPLAY_FIRST_PAGE + 10)
    second_page = hold_second_page(env, monkeypatch)  # shutdown begins while it is read
    response, reader = await env.open(since="0", ping="30")
    first_page = [(await reader.next()).id for _ in range(REPLAY_FIRST_PAGE)]
    assert first_page == [e.id for e in stored[:REPLAY_FIRST_PAGE]]
    env.gateway.begin_closing()
    second_page.set()
    closing = await reader.next()
    assert closing.event == "closing" and closing.id is None
    assert closing.json["reason"] == "shutdown" and closing.json["last_event_id"] == first_page[-1]
    env.gateway.grace_over.set()
    with pytest.raises(EOFError):
        await reader.next(timeout=5)
    response.close()


async def test_shutdown_mid_replay_never_sends_live_events_past_the_unreplayed_ones(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live events queue during a replay; a shutdown stops the replay at a page: sending them
    then would move the client's resume point past the events the replay never sent."""
    stored = await env.publish(REPLAY_FIRST_PAGE + 10)
    second_page = hold_second_page(env, monkeypatch)
    response, reader = await env.open(since="0", ping="30")
    first_page = [(await reader.next()).id for _ in range(REPLAY_FIRST_PAGE)]
    live = await env.publish(3)  # queued for the stream while its replay waits
    env.gateway.begin_closing()
    second_page.set()
    closing = await reader.next()
    assert closing.event == "closing", f"{closing.event} {closing.id} sent after a partial replay"
    assert closing.json["last_event_id"] == first_page[-1]
    env.gateway.grace_over.set()
    response.close()
    # Resuming from it misses nothing and repeats nothing.
    env.gateway.closing_event.clear()
    env.gateway.grace_over.clear()
    again = await env.session.get(env.url, headers={**AUTH, "Last-Event-ID": closing.json["last_event_id"]})
    rest = SseReader(again)
    assert [(await rest.next()).id for _ in range(13)] == [e.id for e in [*stored[REPLAY_FIRST_PAGE:], *live]]
    again.close()


async def test_a_client_that_stops_reading_is_cut_off_and_resumes_without_loss(env: Env) -> None:
    # A raw client that sends its request and never reads: once the socket buffers are full,
    # events queue, and past subscriber_queue_size (20) the stream is cut off.
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    url = env.server.make_url("/events")
    await asyncio.get_running_loop().sock_connect(client, (url.host, url.port))
    request = f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    await asyncio.get_running_loop().sock_sendall(client, request.encode())
    try:
        await env.streams(1)
        stored: list[Event] = []
        for _ in range(200):
            new = [NewEvent("message.received", "a", "m1", {"pad": "x" * 50_000}) for _ in range(5)]
            published = await env.gateway.store.append(new)
            env.gateway.bus.publish(published)
            stored += published
            await asyncio.sleep(0.01)
            if len(env.gateway.bus) == 0:
                break
        assert len(env.gateway.bus) == 0, "the stalled client was never cut off"
        assert env.gateway.slow_clients == {SlowClient.OVERFLOW: 1}
    finally:
        client.close()
    response, reader = await env.open(ping="30", since="0")
    assert [(await reader.next()).id for _ in range(len(stored))] == [e.id for e in stored]
    response.close()


async def test_shutdown_first_writes_what_a_slow_client_has_queued_then_closing(env: Env) -> None:
    # A raw client that stops reading: once the socket buffers are full, events queue for it
    # (fewer than subscriber_queue_size, so it is not cut off); then shutdown begins.
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    url = env.server.make_url("/events")
    await loop.sock_connect(client, (url.host, url.port))
    await loop.sock_sendall(
        client, f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    try:
        await env.streams(1)
        (stream,) = env.gateway.streams
        stored: list[Event] = []
        while not stream._subscription or not stream._subscription.pending():  # type: ignore[attr-defined]
            published = await env.gateway.store.append(
                [NewEvent("message.received", "a", "m1", {"pad": "x" * 50_000})]
            )
            env.gateway.bus.publish(published)
            stored += published
            await asyncio.sleep(0.01)
            assert len(stored) < 500, "events never queued"
        queued = stream._subscription.pending()  # type: ignore[attr-defined]
        assert 0 < queued < 20
        env.gateway.begin_closing()
        received = b""
        while b"event: closing" not in received:
            chunk = await asyncio.wait_for(loop.sock_recv(client, 1 << 16), 10)
            assert chunk, "the stream ended without closing"
            received += chunk
    finally:
        client.close()
    ids = re.findall(rb"(?m)^id: (\S+)$", received)
    assert [i.decode() for i in ids] == [e.id for e in stored]  # every event, queued ones included
    closing = json.loads(re.search(rb"event: closing\r?\ndata: (.*)", received).group(1))  # type: ignore[union-attr]
    assert closing["last_event_id"] == stored[-1].id


async def test_replay_in_pages_then_live_without_gap_or_duplicate(env: Env) -> None:
    count = REPLAY_FIRST_PAGE + REPLAY_PAGE + 7
    stored = await env.publish(count)
    response, reader = await env.open(since="0", ping="30")
    ids = [(await reader.next()).id for _ in range(count)]
    assert ids == [e.id for e in stored]
    await env.streams(1)
    live = await env.publish(2)
    assert [(await reader.next()).id for _ in range(2)] == [e.id for e in live]
    response.close()


async def test_a_gap_names_the_first_event_of_the_tokens_own_tenant(tmp_path: Path) -> None:
    """Retention left another tenant's event oldest: the gap must point at the first event this
    token can be sent (the next one issued when none is left), not at one it can never see."""
    config = fleet(tmp_path, bot_parent="acme")
    store = SqliteEventStore(config.store.path)
    await store.open()
    # No watchers: none of their events may land between the replay's reads.
    server = TestServer(create_app(Gateway(config, store, Bus(), _NoWatchers())))  # type: ignore[arg-type]
    await server.start_server()
    try:
        # `gone` is an agent no longer configured: nobody is sent its events.
        agents = ["acme", "globex", "gone", "acme"]
        stored = await store.append([NewEvent("note.test", a, f"{a}-in", {}) for a in agents])
        assert await store.prune(None, 2) == 2  # gone's event is the oldest left, then acme's
        async with aiohttp.ClientSession() as session:

            async def first_frames(token: str, count: int) -> list[Frame]:
                auth = {"Authorization": f"Bearer {token}"}
                url = server.make_url("/events")
                async with session.get(url, headers=auth, params={"since": "1"}) as response:
                    reader = SseReader(response)
                    return [await reader.next() for _ in range(count)]

            acme_gap, acme_first = await first_frames(ACME_ADMIN, 2)
            [globex_gap] = await first_frames(GLOBEX_ADMIN, 1)
    finally:
        await server.close()
        await store.close()
    assert acme_gap.event == "stream.gap" and acme_gap.json["requested"] == "1"
    assert acme_gap.json["first_available_id"] == acme_first.id == stored[3].id
    assert globex_gap.event == "stream.gap"
    assert globex_gap.json["first_available_id"] == str(stored[-1].seq + 1)


async def test_a_live_stream_misses_no_event_when_an_append_went_to_the_writer(env: Env) -> None:
    """Two mailboxes append at once; one append waits for a lock held by another process and
    commits on the store's writer thread. The other, made just after that commit, must not reach
    the stream first: the stream would drop the earlier event as already sent, for good."""
    response, reader = await env.open(ping="30")
    await env.streams(1)
    store = env.gateway.store
    assert isinstance(store, SqliteEventStore)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(env.publish(1, mailbox="m1"))
        await asyncio.sleep(0.05)  # it waits for the lock on the writer's thread
        other.execute("COMMIT")
        # Hold the loop until the thread has committed, so its result waits in the loop's queue.
        last_seq = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
        hold_loop_until(lambda: other.execute(last_seq).fetchone() == (1,), what="the thread's commit")
        second = asyncio.ensure_future(env.publish(1, mailbox="m2"))
        stored = [*await first, *await second]
    finally:
        other.close()
    assert [e.seq for e in stored] == [1, 2]
    assert (await reader.next()).id == "1"
    assert (await reader.next()).id == "2"
    response.close()


async def test_many_subscribers_each_get_every_event_once(env: Env) -> None:
    readers = [await env.open(ping="30", mailbox="m1") for _ in range(200)]
    await env.streams(200)
    stored = await env.publish(5)
    stored += await env.publish(3)
    for response, reader in readers:
        frames = [await reader.next() for _ in range(8)]
        assert [f.id for f in frames] == [e.id for e in stored]
        assert json.loads(frames[0].data)["data"]["text"] == 'é\n"x"'
        response.close()


async def test_a_client_that_stops_reading_a_quiet_stream_is_cut_off_and_frees_its_slot(
    tmp_path: Path,
) -> None:
    """Once its replay is written nothing more matches, so only pings follow: a client that stopped
    reading used to keep its stream (and subscriber) until TCP gave up, hours later; a vanished one
    too. It is cut off after a few pings find what was written still untaken. A reading one stays.

    One big replayed event fills the stalled client's buffers at once; pings alone would take
    about 70 of them even with the smallest receive buffer the kernel allows."""
    config = fleet(tmp_path, bot_parent="acme", max_ping_seconds=1)
    store = SqliteEventStore(config.store.path)
    await store.open()
    await store.append([NewEvent("bulk.big", "acme", "acme-in", {"pad": "x" * 30_000})])
    await store.close()
    auth = {"Authorization": f"Bearer {ACME_ADMIN}"}
    quiet = "/events?since=0&types=bulk.*"
    async with serving(config) as api:
        loop = asyncio.get_running_loop()

        async def health() -> dict[str, Any]:
            async with api.session.get(api.url + "/healthz") as response:
                body: dict[str, Any] = await response.json()
                return body

        reading = SseReader(await api.session.get(api.url + quiet, headers=auth))
        assert (await reading.next()).event == "bulk.big"
        stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the least the kernel allows
        stalled.setblocking(False)
        try:
            host, port = api.url.removeprefix("http://").rstrip("/").split(":")
            await loop.sock_connect(stalled, (host, int(port)))
            request = f"GET {quiet} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_ADMIN}\r\n\r\n"
            await loop.sock_sendall(stalled, request.encode())
            deadline = loop.time() + 60  # a few pings; generous for a busy machine
            body = await health()
            seen_both = body["subscribers"] == 2
            while body["subscribers"] != 1 or not seen_both:
                assert loop.time() < deadline, f"the stalled stream was never cut off: {body}"
                await asyncio.sleep(0.1)
                body = await health()
                seen_both = seen_both or body["subscribers"] == 2
        finally:
            stalled.close()
        assert body["streams_cut_off"] == {"overflow": 0, "stalled": 1}
        # The reading client kept its stream: its pings still come.
        pings, deadline = reading.comments.count("ping"), loop.time() + 30
        while reading.comments.count("ping") == pings:
            with pytest.raises(TimeoutError):
                await reading.next(timeout=0.5)
            assert loop.time() < deadline, "the reading client got no more pings"
        assert (await health())["subscribers"] == 1


def test_the_frame_is_what_json_dumps_would_write() -> None:
    tricky = 'a"b\\c\n\x01\u2028é\U0001f600'
    for mailbox in (tricky, None):
        made = Event(12, "12", "message.received", "2026-01-01T00:00:00.000Z", tricky, mailbox, {"t": tricky})
        envelope = json.dumps(made.envelope(), ensure_ascii=False, separators=(",", ":"))
        assert made.to_json() == envelope
        frame = f"id: 12\nevent: message.received\ndata: {envelope}\n\n".encode()
        assert made.sse_frame == frame
        assert made.sse_chunk == b"%x\r\n" % len(frame) + frame + b"\r\n"
        # A replayed event (data kept as the stored text) frames to the same bytes.
        stored = Event(12, "12", made.type, made.created_at, tricky, mailbox, data_json=made.data_json)
        assert stored.sse_frame == frame
