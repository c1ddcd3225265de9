"""The outbox against an unexpected error in one attempt: a real aiosmtpd server, the real journal
and store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from gatewayd.config import parse_config
from gatewayd.events import Event
from gatewayd.sandbox.dovecot import free_port
from gatewayd.send.outbox import MESSAGE_ACTION, Outbox
from gatewayd.store.journal import FAILED, RETRY, SENT, OutgoingMail
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.sqlite_journal import SqliteRuleJournal
from tests.waiting import wait_for

KEY = "box\x1fINBOX\x1f1\x1f7"


class Sink:
    def __init__(self) -> None:
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler, port = Sink(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteRuleJournal, SqliteEventStore]]:
    journal, store = SqliteRuleJournal(tmp_path / "events.db"), SqliteEventStore(tmp_path / "events.db")
    await journal.open()
    await store.open()
    yield journal, store
    await store.close()
    await journal.close()


async def test_an_unexpected_error_in_one_attempt_fails_that_mail_and_the_outbox_goes_on(
    sink: tuple[Sink, int], stores: tuple[SqliteRuleJournal, SqliteEventStore], tmp_path: Path
) -> None:
    """An exception that was no SMTP error escaped the attempt: the mail stayed `sending` (never
    retried, never reported until a restart called it `unknown`) and the rest of the round waited."""
    handler, port = sink
    journal, store = stores
    box = {
        "id": "box",
        "imap": {"host": "localhost", "tls": "none", "username": "u", "password": "p"},
        "smtp": {"host": "127.0.0.1", "port": port, "tls": "none"},
    }
    (mailbox,) = parse_config(
        {"agents": [{"id": "a", "mailboxes": [box]}]}, env={}, base_dir=tmp_path
    ).mailboxes()
    mails = [
        OutgoingMail(
            i, "forward", "me@gw.example", (f"r{i}@x.example",), b"Subject: x\r\n\r\nHi.\r\n", f"<m{i}@gw>"
        )
        for i in range(2)
    ]
    await journal.begin(
        KEY, agent_id="a", mailbox_id="box", folder="INBOX", uidvalidity=1, uid=7, record={}, mails=mails
    )
    await journal.finish([KEY])
    for step in range(2):
        item = await journal.outbox_get(KEY, step)
        assert item is not None
        await journal.outbox_update(item.id, RETRY, attempts=1, next_attempt_at=0)
    published: list[Event] = []
    outbox = Outbox(journal, {"box": mailbox}, store, published.extend)

    real_mail = aiosmtplib.SMTP.mail
    surprises = [RuntimeError("a surprise")]

    async def mail_failing_once(smtp: aiosmtplib.SMTP, sender: str, **options: Any) -> Any:
        if surprises:
            raise surprises.pop()
        return await real_mail(smtp, sender, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiosmtplib.SMTP, "mail", mail_failing_once)
        task = asyncio.create_task(outbox.run())
        try:
            await wait_for(lambda: len(published) == 2, what="both mails settled and reported")
            assert not task.done()  # the loop goes on
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    states = [item.state for step in range(2) if (item := await journal.outbox_get(KEY, step))]
    assert states == [FAILED, SENT]
    failed, sent = sorted(published, key=lambda event: event.data["sent_message_id"])
    assert failed.type == MESSAGE_ACTION and failed.data["outcome"] == "failed"
    assert failed.data["error"] == "mail: unexpected error: RuntimeError: a surprise"
    assert sent.data["outcome"] == "ok" and handler.recipients == [["r1@x.example"]]
