"""The store failing under a running gateway: its write lock held by another process past the
busy timeout, as a long transaction of another program (or a stuck `sqlite3` shell) would hold it.

The API answers 503 with `Retry-After`, never a 500; /healthz says the store fails while appends
fail; a watcher never moves its checkpoint past mail it could not store, and announces that mail
once the store is back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import TOKEN, append, gateway_config
from tests.sse import mail
from tests.waiting import idle, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}

# Another process that takes the store's write lock and keeps it until its stdin closes.
_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


@contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.stdin.close()
        holder.wait(10)


async def announced(session: aiohttp.ClientSession, url: str) -> list[str]:
    """The subjects of the messages announced, newest first."""
    response = await session.get(f"{url}/v1/events", headers=AUTH, params={"types": "message.*"})
    return [event["data"]["subject"] for event in (await response.json())["events"]]


async def test_a_write_the_locked_store_refuses_is_a_503_with_retry_after(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user]))
    async with aiohttp.ClientSession() as session:
        with write_lock_held(gw.daemon.config.store.path):
            response = await session.post(f"{gw.url}/v1/tokens", headers=AUTH, json={})
            body = await response.json()
            assert response.status == 503, body
            assert body["error"]["code"] == "store_unavailable"
            assert "locked" in body["error"]["message"]
            assert int(response.headers["Retry-After"]) > 0
        response = await session.post(f"{gw.url}/v1/tokens", headers=AUTH, json={})
        assert response.status == 201


async def test_mail_the_locked_store_could_not_take_is_announced_once_it_is_back(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user]))
    await wait_for(lambda: idle(gw), what="watcher idle")
    store = gw.daemon.store
    mailbox_id = f"{user}-inbox"
    before = await store.get_checkpoint(mailbox_id, "INBOX")
    assert before is not None
    async with aiohttp.ClientSession() as session:

        async def health() -> tuple[int, Any]:
            response = await session.get(f"{gw.url}/healthz")
            return response.status, await response.json()

        with write_lock_held(gw.daemon.config.store.path):
            append(dovecot, user, "INBOX", mail("while locked"))
            await wait_for(
                lambda: any(w["state"] == "backoff" for w in gw.daemon.pool.health()),
                timeout=30,
                what="the watcher backing off from the store",
            )
            status, body = await health()
            assert (status, body["status"], body["store"]) == (503, "unavailable", "error")
            # Not past the message it could not store.
            assert await store.get_checkpoint(mailbox_id, "INBOX") == before

        # The watcher retries after its back-off, and stores the message exactly once.
        deadline = asyncio.get_running_loop().time() + 30
        while not (subjects := await announced(session, gw.url)):
            assert asyncio.get_running_loop().time() < deadline, "the message was never announced"
            await asyncio.sleep(0.1)
        assert subjects == ["while locked"]
        await wait_for(lambda: idle(gw), timeout=30, what="watcher idle again")
        status, body = await health()
        assert (status, body["store"]) == (200, "ok")
