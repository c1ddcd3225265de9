"""Who a request is: run-time tokens stay in the tenant they were made for, through HTTP too.

Against the real HTTP application and SQLite stores; the configuration is edited between making
a token and using it, as an operator reusing or moving an agent id would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gatewayd.api.auth import tenant_problem
from gatewayd.config import hash_token
from gatewayd.events import NewEvent
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.tokens import TokenRecord
from tests.api_server import ACME_ADMIN, GLOBEX_ADMIN, fleet, make_token, one_tenant, serving


async def test_a_token_whose_agent_moved_to_another_tenant_is_refused(tmp_path: Path) -> None:
    before = fleet(tmp_path, bot_parent="acme")
    token = await make_token(before, "bot", ["read", "admin"])
    async with serving(before) as api:
        assert (await api.call("GET", "/v1/events", token))[0] == 200
    # The operator moves `bot` into globex: the token was acme's, and reaches nothing of globex.
    after = fleet(tmp_path, bot_parent="globex")
    store = SqliteEventStore(after.store.path)
    await store.open()
    await store.append([NewEvent("message.received", "bot", "globex-in", {"n": 1})])
    await store.close()
    async with serving(after) as api:
        for method, path in [("GET", "/v1/events"), ("GET", "/v1/tokens"), ("POST", "/v1/tokens")]:
            status, body = await api.call(method, path, token)
            assert status == 401, (method, path, body)
            assert body["error"]["code"] == "invalid_token"
            assert "another tenant" in body["error"]["message"] and "globex" not in body["error"]["message"]
        async with api.session.get(
            f"{api.url}/events", headers={"Authorization": f"Bearer {token}"}
        ) as stream:
            assert stream.status == 401
        # globex's admin neither sees nor revokes the token acme made for its `bot`.
        status, listing = await api.call("GET", "/v1/tokens", GLOBEX_ADMIN)
        assert status == 200 and listing["tokens"] == []
        (record,) = await api.tokens.records()
        assert record.tenant == "acme"
        assert (await api.call("DELETE", f"/v1/tokens/{record.id}", GLOBEX_ADMIN))[0] == 404
    # Moved back, it works again: the token was never revoked.
    async with serving(before) as api:
        assert (await api.call("GET", "/v1/events", token))[0] == 200
        status, listing = await api.call("GET", "/v1/tokens", ACME_ADMIN)
        assert [t["tenant"] for t in listing["tokens"]] == ["acme"]


async def test_tokens_made_over_http_record_the_tenant(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path, bot_parent="globex")) as api:
        status, made = await api.call("POST", "/v1/tokens", GLOBEX_ADMIN, json={"agent": "bot"})
        assert status == 201 and made["tenant"] == "globex"
        assert (await api.call("GET", "/v1/events", made["token"]))[0] == 200


def _store_old_token(path: Path, token: str) -> None:
    """A token as stored before tokens recorded their tenant (the column stays NULL)."""
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO tokens (id, sha256, agent_id, scopes, created_at) VALUES (?, ?, 'bot', 'read', ?)",
            ("tok_00000000beef", hash_token(token), "2026-01-01T00:00:00.000Z"),
        )
    db.close()


async def test_a_token_without_a_tenant_works_only_while_there_is_one_tenant(tmp_path: Path) -> None:
    async with serving(one_tenant(tmp_path)) as api:
        _store_old_token(tmp_path / "events.db", "old-token")
        assert (await api.call("GET", "/v1/events", "old-token"))[0] == 200
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        status, body = await api.call("GET", "/v1/events", "old-token")
        assert status == 401 and body["error"]["code"] == "invalid_token"
        assert "several tenants" in body["error"]["message"]


def test_tenant_problem(tmp_path: Path) -> None:
    config = fleet(tmp_path, bot_parent="globex")
    bot = config.agent("bot")

    def record(tenant: str | None) -> TokenRecord:
        return TokenRecord("tok_0123456789ab", "bot", tenant, ("read",), "2026-01-01T00:00:00.000Z")

    assert tenant_problem(record("globex"), bot, config) is None
    assert tenant_problem(record("acme"), bot, config) is not None
    assert tenant_problem(record(None), bot, config) is not None
    single = one_tenant(tmp_path)
    assert tenant_problem(record(None), single.agent("bot"), single) is None
    assert tenant_problem(record("acme"), single.agent("bot"), single) is not None  # "default" now


STREAMS = [("/events", {}), ("/v1/events/stream", {}), ("/v1/events", {"Accept": "text/event-stream"})]
NOT_STREAMS = [
    ("GET", "/v1/events"),
    ("POST", "/v1/messages/1/report"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/tok_0123456789ab"),
]


async def test_query_token_is_accepted_on_the_event_stream_only(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path, bot_parent="acme", allow_query_token=True)) as api:
        query = {"access_token": ACME_ADMIN, "max_seconds": "1"}
        for path, headers in STREAMS:
            async with api.session.get(api.url + path, params=query, headers=headers) as response:
                assert response.status == 200, path
                assert response.content_type == "text/event-stream"
        for method, path in NOT_STREAMS:
            async with api.session.request(method, api.url + path, params=query, json={}) as response:
                assert response.status == 401, (method, path)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                message = (await response.json())["error"]["message"]
                assert "event stream only" in message and ACME_ADMIN not in message
            # The same request with the header is served: only the way the token came is refused.
            assert (await api.call(method, path, ACME_ADMIN, json={}))[0] != 401
