"""SMTP delivery against a real aiosmtpd server on loopback: the verdict after every kind of failure."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.controller import Controller

from gatewayd.config import SmtpConfig, parse_config
from gatewayd.sandbox.dovecot import free_port
from gatewayd.send.smtp import send
from tests.stalling_smtp import StallingSmtp
from tests.waiting import wait_for

MESSAGE = b"From: me@gw.example\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


class Handler:
    def __init__(self) -> None:
        self.data_reply = "250 OK"
        self.refuse: dict[str, str] = {}
        self.received: list[Any] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply.startswith("250"):
            self.received.append(envelope)
        return self.data_reply


def smtp_config(port: int, tmp_path: Path, **options: Any) -> SmtpConfig:
    smtp = {"host": "127.0.0.1", "port": port, "tls": "none", "timeout_seconds": 2, **options}
    box = {
        "id": "b",
        "imap": {"host": "localhost", "tls": "none", "username": "u", "password": "p"},
        "smtp": smtp,
    }
    config = parse_config({"agents": [{"id": "a", "mailboxes": [box]}]}, env={}, base_dir=tmp_path)
    smtp_config = config.mailboxes()[0].smtp
    assert smtp_config is not None
    return smtp_config


@pytest.fixture
def server() -> Iterator[tuple[Handler, int]]:
    handler = Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


async def test_verdicts(server: tuple[Handler, int], tmp_path: Path) -> None:
    handler, port = server
    config = smtp_config(port, tmp_path)
    result = await send(config, "me@gw.example", ["bob@example.org"], MESSAGE)
    assert (result.status, result.error) == ("sent", None) and len(handler.received) == 1
    handler.refuse = {"gone@example.org": "550 5.1.1 no such user"}
    partial = await send(config, "me@gw.example", ["bob@example.org", "gone@example.org"], MESSAGE)
    assert partial.status == "sent" and "gone@example.org: 550" in (partial.error or "")
    refused = await send(config, "me@gw.example", ["gone@example.org"], MESSAGE)
    assert refused.status == "failed"
    handler.data_reply = "451 4.3.0 try later"
    assert (await send(config, "me@gw.example", ["bob@example.org"], MESSAGE)).status == "retry"
    handler.data_reply = "554 5.7.1 rejected"
    assert (await send(config, "me@gw.example", ["bob@example.org"], MESSAGE)).status == "failed"
    # Nobody listening: certainly not delivered, worth retrying.
    down = await send(smtp_config(free_port(), tmp_path), "me@gw.example", ["bob@example.org"], MESSAGE)
    assert down.status == "retry" and down.error and down.error.startswith("connect:")


async def test_the_whole_attempt_is_bounded_by_timeout_seconds(tmp_path: Path) -> None:
    # Every reply is well within the per-command timeout, but the data would come only after
    # about two timeouts' worth of replies: the attempt gives up before, not at a multiple of it.
    async with StallingSmtp(reply_delay=0.4) as slow:
        config = smtp_config(slow.port, tmp_path, timeout_seconds=1)
        result = await send(config, "me@gw.example", ["bob@example.org"], MESSAGE)
    assert result.status == "retry" and not slow.got_data
    assert "DATA" not in slow.commands and "QUIT" not in slow.commands  # a stalled peer: no QUIT


async def test_starttls_with_the_configured_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    handler = Handler()
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
    )
    controller.start()
    try:
        trusted = smtp_config(port, tmp_path, tls="starttls", ca_file="ca.pem")
        assert (await send(trusted, "me@gw.example", ["bob@example.org"], MESSAGE)).status == "sent"
        untrusted = smtp_config(port, tmp_path, tls="starttls")
        result = await send(untrusted, "me@gw.example", ["bob@example.org"], MESSAGE)
        assert result.status == "retry" and len(handler.received) == 1
    finally:
        controller.stop()


async def test_implicit_tls_with_the_configured_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    handler = Handler()
    port = free_port()
    # SMTPS: TLS from the first byte (port 465 style), not STARTTLS.
    controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=context)
    controller.start()
    try:
        trusted = smtp_config(port, tmp_path, tls="implicit", ca_file="ca.pem")
        assert (await send(trusted, "me@gw.example", ["bob@example.org"], MESSAGE)).status == "sent"
        untrusted = smtp_config(port, tmp_path, tls="implicit")
        result = await send(untrusted, "me@gw.example", ["bob@example.org"], MESSAGE)
        assert result.status == "retry" and len(handler.received) == 1
    finally:
        controller.stop()


async def test_a_non_ascii_address_goes_out_with_smtputf8_or_fails_clearly(
    server: tuple[Handler, int], tmp_path: Path
) -> None:
    """aiosmtplib raised UnicodeEncodeError out of send() for such an address, even to a server
    offering SMTPUTF8 (aiosmtpd does by default); to one that does not, no MAIL is sent."""
    handler, port = server
    config = smtp_config(port, tmp_path)
    result = await send(config, "me@gw.example", ["jörg@exämple.org"], MESSAGE)
    assert (result.status, result.error) == ("sent", None)
    (envelope,) = handler.received
    assert envelope.rcpt_tos == ["jörg@exämple.org"] and "SMTPUTF8" in envelope.mail_options
    # An address from a header that was not valid UTF-8 holds surrogate escapes of its bytes.
    garbled = await send(config, "me@gw.example", ["j\udcc3\udcb6rg@example.org"], MESSAGE)
    assert garbled.status == "failed" and "not an address" in (garbled.error or "")

    ascii_handler, ascii_port = Handler(), free_port()
    controller = Controller(ascii_handler, hostname="127.0.0.1", port=ascii_port, enable_SMTPUTF8=False)
    controller.start()
    try:
        ascii_config = smtp_config(ascii_port, tmp_path)
        refused = await send(ascii_config, "me@gw.example", ["jörg@exämple.org"], MESSAGE)
    finally:
        controller.stop()
    assert refused.status == "failed" and "does not offer SMTPUTF8" in (refused.error or "")
    assert not ascii_handler.received


async def test_a_delivery_cancelled_while_it_hangs_up_closes_its_connection(tmp_path: Path) -> None:
    """A watcher stopped during an auto-reply is cancelled more than once (the pool cancels until
    it ends): the second cancellation, while QUIT waited for a stalled server, once left the
    connection established for good."""
    async with StallingSmtp(stall_after_data=True) as hung:
        config = smtp_config(hung.port, tmp_path, timeout_seconds=30)
        sending = asyncio.create_task(send(config, "me@gw.example", ["bob@example.org"], MESSAGE))
        await wait_for(lambda: hung.got_data, what="the data")
        sending.cancel()  # stopped while the server holds the data: QUIT next, unanswered
        await wait_for(lambda: "QUIT" in hung.commands, what="QUIT")
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        await wait_for(lambda: hung.hung_up == 1, timeout=10, what="the client to close its end")


async def test_an_unexpected_error_is_a_verdict_failed_before_the_data_unknown_from_it(
    server: tuple[Handler, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """send() promised never to raise, but an exception that was no SMTP error escaped it."""
    handler, port = server
    config = smtp_config(port, tmp_path)

    async def surprise(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a surprise")

    monkeypatch.setattr(aiosmtplib.SMTP, "rcpt", surprise)
    before = await send(config, "me@gw.example", ["bob@example.org"], MESSAGE)
    assert (before.status, before.error) == ("failed", "rcpt: unexpected error: RuntimeError: a surprise")
    monkeypatch.undo()
    monkeypatch.setattr(aiosmtplib.SMTP, "data", surprise)
    at_data = await send(config, "me@gw.example", ["bob@example.org"], MESSAGE)
    assert (at_data.status, at_data.error) == ("unknown", "data: unexpected error: RuntimeError: a surprise")
    assert not handler.received


async def test_a_ca_file_gone_since_start_up_fails_the_attempt_without_raising(
    server: tuple[Handler, int], tmp_path: Path
) -> None:
    """The TLS context was made outside send()'s guard: the FileNotFoundError escaped it."""
    handler, port = server
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    config = smtp_config(port, tmp_path, tls="starttls", ca_file=str(ca_file))
    ca_file.unlink()
    result = await send(config, "me@gw.example", ["bob@example.org"], MESSAGE)
    assert result.status == "retry" and "No such file" in (result.error or ""), result
    assert not handler.received
