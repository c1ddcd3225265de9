"""The entries a mailbox or a folder removed from the configuration left open, closed at start-up,
with the real journal and store (gatewayd.rules.removed); and a retry without the watcher, against
recovery."""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from typing import Any

import pytest

from gatewayd.imap.fetch import FetchedMessage
from gatewayd.imap.session import ImapConnectionLost
from gatewayd.rules.execute import ActionInterrupted, message_key
from gatewayd.rules.removed import close_removed
from gatewayd.store.journal import DONE, FAILED, RETRY, SENDING
from tests.stalling_smtp import StallingSmtp
from tests.test_rules_engine import RAW, FakeActions, fetched, parts, setup
from tests.waiting import wait_for

__all__ = ["parts"]  # the fixture

SMTP = {"host": "127.0.0.1", "port": 9, "tls": "none"}
THEN = [{"add_keywords": "seen"}, {"move": "Archive"}, {"auto_reply": "Thanks."}]


async def interrupted(pipeline: Any, mailbox: Any, folder: str = "INBOX", uid: int = 7) -> None:
    """Journal the message and cut its actions off at the first: all of them are left open."""
    broken = FakeActions()
    broken.fail = ImapConnectionLost("connection lost")  # at the keyword change: the rest never ran
    with pytest.raises(ActionInterrupted):
        await pipeline.process(mailbox, FetchedMessage(folder, uid, 1, RAW, len(RAW), (), None), broken)


@pytest.mark.parametrize(
    ("before", "after", "removed"),
    [
        ({"box": ["INBOX"]}, {}, 'mailbox "box" was removed from the configuration'),
        (
            {"box": ["Archive", "INBOX"]},
            {"box": ["Archive"]},
            'folder "INBOX" was removed from the configuration of mailbox "box"',
        ),
    ],
    ids=["mailbox", "folder"],
)
async def test_what_a_removed_mailbox_or_folder_left_open_is_closed_and_announced(
    parts: dict[str, Any], before: dict[str, list[str]], after: dict[str, list[str]], removed: str
) -> None:
    pipeline, mailbox = setup(parts, THEN, smtp=SMTP, address="me@gw.example")
    journal, published = parts["journal"], parts["published"]
    await interrupted(pipeline, mailbox)
    outbox = pipeline.stages[0].stage._outbox  # type: ignore[attr-defined]
    await close_removed(journal, outbox, parts["store"], published.extend, before)
    assert published == [] and len(await journal.open_entries("box")) == 1  # still configured
    await close_removed(journal, outbox, parts["store"], published.extend, after)
    outcomes = {event.data["action"]: (event.data["outcome"], event.data["error"]) for event in published}
    assert outcomes == {
        "add_keywords": ("unknown", f"interrupted, and {removed}; it may have been done"),
        "move": ("failed", f"not done: {removed}"),
        "auto_reply": ("failed", removed),
    }
    assert {event.type for event in published} == {"message.action"}
    assert all(event.data["in_reply_to"] == "<m1@example.org>" for event in published)
    assert await journal.open_entries("box") == [] and await journal.open_folders() == set()
    entry = await journal.get(message_key("box", "INBOX", 1, 7))
    assert entry is not None and entry.state == DONE
    item = await journal.outbox_get(entry.key, 2)
    assert item is not None and item.state == FAILED
    # Configured again: the message is announced with those outcomes, never acted on.
    again = FakeActions()
    event = await pipeline.process(mailbox, fetched(), again)
    assert again.calls == [] and event is not None
    actions = event.data["rules_applied"][0]["actions"]
    assert [a["outcome"] for a in actions] == ["error", "error", "error"] and event.data["folder"] == "INBOX"
    await close_removed(journal, outbox, parts["store"], published.extend, after)
    assert len(published) == 3  # closed once


@pytest.mark.parametrize(
    ("stored", "configured"),
    [
        ("Été", "&AMk-t&AOk-"),  # modified UTF-7
        ("Été", unicodedata.normalize("NFD", "Été")),
        ("Work", "Work/"),  # a trailing delimiter: a typo, or dropped by the server
        ("Work.", "Work"),
        ("Work", "work"),  # a server may ignore case
    ],
)
async def test_a_folder_configured_under_another_spelling_is_left_open_and_said_so(
    parts: dict[str, Any], caplog: pytest.LogCaptureFixture, stored: str, configured: str
) -> None:
    pipeline, mailbox = setup(parts, THEN, smtp=SMTP, address="me@gw.example")
    journal, published = parts["journal"], parts["published"]
    await interrupted(pipeline, mailbox, stored, uid=7)
    await interrupted(pipeline, mailbox, stored, uid=8)
    await interrupted(pipeline, mailbox, "Other", uid=9)
    outbox = pipeline.stages[0].stage._outbox  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="gatewayd.rules.removed"):
        await close_removed(journal, outbox, parts["store"], published.extend, {"box": [configured]})
    assert [entry.uid for entry in await journal.open_entries("box")] == [7, 8]
    # (Its auto-reply was skipped: the first message's reservation holds, for the same sender.)
    assert {event.data["action"] for event in published} == {"add_keywords", "move"}
    assert all('folder "Other" was removed' in event.data["error"] for event in published)
    (doubt,) = [r.getMessage() for r in caplog.records if "may be the same folder" in r.getMessage()]
    assert f'folder "{stored}" is not in imap.folders' in doubt and f'"{configured}" is' in doubt, doubt


async def test_a_retry_in_flight_without_the_watcher_is_not_taken_for_a_crashs(parts: dict[str, Any]) -> None:
    async with StallingSmtp(stall_at="RCPT") as stalled:
        smtp = {"host": "127.0.0.1", "port": stalled.port, "tls": "none", "timeout_seconds": 60}
        pipeline, mailbox = setup(parts, [{"auto_reply": "Thanks."}], smtp=smtp, address="me@gw.example")
        journal = parts["journal"]
        stage = pipeline.stages[0].stage
        outbox, stage._outbox = stage._outbox, None  # type: ignore[attr-defined]
        await pipeline.process(mailbox, fetched(), FakeActions())  # journaled, not attempted
        stage._outbox = outbox  # type: ignore[attr-defined]
        # As a stop leaves it: the step started, the mail cut off before the data, due again.
        (entry,) = await journal.open_entries("box", "INBOX")
        item = await journal.outbox_get(entry.key, 0)
        assert item is not None
        await journal.step(entry.key, 0, {"state": "started"})
        await journal.outbox_update(item.id, RETRY, attempts=1, next_attempt_at=0.0)
        await journal._write([("UPDATE rule_journal SET result = NULL WHERE key = ?", (entry.key,))])
        retrying = asyncio.create_task(outbox.run())
        try:
            await wait_for(lambda: "RCPT" in stalled.commands, what="the retry to reach the server")
            assert (await journal.outbox_get(entry.key, 0)).state == SENDING
            await pipeline.recover(mailbox, FakeActions())  # the watcher is back meanwhile
            assert (await journal.outbox_get(entry.key, 0)).state == SENDING
        finally:
            retrying.cancel()
            await asyncio.gather(retrying, return_exceptions=True)
    (event,) = parts["published"]
    reply = event.data["rules_applied"][0]["actions"][0]
    assert reply["outcome"] == "pending", reply
    assert (await journal.outbox_get(entry.key, 0)).state == RETRY


async def test_mail_pending_in_a_removed_folder_is_given_up_not_retried(parts: dict[str, Any]) -> None:
    """The last step done, its mail `pending` (refused before the data), the event not stored yet
    (a crash): the folder removed, the mail is given up as the README says, not sent later."""
    pipeline, mailbox = setup(parts, [{"auto_reply": "Thanks."}], smtp=SMTP, address="me@gw.example")
    journal, published = parts["journal"], parts["published"]
    await pipeline.process(mailbox, fetched(), FakeActions())  # no after_store: the event never stored
    (entry,) = await journal.open_entries("box", "INBOX")
    assert entry.steps[0]["outcome"] == "pending"
    outbox = pipeline.stages[0].stage._outbox  # type: ignore[attr-defined]
    await close_removed(journal, outbox, parts["store"], published.extend, {"box": ["Archive"]})
    removed = 'folder "INBOX" was removed from the configuration of mailbox "box"'
    item = await journal.outbox_get(entry.key, 0)
    assert item is not None and (item.state, item.last_error) == (FAILED, removed)
    assert await journal.outbox_due(float("inf")) == []
    (event,) = published
    data = event.data
    assert (data["action"], data["outcome"], data["error"]) == ("auto_reply", "failed", removed)
    done = await journal.get(entry.key)
    assert done is not None and done.state == DONE
    assert done.steps[0]["outcome"] == "error" and done.steps[0]["error"] == removed
