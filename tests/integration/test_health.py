"""/healthz against the real Dovecot: the watchers' state for anyone, their mail activity only
for a token of their own subtree, never another tenant's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from gatewayd.api.health import PUBLIC_WATCHER_FIELDS
from gatewayd.app import Daemon
from gatewayd.config import Config, hash_token, parse_config
from gatewayd.sandbox.dovecot import PASSWORD, Dovecot
from tests.conftest import mailless_config
from tests.sse import mail
from tests.waiting import idle, wait_for

TENANTS = ("acme", "globex")
# Derived from mail or from what the server said: for the mailbox's own tenant only.
MAIL_ACTIVITY = ("last_uid", "push_to_event_ms", "last_error", "uidvalidity")


def two_tenants(tmp_path: Path, dovecot: Dovecot, users: dict[str, str]) -> Config:
    """An agent per tenant, each with a token `token-TENANT` and an always-watched mailbox."""
    agents = [
        {
            "id": tenant,
            "tenant": tenant,
            "token_sha256": [hash_token(f"token-{tenant}")],
            "mailboxes": [
                {
                    "id": f"{tenant}-in",
                    "watch": "always",
                    "imap": {
                        "host": dovecot.host,
                        "port": dovecot.imap_port,
                        "tls": "none",
                        "username": users[tenant],
                        "password": PASSWORD,
                        "read_timeout_seconds": 5,
                        "connect_timeout_seconds": 5,
                    },
                }
            ],
        }
        for tenant in TENANTS
    ]
    data = {
        "server": {"listen": "127.0.0.1:0", "shutdown_grace_seconds": 1},
        "store": {"path": str(tmp_path / "events.db")},
        "agents": agents,
    }
    return parse_config(data, env={}, base_dir=tmp_path)


async def get_health(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str, Any]:
    async with session.get(f"{url}/healthz", **kwargs) as response:
        text = await response.text()
        return response.status, text, json.loads(text)


async def test_healthz_shows_mail_activity_to_the_mailboxes_own_tenant_only(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    users = {"acme": user, "globex": f"{user}-globex"}
    dovecot.add_user(users["globex"])
    gw = await start_gateway(two_tenants(tmp_path, dovecot, users))
    await wait_for(lambda: idle(gw) and len(gw.daemon.pool.health()) == 2, what="both watchers idle")
    for tenant in TENANTS:
        await dovecot.deliver_async(users[tenant], mail(f"for {tenant}"))

    def both_announced() -> bool:
        return all(w["last_uid"] == 1 and w["state"] == "idle" for w in gw.daemon.pool.health())

    await wait_for(both_announced, what="one message announced in each mailbox")

    async with aiohttp.ClientSession() as session:
        # Anyone: the store and each watcher's state, nothing a message or a server reply made.
        status, text, body = await get_health(session, gw.url)
        assert status == 200 and body["status"] == "ok" and body["store"] == "ok"
        assert {w["mailbox_id"]: w["state"] for w in body["watchers"]} == {
            "acme-in": "idle",
            "globex-in": "idle",
        }
        for watcher in body["watchers"]:
            assert set(watcher) <= PUBLIC_WATCHER_FIELDS, watcher
        for field in MAIL_ACTIVITY:
            assert field not in text
        assert PASSWORD not in text

        # A token: the details of its own tenant's watchers, the others stay public.
        for tenant, other in (TENANTS, TENANTS[::-1]):
            headers = {"Authorization": f"Bearer token-{tenant}"}
            status, text, body = await get_health(session, gw.url, headers=headers)
            assert status == 200
            watchers = {w["mailbox_id"]: w for w in body["watchers"]}
            own = watchers[f"{tenant}-in"]
            assert own["last_uid"] == 1 and own["uidvalidity"] and own["last_error"] is None
            assert own["reconnects"] == 0 and "push_to_event_ms" in own
            assert set(watchers[f"{other}-in"]) <= PUBLIC_WATCHER_FIELDS
            assert PASSWORD not in text

        # A token that is not one is refused, as everywhere; so is one in the URL.
        async with session.get(f"{gw.url}/healthz", headers={"Authorization": "Bearer nope"}) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["error"]["code"] == "invalid_token"
        async with session.get(f"{gw.url}/healthz", params={"access_token": "token-acme"}) as response:
            assert response.status == 401


async def test_healthz_says_stopping_from_the_shutdowns_first_step(tmp_path: Path, monkeypatch: Any) -> None:
    """A load balancer keeping its connection open sees 503 while the shutdown still stores what
    the watchers hold, before the streams are told `closing`. (Injected: that step is held.)"""
    daemon = Daemon(mailless_config(tmp_path))
    await daemon.start()
    draining, release = asyncio.Event(), asyncio.Event()
    drain = daemon.pool.drain

    async def held_drain() -> None:
        draining.set()
        await release.wait()
        await drain()

    monkeypatch.setattr(daemon.pool, "drain", held_drain)
    stopping: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session:  # one kept-alive connection, as a balancer's
            url = f"http://127.0.0.1:{daemon.port}/healthz"
            async with session.get(url) as response:
                assert response.status == 200
                assert (await response.json())["stopping"] is False
            stopping = asyncio.create_task(daemon.stop())
            await asyncio.wait_for(draining.wait(), 20)
            async with session.get(url) as response:
                body = await response.json()
                assert response.status == 503, body
            assert body["status"] == "unavailable" and body["stopping"] is True and body["closing"] is False
    finally:
        release.set()
        if stopping is None:
            await daemon.stop()
        else:
            await stopping
