"""Text past the fetch cap, against the real Dovecot: a text part after a large attachment reaches
every stage and the event; a message within the cap still costs one FETCH; a BODYSTRUCTURE or part
fetch that fails leaves the message as its prefix, never lost."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.imap.session import ImapError, ImapSession
from gatewayd.message import parse_message
from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import TOKEN, gateway_config
from tests.sse import INJECTION, late_text_mail, mail, open_stream

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAP = 262144
REPORT = {"filename": "report.pdf", "content_type": "application/pdf", "size": 300_000}


async def test_text_after_a_large_attachment_reaches_every_stage(
    dovecot: Dovecot, user: str, idle_gateway: Any
) -> None:
    async with aiohttp.ClientSession() as session:
        reader = await open_stream(session, idle_gateway.url, {"types": "message.*"})
        await dovecot.deliver_async(user, late_text_mail("quarterly report"))
        (event,) = await reader.messages(1)
    data = event.json["data"]
    assert data["size"] > CAP and data["truncated"] is True  # the attachment's content was not fetched
    assert data["body_text_excerpt"] == INJECTION
    assert "webhook.site" in data["sanitized_excerpt"]
    assert data["injection"]["score"] >= 0.5
    assert data["injection"]["findings"]
    assert data["attachments"] == [REPORT]


class Fetches:
    """The items of every UID FETCH a session sends, and failures injected in place of some
    (what a real server does not produce: a broken BODYSTRUCTURE, a refusal)."""

    def __init__(self, session: ImapSession, monkeypatch: pytest.MonkeyPatch) -> None:
        self.items: list[str] = []
        self.answers: dict[str, list[bytes | bytearray]] = {}  # items containing the key -> this answer
        self.refused: set[str] = set()
        uid, fetch_raw = session._client.uid, session.fetch_raw

        def sent(command: str, *args: str) -> Any:
            if command == "fetch":
                self.items.append(args[-1])
            return uid(command, *args)

        async def failing(uids: Sequence[int], items: str) -> Sequence[bytes | bytearray]:
            for marker, answer in self.answers.items():
                if marker in items:
                    return answer
            if any(marker in items for marker in self.refused):
                raise ImapError("UID FETCH failed: NO refused")
            return await fetch_raw(uids, items)

        monkeypatch.setattr(session._client, "uid", sent)
        monkeypatch.setattr(session, "fetch_raw", failing)


@pytest.fixture
async def session(dovecot: Dovecot, user: str, tmp_path: Path) -> AsyncIterator[ImapSession]:
    opened = await ImapSession.open(gateway_config(tmp_path, dovecot, [user]).mailboxes()[0].imap)
    try:
        yield opened
    finally:
        await opened.logout()


async def test_a_message_within_the_cap_is_fetched_with_one_command(
    dovecot: Dovecot, user: str, session: ImapSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    await dovecot.deliver_async(user, late_text_mail("small", attachment_bytes=10_000))
    await dovecot.deliver_async(user, mail("plain"))
    await session.select("INBOX")
    fetches = Fetches(session, monkeypatch)
    small, plain = await session.fetch(await session.uids_from(1), CAP)
    assert len(fetches.items) == 1
    assert small.parts == () and plain.parts == ()
    assert parse_message(small)["body_text_excerpt"] == INJECTION


async def test_large_messages_of_a_batch_share_their_part_fetches(
    dovecot: Dovecot, user: str, session: ImapSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    for subject in ("first", "second"):
        await dovecot.deliver_async(user, late_text_mail(subject))
    await session.select("INBOX")
    fetches = Fetches(session, monkeypatch)
    messages = await session.fetch(await session.uids_from(1), CAP)
    # The prefixes, one BODYSTRUCTURE for both, one fetch of the same sections for both.
    assert len(fetches.items) == 3 and "BODYSTRUCTURE" in fetches.items[1]
    assert "BODY.PEEK[2]" in fetches.items[2] and "BODY.PEEK[1]<" not in fetches.items[2]
    for message in messages:
        data = parse_message(message)
        assert data["body_text_excerpt"] == INJECTION
        assert data["attachments"] == [REPORT]


@pytest.mark.parametrize(
    "failure",
    ["a BODYSTRUCTURE that is not one", "no BODYSTRUCTURE", "a refused BODYSTRUCTURE", "a refused part"],
)
async def test_a_failure_fetching_the_parts_leaves_the_prefix(
    dovecot: Dovecot,
    user: str,
    session: ImapSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    await dovecot.deliver_async(user, late_text_mail("broken"))
    await session.select("INBOX")
    (uid,) = await session.uids_from(1)
    fetches = Fetches(session, monkeypatch)
    if failure == "a BODYSTRUCTURE that is not one":
        fetches.answers["BODYSTRUCTURE"] = [f"1 FETCH (UID {uid} BODYSTRUCTURE (NIL 12 (".encode(), b"OK"]
    elif failure == "no BODYSTRUCTURE":
        fetches.answers["BODYSTRUCTURE"] = [f"1 FETCH (UID {uid})".encode(), b"OK"]
    elif failure == "a refused BODYSTRUCTURE":
        fetches.refused.add("BODYSTRUCTURE")
    else:
        fetches.refused.add(".MIME]")
    with caplog.at_level(logging.WARNING, logger="gatewayd.imap.parts"):
        (message,) = await session.fetch([uid], CAP)
    assert message.uid == uid and message.parts == ()
    assert caplog.records and all("secret" not in record.getMessage() for record in caplog.records)
    data = parse_message(message)
    # Today's behaviour: the prefix alone, the attachment cut by the cap.
    assert data["subject"] == "broken" and data["truncated"] is True
    assert data["body_text_excerpt"] is None
    assert data["attachments"] == [{**REPORT, "size": None}]
    # The session is fine afterwards.
    assert await session.uids_from(1) == [uid]
