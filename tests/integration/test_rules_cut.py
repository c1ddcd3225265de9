"""Rules on messages the fetch cut (`fetch_max_bytes`), against the real Dovecot: the address or the
text at the cut is only the start of the message's, and no rule fires on it."""

from __future__ import annotations

import asyncio
import imaplib
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import gateway_config
from tests.integration.test_rules import AUTH, Imap
from tests.sse import SseReader, date_now
from tests.waiting import idle, wait_for

CAP = 4096
CUT = "the fetch cut the headers short"


def appended(dovecot: Dovecot, user: str, *messages: bytes) -> None:
    """APPEND, not LMTP: the server stores the bytes as given, so the cap falls where the test says."""
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login(user, "secret")
    for raw in messages:
        client.append("INBOX", None, None, raw)
    client.logout()


def head(subject: str) -> str:
    return (
        f"To: agent@example.com\r\nSubject: {subject}\r\nDate: {date_now()}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@test.example>\r\n"
    )


def cut_in_from() -> bytes:
    """Headers past the cap whose last one read is the From, cut inside its address
    (`a@example.com` of `a@example.com.evil.test`), then a multipart with an .exe the prefix lacks."""
    start = head("cut in the From")
    pad = CAP - len(start) - len("From: a@example.com")
    lines = [f"X-Pad-{i}: {'p' * 60}\r\n" for i in range(pad // 72)]
    lines.append(f"X-Pad: {'p' * (pad - len(''.join(lines)) - 9)}\r\n")
    raw = (
        start + "".join(lines) + "From: a@example.com.evil.test\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nHi.\r\n'
        '--B\r\nContent-Type: application/octet-stream; name="setup.exe"\r\n'
        "Content-Disposition: attachment\r\n\r\nMZ\r\n--B--\r\n"
    ).encode()
    assert raw[:CAP].endswith(b"From: a@example.com"), raw[CAP - 40 : CAP + 10]
    return raw


def cut_in_body() -> bytes:
    """A text whose last words read are "status: ok", of "status: okay, pending review"."""
    start = head("cut in the body") + "From: a@example.com\r\n\r\nInvoice 42\r\n"
    filler = "filler text that goes on\r\n" * ((CAP - len(start)) // 26)
    text = start + filler
    text += "x" * (CAP - len(text) - len("status: ok")) + "status: okay, pending review\r\n"
    raw = text.encode()
    assert raw[:CAP].endswith(b"status: ok")
    return raw


async def test_no_rule_fires_on_an_address_or_a_text_end_the_fetch_cut(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    """`from: "@example.com"` matched `a@example.com.evil.test` cut at `a@example.com` and moved it
    to Trusted; `not: {has_attachments: true}` held of a message whose parts were past the cut; and
    `ok\\s*$` matched "status: okay" cut at "status: ok"."""
    rules = [
        {
            "name": "trusted",
            "if": {"from": "@example.com"},
            "then": [{"move": {"folder": "Trusted", "create": True}}],
        },
        {"name": "no-attachments", "if": {"not": {"has_attachments": True}}, "then": [{"tag": "plain"}]},
        {"name": "status-ok", "if": {"body": {"regex": r"status: ok\s*$"}}, "then": [{"tag": "ok"}]},
        {"name": "invoice", "if": {"body": {"regex": r"\bInvoice 42\b"}}, "then": [{"tag": "invoice"}]},
    ]
    config = gateway_config(tmp_path, dovecot, [user], rules=rules, fetch_max_bytes=CAP)
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    whole = (head("whole") + "From: a@example.com\r\n\r\nInvoice 42\r\nstatus: ok\r\n").encode()
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await asyncio.to_thread(appended, dovecot, user, cut_in_from(), cut_in_body(), whole)
        in_from, in_body, read_whole = [event.json["data"] for event in await reader.messages(3)]
    assert in_from["truncated"] is True and in_from["from"]["address"] == "a@example.com"
    assert (in_from["folder"], in_from["rules_applied"], in_from["rules_errors"]) == (
        "INBOX",
        [],
        [
            'rule "trusted" not applied: from: undecided, as its value was not all read'
            " (longer than 8192 characters, or cut by the fetch)",
            'rule "no-attachments" not applied: has_attachments: not found, but the message\'s parts were'
            " not all read",
            'rule "status-ok" not applied: body: not found, but the body text was not all read'
            " (cut at 256 KiB, or by the fetch)",
            'rule "invoice" not applied: body: not found, but the body text was not all read'
            " (cut at 256 KiB, or by the fetch)",
        ],
    )
    # The match in the middle of the cut text stands; the one at its end does not.
    assert in_body["truncated"] is True and in_body["labels"] == ["plain", "invoice"]
    assert [r["rule"] for r in in_body["rules_applied"]] == ["trusted", "no-attachments", "invoice"]
    assert in_body["rules_errors"] == [
        "rule \"status-ok\" not applied: body: regex 'status: ok\\\\s*$' matched, but the body text was"
        " not all read (cut at 256 KiB, or by the fetch), and more may undo it"
    ]
    # Read whole, the same address and text decide every rule.
    assert [r["rule"] for r in read_whole["rules_applied"]] == [
        "trusted",
        "no-attachments",
        "status-ok",
        "invoice",
    ]
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        assert await asyncio.to_thread(imap.uids, "INBOX") == [in_from["uid"]]
    finally:
        await asyncio.to_thread(imap.close)
