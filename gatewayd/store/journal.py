"""The rules journal: what the rules decided for a message, each action's intent and outcome, and the
outbox of auto-replies and forwards, beside the event log (by default in the same SQLite file).

Exactly once rests on three records, each durable before the next thing happens:

1. `begin`: the message's event as the pipeline built it, the plan (its ordered steps), every mail
   the plan sends (composed in full, held) and the auto-reply reservations, in one transaction.
2. `step`: before an action, its intent (`started`); after it, its outcome (the last step's goes
   with the rules' result, `complete`, in one transaction). An intent without an outcome is what
   a crash leaves behind: the rules engine resolves it by looking at the server (was the message
   moved?) or, for mail, by never sending twice (`unknown`).
3. `finish`: after the event is stored (the store's dedupe key makes storing it again harmless).

A message that a rule moved or copied into another watched folder gets a `placed` entry under the
key it has there, so that folder's watcher neither announces it again nor runs rules on it.

The auto-reply reservations give "at most one auto-reply per sender per period": `begin` takes a
reservation only when none younger than the period exists for any of its addresses (the sender and
the reply target, which an SRS or VERP Return-Path makes differ per message), atomically with the
rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

OPEN = "open"
DONE = "done"
PLACED = "placed"

# Outbox states. `held`: composed with the plan, not attempted yet; `sending`: an attempt is (or was,
# when a crash interrupted it) in flight; `retry`: waiting for `next_attempt_at`; the rest are final.
HELD = "held"
SENDING = "sending"
RETRY = "retry"
SENT = "sent"
FAILED = "failed"
UNKNOWN = "unknown"
FINAL = (SENT, FAILED, UNKNOWN)

# Auto-reply reservations are kept this long at most (the longest allowed period is 365 days).
REPLY_MEMORY_SECONDS = 366 * 86400


@dataclass(frozen=True, slots=True)
class Reservation:
    """At most one auto-reply from a mailbox per `period_seconds` counted against each of
    `addresses` (compared without case): one reply uses them all up."""

    addresses: tuple[str, ...]
    period_seconds: float


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """A mail the plan sends, composed before any action runs (so a crash cannot lose its input)."""

    step: int
    kind: str  # auto_reply | forward
    envelope_from: str
    recipients: tuple[str, ...]
    message: bytes
    message_id: str
    reservation: Reservation | None = None
    info: dict[str, Any] = field(default_factory=dict)  # rule, action: for follow-up events


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    key: str
    step: int
    mailbox_id: str
    agent_id: str
    kind: str
    envelope_from: str
    recipients: tuple[str, ...]
    message: bytes
    message_id: str
    state: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    key: str
    mailbox_id: str
    folder: str
    uidvalidity: int
    uid: int
    state: str
    # What the rules engine wrote at `begin` (the event before the actions, the plan).
    record: dict[str, Any]
    # Step index -> its latest record ({"state": "started"} or its outcome).
    steps: dict[int, dict[str, Any]]
    # What `complete` wrote: the rules' contribution to the event, once every step is settled.
    result: dict[str, Any] | None
    created_at: float


class RuleJournal(Protocol):
    """Guarantees every implementation keeps (tests/test_journal.py is the contract suite):

    - Every method is atomic and durable when it returns (a kill -9 right after keeps it).
    - `begin` of a key already journaled changes nothing and returns the existing entry.
    - A reservation is granted only when the mailbox has none for any of its addresses younger
      than its period, and then for all of them; `begin` records a denied reservation's step as
      skipped, in the same transaction.
    - `place` never overwrites an entry of the rules' own (a message is processed once per key).
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> JournalEntry | None:
        """The entry of `key`, or None. Asked for every new message and almost always None, so an
        implementation should answer a key it has no entry for without I/O."""
        ...

    async def begin(
        self,
        key: str,
        *,
        agent_id: str,
        mailbox_id: str,
        folder: str,
        uidvalidity: int,
        uid: int,
        record: dict[str, Any],
        mails: Sequence[OutgoingMail] = (),
    ) -> JournalEntry: ...

    async def step(self, key: str, index: int, record: dict[str, Any]) -> None: ...

    async def complete(
        self, key: str, result: dict[str, Any], steps: Mapping[int, dict[str, Any]] | None = None
    ) -> None:
        """Record the rules' result, with `steps` (index -> record, as `step` takes them) in the
        same transaction: the last step's outcome, which then costs no commit of its own."""
        ...

    async def finish(self, keys: Sequence[str]) -> None: ...

    async def place(self, key: str, mailbox_id: str, folder: str, uidvalidity: int, uid: int) -> None: ...

    async def open_entries(self, mailbox_id: str, folder: str | None = None) -> list[JournalEntry]:
        """The folder's `open` entries (None: those of every folder of the mailbox), oldest first:
        every one, those a previous (crashed) process left included. Asked before every sync of
        the folder and almost always empty, so an implementation should answer that case without
        I/O."""
        ...

    async def open_folders(self) -> set[tuple[str, str]]:
        """The (mailbox id, folder) pairs that may have `open` entries (a superset: `open_entries`
        tells), the folder as `begin` had it; asked at start-up for mailboxes and folders no longer
        configured, answered without I/O."""
        ...

    async def outbox_get(self, key: str, step: int) -> OutboxItem | None: ...

    async def outbox_update(
        self,
        item_id: int,
        state: str,
        *,
        attempts: int | None = None,
        next_attempt_at: float | None = None,
        last_error: str | None = None,
    ) -> None: ...

    async def outbox_due(self, now: float, limit: int = 20) -> list[OutboxItem]:
        """`retry` items whose time has come, oldest first, whether their message is finished or
        still open (a stop cut off its attempt before the data; the mail is the plan's last phase,
        so the message's IMAP actions are settled, and its delivery needs no watcher)."""
        ...

    async def outbox_next_due(self) -> float | None:
        """When the first of the items `outbox_due` would give is due."""
        ...

    async def outbox_orphans(self) -> list[OutboxItem]:
        """`sending` items whose message is finished: a background attempt a crash interrupted."""
        ...

    async def release_reservation(self, mailbox_id: str, key: str) -> None:
        """Forget the reservations `key` took (its mail failed for good), where they are still its."""
        ...

    async def prune(self, max_age_seconds: float) -> int: ...
