"""Servers and accounts beyond the defaults: credentials IMAP cannot send as atoms, odd folder names."""

from __future__ import annotations

import imaplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import ImapConfig, parse_config
from gatewayd.imap.names import encode_mailbox
from gatewayd.imap.session import ImapSession
from gatewayd.sandbox.dovecot import PASSWORD, Dovecot
from tests.conftest import gateway_config
from tests.integration.test_watch import wait_events
from tests.sse import mail
from tests.waiting import idle, wait_for

# Username -> password: a space, quotes and backslashes, what looks like a literal, UTF-8.
ACCOUNTS = {
    "support desk": "pass word",
    'quo"te\\user': 'pw"\\{3}x',
    "{5}": "a{2}",
    "jürgen": "pässwörd",
    "plain": "Grüße",
}


def _passwd_line(username: str, password: str) -> str:
    # Dovecot escapes `"` and `\` in the name it looks up in a passwd-file.
    return username.replace("\\", "\\\\").replace('"', '\\"') + ":{PLAIN}" + password + "::::::\n"


@pytest.fixture(scope="module", params=["sasl-ir", "no-sasl-ir"])
def accounts_dovecot(request: pytest.FixtureRequest) -> Iterator[Dovecot]:
    """A Dovecot knowing ACCOUNTS; without SASL-IR, AUTHENTICATE PLAIN waits for the server's `+`."""
    server = Dovecot.create()
    (server.root / "users").write_text("".join(_passwd_line(u, p) for u, p in ACCOUNTS.items()))
    capability = "imap_capability = IMAP4rev1 IDLE AUTH=PLAIN\n" if request.param == "no-sasl-ir" else ""
    server.extra_config = (
        f"{capability}auth_username_chars =\n"
        f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {server.root}/users\n}}\n"
    )
    server.start()
    yield server
    server.destroy()


def imap_config(server: Dovecot, tmp_path: Path, username: str, password: str) -> ImapConfig:
    imap = {"host": server.host, "port": server.imap_port, "tls": "none"}
    mailbox = {"id": "m", "imap": {**imap, "username": username, "password": password}}
    agents = [{"id": "a", "token_sha256": ["0" * 64], "mailboxes": [mailbox]}]
    config = parse_config(
        {"store": {"path": str(tmp_path / "e.db")}, "agents": agents}, env={}, base_dir=tmp_path
    )
    return config.agents[0].mailboxes[0].imap


@pytest.mark.parametrize(("username", "password"), ACCOUNTS.items(), ids=range(len(ACCOUNTS)))
async def test_any_username_and_password_log_in(
    accounts_dovecot: Dovecot, tmp_path: Path, username: str, password: str
) -> None:
    session = await ImapSession.open(imap_config(accounts_dovecot, tmp_path, username, password))
    try:
        assert "IDLE" in session.capabilities  # the capabilities after login were read
        selected = await session.select("INBOX")
        assert selected.uidvalidity > 0
    finally:
        await session.logout()


# Non-ASCII (modified UTF-7 on the wire), `&` (which modified UTF-7 escapes), a space, a subfolder.
FOLDERS = ["INBOX", "Entwürfe", "R&D", "Team/Ünter Ordner"]


@pytest.fixture(scope="module", params=["notify", "no-notify"])
def folders_dovecot(request: pytest.FixtureRequest, dovecot: Dovecot) -> Iterator[Dovecot]:
    """The suite's Dovecot, and one without NOTIFY (one connection per folder)."""
    if request.param == "notify":
        yield dovecot
        return
    server = Dovecot.create(extra_config="imap_capability = IMAP4rev1 IDLE UIDPLUS\n")
    server.start()
    yield server
    server.destroy()


async def test_folders_with_any_name_are_watched(
    folders_dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    server = folders_dovecot
    client = imaplib.IMAP4(server.host, server.imap_port)
    client.login(user, PASSWORD)
    for folder in FOLDERS[1:]:
        client.create(f'"{encode_mailbox(folder)}"')
    config = gateway_config(tmp_path, server, [user], imap={"folders": FOLDERS})
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="every folder watched")
    try:
        for folder in FOLDERS:
            client.append(f'"{encode_mailbox(folder)}"', None, None, mail(f"in {folder}"))
    finally:
        client.logout()
    events = await wait_events(gw, len(FOLDERS))
    assert sorted((e["data"]["folder"], e["data"]["subject"]) for e in events) == sorted(
        (folder, f"in {folder}") for folder in FOLDERS
    )
