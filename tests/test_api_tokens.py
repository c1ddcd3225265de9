"""POST /v1/tokens: a body it cannot honour exactly is a 400 naming the key, never a token."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tests.api_server import ACME_ADMIN, fleet, serving


async def test_a_bad_or_unknown_key_is_a_400_naming_it_and_makes_no_token(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        cases: list[tuple[dict[str, Any], str]] = [
            # A misspelt key would have made a token that never expires.
            ({"expires": "1h"}, "expires"),
            ({"agent": "bot", "scope": ["read"]}, "scope"),
            ({"agent": None}, "agent"),
            ({"agent": ["acme"]}, "agent"),
            ({"scopes": None}, "scopes"),
            ({"scopes": {"read": True}}, "scopes"),
            ({"expires_in": "-5d"}, "expires_in"),
            ({"expires_in": 3600}, "expires_in"),
        ]
        for body, key in cases:
            status, answer = await api.call("POST", "/v1/tokens", ACME_ADMIN, json=body)
            assert status == 400, (body, answer)
            assert answer["error"]["message"].startswith(f"{key}: "), (body, answer)
        status, listing = await api.call("GET", "/v1/tokens", ACME_ADMIN)
        assert status == 200 and listing["tokens"] == []
        status, answer = await api.call("POST", "/v1/tokens", ACME_ADMIN, data=io.BytesIO(b"x" * 2_000_000))
        assert status == 413 and answer["error"]["code"] == "payload_too_large"
        status, made = await api.call(
            "POST", "/v1/tokens", ACME_ADMIN, json={"agent": "bot", "scopes": "read", "expires_in": "1h"}
        )
        assert status == 201 and made["agent_id"] == "bot" and made["expires_at"] is not None
