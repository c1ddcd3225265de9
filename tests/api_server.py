"""gatewayd's HTTP application in-process on real SQLite stores, for the API's unit tests.

Two tenants, acme and globex, each an agent with a mailbox and a configured token
(`config-acme`, `config-globex`), and `bot`, an agent without mailboxes, under either.
The watchers are never started: the IMAP side is tested in tests/integration/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from gatewayd.api.app import create_app
from gatewayd.api.context import Gateway
from gatewayd.bus import Bus
from gatewayd.config import Config, hash_token, parse_config
from gatewayd.imap.pool import WatcherPool
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.tokens import SqliteTokenStore

ACME_ADMIN = "config-acme"
GLOBEX_ADMIN = "config-globex"


def fleet(tmp: Path, bot_parent: str, **server: Any) -> Config:
    """acme and globex, two tenants, each with a mailbox; `bot` (no mailbox) under `bot_parent`."""
    agents: list[dict[str, Any]] = [
        {
            "id": name,
            "tenant": name,
            "token_sha256": [hash_token(f"config-{name}")],
            "mailboxes": [
                {
                    "id": f"{name}-in",
                    "imap": {
                        "host": "127.0.0.1",
                        "port": 1,
                        "tls": "none",
                        "username": name,
                        "password": "p",
                    },
                }
            ],
        }
        for name in ("acme", "globex")
    ]
    agents.append({"id": "bot", "parent": bot_parent})
    data = {"store": {"path": str(tmp / "events.db")}, "server": server, "agents": agents}
    return parse_config(data, env={}, base_dir=tmp)


def one_tenant(tmp: Path) -> Config:
    data = {
        "store": {"path": str(tmp / "events.db")},
        "agents": [{"id": "acme"}, {"id": "bot", "parent": "acme"}],
    }
    return parse_config(data, env={}, base_dir=tmp)


class Api:
    def __init__(self, url: str, session: aiohttp.ClientSession, tokens: SqliteTokenStore) -> None:
        self.url = url
        self.session = session
        self.tokens = tokens

    async def call(self, method: str, path: str, token: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as response:
            return response.status, await response.json()


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[Api]:
    """gatewayd's HTTP application on `config` (its watchers are never started)."""
    store = SqliteEventStore(config.store.path)
    await store.open()
    tokens = SqliteTokenStore(config.store.path)
    await tokens.open()
    bus = Bus()
    pool = WatcherPool(config, store, None, bus.publish)  # type: ignore[arg-type]
    server = TestServer(create_app(Gateway(config, store, bus, pool, tokens=tokens)))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(str(server.make_url("")), session, tokens)
    finally:
        await server.close()
        await tokens.close()
        await store.close()


async def make_token(config: Config, agent_id: str, scopes: list[str]) -> str:
    """`gatewayd token create --agent AGENT_ID` under this configuration."""
    store = SqliteTokenStore(config.store.path)
    await store.open()
    try:
        return (await store.create(agent_id, config.agent(agent_id).tenant, scopes)).token
    finally:
        await store.close()
