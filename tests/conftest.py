"""Shared fixtures: one real Dovecot for the session, a fresh user per test, an in-process gateway."""

from __future__ import annotations

import imaplib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401 - see below
import pytest

from gatewayd import native
from gatewayd.app import Daemon
from gatewayd.config import Config, hash_token, parse_config
from gatewayd.sandbox.dovecot import PASSWORD, Dovecot, SandboxUnavailable
from tests.smtp_sink import SmtpSink
from tests.waiting import idle, wait_for

# Imported here, at start-up, on purpose: otherwise hypothesis's pytest plugin imports it at the
# very end of a run that used no hypothesis test, from deep in pytest's hooks, where CPython
# 3.11.7's ast.parse (pytest rewrites the module) can fail with "SystemError: AST constructor
# recursion depth mismatch" and turn a green run red.


def pytest_configure(config: pytest.Config) -> None:
    # A compiled module older than its source would test the build, not the source (gatewayd.native).
    if stale := native.stale():
        raise pytest.UsageError(
            f"{len(stale)} compiled module(s) older than their source, e.g. {stale[0]}: run ./scripts/setup"
        )


TOKEN = "test-token-support"
OTHER_TOKEN = "test-token-other"
_users = itertools.count(1)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    # Never skip: the tests exist to run against a real server (scripts/setup installs it).
    try:
        # Its own temp dir, not under pytest's 0700 basetemp: Dovecot's helpers run as another user.
        server = Dovecot.create()
        server.start()
    except SandboxUnavailable as exc:
        pytest.fail(f"the real Dovecot these tests need is unavailable: {exc}", pytrace=False)
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def dovecot_without_notify() -> Iterator[Dovecot]:
    """A second Dovecot whose capabilities leave NOTIFY out: the one-IDLE-per-folder path."""
    try:
        server = Dovecot.create(extra_config="imap_capability = IMAP4rev1 IDLE UIDPLUS\n")
        server.start()
    except SandboxUnavailable as exc:
        pytest.fail(f"the real Dovecot these tests need is unavailable: {exc}", pytrace=False)
    yield server
    server.destroy()


@pytest.fixture
def sink(dovecot: Dovecot) -> Iterator[SmtpSink]:
    """The SMTP peer on loopback (aiosmtpd), delivering what it accepts into the Dovecot over LMTP."""
    server = SmtpSink(dovecot)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def user(dovecot: Dovecot) -> str:
    name = f"user{next(_users)}"
    dovecot.add_user(name)
    return name


def mailless_config(tmp_path: Path) -> Config:
    """A daemon with one agent and no mailbox, on a free loopback port: its HTTP side alone."""
    data = {"server": {"listen": "127.0.0.1:0"}, "store": {"path": str(tmp_path / "events.db")}}
    return parse_config(data | {"agents": [{"id": "a"}]}, env={})


def gateway_config(
    tmp_path: Path,
    dovecot: Dovecot,
    users: list[str],
    watch: str = "always",
    pipeline: dict[str, Any] | None = None,
    **mailbox_overrides: Any,
) -> Config:
    """One agent `support` with a mailbox per user, and an agent `other` with none of them."""
    mailboxes = []
    for name in users:
        mailbox: dict[str, Any] = {
            "id": f"{name}-inbox",
            "watch": watch,
            "imap": {
                "host": dovecot.host,
                "port": dovecot.imap_port,
                "tls": "none",
                "username": name,
                "password": "secret",
                "folders": ["INBOX"],
                "read_timeout_seconds": 5,
                "connect_timeout_seconds": 5,
            },
        }
        imap_overrides = mailbox_overrides.pop("imap", {})
        mailbox["imap"].update(imap_overrides)
        mailbox.update(mailbox_overrides)
        mailbox_overrides["imap"] = imap_overrides
        mailboxes.append(mailbox)
    data = {
        "server": {"listen": "127.0.0.1:0", "shutdown_grace_seconds": 1, "retry_ms": 500},
        "store": {"path": str(tmp_path / "events.db")},
        "pipeline": pipeline or {},
        "agents": [
            {"id": "support", "token_sha256": [hash_token(TOKEN)], "mailboxes": mailboxes},
            {"id": "other", "token_sha256": [hash_token(OTHER_TOKEN)], "mailboxes": []},
        ],
    }
    return parse_config(data, env={}, base_dir=tmp_path)


class RunningGateway:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"


@pytest.fixture
async def start_gateway() -> AsyncIterator[Any]:
    """Start in-process gateways on ephemeral ports; all are stopped at the end of the test."""
    started: list[Daemon] = []

    async def start(config: Config) -> RunningGateway:
        daemon = Daemon(config)
        await daemon.start()
        started.append(daemon)
        return RunningGateway(daemon)

    yield start
    for daemon in started:
        if not daemon.gateway.grace_over.is_set():
            await daemon.stop()


@pytest.fixture
async def idle_gateway(dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any) -> RunningGateway:
    """The suite's default gateway (the test's user's INBOX, watched always), once its watcher idles:
    mail delivered from then on is announced."""
    gateway: RunningGateway = await start_gateway(gateway_config(tmp_path, dovecot, [user]))
    await wait_for(lambda: idle(gateway), what="watcher idle")
    return gateway


def imap_do(dovecot: Dovecot, user: str, command: Any) -> None:
    """Run `command(client)` on a fresh imaplib connection, logged in as the user."""
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    try:
        client.login(user, PASSWORD)
        command(client)
    finally:
        client.logout()


def append(dovecot: Dovecot, user: str, folder: str, *messages: bytes) -> None:
    """Put messages straight into a folder with IMAP APPEND (as a mail client saving sent mail)."""
    imap_do(dovecot, user, lambda client: [client.append(folder, None, None, m) for m in messages])
