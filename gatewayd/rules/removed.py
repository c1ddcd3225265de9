"""The journal entries a mailbox or a folder removed from the configuration left open, closed at
start-up.

An entry stays open until the watcher of its folder finishes it (`RulesStage.recover`). A mailbox
no longer configured, or a folder its `imap.folders` no longer lists, has no watcher, and its IMAP
actions can no longer be carried out, so its entries would stay open forever, their mail held.
Instead each action not done is closed in the journal as an `error` and announced as a
`message.action`: `failed` when it never started, `unknown` when it was interrupted (a move may
have happened). Its mail is given up (`Outbox.give_up`: never sent after its folder is gone, never
twice) and the entry finished. Should the mailbox or folder come back under the same name, its
message is announced with these outcomes and not acted on again.

Only the folders of `imap.folders` have entries of their own (the Sent folder is only read for its
recipients; a rule's move into another folder is `placed` there, never open). The journal has the
folder as the watcher named it, which is as configured (INBOX in any case as `INBOX`). A folder
configured now under another spelling that may name the same folder (see `spelling_key`) is left
open, with a warning: closing the actions of a watched folder would be wrong, and its watcher,
which looks its entries up by its own spelling, does not finish them either.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from gatewayd.events import Event, NewEvent
from gatewayd.imap.names import spelling_key
from gatewayd.rules.execute import settled
from gatewayd.rules.plan import ERROR, OK, PENDING, result
from gatewayd.send.outbox import MESSAGE_ACTION, Outbox, mailbox_removed
from gatewayd.store import EventStore
from gatewayd.store.journal import FAILED, SENT, UNKNOWN, JournalEntry, RuleJournal

log = logging.getLogger(__name__)


def folder_removed(mailbox_id: str, folder: str) -> str:
    """Why what a folder no longer watched left to do is not done."""
    name = json.dumps(folder, ensure_ascii=False)
    return f'folder {name} was removed from the configuration of mailbox "{mailbox_id}"'


async def close_removed(
    journal: RuleJournal,
    outbox: Outbox,
    store: EventStore,
    publish: Callable[[list[Event]], None],
    configured: Mapping[str, Collection[str]],
) -> None:
    """Close the open entries of every mailbox and folder not configured: `configured` maps the id
    of each running mailbox to its `imap.folders`."""
    for mailbox_id, folder in sorted(await journal.open_folders()):
        folders = configured.get(mailbox_id)
        if folders is None:
            reason = mailbox_removed(mailbox_id)
        elif folder in folders:
            continue  # its watcher finishes them
        elif alike := [name for name in folders if spelling_key(name) == spelling_key(folder)]:
            spelt, configured_as = (json.dumps(name, ensure_ascii=False) for name in (folder, alike[0]))
            log.warning(
                "%s: folder %s is not in imap.folders, but %s is and may be the same folder: the rules"
                " journal's open entries of %s are left open (spelt so again, its watcher finishes them)",
                mailbox_id,
                spelt,
                configured_as,
                spelt,
            )
            continue
        else:
            reason = folder_removed(mailbox_id, folder)
        entries = await journal.open_entries(mailbox_id, folder)
        for entry in entries:
            await _close(journal, outbox, store, publish, entry, reason)
        if entries:
            log.warning(
                "%s/%s: %s; the rules' actions left of %d messages closed",
                mailbox_id,
                folder,
                reason,
                len(entries),
            )


async def _close(
    journal: RuleJournal,
    outbox: Outbox,
    store: EventStore,
    publish: Callable[[list[Event]], None],
    entry: JournalEntry,
    reason: str,
) -> None:
    record = entry.record
    outcomes, left = settled(entry)
    # Mail whose step is done but `pending` (refused before the data; the event was not stored
    # since) waits for the outbox's retry: given up as well, never sent after its folder is gone.
    waiting = [
        step
        for step in record["plan"]["steps"]
        if step["kind"] == "send" and outcomes.get(step["index"], {}).get("outcome") == PENDING
    ]
    for step in sorted(left + waiting, key=lambda step: int(step["index"])):
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
