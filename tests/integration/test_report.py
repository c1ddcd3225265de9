"""POST /v1/messages/{id}/report when what it needs is gone or busy: an accurate 4xx or 503."""

from __future__ import annotations

import imaplib
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from gatewayd.config import hash_token, parse_config
from gatewayd.pipeline.learning import LearningStore
from gatewayd.sandbox.dovecot import PASSWORD, Dovecot
from tests.conftest import TOKEN, append, gateway_config
from tests.sse import mail, open_stream
from tests.waiting import idle, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def imap(dovecot: Dovecot, user: str, command: str, folder: str) -> None:
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    try:
        client.login(user, PASSWORD)
        status, _ = getattr(client, command)(folder)
        assert status == "OK", f"{command} {folder}: {status}"
    finally:
        client.logout()


async def test_a_report_while_the_learning_store_is_locked_names_it(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    learning = idle_gateway.daemon.learning.for_mailbox(f"{user}-inbox")
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, idle_gateway.url, {"types": "message.*"})
        await dovecot.deliver_async(user, mail("cheap pills"))
        (event,) = await reader.messages(1)
        # Another process (a long `gatewayd learn`, a backup) holds the learning store's write lock.
        holder = sqlite3.connect(learning.path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            url = f"{idle_gateway.url}/v1/messages/{event.id}/report"
            response = await session.post(url, headers=AUTH, json={"label": "spam"})
            error = (await response.json())["error"]
        finally:
            holder.close()
        # It said "store_unavailable: the event store is unavailable".
        assert response.status == 503 and response.headers["Retry-After"] == "5"
        assert error["code"] == "learning_unavailable"
        assert error["message"].startswith("the learning store is unavailable")
        # Once the lock is gone the same report goes through.
        response = await session.post(url, headers=AUTH, json={"label": "spam"})
        assert response.status == 200, await response.text()


async def test_a_report_after_its_folder_was_deleted_is_a_conflict(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    imap(dovecot, user, "create", "Lists")
    config = gateway_config(tmp_path, dovecot, [user], imap={"folders": ["INBOX", "Lists"]})
    gateway = await start_gateway(config)
    await wait_for(lambda: idle(gateway), what="watchers idle")
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, gateway.url, {"types": "message.*"})
        append(dovecot, user, "Lists", mail("a list message"))
        (event,) = await reader.messages(1)
        assert event.json["data"]["folder"] == "Lists"
        imap(dovecot, user, "delete", "Lists")
        url = f"{gateway.url}/v1/messages/{event.id}/report"
        response = await session.post(url, headers=AUTH, json={"label": "spam"})
        error = (await response.json())["error"]
    assert response.status == 409  # it was a 503 mailbox_unavailable, as if the server were down
    assert error == {
        "code": "message_gone",
        "message": "the folder 'Lists' no longer exists; the message is gone",
    }


async def test_a_report_after_the_mailbox_moved_to_another_tenant_is_refused(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    imap_config = {"host": dovecot.host, "port": dovecot.imap_port, "tls": "none", "username": user}
    imap_config |= {"password": PASSWORD, "read_timeout_seconds": 5, "connect_timeout_seconds": 5}
    agent = {
        "id": "support",
        "tenant": "acme",
        "token_sha256": [hash_token(TOKEN)],
        "mailboxes": [{"id": "inbox", "watch": "always", "imap": imap_config}],
    }
    data: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "shutdown_grace_seconds": 1},
        "store": {"path": str(tmp_path / "events.db")},
        "agents": [agent],
    }
    acme = await start_gateway(parse_config(data, env={}, base_dir=tmp_path))
    await wait_for(lambda: idle(acme), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, acme.url, {"types": "message.*"})
        await dovecot.deliver_async(user, mail("cheap pills", sender="Eve <eve@evil.test>"))
        (event,) = await reader.messages(1)
    assert event.json["data"]["tenant"] == "acme"
    await acme.daemon.stop()

    # The configuration moves the agent, its mailbox and token, to tenant globex.
    agent["tenant"] = "globex"
    globex = await start_gateway(parse_config(data, env={}, base_dir=tmp_path))
    async with aiohttp.ClientSession() as session:
        url = f"{globex.url}/v1/messages/{event.id}/report"
        response = await session.post(url, headers=AUTH, json={"label": "spam"})
        error = (await response.json())["error"]
    assert response.status == 409  # it was a 200, and globex learnt acme's mail
    assert error["code"] == "tenant_changed" and "acme" not in error["message"]
    with LearningStore(tmp_path / "learning.globex.db") as learnt:
        assert learnt.counts()["spam"] == 0 and learnt.reputation("eve@evil.test", None)["spam"] == 0
