"""Rules against the real Dovecot and a real SMTP peer: moves, flags, keywords, auto-replies, retries."""

from __future__ import annotations

import asyncio
import base64
import email
import imaplib
import random
import uuid
from email import policy
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.message import MAX_HEADER_CHARS, MAX_PARTS
from gatewayd.message.limits import MAX_ATTACHED_PARTS
from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import TOKEN, gateway_config
from tests.smtp_sink import LOCAL_DOMAIN, SmtpSink
from tests.sse import Frame, SseReader, mail
from tests.test_attached import TOP, attachment, inline
from tests.test_attached import message as multipart
from tests.waiting import idle, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Imap:
    """A separate, synchronous client: what really is on the server."""

    def __init__(self, dovecot: Dovecot, user: str) -> None:
        self.client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
        self.client.login(user, "secret")

    def uids(self, folder: str) -> list[int]:
        status, _ = self.client.select(f'"{folder}"')
        if status != "OK":
            return []
        _, data = self.client.uid("SEARCH", "ALL")
        return [int(uid) for uid in data[0].split()]

    def flags(self, folder: str, uid: int) -> set[str]:
        self.client.select(f'"{folder}"')
        _, data = self.client.uid("FETCH", str(uid), "(FLAGS)")
        text = data[0].decode()
        return set(text[text.index("FLAGS (") + 7 :].split(")")[0].split())

    def message(self, folder: str, uid: int) -> email.message.EmailMessage:
        self.client.select(f'"{folder}"')
        _, data = self.client.uid("FETCH", str(uid), "(BODY.PEEK[])")
        return email.message_from_bytes(data[0][1], policy=policy.default)

    def close(self) -> None:
        self.client.logout()


async def until_uids(imap: Imap, folder: str, count: int, timeout: float = 10.0) -> list[int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(uids := await asyncio.to_thread(imap.uids, folder)) < count:
        if loop.time() > deadline:
            raise AssertionError(f"{folder} has {len(uids)} messages, expected {count}")
        await asyncio.sleep(0.05)
    return uids


def actions_of(frame: Frame) -> dict[str, dict[str, Any]]:
    return {a["action"]: a for rule in frame.json["data"]["rules_applied"] for a in rule["actions"]}


async def test_move_flags_and_keywords_happen_on_the_server_before_the_event(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    rules = [
        {
            "name": "invoices",
            "if": {"from": "@billing.example", "subject": {"regex": "(?i)invoice [0-9]+"}},
            "then": [
                {"move": {"folder": "Invoices", "create": True}},
                {"add_keywords": ["invoice", "$Important"]},
                {"add_flags": "\\Flagged"},
                "mark_read",
                {"tag": "finance"},
            ],
            "stop": True,
        },
        {"name": "never", "then": [{"move": "Elsewhere"}]},
    ]
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], rules=rules))
    await wait_for(lambda: idle(gw), what="watcher idle")
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        async with aiohttp.ClientSession() as session:
            reader = SseReader(
                await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"})
            )
            await dovecot.deliver_async(user, mail("Invoice 42", sender="Billing <ap@billing.example>"))
            (event,) = await reader.messages(1)
        data = event.json["data"]
        # The event says where the message now is, with its flags and labels after the rules.
        assert data["folder"] == "Invoices" and isinstance(data["uid"], int)
        assert data["moved_from"]["folder"] == "INBOX"
        assert {"\\Seen", "\\Flagged", "invoice", "$Important"} <= set(data["flags"])
        assert data["labels"] == ["invoice", "$Important", "finance"]
        assert [rule["rule"] for rule in data["rules_applied"]] == ["invoices"]
        assert all(a["outcome"] == "ok" for a in data["rules_applied"][0]["actions"])
        assert data["pipeline_ms"]["rules"] >= 0 and data["rules_errors"] == []
        # ... and that is what the server has: gone from INBOX, in Invoices with the flags.
        assert await asyncio.to_thread(imap.uids, "INBOX") == []
        assert await asyncio.to_thread(imap.uids, "Invoices") == [data["uid"]]
        flags = await asyncio.to_thread(imap.flags, "Invoices", data["uid"])
        assert {"\\Seen", "\\Flagged", "invoice", "$Important"} <= flags
        # The report endpoint finds the message where it now lives.
        async with aiohttp.ClientSession() as session:
            url = f"{gw.url}/v1/messages/{event.id}/report"
            response = await session.post(url, headers=AUTH, json={"label": "ham"})
            assert response.status == 200, await response.text()
    finally:
        await asyncio.to_thread(imap.close)


async def test_move_without_the_move_capability_copies_and_expunges(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    rules = [
        {"name": "archive", "then": [{"move": "Archive"}, {"copy": {"folder": "Copies", "create": True}}]}
    ]
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], rules=rules))
    await wait_for(lambda: idle(gw), what="watcher idle")
    (watcher,) = gw.daemon.pool._watchers[f"{user}-inbox"]
    capabilities = watcher._session._client.protocol.capabilities
    capabilities.discard("MOVE")  # as on a server without RFC 6851
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        async with aiohttp.ClientSession() as session:
            reader = SseReader(
                await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"})
            )
            await dovecot.deliver_async(user, mail("old news"))
            (event,) = await reader.messages(1)
        data = event.json["data"]
        assert data["folder"] == "Archive"
        assert (
            actions_of(event)["copy"]["folder"] == "Copies" and actions_of(event)["copy"]["outcome"] == "ok"
        )
        assert await asyncio.to_thread(imap.uids, "INBOX") == []  # expunged, not just marked
        assert await asyncio.to_thread(imap.uids, "Archive") == [data["uid"]]
        assert len(await asyncio.to_thread(imap.uids, "Copies")) == 1
    finally:
        await asyncio.to_thread(imap.close)


async def test_a_move_to_inbox_in_any_case_leaves_a_message_in_inbox_alone(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    """`move: inbox` once moved the message onto INBOX itself: a new UID, announced and moved
    again, for ever."""
    rules = [{"name": "home", "if": {"subject": "home"}, "then": [{"move": "inbox"}]}]
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], rules=rules))
    await wait_for(lambda: idle(gw), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail("home"))
        (home,) = await reader.messages(1)
        await dovecot.deliver_async(user, mail("next"))
        (following,) = await reader.messages(1)
    data = home.json["data"]
    move = actions_of(home)["move"]
    assert move["outcome"] == "skipped" and move["folder"] == "INBOX", move
    assert (data["folder"], data["moved_from"]) == ("INBOX", None)
    assert following.json["data"]["subject"] == "next"
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        assert await asyncio.to_thread(imap.uids, "INBOX") == [data["uid"], following.json["data"]["uid"]]
    finally:
        await asyncio.to_thread(imap.close)


async def test_auto_reply_arrives_once_with_rfc3834_headers(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    alice = f"alice-{uuid.uuid4().hex[:8]}"
    alice_address = f"{alice}@{LOCAL_DOMAIN}"
    rules = [
        {
            "name": "ack",
            "if": {"subject": {"contains": "help"}},
            "then": [
                {"auto_reply": {"body": "Hello {{ sender_name }}, we got: {{ subject }}", "period_days": 1}}
            ],
        }
    ]
    config = gateway_config(
        tmp_path, dovecot, [user], rules=rules, smtp=sink.smtp_config(), address=f"{user}@{LOCAL_DOMAIN}"
    )
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    alice_imap = await asyncio.to_thread(Imap, dovecot, alice)
    try:
        async with aiohttp.ClientSession() as session:
            reader = SseReader(
                await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"})
            )
            first = mail("help me please", sender=f"Alice <{alice_address}>")
            await dovecot.deliver_async(user, first, sender=alice_address)
            (event,) = await reader.messages(1)
            reply = event.json["data"]["auto_reply"]
            assert reply["outcome"] == "ok" and reply["to"] == [alice_address], event.json["data"]
            # The reply really arrived in Alice's mailbox, with RFC 3834's headers.
            (uid,) = await until_uids(alice_imap, "INBOX", 1)
            got = await asyncio.to_thread(alice_imap.message, "INBOX", uid)
            original_id = event.json["data"]["message_id"]
            assert got["Message-ID"] == reply["message_id"]
            assert got["Auto-Submitted"] == "auto-replied"
            assert got["In-Reply-To"] == original_id and original_id in got["References"]
            assert got["Subject"] == "Re: help me please"
            assert got["From"] == f"{user}@{LOCAL_DOMAIN}"
            assert "Hello Alice, we got: help me please" in got.get_content()
            # Never twice to the same sender within the period, never to a list or an automatic message.
            await dovecot.deliver_async(
                user, mail("help again", sender=f"Alice <{alice_address}>"), alice_address
            )
            bob = f"bob@{LOCAL_DOMAIN}"
            listed = mail("help on the list", sender=f"Bob <{bob}>", List_Id="<users.lists.example>")
            await dovecot.deliver_async(user, listed, sender=bob)
            robot = mail("help (automatic)", sender=f"Bob <{bob}>", Auto_Submitted="auto-replied")
            await dovecot.deliver_async(user, robot, sender=bob)
            noreply = "no-reply@shop.example"
            await dovecot.deliver_async(user, mail("help", sender=noreply), sender=noreply)
            again, from_list, automatic, robot_address = await reader.messages(4)
        reasons = [actions_of(f)["auto_reply"] for f in (again, from_list, automatic, robot_address)]
        assert all(r["outcome"] == "skipped" for r in reasons), reasons
        assert "within the period" in reasons[0]["reason"]
        assert "mailing list" in reasons[1]["reason"]
        assert "automatic" in reasons[2]["reason"]
        assert "robot" in reasons[3]["reason"]
        assert again.json["data"]["auto_reply"] is None
        assert len(sink.received) == 1
        assert await asyncio.to_thread(alice_imap.uids, "INBOX") == [uid]
    finally:
        await asyncio.to_thread(alice_imap.close)


async def test_a_runaway_template_fails_its_auto_reply_and_holds_nothing_up(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    # 500 ** 4 turns over the excerpt: rendered on the event loop, it would stop the daemon for hours.
    runaway = "{% for a in excerpt %}{% for b in excerpt %}{% for c in excerpt %}{% for d in excerpt %}"
    runaway += "{% endfor %}{% endfor %}{% endfor %}{% endfor %}Hello"
    rules = [
        {"name": "runaway", "if": {"subject": "runaway"}, "then": [{"auto_reply": runaway}], "stop": True},
        {"name": "shout", "then": [{"auto_reply": "WE GOT: {{ subject|upper }}"}]},
    ]
    config = gateway_config(
        tmp_path, dovecot, [user], rules=rules, smtp=sink.smtp_config(), address=f"{user}@{LOCAL_DOMAIN}"
    )
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        carol, dave = f"carol@{LOCAL_DOMAIN}", f"dave@{LOCAL_DOMAIN}"
        await dovecot.deliver_async(user, mail("runaway", sender=carol, body="x " * 400), sender=carol)
        await dovecot.deliver_async(user, mail("thanks", sender=dave), sender=dave)
        failed, answered = await reader.messages(2, timeout=60)
        async with session.get(f"{gw.url}/healthz") as health:
            assert health.status == 200
    reply = actions_of(failed)["auto_reply"]
    assert reply["outcome"] == "error" and "template failed" in reply["error"], reply
    assert failed.json["data"]["auto_reply"]["outcome"] == "error"
    assert actions_of(answered)["auto_reply"]["outcome"] == "ok"
    (sent,) = sink.received
    assert sent.recipients == [dave] and b"WE GOT: THANKS" in sent.data


async def test_an_auto_reply_has_its_own_headers_and_one_recipient_whatever_the_mail_says(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    """A subject or Message-ID spelling an encoded CR LF added headers and a body of the sender's
    choosing to the reply; a Return-Path the sender wrote below the server's chose the recipient."""
    rules = [{"name": "ack", "then": [{"auto_reply": {"body": "Got it.", "period_days": 0}}]}]
    config = gateway_config(
        tmp_path, dovecot, [user], rules=rules, smtp=sink.smtp_config(), address=f"{user}@{LOCAL_DOMAIN}"
    )
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    victim, erin = f"victim@{LOCAL_DOMAIN}", f"erin@{LOCAL_DOMAIN}"
    inject = f"=?utf-8?q?x=0D=0ABcc:_{victim}=0D=0A=0D=0ABuy_now?="
    hostile = mail(
        # Decoded once by gatewayd, the subject is itself an encoded word.
        "=?utf-8?b?" + base64.b64encode(inject.encode()).decode() + "?=",
        sender=f"Erin <{erin}>",
        Message_ID=f"{inject}<{uuid.uuid4().hex}@x.example>",
        Return_Path=f"<{erin},{victim}>",
    )
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, hostile, sender=erin)
        (event,) = await reader.messages(1)
    assert event.json["data"]["auto_reply"]["to"] == [erin], event.json["data"]
    (sent,) = sink.received
    assert sent.recipients == [erin]
    head = sent.data.partition(b"\r\n\r\n")[0]
    names = [line.split(b":")[0] for line in head.split(b"\r\n") if not line.startswith((b" ", b"\t"))]
    assert names == [
        *(b"From", b"To", b"Subject", b"Date", b"Message-ID", b"In-Reply-To", b"References"),
        *(b"Auto-Submitted", b"X-Auto-Response-Suppress", b"X-Loop"),
        *(b"Content-Type", b"Content-Transfer-Encoding", b"MIME-Version"),
    ], head
    got = email.message_from_bytes(sent.data, policy=policy.default)
    assert got["To"] == erin and got.get_content().strip() == "Got it."


async def test_two_gateways_answering_everything_do_not_answer_each_other(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    """RFC 3834's loop guard between two mailboxes that auto-reply to all mail, with no period."""
    other = f"peer-{uuid.uuid4().hex[:8]}"
    dovecot.add_user(other)
    rules = [{"name": "ack", "then": [{"auto_reply": {"body": "Got it.", "period_days": 0}}]}]
    gateways = []
    for name in (user, other):
        (tmp_path / name).mkdir()
        config = gateway_config(
            tmp_path / name,
            dovecot,
            [name],
            rules=rules,
            smtp=sink.smtp_config(),
            address=f"{name}@{LOCAL_DOMAIN}",
        )
        gateways.append(gw := await start_gateway(config))
        await wait_for(lambda gw=gw: idle(gw), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        first, second = [
            SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
            for gw in gateways
        ]
        peer = f"{other}@{LOCAL_DOMAIN}"
        await dovecot.deliver_async(user, mail("hello", sender=f"Peer <{peer}>"), sender=peer)
        (asked,) = await first.messages(1)
        (answered,) = await second.messages(1)  # the first gateway's reply, in the peer's INBOX
    assert asked.json["data"]["auto_reply"]["outcome"] == "ok"
    assert answered.json["data"]["message_id"] == asked.json["data"]["auto_reply"]["message_id"]
    refused = actions_of(answered)["auto_reply"]
    assert refused["outcome"] == "skipped" and "automatic" in refused["reason"], refused
    assert [r.recipients for r in sink.received] == [[peer]]


async def test_smtp_failure_is_reported_then_retried_in_the_background(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    rules = [
        {"name": "fwd", "then": [{"forward": {"to": "archive@copies.example", "note": "From {{ rule }}"}}]}
    ]
    smtp = {**sink.smtp_config(), "retry_initial_seconds": 0.2, "retry_max_seconds": 0.5}
    config = gateway_config(tmp_path, dovecot, [user], rules=rules, smtp=smtp, address="agent@gateway.test")
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    sink.fail_next("451 4.3.0 try again later")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail("quarterly numbers"))
        (event,) = await reader.messages(1)
        forward = actions_of(event)["forward"]
        assert forward["outcome"] == "pending" and "451" in forward["error"], forward
        follow_up = await reader.until(lambda f: f.event == "message.action")
    data = follow_up.json["data"]
    assert (
        data["outcome"] == "ok" and data["attempts"] == 2 and data["sent_message_id"] == forward["message_id"]
    )
    (sent,) = sink.received
    forwarded = email.message_from_bytes(sent.data, policy=policy.default)
    assert (
        forwarded["Subject"] == "Fwd: quarterly numbers" and forwarded["Auto-Submitted"] == "auto-generated"
    )
    attached = [part for part in forwarded.walk() if part.get_content_type() == "message/rfc822"]
    assert attached
    (original,) = attached[0].iter_parts()  # message/rfc822: the forwarded message, whole
    assert original["Subject"] == "quarterly numbers"


async def test_a_forward_to_an_address_that_is_not_ascii_has_it_in_utf8_on_the_wire(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    """The To header held the address as RFC 2047 encoded words, which no reader takes for an
    address: it goes out as UTF-8 (RFC 6532), in a transaction with SMTPUTF8."""
    rules = [{"name": "fwd", "then": [{"forward": "jörg@bücher.example"}]}]
    config = gateway_config(
        tmp_path, dovecot, [user], rules=rules, smtp=sink.smtp_config(), address="agent@gateway.test"
    )
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail("for jörg"))
        (event,) = await reader.messages(1)
    assert actions_of(event)["forward"]["outcome"] == "ok", actions_of(event)
    (sent,) = sink.received
    assert sent.recipients == ["jörg@bücher.example"] and "SMTPUTF8" in sent.mail_options
    head = sent.data.partition(b"\r\n\r\n")[0]
    assert "\r\nTo: jörg@bücher.example\r\n".encode() in head and b"=?" not in head, head


async def test_a_message_moved_into_a_watched_folder_is_announced_once(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    rules = [{"name": "archive", "if": {"folder": "INBOX"}, "then": [{"move": "Archive"}]}]
    config = gateway_config(tmp_path, dovecot, [user], rules=rules, imap={"folders": ["INBOX", "Archive"]})
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watchers idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail("file me"))
        await dovecot.deliver_async(user, mail("and me"))
        first, second = await reader.messages(2)
        assert {first.json["data"]["folder"], second.json["data"]["folder"]} == {"Archive"}
        # The Archive watcher has processed the two new UIDs (its checkpoint passed them)...
        store = gw.daemon.store
        for _ in range(200):
            checkpoint = await store.get_checkpoint(f"{user}-inbox", "Archive")
            if checkpoint is not None and checkpoint.last_uid >= 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the Archive watcher never synced: {checkpoint}")
        # ... and announced neither again.
        with pytest.raises(TimeoutError):
            await reader.messages(1, timeout=0.5)


async def test_a_regex_a_message_makes_slow_does_not_fire_a_rule_under_not(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    """A regex out of time is undecided, not "no match": `not:` of it must not move the message."""
    rules = [
        {
            "name": "not-x",
            "if": {"not": {"body": {"regex": "(x+x+)+y"}}},
            "then": [{"move": {"folder": "Elsewhere", "create": True}}],
        }
    ]
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], rules=rules))
    await wait_for(lambda: idle(gw), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail("hostile", body="x" * 5000))
        (event,) = await reader.messages(1)
    data = event.json["data"]
    assert data["rules_applied"] == [] and (data["folder"], data["moved_from"]) == ("INBOX", None)
    (error,) = data["rules_errors"]
    assert error.startswith("rule \"not-x\" not applied: body: regex '(x+x+)+y' timed out"), error
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        assert await asyncio.to_thread(imap.uids, "INBOX") == [data["uid"]]
    finally:
        await asyncio.to_thread(imap.close)


async def test_a_body_test_that_finds_nothing_past_the_fetch_cap_answers_nothing(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink
) -> None:
    """The fetch and the parser read the first 256 KiB of a text: `not: {body: X}` answered a
    message whose X lay past them."""
    rules = [
        {
            "name": "ack-unless-unsubscribe",
            "if": {"not": {"body": "unsubscribe"}},
            "then": [{"auto_reply": {"body": "We got it.", "period_days": 0}}],
        }
    ]
    config = gateway_config(
        tmp_path, dovecot, [user], rules=rules, smtp=sink.smtp_config(), address=f"{user}@{LOCAL_DOMAIN}"
    )
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    long_body = (
        "Dear support,\r\n" + "filler text that goes on and on\r\n" * 10_000 + "Please unsubscribe me."
    )
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        sender = f"carol@{LOCAL_DOMAIN}"
        await dovecot.deliver_async(user, mail("long", sender=sender, body=long_body), sender=sender)
        await dovecot.deliver_async(
            user, mail("short", sender=sender, body="Dear support, hello."), sender=sender
        )
        cut, whole = await reader.messages(2)
    data = cut.json["data"]
    assert data["truncated"] is True and data["rules_applied"] == [] and data["auto_reply"] is None
    assert data["rules_errors"] == [
        'rule "ack-unless-unsubscribe" not applied: body: not found, but the body text was not all read'
        " (cut at 256 KiB, or by the fetch)"
    ]
    # The short message, all read, is answered: the one reply the sink got.
    assert whole.json["data"]["auto_reply"]["outcome"] == "ok", whole.json["data"]
    assert [r.recipients for r in sink.received] == [[sender]]


async def test_tests_on_what_the_parser_cut_or_left_unread_move_nothing(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    """A Subject longer than the parser keeps, and an .exe past the parser's limit on parts: the
    tests took the start of the one for the whole and the rest of the other for absent, and moved
    the messages to Clean."""
    rules = [
        {
            "name": "clean",
            "if": {"not": {"any": [{"subject": {"regex": "(?i)urgent"}}, {"attachment_type": ".exe"}]}},
            "then": [{"move": {"folder": "Clean", "create": True}}],
        }
    ]
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], rules=rules))
    await wait_for(lambda: idle(gw), what="watcher idle")
    long_subject = "Invoice " + "\r\n ".join(["x" * 70] * (MAX_HEADER_CHARS // 70 + 10)) + " URGENT"
    inline = "--B\r\nContent-Type: text/html\r\n\r\n<p></p>\r\n" * (MAX_PARTS + 10)
    many_parts = (
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n' + inline + "--B\r\n"
        'Content-Type: application/octet-stream; name="setup.exe"\r\n'
        "Content-Disposition: attachment\r\n\r\nMZ\r\n--B--\r\n"
    )
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail(long_subject))
        head = mail("many parts").decode().partition("\r\n\r\n")[0]
        await dovecot.deliver_async(user, (head + "\r\n" + many_parts).encode())
        await dovecot.deliver_async(user, mail("Invoice, all read"))
        cut, unseen, whole = [event.json["data"] for event in await reader.messages(3)]
    why = f"its value was not all read (longer than {MAX_HEADER_CHARS} characters, or cut by the fetch)"
    assert (cut["folder"], cut["rules_applied"], cut["rules_errors"]) == (
        "INBOX",
        [],
        [f'rule "clean" not applied: subject: undecided, as {why}'],
    )
    assert (unseen["folder"], unseen["has_attachments"], unseen["rules_errors"]) == (
        "INBOX",
        False,
        ['rule "clean" not applied: attachment_type: not found, but the message\'s parts were not all read'],
    )
    assert whole["folder"] == "Clean" and whole["rules_errors"] == [], whole
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        assert await asyncio.to_thread(imap.uids, "INBOX") == [cut["uid"], unseen["uid"]]
    finally:
        await asyncio.to_thread(imap.close)


async def test_the_body_test_reads_a_list_footer_in_a_further_inline_part_and_fails_closed_past_it(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    """Mailing-list software adds its footer as a second inline text part: `body` missed it and
    `not: {body: ...}` moved list mail to Personal, also when the footer lay past the parts read."""
    rules = [
        {
            "name": "lists",
            "if": {"body": "unsubscribe"},
            "then": [{"move": {"folder": "Lists", "create": True}}],
        },
        {
            "name": "personal",
            "if": {"not": {"body": "unsubscribe"}},
            "then": [{"move": {"folder": "Personal", "create": True}}],
        },
    ]
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], rules=rules))
    await wait_for(lambda: idle(gw), what="watcher idle")
    footer = inline("To unsubscribe from this list, write to leave@lists.example.org")
    filler = base64.b64encode(random.Random(3).randbytes(300_000)).decode()
    pdf = attachment("", "report.pdf", "application/pdf").replace("\r\n\r\n", f"\r\n\r\n{filler}", 1)
    files = [attachment("Notes.", f"{n}.txt") for n in range(MAX_ATTACHED_PARTS)]
    sent = {
        "footer": multipart(footer),
        "past the cap": multipart(pdf, footer),  # the footer fetched on its own, after the prefix
        "over budget": multipart(*files, footer),  # past the 8 parts read: not read
        "personal": multipart(inline("See you on Friday.")),
    }
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        for name, raw in sent.items():
            message_id = f"<{name.replace(' ', '.')}@test.example>".encode()
            await dovecot.deliver_async(user, raw.replace(b"<a@test.example>", message_id))
        events = [event.json["data"] for event in await reader.messages(len(sent))]
    by_name = dict(zip(sent, events, strict=True))
    assert {name: data["folder"] for name, data in by_name.items()} == {
        "footer": "Lists",
        "past the cap": "Lists",
        "over budget": "INBOX",
        "personal": "Personal",
    }
    assert by_name["past the cap"]["truncated"] is True
    why = "body: not found, but the inline text part inline:2 was not all read (over budget)"
    assert by_name["over budget"]["rules_errors"] == [
        f'rule "lists" not applied: {why}',
        f'rule "personal" not applied: {why}',
    ]
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        assert await asyncio.to_thread(imap.uids, "INBOX") == [by_name["over budget"]["uid"]]
        assert len(await asyncio.to_thread(imap.uids, "Lists")) == 2
    finally:
        await asyncio.to_thread(imap.close)


async def test_the_body_test_reads_an_html_body_followed_by_a_plain_footer(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    """A multipart/mixed HTML body with a list's text/plain footer after it (no alternative): the
    footer was taken for the body and the HTML's text was read by nothing, so `body` missed it."""
    rules = [
        {
            "name": "invoices",
            "if": {"body": "invoice 4711"},
            "then": [{"move": {"folder": "Invoices", "create": True}}],
        }
    ]
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], rules=rules))
    await wait_for(lambda: idle(gw), what="watcher idle")
    html = inline("<p>Please pay <b>invoice 4711</b> by Friday.</p>", "text/html", None)
    footer = inline("Reports mailing list\r\nhttps://lists.example.org/reports", disposition=None)
    parts = f"--B\r\n{html}\r\n--B\r\n{footer}\r\n--B--\r\n"
    raw = f'{TOP}Content-Type: multipart/mixed; boundary="B"\r\n\r\n{parts}'
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, raw.encode())
        (event,) = await reader.messages(1)
    data = event.json["data"]
    assert (data["folder"], data["rules_errors"]) == ("Invoices", []), data
    assert data["body_text_excerpt"] == "Please pay invoice 4711 by Friday."
