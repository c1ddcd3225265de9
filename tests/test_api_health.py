"""/healthz in-process: who may see what (the watchers' details are in tests/integration/test_health.py)."""

from __future__ import annotations

from pathlib import Path

from gatewayd.api.health import PUBLIC_WATCHER_FIELDS
from tests.api_server import ACME_ADMIN, fleet, make_token, serving


async def test_healthz_answers_anyone_and_refuses_a_token_that_may_not_read(tmp_path: Path) -> None:
    config = fleet(tmp_path, bot_parent="acme")
    send_only = await make_token(config, "acme", ["send"])
    async with serving(config) as api:
        async with api.session.get(f"{api.url}/healthz") as response:  # Docker's HEALTHCHECK
            assert response.status == 200
            body = await response.json()
        assert body["status"] == "ok" and {w["mailbox_id"] for w in body["watchers"]} == {
            "acme-in",
            "globex-in",
        }
        assert all(set(w) <= PUBLIC_WATCHER_FIELDS for w in body["watchers"])
        assert (await api.call("GET", "/healthz", ACME_ADMIN))[0] == 200
        status, refused = await api.call("GET", "/healthz", send_only)
        assert status == 403 and refused["error"]["code"] == "insufficient_scope"
        status, refused = await api.call("GET", "/healthz", "not-a-token")
        assert status == 401 and refused["error"]["code"] == "invalid_token"


async def test_healthz_counts_the_event_loops_tasks(tmp_path: Path) -> None:
    """`tasks` lets a long run (bench/soak.py) see a task leak: it follows the streams open."""
    config = fleet(tmp_path, bot_parent="acme")
    async with serving(config) as api:
        _, before = await api.call("GET", "/healthz", ACME_ADMIN)
        headers = {"Authorization": f"Bearer {ACME_ADMIN}"}
        async with api.session.get(f"{api.url}/events", headers=headers) as stream:
            assert await stream.content.readline() == b"retry: 3000\n"
            _, during = await api.call("GET", "/healthz", ACME_ADMIN)
        assert isinstance(before["tasks"], int) and during["tasks"] > before["tasks"] > 0
