"""JSON errors: aiohttp's own HTTP errors become JSON and keep the headers HTTP requires."""

from __future__ import annotations

from pathlib import Path

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
