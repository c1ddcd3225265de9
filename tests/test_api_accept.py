"""The Accept header: a stream is served unless the client refuses text/event-stream (RFC 9110)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.api.accept import EVENT_STREAM, quality
from tests.api_server import ACME_ADMIN, fleet, serving

# What browsers and common clients send, and what they mean for the event stream.
WANTED = [
    None,  # no header: anything
    "",
    "*/*",
    "text/*",
    "text/event-stream",  # browsers' EventSource
    "text/event-stream; charset=utf-8",
    "TEXT/Event-Stream;Q=0.5",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # a browser's navigation
    "application/json;q=0, */*;q=0.1",
    "*/*;q=0, text/event-stream",  # the more specific range wins
    "text/event-stream;q=oops, */*",  # a range that cannot be read is skipped
]
REFUSED = [
    "text/event-stream;q=0",
    "text/event-stream; q=0.000",
    "*/*, text/event-stream;q=0",
    "text/*;q=0",
    "application/json",  # only other types, no wildcard
    "text/html, application/json;q=0.5",
]


@pytest.mark.parametrize("accept", WANTED)
def test_the_stream_is_acceptable(accept: str | None) -> None:
    assert quality(accept, EVENT_STREAM)[0] > 0


@pytest.mark.parametrize("accept", REFUSED)
def test_the_stream_is_refused(accept: str) -> None:
    assert quality(accept, EVENT_STREAM)[0] == 0


def test_only_a_range_naming_the_stream_names_it() -> None:
    assert quality("text/event-stream;q=0.2, */*", EVENT_STREAM) == (0.2, True)
    assert quality("*/*", EVENT_STREAM) == (1.0, False)
    assert quality(None, EVENT_STREAM) == (1.0, False)


async def test_a_stream_the_client_refuses_is_a_406_not_a_stream(tmp_path: Path) -> None:
    """`Accept: text/event-stream;q=0` used to be streamed all the same."""
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        for path in ("/events", "/v1/events/stream"):
            for accept in REFUSED:
                headers = {"Authorization": f"Bearer {ACME_ADMIN}", "Accept": accept}
                async with api.session.get(api.url + path, headers=headers) as response:
                    assert response.status == 406, (path, accept)
                    error = (await response.json())["error"]
                assert error["code"] == "not_acceptable" and EVENT_STREAM in error["message"], accept
            for wanted in WANTED:
                headers = {"Authorization": f"Bearer {ACME_ADMIN}"}
                if wanted is not None:
                    headers["Accept"] = wanted
                async with api.session.get(api.url + path, headers=headers) as response:
                    assert response.status == 200, (path, wanted)
                    assert response.headers["Content-Type"].startswith(EVENT_STREAM)
        # /v1/events streams only for a client naming the stream with q > 0; otherwise it lists.
        for accept, streamed in [
            ("text/event-stream", True),
            ("text/event-stream;q=0", False),
            ("text/event-stream;q=0, application/json", False),
            ("*/*", False),
        ]:
            headers = {"Authorization": f"Bearer {ACME_ADMIN}", "Accept": accept}
            async with api.session.get(api.url + "/v1/events", headers=headers) as response:
                assert response.status == 200, accept
                assert response.headers["Content-Type"].startswith(EVENT_STREAM) is streamed, accept
