"""A real SMTP peer on loopback for tests: aiosmtpd, delivering local recipients to Dovecot over LMTP.

Mail to `<user>@gateway.test` lands in that Dovecot user's INBOX, so a test can read an auto-reply
with a separate IMAP client; every message is also kept in `received`. `fail_next` makes the next
transactions answer DATA with a given reply (`451 ...` for a temporary failure); `hold_next` makes
the next transaction's RCPT wait unanswered, before the data, until `stop` (the client cut off there
has sent nothing that could be delivered).
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

from gatewayd.sandbox.dovecot import Dovecot, free_port

LOCAL_DOMAIN = "gateway.test"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)


@dataclass
class _Handler:
    dovecot: Dovecot
    received: list[Received] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    holds: int = 0
    held: int = 0  # transactions held at RCPT so far
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            hold, self.holds = self.holds > 0, max(0, self.holds - 1)
            self.held += hold
        if hold:
            await asyncio.to_thread(self.released.wait)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.failures:
                return self.failures.pop(0)
        data = envelope.original_content or envelope.content
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(data), list(envelope.mail_options))
        )
        local = [r.partition("@")[0] for r in envelope.rcpt_tos if r.lower().endswith("@" + LOCAL_DOMAIN)]
        if local:
            with smtplib.LMTP(self.dovecot.host, self.dovecot.lmtp_port) as lmtp:
                lmtp.sendmail(envelope.mail_from or "<>", local, data)
        return "250 OK"


class SmtpSink:
    def __init__(self, dovecot: Dovecot) -> None:
        self.port = free_port()
        self.handler = _Handler(dovecot)
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def fail_next(self, *replies: str) -> None:
        with self.handler.lock:
            self.handler.failures.extend(replies)

    def hold_next(self, count: int = 1) -> None:
        with self.handler.lock:
            self.handler.holds += count

    @property
    def held(self) -> int:
        return self.handler.held

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self.handler.released.set()
        self._controller.stop()

    def smtp_config(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "tls": "none", "timeout_seconds": 5}
