"""Delivery over LMTP → real Dovecot → gatewayd's watcher → store → SSE, end to end."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from httpx_sse import aconnect_sse

from gatewayd.events import NewEvent
from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import OTHER_TOKEN, TOKEN, gateway_config
from tests.sse import SseReader, date_now, mail, open_stream
from tests.waiting import idle, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_delivered_message_reaches_stream_with_metadata(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, idle_gateway.url)
        assert reader.response.headers["Content-Type"].startswith("text/event-stream")
        assert reader.response.headers["Cache-Control"] == "no-cache"
        assert reader.response.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in reader.response.headers
        first = await reader.response.content.readline()
        assert first == b"retry: 500\n"  # no BOM, retry first
        assert await reader.response.content.readline() == b": connected\n"

        body = (
            b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>\r\nTo: Agent <agent@example.com>\r\n"
            b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\nMessage-ID: <m1@example.org>\r\n"
            + f"Date: {date_now()}\r\n\r\nPlease call me back.\r\n".encode()
        )
        await dovecot.deliver_async(user, body)
        frame = await reader.until(lambda f: f.event == "message.received")
    envelope = frame.json
    assert frame.id == envelope["id"]
    assert envelope["type"] == "message.received"
    assert envelope["agent_id"] == "support"
    assert envelope["mailbox_id"] == f"{user}-inbox"
    data = envelope["data"]
    assert data["subject"] == "Grüße"
    assert data["from"] == {"address": "joerg@example.org", "name": "Jörg"}
    assert data["message_id"] == "<m1@example.org>"
    assert data["folder"] == "INBOX" and data["uid"] >= 1 and data["uidvalidity"] > 0
    assert data["body_text_excerpt"] == "Please call me back."
    assert "\\Seen" not in data["flags"]


async def test_message_is_not_marked_seen(dovecot: Dovecot, user: str, idle_gateway: Any) -> None:
    await dovecot.deliver_async(user, mail("unread"))
    await wait_for(
        lambda: (
            any((dovecot.maildir(user) / "cur").iterdir()) or any((dovecot.maildir(user) / "new").iterdir())
        )
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            listing = await (
                await session.get(
                    f"{idle_gateway.url}/v1/events", headers=AUTH, params={"types": "message.*"}
                )
            ).json()
            if listing["events"]:
                break
            await asyncio.sleep(0.05)
    assert listing["events"], "no event"
    # Maildir keeps \Seen as the S flag in the file name.
    names = [p.name for p in (dovecot.maildir(user) / "cur").iterdir()] + [
        p.name for p in (dovecot.maildir(user) / "new").iterdir()
    ]
    assert names and not any(":2," in n and "S" in n.split(":2,")[1] for n in names)


async def test_resume_by_last_event_id_and_since_while_mail_keeps_arriving(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    subjects = [f"burst {i}" for i in range(12)]

    async def deliver_all() -> None:
        for subject in subjects:
            await dovecot.deliver_async(user, mail(subject))
            await asyncio.sleep(0.15)

    delivery = asyncio.create_task(deliver_all())
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, idle_gateway.url, {"types": "message.received"})
        seen = await reader.messages(3, timeout=20)
        reader.response.close()  # the client drops mid-burst
        await asyncio.sleep(0.4)
        reader = await open_stream(
            session, idle_gateway.url, {"types": "message.received"}, {"Last-Event-ID": seen[-1].event_id}
        )
        seen += await reader.messages(len(subjects) - 3, timeout=30)
        await delivery
        ids = [frame.event_id for frame in seen]
        assert [frame.json["data"]["subject"] for frame in seen] == subjects
        assert len(set(ids)) == len(ids)
        assert [int(i) for i in ids] == sorted(int(i) for i in ids)

        # since= an id replays exactly what follows it
        reader = await open_stream(
            session, idle_gateway.url, {"types": "message.received", "since": seen[5].event_id}
        )
        again = await reader.messages(len(subjects) - 6)
        assert [f.id for f in again] == ids[6:]
        # Last-Event-ID wins over since=
        reader = await open_stream(
            session,
            idle_gateway.url,
            {"types": "message.received", "since": seen[0].event_id},
            {"Last-Event-ID": seen[9].event_id},
        )
        assert [f.id for f in await reader.messages(2)] == ids[10:]
        # since= a timestamp replays from that moment on
        moment = seen[4].json["created_at"]
        reader = await open_stream(session, idle_gateway.url, {"types": "message.received", "since": moment})
        frames = await reader.messages(len(subjects) - 4)
        assert frames[0].id == ids[4]


async def test_filters_types_wildcards_mailbox_from(
    dovecot: Dovecot, tmp_path: Path, start_gateway: Any
) -> None:
    users = [f"filt{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in users:
        dovecot.add_user(name)
    gw = await start_gateway(gateway_config(tmp_path, dovecot, users))
    await wait_for(lambda: idle(gw), what="watchers idle")
    async with aiohttp.ClientSession() as session:
        wildcard = await open_stream(session, gw.url, {"event_types": "message.*"})
        camel = await open_stream(session, gw.url, {"eventTypes": "mailbox.*,message.rec*"})
        only_second = await open_stream(session, gw.url, {"mailbox": f"{users[1]}-inbox"})
        from_domain = await open_stream(session, gw.url, {"from": "@Partner.example"})
        from_address = await open_stream(session, gw.url, {"from": "ann@partner.example"})
        await dovecot.deliver_async(users[0], mail("one", sender="Zed <zed@elsewhere.example>"))
        await dovecot.deliver_async(users[1], mail("two", sender="Bea <bea@partner.example>"))
        await dovecot.deliver_async(users[0], mail("three", sender="Ann <ann@partner.example>"))

        def subjects(frames: list[Any]) -> list[str]:
            # Two mailboxes, two watchers: their relative order is not defined.
            return sorted(f.json["data"]["subject"] for f in frames)

        assert subjects(await wildcard.messages(3)) == ["one", "three", "two"]
        assert subjects(await camel.messages(3)) == ["one", "three", "two"]
        assert subjects(await only_second.messages(1)) == ["two"]
        assert subjects(await from_domain.messages(2)) == ["three", "two"]
        assert subjects(await from_address.messages(1)) == ["three"]
        # Nothing else is queued for the narrow filters: a ping comes next, not an event.
        with pytest.raises(TimeoutError):
            await only_second.messages(1, timeout=1.5)


async def test_json_listing_newest_first_with_cursor(dovecot: Dovecot, user: str, idle_gateway: Any) -> None:
    for i in range(5):
        await dovecot.deliver_async(user, mail(f"list {i}"))
    async with aiohttp.ClientSession() as session:

        async def page(**params: str) -> Any:
            response = await session.get(
                f"{idle_gateway.url}/v1/events", headers=AUTH, params={"types": "message.received", **params}
            )
            assert response.status == 200
            return await response.json()

        for _ in range(300):
            if len((await page(limit="500"))["events"]) == 5:
                break
            await asyncio.sleep(0.05)
        first = await page(limit="2")
        assert [e["data"]["subject"] for e in first["events"]] == ["list 4", "list 3"]
        second = await page(limit="2", cursor=first["next_cursor"])
        assert [e["data"]["subject"] for e in second["events"]] == ["list 2", "list 1"]
        third = await page(limit="2", cursor=second["next_cursor"])
        assert [e["data"]["subject"] for e in third["events"]] == ["list 0"]
        assert third["next_cursor"] is None
        # The stream is also reachable at /v1/events with Accept: text/event-stream.
        response = await session.get(
            f"{idle_gateway.url}/v1/events",
            headers={**AUTH, "Accept": "text/event-stream"},
            params={"since": "0"},
        )
        frames = await SseReader(response).messages(5)
        assert [f.json["data"]["subject"] for f in frames] == [f"list {i}" for i in range(5)]


async def test_third_party_client_httpx_sse_resumes(dovecot: Dovecot, user: str, idle_gateway: Any) -> None:
    await dovecot.deliver_async(user, mail("first"))
    await dovecot.deliver_async(user, mail("second"))
    received: list[str] = []
    last_id = "0"
    async with httpx.AsyncClient(timeout=20) as client:
        for _ in range(2):  # two connections, each resuming from the last id the client saw
            headers = {**AUTH, "Last-Event-ID": last_id}
            async with aconnect_sse(
                client,
                "GET",
                f"{idle_gateway.url}/v1/events/stream",
                headers=headers,
                params={"types": "message.received"},
            ) as source:
                async for sse in source.aiter_sse():
                    if sse.event != "message.received":
                        continue  # httpx-sse also yields the opening `retry:` block, with no data
                    received.append(sse.json()["data"]["subject"])
                    last_id = sse.id
                    break
    assert received == ["first", "second"]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 401, "invalid_token"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401, "unauthorized"),
    ],
)
async def test_bad_tokens_are_refused(
    dovecot: Dovecot,
    user: str,
    tmp_path: Path,
    start_gateway: Any,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], watch="on_demand"))
    async with aiohttp.ClientSession() as session:
        for path in ("/events", "/v1/events/stream", "/v1/events"):
            response = await session.get(gw.url + path, headers=headers)
            assert response.status == status
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["error"]["code"] == code


async def test_another_agents_mailbox_and_events_stay_hidden(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    await dovecot.deliver_async(user, mail("private"))
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            mine = await (
                await session.get(
                    f"{idle_gateway.url}/v1/events", headers=AUTH, params={"types": "message.*"}
                )
            ).json()
            if mine["events"]:
                break
            await asyncio.sleep(0.05)
        assert mine["events"]
        response = await session.get(
            f"{idle_gateway.url}/events", headers=other, params={"mailbox": f"{user}-inbox"}
        )
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
        theirs = await (await session.get(f"{idle_gateway.url}/v1/events", headers=other)).json()
        assert theirs["events"] == []
        # Replaying everything from the start with the other token yields nothing of ours.
        response = await session.get(
            f"{idle_gateway.url}/events", headers=other, params={"since": "0", "max_seconds": "1"}
        )
        assert "private" not in await response.text()


@pytest.mark.parametrize(
    "params",
    [
        {"ping": "abc"},
        {"ping": "0"},
        {"since": "yesterday"},
        {"since": "2026-11-21T10:00:00"},
        {"types": "message received"},
        {"types": "a", "eventTypes": "b"},
        {"from": "not an address"},
        {"max_seconds": "-1"},
        {"mailbox": ""},
    ],
)
async def test_bad_stream_parameters_are_400(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, params: dict[str, str]
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], watch="on_demand"))
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{gw.url}/events", headers=AUTH, params=params)
        assert response.status == 400, params
        body = await response.json()
        assert body["error"]["code"] == "bad_request" and body["error"]["message"]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"cursor": "abc"}])
async def test_bad_listing_parameters_are_400(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, params: dict[str, str]
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], watch="on_demand"))
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{gw.url}/v1/events", headers=AUTH, params=params)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_request"
        assert (await session.get(f"{gw.url}/nope", headers=AUTH)).status == 404
        response = await session.post(f"{gw.url}/events", headers=AUTH)
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "method_not_allowed"


def _slow_stream(port: int, path: str) -> http.client.HTTPResponse:
    """A stream whose client reads nothing until told: a receive buffer too small to hold more
    than a few events, so the server's replay waits on its writes (blocking; run it in a thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


def _frames_until(response: http.client.HTTPResponse, last: Any) -> list[tuple[str, str | None, Any]]:
    """(event, id, data) of each frame, until the one `last` accepts (blocking)."""
    frames: list[tuple[str, str | None, Any]] = []
    event, event_id, data = "message", None, None
    while True:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif not line and data is not None:
            frames.append((event, event_id, data))
            if last(frames[-1]):
                return frames
            event, event_id, data = "message", None, None


async def test_retention_overtaking_a_replay_is_a_gap_event_not_a_silent_loss(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], watch="on_demand"))
    store = gw.daemon.store
    total, kept, pad = 4600, 300, "x" * 5000  # the second page alone is far more than the buffers
    for start in range(0, total, 200):
        await store.append(
            [
                NewEvent("bulk.test", "support", f"{user}-inbox", {"n": n, "pad": pad})
                for n in range(start, start + 200)
            ]
        )
    response = await asyncio.to_thread(_slow_stream, gw.daemon.port, "/events?since=0&types=bulk.*")
    try:
        streams = gw.daemon.gateway.streams
        # The first page is out; the replay now waits for the client to take the second.
        await wait_for(lambda: any(getattr(s, "last_seq", 0) >= 100 for s in streams), what="first page sent")
        await store.prune(None, kept)
        frames = await asyncio.to_thread(
            _frames_until, response, lambda f: f[0] == "bulk.test" and f[2]["data"]["n"] == total - 1
        )
    finally:
        response.close()
    gaps = [index for index, frame in enumerate(frames) if frame[0] == "stream.gap"]
    assert len(gaps) == 1, "the hole the prune made in the replay was not signalled"
    before, (_, gap_id, gap), after = frames[: gaps[0]], frames[gaps[0]], frames[gaps[0] + 1 :]
    assert gap_id is None
    numbers = [data["data"]["n"] for _, _, data in before]
    assert numbers == list(range(len(numbers)))  # in order, nothing missing up to the hole
    assert gap["requested"] == (before[-1][1] if before else "0")
    assert gap["first_available_id"] == after[0][1]
    rest = [data["data"]["n"] for _, _, data in after]
    # What was kept (less the watcher's mailbox.connected, if it came before the prune).
    assert rest == list(range(rest[0], total)) and rest[0] >= total - kept
