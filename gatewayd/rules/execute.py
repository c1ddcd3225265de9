"""Carry out a journaled plan: each step's intent, then the action, then its outcome, in the journal.

The same code finishes a plan after a crash. A step recorded as started but without an outcome
is resolved by looking, never by guessing:

- a flag or keyword change, a report: harmless to repeat, so repeated (if the message is there);
- a move: the message still in the folder means it did not happen (do it); gone means it did
  (find where by its identity, `gatewayd.message.identity`, over a second connection);
- a copy: done when the destination has the message, else done now; a message without an identity
  (no Message-ID, a header block past the fetch cap) cannot be told, and is not repeated;
- a mail: interrupted while sending by a crash, it may have gone out: it is never sent again
  (`unknown`); one a stop cut off the outbox settled before it ended (`pending` before the data),
  and may be retrying now, without the watcher (`pending` too).

A broken connection in the middle of an action leaves its outcome unknown too: the step stays
`started`, `ActionInterrupted` ends the batch, and the watcher resolves it after reconnecting.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from gatewayd.config import MailboxConfig
from gatewayd.events import rfc3339
from gatewayd.imap.act import MailActions, Placement
from gatewayd.imap.names import folder_key
from gatewayd.imap.session import ImapConnectionLost, ImapError
from gatewayd.message import ParsedMessage, parse
from gatewayd.message.identity import Identity
from gatewayd.pipeline import StageAbort
from gatewayd.rules.arrivals import Arrivals, InFlight
from gatewayd.rules.plan import ERROR, OK, PENDING, RULES_ERROR, SKIPPED
from gatewayd.send.outbox import INTERRUPTED, Outbox
from gatewayd.store.journal import HELD, RETRY, SENDING, SENT, UNKNOWN, JournalEntry, RuleJournal

log = logging.getLogger(__name__)

# Test-only failure injection: the process dies right after this point (see tests/integration).
CRASH_ENV = "GATEWAYD_TEST_CRASH"
_RENUMBERED = "the folder was renumbered (UIDVALIDITY changed); not done"


class ActionInterrupted(ImapConnectionLost, StageAbort):
    """The connection broke during an action: no event now; the watcher reconnects and recovers."""


class Trainer(Protocol):
    def train(self, message: ParsedMessage, label: str, mailbox_id: str | None = None) -> bool: ...


def message_key(mailbox_id: str, folder: str, uidvalidity: int, uid: int) -> str:
    """The same key as the event's dedupe key (gatewayd.pipeline.dedupe_key)."""
    return f"{mailbox_id}\x1f{folder}\x1f{uidvalidity}\x1f{uid}"


def identity_of(entry: JournalEntry) -> Identity:
    """The identity of a journaled message (entries of older versions have no header digest)."""
    return Identity.of(entry.record["event"]["data"], entry.record.get("header_sha256"))


def settled(entry: JournalEntry) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """The outcomes of the entry's steps done, and the steps left (neither preset nor done), in order."""
    done: dict[int, dict[str, Any]] = {}
    left = []
    for step in entry.record["plan"]["steps"]:
        record = entry.steps.get(step["index"])
        if record is not None and record.get("state") == "done":
            done[step["index"]] = record
        elif "preset" not in step:
            left.append(step)
    return done, left


def _fault(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        os._exit(99)


class Executor:
    def __init__(
        self,
        journal: RuleJournal,
        entry: JournalEntry,
        mailbox: MailboxConfig,
        actions: MailActions,
        outbox: Outbox | None,
        learning: Trainer | None,
        parsed: ParsedMessage | None = None,
        arrivals: Arrivals | None = None,
    ) -> None:
        self._journal = journal
        self._entry = entry
        self._mailbox = mailbox
        self._actions = actions
        self._outbox = outbox
        self._learning = learning
        self._parsed = parsed
        self._arrivals = arrivals
        self._data: Mapping[str, Any] = entry.record["event"]["data"]
        self._identity = identity_of(entry)
        # The last step's outcome, for the caller to journal with the result in one commit
        # (`RuleJournal.complete`): a crash before that commit leaves the step `started`, resolved
        # by looking, as a crash before its own commit would.
        self.deferred: dict[int, dict[str, Any]] = {}

    async def run(self) -> dict[int, dict[str, Any]]:
        """Every step's outcome; the last one's is left in `deferred` for the caller to journal."""
        entry = self._entry
        outcomes, left = settled(entry)
        for step in left:
            index = step["index"]
            record = entry.steps.get(index)
            last = step is left[-1]
            if step["kind"] != "send" and entry.uidvalidity != self._actions.uidvalidity:
                outcome = {
                    "outcome": ERROR,
                    "error": "the folder was renumbered (UIDVALIDITY changed); not done",
                }
            elif record is not None and record.get("state") == "started":
                outcome = await self._guarded(self._resolve, step)
            else:
                await self._journal.step(entry.key, index, {"state": "started"})
                outcomes[index] = await self._act(step, last)
                continue
            outcome = {"state": "done", **outcome}
            await self._record(index, outcome, last)
            outcomes[index] = outcome
        return outcomes

    async def _record(self, index: int, outcome: dict[str, Any], last: bool) -> None:
        if last:
            self.deferred[index] = outcome
        else:
            await self._journal.step(self._entry.key, index, outcome)

    async def _act(self, step: dict[str, Any], last: bool) -> dict[str, Any]:
        """Do a step and journal its outcome (the last step's: see `deferred`); a move or copy is in
        flight (`Arrivals`) meanwhile, so the destination's watcher waits for that outcome rather
        than announce the message."""
        flight: InFlight | None = None
        if self._arrivals is not None and step["kind"] in ("move", "copy"):
            flight = self._arrivals.start(self._mailbox.id, step["folder"], self._identity)
        outcome: dict[str, Any] | None = None
        try:
            outcome = {"state": "done", **await self._guarded(self._perform, step)}
            await self._record(step["index"], outcome, last)
            return outcome
        finally:
            if flight is not None:
                assert self._arrivals is not None
                self._arrivals.settle(self._mailbox.id, step["folder"], flight, outcome)

    async def _guarded(self, run: Any, step: dict[str, Any]) -> dict[str, Any]:
        try:
            return dict(await run(step))
        except ImapConnectionLost as exc:
            raise ActionInterrupted(str(exc)) from None
        except ImapError as exc:
            return {"outcome": ERROR, "error": str(exc)[:300]}
        except ValueError as exc:
            return {"outcome": ERROR, "error": str(exc)[:300]}
        except Exception as exc:  # a bug or a surprise in one action must not cost the others, nor the event
            return unexpected_outcome(self._entry.record["plan"], step, exc)

    # -- doing --------------------------------------------------------------------------------

    async def _perform(self, step: dict[str, Any]) -> Mapping[str, Any]:
        kind = step["kind"]
        uid = self._entry.uid
        if kind == "report":
            return await self._report(step["label"])
        if kind == "store":
            await self._actions.store(uid, step["add"], step["flags"])
            return {"outcome": OK}
        if kind == "store_labels":
            await self._actions.store_labels(uid, step["add"], step["flags"])
            return {"outcome": OK}
        if kind in ("copy", "move"):
            if folder_key(step["folder"]) == folder_key(self._entry.folder):
                return {"outcome": SKIPPED, "reason": "the message is already in that folder"}
            do = self._actions.move if kind == "move" else self._actions.copy
            placement = await do(uid, step["folder"], step["create"])
            if kind == "move":
                _fault("after_move")
            return await self._placed(placement)
        if kind == "send":
            return await self._send(step)
        raise ValueError(f"unknown step {kind}")

    async def _report(self, label: str) -> Mapping[str, Any]:
        if self._learning is None:
            return {"outcome": ERROR, "error": "learning is not enabled"}
        parsed = self._parsed
        if parsed is None:
            fetched = await self._actions.fetch(self._entry.uid, self._mailbox.fetch_max_bytes)
            if fetched is None:
                return {"outcome": ERROR, "error": "the message is no longer in the folder"}
            parsed = parse(fetched)
        learned = await asyncio.to_thread(self._learning.train, parsed, label, self._mailbox.id)
        return {"outcome": OK, "learned": learned}

    async def _placed(self, placement: Placement, recovered: bool = False) -> Mapping[str, Any]:
        """Note where the message landed, so that folder's watcher does not announce it again."""
        if placement.uid is None:  # no COPYUID (no UIDPLUS): look for it there
            placement = await self._actions.locate(placement.folder, self._identity) or placement
        if placement.uid is not None and placement.uidvalidity is not None:
            key = message_key(self._mailbox.id, placement.folder, placement.uidvalidity, placement.uid)
            await self._journal.place(
                key, self._mailbox.id, placement.folder, placement.uidvalidity, placement.uid
            )
        outcome: dict[str, Any] = {
            "outcome": OK,
            "folder": placement.folder,
            "uid": placement.uid,
            "uidvalidity": placement.uidvalidity,
        }
        if recovered:
            outcome["recovered"] = True
        return outcome

    async def _send(self, step: dict[str, Any]) -> Mapping[str, Any]:
        item = await self._journal.outbox_get(self._entry.key, step["index"])
        if item is None:
            return {"outcome": ERROR, "error": "nothing was composed to send"}
        described = {"message_id": item.message_id, "to": list(item.recipients)}
        if item.state == HELD:
            if self._outbox is None:
                return {"outcome": ERROR, "error": "sending is not available", **described}
            result = await self._outbox.send_inline(item)
            item = await self._journal.outbox_get(self._entry.key, step["index"]) or item
            status, error = item.state, result.error
        else:
            status, error = item.state, item.last_error
        _fault("after_send")
        if status == SENT:
            return {"outcome": OK, **described}
        if status in (RETRY, SENDING):  # sending: the outbox's retry in flight
            retry_at = rfc3339_at(item.next_attempt_at)
            return {"outcome": PENDING, "error": error, "next_attempt_at": retry_at, **described}
        if status == UNKNOWN:
            return {"outcome": ERROR, "error": error or "interrupted; not sent again", **described}
        return {"outcome": ERROR, "error": error or status, **described}

    # -- resolving what a crash interrupted -----------------------------------------------------

    def _outbox_attempting(self, item_id: int) -> bool:
        return self._outbox is not None and self._outbox.attempting(item_id)

    async def _resolve(self, step: dict[str, Any]) -> Mapping[str, Any]:
        kind = step["kind"]
        uid = self._entry.uid
        if kind in ("report", "store", "store_labels"):
            if not await self._actions.present(uid):
                return {"outcome": ERROR, "error": "interrupted, and the message is no longer in the folder"}
            return await self._perform(step)
        if kind == "move":
            if await self._actions.present(uid):
                return await self._perform(step)
            return await self._placed(Placement(step["folder"], None, None), recovered=True)
        if kind == "copy":
            if not self._identity.findable:
                error = "interrupted; no Message-ID nor whole header to tell it by; not repeated"
                return {"outcome": ERROR, "error": error}
            found = await self._actions.locate(step["folder"], self._identity)
            if found is not None:
                return await self._placed(found, recovered=True)
            return await self._perform(step)
        if kind == "send":
            item = await self._journal.outbox_get(self._entry.key, step["index"])
            # `sending` is an attempt a crash cut off, unless the outbox is retrying the mail now
            # (cut off before the data, it waits for no watcher): asked at once after the read.
            if item is not None and item.state == SENDING and not self._outbox_attempting(item.id):
                await self._journal.outbox_update(item.id, UNKNOWN, last_error=INTERRUPTED)
            return await self._send(step)
        raise ValueError(f"unknown step {kind}")


def unexpected_outcome(plan: Mapping[str, Any], step: Mapping[str, Any], exc: Exception) -> dict[str, Any]:
    """A step's `error` outcome for an exception nothing expected, named in rules_errors too."""
    rule = plan["applied"][step["rule"]]
    action = rule["actions"][step["action"]]["action"]
    log.error('rule "%s", %s: unexpected error', rule["rule"], action, exc_info=exc)
    error = f"unexpected error: {describe(exc)}"
    return {"outcome": ERROR, "error": error, RULES_ERROR: f'rule "{rule["rule"]}", {action}: {error}'}


def describe(exc: Exception) -> str:
    """The exception for the event and the journal: text that stores as UTF-8 whatever it quotes
    (undecodable header bytes are surrogate escapes, which would fail the write)."""
    text = f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:280]


def rfc3339_at(timestamp: float | None) -> str | None:
    return None if timestamp is None else rfc3339(datetime.fromtimestamp(timestamp, UTC))
