"""An unexpected failure in the rules is the failing action's `error`, never the loss of the rules'
part of the event (`rules_applied` null). Failures are injected: the real servers do not fail so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from gatewayd.imap.act import SessionActions
from gatewayd.rules import compose
from gatewayd.sandbox.dovecot import Dovecot
from gatewayd.store.sqlite_journal import SqliteRuleJournal
from tests.conftest import TOKEN, gateway_config
from tests.smtp_sink import LOCAL_DOMAIN, SmtpSink
from tests.sse import SseReader, mail
from tests.waiting import idle, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
RULES = [
    {
        "name": "ack",
        "then": [
            {"add_flags": "\\Flagged"},
            {"move": {"folder": "Handled", "create": True}},
            {"auto_reply": {"body": "Got it.", "period_days": 0}},
        ],
    }
]


async def one_event(dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink) -> Any:
    config = gateway_config(
        tmp_path, dovecot, [user], rules=RULES, smtp=sink.smtp_config(), address=f"{user}@{LOCAL_DOMAIN}"
    )
    gw = await start_gateway(config)
    await wait_for(lambda: idle(gw), what="watcher idle")
    async with aiohttp.ClientSession() as session:
        reader = SseReader(await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"}))
        await dovecot.deliver_async(user, mail("hello"), sender="bob@example.org")
        (event,) = await reader.messages(1)
    return event.json["data"]


def outcomes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert data["rules_applied"] is not None, data["pipeline_errors"]
    return {a["action"]: a for rule in data["rules_applied"] for a in rule["actions"]}


async def test_an_action_that_raises_is_its_own_error_and_the_others_are_done(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink, monkeypatch: Any
) -> None:
    """An exception other than an IMAP error or ValueError, from an action or from composing a
    mail, failed the whole stage: the event had no rules_applied, though the move was done."""

    async def store(*args: Any) -> None:
        raise RuntimeError("injected store failure")

    def reply(*args: Any, **kwargs: Any) -> compose.Composed:
        raise KeyError("injected")

    monkeypatch.setattr(SessionActions, "store", store)
    monkeypatch.setattr(compose, "reply", reply)
    data = await one_event(dovecot, user, tmp_path, start_gateway, sink)
    actions = outcomes(data)
    assert actions["add_flags"]["outcome"] == "error"
    assert actions["add_flags"]["error"] == "unexpected error: RuntimeError: injected store failure"
    assert actions["auto_reply"]["outcome"] == "error" and "KeyError" in actions["auto_reply"]["error"]
    assert actions["move"]["outcome"] == "ok" and data["folder"] == "Handled"
    assert data["rules_errors"] == [
        'rule "ack", add_flags: unexpected error: RuntimeError: injected store failure',
        "rule \"ack\", auto_reply: unexpected error: KeyError: 'injected'",
    ]
    assert data["pipeline_errors"] == [] and not sink.received


async def test_a_reply_target_of_undecodable_bytes_is_that_replys_error(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink, monkeypatch: Any
) -> None:
    """Before the safety checks refused such a target, a Return-Path of bytes that are not UTF-8
    (surrogate escapes once decoded) reached the journal, whose write of the mail failed: the rules
    stage failed as a whole, and the event lost rules_applied. The checks are bypassed here."""
    monkeypatch.setattr("gatewayd.rules.engine.refuse_reply", lambda *args: None)
    monkeypatch.setattr("gatewayd.rules.engine.reply_target", lambda facts: "j\udcc3\udcb6rg@example.org")
    data = await one_event(dovecot, user, tmp_path, start_gateway, sink)
    actions = outcomes(data)
    assert actions["auto_reply"]["outcome"] == "error"
    assert "bytes that are not text" in actions["auto_reply"]["error"]
    assert actions["move"]["outcome"] == "ok" and actions["add_flags"]["outcome"] == "ok"
    assert data["pipeline_errors"] == [] and not sink.received


async def test_a_plan_the_journal_refuses_is_reported_not_done(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, sink: SmtpSink, monkeypatch: Any
) -> None:
    """Nothing is done without the journal (a crash could repeat it), and the event says so."""

    async def begin(*args: Any, **kwargs: Any) -> None:
        raise UnicodeEncodeError("utf-8", "\udcc3", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(SqliteRuleJournal, "begin", begin)
    data = await one_event(dovecot, user, tmp_path, start_gateway, sink)
    actions = outcomes(data)
    assert {a["outcome"] for a in actions.values()} == {"error"}
    assert actions["move"]["error"] == "not done: the plan could not be journaled"
    assert data["folder"] == "INBOX" and data["flags"] == ["\\Recent"]
    (error,) = data["rules_errors"]
    assert error.startswith("the rules' actions were not done: UnicodeEncodeError")
    assert data["pipeline_errors"] == [] and not sink.received
