"""JSON errors: aiohttp's own HTTP errors become JSON and keep the headers HTTP requires."""

from __future__ import annotations

import asyncio
from pathlib import Path

from yarl import URL

from tests.api_server import ACME_ADMIN, fleet, serving


async def test_405_is_json_and_says_which_methods_are_allowed(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        for method, path, allowed in [
            ("POST", "/events", {"GET"}),
            ("PUT", "/v1/tokens", {"GET", "POST"}),
            ("GET", "/v1/tokens/tok_0123456789ab", {"DELETE"}),
            ("DELETE", "/healthz", {"GET"}),
        ]:
            headers = {"Authorization": f"Bearer {ACME_ADMIN}"}
            async with api.session.request(method, api.url + path, headers=headers) as response:
                assert response.status == 405, (method, path)
                assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed, path
                body = await response.json()
                assert body["error"]["code"] == "method_not_allowed"


async def test_hostile_client_input_gets_a_json_4xx_never_a_500(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        nested = "[" * 100_000 + "]" * 100_000
        for method, path, body, status in [
            ("GET", "/v1/events?limit=%C2%B2", None, 400),  # "²" passes str.isdigit()
            ("GET", "/v1/events/stream?since=0001-01-01T00:00:00%2B01:00", None, 400),  # before year 1 in UTC
            ("GET", "/v1/events/stream?since=9999-12-31T23:59:59-01:00", None, 400),  # after year 9999
            ("POST", "/v1/tokens", nested, 400),  # JSON nested past the recursion limit
        ]:
            status_got, answer = await api.call(method, path, ACME_ADMIN, data=body)
            assert status_got == status, (path, answer)
            assert set(answer["error"]) >= {"code", "message"}, path
        # A header value that is not ASCII (aiohttp hands it over as surrogate escapes).
        url = URL(api.url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"401", status_line
