"""GET /v1/events, the JSON listing, on a real store: its `since` bound with the filters and paging, and
the `gap` it adds for an id the store never issued."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gatewayd.config import Config
from gatewayd.events import NewEvent
from gatewayd.store.sqlite import SqliteEventStore
from tests.api_server import ACME_ADMIN, Api, fleet, serving
from tests.sse import SseReader


async def _store_events(config: Config, kinds: list[str]) -> None:
    """One append each, a few milliseconds apart: every event has its own `created_at` (which
    has millisecond precision)."""
    store = SqliteEventStore(config.store.path)
    await store.open()
    for kind in kinds:
        await asyncio.sleep(0.005)
        await store.append([NewEvent(kind, "acme", "acme-in", {})])
    await store.close()


async def _pages(api: Api, query: str) -> list[list[dict[str, Any]]]:
    """Every page of the listing, following next_cursor."""
    pages: list[list[dict[str, Any]]] = []
    cursor = ""
    while True:
        status, answer = await api.call("GET", f"/v1/events?{query}{cursor}", ACME_ADMIN)
        assert status == 200, answer
        pages.append(answer["events"])
        if answer["next_cursor"] is None:
            return pages
        cursor = f"&cursor={answer['next_cursor']}"


async def _kinds(api: Api, query: str) -> list[list[str]]:
    """The types on each page of the listing."""
    return [[event["type"] for event in page] for page in await _pages(api, query)]


async def test_since_an_id_lists_the_events_after_it_newest_first_across_pages(tmp_path: Path) -> None:
    config = fleet(tmp_path, bot_parent="acme")
    await _store_events(config, ["a.one", "b.two", "a.three", "a.four", "b.five", "a.six", "a.seven"])
    async with serving(config) as api:
        everything = [event for page in await _pages(api, "limit=50") for event in page]
        since = everything[-3]["id"]  # a.three
        after = [event["type"] for event in everything[:-3]]
        assert after == ["a.seven", "a.six", "b.five", "a.four"]
        # The bound ends the paging: no page past it, and no empty last page.
        assert await _kinds(api, f"since={since}&limit=2") == [["a.seven", "a.six"], ["b.five", "a.four"]]
        # A page cut short by the bound is the last one.
        assert await _kinds(api, f"since={since}&limit=3") == [["a.seven", "a.six", "b.five"], ["a.four"]]
        # With the other filters.
        assert await _kinds(api, f"since={since}&types=a.*&limit=1") == [["a.seven"], ["a.six"], ["a.four"]]
        # Bounded below the cursor: nothing left.
        status, answer = await api.call("GET", f"/v1/events?since={since}&cursor={since}", ACME_ADMIN)
        assert (status, answer) == (200, {"events": [], "next_cursor": None})
        # Last-Event-ID is the stream's resume point, not a bound of the listing.
        headers = {"Authorization": f"Bearer {ACME_ADMIN}", "Last-Event-ID": since}
        async with api.session.get(f"{api.url}/v1/events", headers=headers) as response:
            assert (await response.json())["events"] == everything
        # since=0: everything still stored.
        assert [event for page in await _pages(api, "since=0&limit=4") for event in page] == everything


async def test_since_a_timestamp_lists_the_events_at_or_after_it(tmp_path: Path) -> None:
    config = fleet(tmp_path, bot_parent="acme")
    await _store_events(config, ["a.one", "a.two", "a.three", "a.four", "a.five"])
    async with serving(config) as api:
        everything = [event for page in await _pages(api, "limit=50") for event in page]
        moment = everything[2]["created_at"]  # a.three's
        expected = everything[:3]  # a.five, a.four, a.three
        pages = await _pages(api, f"since={moment}&limit=2")
        assert [event for page in pages for event in page] == expected


async def test_a_bad_since_is_the_streams_400(tmp_path: Path) -> None:
    config = fleet(tmp_path, bot_parent="acme")
    async with serving(config) as api:
        for since, message in [
            ("yesterday", "since: expected an event id or an RFC 3339 timestamp"),
            ("2026-11-21T10:00:00", "since: expected an event id or an RFC 3339 timestamp"),
            ("99999999999999999999", "since: not an event id: '99999999999999999999'"),
            ("0&since=1", "since: given 2 times; give it once (a list is comma-separated)"),
        ]:
            for path in ("/v1/events", "/v1/events/stream"):
                status, answer = await api.call("GET", f"{path}?since={since}", ACME_ADMIN)
                assert (status, answer["error"]["message"]) == (400, message), (path, since)


async def test_an_id_beyond_every_one_issued_gets_the_streams_unknown_id_gap(tmp_path: Path) -> None:
    """A store replaced or restored from a backup: a client polling with since= its last id would
    list nothing forever; the listing says why, with the data of the stream's stream.gap."""
    config = fleet(tmp_path, bot_parent="acme")
    await _store_events(config, ["a.one", "b.two", "a.three"])
    async with serving(config) as api:
        everything = [event for page in await _pages(api, "limit=50") for event in page]
        beyond = str(int(everything[0]["id"]) + 100)
        status, answer = await api.call("GET", f"/v1/events?since={beyond}", ACME_ADMIN)
        assert status == 200, answer
        gap = answer.pop("gap")
        assert answer == {"events": [], "next_cursor": None}
        # The oldest event still stored (of the listing's filters): since=0 lists from there.
        first = everything[-1]["id"]
        assert {**gap, "at": None} == {
            "requested": beyond, "first_available_id": first, "at": None, "reason": "unknown_id"
        }  # fmt: skip
        headers = {"Authorization": f"Bearer {ACME_ADMIN}"}
        async with api.session.get(f"{api.url}/v1/events/stream?since={beyond}", headers=headers) as stream:
            frame = await SseReader(stream).next(5)
        assert frame.event == "stream.gap"
        assert {**frame.json, "at": None} == {**gap, "at": None}
        # Of the filters: the oldest b.* event.
        status, answer = await api.call("GET", f"/v1/events?since={beyond}&types=b.*", ACME_ADMIN)
        assert answer["gap"]["first_available_id"] == everything[1]["id"]
        # A cursor beyond them too: the page is what the store has below it, and the gap says why.
        # (Of the stored types: the stream above started the mailbox's watcher, whose events come too.)
        query = f"cursor={beyond}&limit=2&types=a.*,b.*"
        status, answer = await api.call("GET", f"/v1/events?{query}", ACME_ADMIN)
        assert answer["events"] == everything[:2]
        assert (answer["gap"]["requested"], answer["gap"]["reason"]) == (beyond, "unknown_id")
        # An id the store issued, the newest included, and a timestamp: no gap.
        for query in (f"since={everything[0]['id']}", f"cursor={everything[0]['id']}", "since=0"):
            status, answer = await api.call("GET", f"/v1/events?{query}", ACME_ADMIN)
            assert status == 200 and "gap" not in answer, (query, answer)
        status, answer = await api.call("GET", "/v1/events?since=2999-01-01T00:00:00Z", ACME_ADMIN)
        assert answer == {"events": [], "next_cursor": None}
