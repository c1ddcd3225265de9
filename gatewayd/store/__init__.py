"""The event log: an append-only, ordered store of events plus per-folder UID checkpoints.

`EventStore` is the seam for other backends (a PostgreSQL one can serve several gateway nodes):
the HTTP API and the watchers only ever talk to this protocol.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from gatewayd.events import Event, NewEvent


class StoreUnavailable(Exception):
    """A store's file cannot be opened (a directory in the way or not writable, a file that is not
    SQLite): the message names the store, its path and why, for the one line the CLI prints."""


def is_store_failure(exc: BaseException) -> bool:
    """A failure of the store itself (locked by another process past the busy timeout, disk full,
    read-only, I/O error, a damaged file), as opposed to a bug in a query: worth a retry later."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


@contextmanager
def opening(what: str, path: object) -> Iterator[None]:
    """The OS's and SQLite's errors while opening `path` as StoreUnavailable."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open the {what} {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class FolderHistory:
    """A folder's past as its stored events tell it, for a UIDVALIDITY resync (imap/resync.py)."""

    # The arrival (`received_at`: INTERNALDATE, the server's clock) of the newest message announced.
    newest_arrival: datetime | None
    # When a watcher first connected to the folder (`mailbox.connected`, gatewayd's clock).
    first_watched: datetime | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a (mailbox, folder) has been processed: every UID <= last_uid is done."""

    mailbox_id: str
    folder: str
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events a reader may and wants to see. Empty tuples mean "no restriction" except
    `agent_ids`, which is always a restriction (a token only sees its own agents' subtree)."""

    agent_ids: tuple[str, ...]
    mailbox_ids: tuple[str, ...] = ()
    # Glob patterns on the type (`message.*`); an event matches if any pattern matches.
    type_patterns: tuple[str, ...] = ()
    # A lower-cased address (`bob@example.org`) or a domain (`@example.org`).
    from_filter: str | None = None
    # Inclusive bounds on `data.spam.score` (see `spam_score`): an event without a numeric score
    # never passes a bound.
    min_spam: float | None = None
    max_spam: float | None = None


class InvalidEventId(ValueError):
    """An id that this store never issued (malformed)."""


class EventStore(Protocol):
    """Guarantees every implementation keeps (tests/test_store.py is the contract suite):

    - `append` is atomic: the events and the checkpoint are written together or not at all.
    - Events get strictly increasing `seq` in append order; `id` is an opaque ASCII string. Seqs
      need not be dense, and none is issued twice, not even after a power loss took the newest
      events (`skip_lost_seqs`).
    - An event whose `dedupe_key` is already stored is skipped silently (exactly once).
    - Reads never return events outside `query.agent_ids`, and apply every filter of the query
      exactly as `matches` does (replay and live must agree).
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, events: Sequence[NewEvent], checkpoint: Checkpoint | None = None) -> list[Event]:
        """Store events (skipping known dedupe keys) and the checkpoint; return what was stored."""
        ...

    async def get_checkpoint(self, mailbox_id: str, folder: str) -> Checkpoint | None: ...

    async def known_message_ids(self, mailbox_id: str, folder: str, message_ids: Sequence[str]) -> set[str]:
        """Which of these Message-IDs were already announced for this folder (UIDVALIDITY resync)."""
        ...

    async def folder_history(self, mailbox_id: str, folder: str, uidvalidity: int) -> FolderHistory:
        """What the stored events say of the folder under UIDVALIDITYs other than this one (for a
        UIDVALIDITY resync)."""
        ...

    async def read_after(self, query: EventQuery, after_seq: int, limit: int) -> list[Event]:
        """Events with seq > after_seq matching query, oldest first, at most limit."""
        ...

    async def read_before(self, query: EventQuery, before_seq: int | None, limit: int) -> list[Event]:
        """Events with seq < before_seq (or the newest when None) matching query, newest first."""
        ...

    def seq_of(self, event_id: str) -> int:
        """The seq behind a public id; raises InvalidEventId."""
        ...

    async def seq_at(self, created_at: str) -> int:
        """The seq of the last event created strictly before this RFC 3339 time (0 when none)."""
        ...

    async def first_seq(self) -> int:
        """The oldest seq still stored, of any agent (0 when empty): a resume point below it lost
        events."""
        ...

    async def last_seq(self) -> int:
        """The newest seq ever issued or skipped (0 when none)."""
        ...

    async def pruned_through(self) -> int:
        """The newest seq retention deleted (0 when none): a resume point below it lost events
        (seqs are not dense, so `first_seq` cannot tell)."""
        ...

    async def skip_lost_seqs(self) -> int:
        """After a start that found the store may have lost its newest commits (an OS crash or a
        power loss under a running daemon: see gatewayd.store.instance_lock), before any append:
        skip more seqs than the loss can have taken, so none it issued (and the stream sent) is
        issued again to another event. Returns how many were skipped."""
        ...

    async def prune(self, max_age_seconds: float | None, max_events: int | None) -> int:
        """Delete events beyond retention; return how many were removed."""
        ...

    async def ping(self) -> bool:
        """True when the store answers and its last append did not fail (a store that can be
        read but not written, being locked, full or read-only, is failing too)."""
        ...


def spam_score(data: Mapping[str, Any]) -> float | None:
    """`data.spam.score` when it is a finite number, else None: what the spam bounds compare."""
    spam = data.get("spam")
    score = spam.get("score") if isinstance(spam, dict) else None
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        return None
    return float(score)


@lru_cache(maxsize=1024)
def _type_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("\\A" + ".*".join(re.escape(part) for part in pattern.split("*")) + "\\Z")


def glob_matches(pattern: str, text: str) -> bool:
    """Only `*` is special (any run of characters), as in the type and agent filters."""
    return _type_regex(pattern).match(text) is not None


def matches(query: EventQuery, event: Event) -> bool:
    """The same filter the stores apply in their reads, for events delivered live."""
    if event.agent_id not in query.agent_ids:
        return False
    if query.mailbox_ids and event.mailbox_id not in query.mailbox_ids:
        return False
    if query.type_patterns and not any(glob_matches(p, event.type) for p in query.type_patterns):
        return False
    if query.from_filter:
        sender = event.from_address or ""
        if query.from_filter.startswith("@"):
            if not sender.endswith(query.from_filter):
                return False
        elif sender != query.from_filter:
            return False
    if query.min_spam is not None or query.max_spam is not None:
        score = spam_score(event.data)
        if score is None:
            return False
        if query.min_spam is not None and score < query.min_spam:
            return False
        if query.max_spam is not None and score > query.max_spam:
            return False
    return True
