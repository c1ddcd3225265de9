"""The journal entries a mailbox removed from the configuration left open, closed at start-up.

An entry stays open until the watcher of its folder finishes it (`RulesStage.recover`). A mailbox
no longer configured has no watcher, and its IMAP actions can no longer be carried out, so its
entries would stay open forever, their mail held. Instead each action not done is closed in the
journal as an `error` and announced as a `message.action`: `failed` when it never started, `unknown`
when it was interrupted (a move may have happened). Its mail is given up (`Outbox.give_up`: never
sent after the mailbox is gone, never twice) and the entry finished. Should the mailbox come back
under the same id, its message is announced with these outcomes and not acted on again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from gatewayd.events import Event, NewEvent
from gatewayd.rules.execute import settled
from gatewayd.rules.plan import ERROR, OK, result
from gatewayd.send.outbox import MESSAGE_ACTION, Outbox, mailbox_removed
from gatewayd.store import EventStore
from gatewayd.store.journal import FAILED, SENT, UNKNOWN, JournalEntry, RuleJournal

log = logging.getLogger(__name__)


async def close_removed(
    journal: RuleJournal,
    outbox: Outbox,
    store: EventStore,
    publish: Callable[[list[Event]], None],
    configured: Collection[str],
) -> None:
    """Close the open entries of every mailbox not in `configured` (the ids of the running ones)."""
    for mailbox_id in sorted(await journal.open_mailboxes() - set(configured)):
        entries = await journal.open_entries(mailbox_id)
        for entry in entries:
            await _close(journal, outbox, store, publish, entry)
        if entries:
            log.warning(
                "%s; the rules' actions left of %d messages closed", mailbox_removed(mailbox_id), len(entries)
            )


async def _close(
    journal: RuleJournal,
    outbox: Outbox,
    store: EventStore,
    publish: Callable[[list[Event]], None],
    entry: JournalEntry,
) -> None:
    reason = mailbox_removed(entry.mailbox_id)
    record = entry.record
    outcomes, left = settled(entry)
    for step in left:
        index = step["index"]
        if step["kind"] == "send":
            outcome = await _give_up_mail(journal, outbox, entry, index, reason)
        else:
            # Announced first: done again after a crash, the store skips it by its dedupe key.
            interrupted = index in entry.steps  # its intent, without an outcome
            error = (
                f"interrupted, and {reason}; it may have been done" if interrupted else f"not done: {reason}"
            )
            applied = record["plan"]["applied"][step["rule"]]
            data = {
                "rule": applied["rule"],
                "action": applied["actions"][step["action"]]["action"],
                "in_reply_to": record["event"]["data"].get("message_id"),
                "outcome": UNKNOWN if interrupted else FAILED,
                "error": error,
                "attempts": int(interrupted),
                "sent_message_id": None,
                "to": None,
            }
            event = NewEvent(
                MESSAGE_ACTION,
                record["event"]["agent_id"],
                entry.mailbox_id,
                data,
                dedupe_key=f"rules\x1f{entry.key}\x1f{index}",
            )
            publish(await store.append([event]))
            outcome = {"outcome": ERROR, "error": error}
        outcomes[index] = {"state": "done", **outcome}
        await journal.step(entry.key, index, outcomes[index])
    data = result(record["event"]["data"], record["plan"], outcomes, list(record.get("errors", [])))
    await journal.complete(entry.key, {"data": data, "drop": bool(record["plan"]["drop"])})
    await journal.finish([entry.key])


async def _give_up_mail(
    journal: RuleJournal, outbox: Outbox, entry: JournalEntry, index: int, reason: str
) -> dict[str, Any]:
    item = await journal.outbox_get(entry.key, index)
    if item is None:
        return {"outcome": ERROR, "error": "nothing was composed to send"}
    await outbox.give_up(item, reason)
    item = await journal.outbox_get(entry.key, index) or item
    described = {"message_id": item.message_id, "to": list(item.recipients)}
    if item.state == SENT:
        return {"outcome": OK, **described}
    return {"outcome": ERROR, "error": item.last_error or item.state, **described}
