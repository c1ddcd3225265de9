"""`gatewayd demo`: a throwaway Dovecot, gatewayd on top, sample mail at a steady pace."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import tempfile
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from gatewayd.app import Daemon
from gatewayd.config import hash_token, new_token, parse_config
from gatewayd.fdlimit import raise_open_file_limit
from gatewayd.sandbox.dovecot import Dovecot, SandboxUnavailable

SAMPLES = [
    ("Ada Lovelace <ada@example.org>", "Meeting notes", "Here are the notes from today's meeting."),
    ("Billing <billing@shop.example>", "Your invoice #1042", "Your invoice is attached. Total: 42.00 EUR."),
    ("Grace Hopper <grace@example.net>", "=?utf-8?q?Caf=C3=A9_on_Friday=3F?=", "Shall we meet for coffee?"),
    ("Newsletter <news@lists.example>", "This week in mail", "Ten things about IMAP IDLE."),
]


def _sample(n: int) -> bytes:
    """Sample mail n, dated now: a Date days before the server's Received stamp counts as spam."""
    sender, subject, body = SAMPLES[n % len(SAMPLES)]
    return (
        f"From: {sender}\r\nTo: Demo Agent <demo@example.com>\r\nSubject: {subject}\r\n"
        f"Message-ID: <demo-{n}@gatewayd.invalid>\r\nDate: {format_datetime(datetime.now(UTC))}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


async def run_demo(port: int, messages: int, interval: float) -> int:
    """ListenError: the port cannot be bound (the sandbox is gone by then)."""
    try:
        dovecot = Dovecot.create()
        dovecot.add_user("demo")
        dovecot.start()
    except SandboxUnavailable as exc:
        print(f"demo: {exc}")
        return 1
    print(f"Dovecot sandbox: imap://127.0.0.1:{dovecot.imap_port} (user demo / secret), in {dovecot.root}")
    try:
        return await _demo(dovecot, port, messages, interval)
    finally:
        dovecot.destroy()  # also when gatewayd could not start: no Dovecot is left running


async def _demo(dovecot: Dovecot, port: int, messages: int, interval: float) -> int:
    token = new_token()
    workdir = Path(tempfile.mkdtemp(prefix="gatewayd-demo-"))
    config = parse_config(
        {
            "server": {"listen": f"127.0.0.1:{port}", "shutdown_grace_seconds": 1},
            "store": {"path": str(workdir / "events.db")},
            "agents": [
                {
                    "id": "demo",
                    "token_sha256": [hash_token(token)],
                    "mailboxes": [
                        {
                            "id": "demo-inbox",
                            "watch": "always",
                            "imap": {
                                "host": dovecot.host,
                                "port": dovecot.imap_port,
                                "tls": "none",
                                "username": "demo",
                                "password": "secret",
                            },
                        }
                    ],
                }
            ],
        },
        env={},
        base_dir=workdir,
    )
    raise_open_file_limit(config)  # as `gatewayd run`: before server.max_connections defaults to half of it
    daemon = Daemon(config)
    connected = daemon.bus.subscribe(lambda event: event.type == "mailbox.connected", 10)
    await daemon.start()
    print(f"gatewayd listening on http://127.0.0.1:{daemon.port}")
    print("Watch the stream from another terminal:")
    print(
        f"  curl -N -H 'Authorization: Bearer {token}' 'http://127.0.0.1:{daemon.port}/events?types=message.*'"
    )
    print(f"Delivering a sample message every {interval:g}s over LMTP; Ctrl-C stops.\n")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    subscription = daemon.bus.subscribe(lambda event: event.type.startswith("message."), 1000)

    async def deliver() -> None:
        # The first connection starts at UIDNEXT: deliver only once the watcher has its mark.
        await connected.get()
        for n in itertools.count():
            if messages and n >= messages:
                return
            await dovecot.deliver_async("demo", _sample(n))
            await asyncio.sleep(interval)

    async def tail() -> None:
        seen = 0
        while not messages or seen < messages:
            event = await subscription.get()
            sender = (event.data.get("from") or {}).get("address")
            print(f"event {event.id}: {event.type} from {sender}: {event.data.get('subject')!r}", flush=True)
            seen += 1
        stop.set()

    tasks = [asyncio.create_task(deliver()), asyncio.create_task(tail())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await daemon.stop()
    return 0
