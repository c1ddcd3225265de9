"""The SQLite event store: one file, WAL mode; aiosqlite for reads, appends on the event loop.

Three connections: the writer's two (gatewayd.store.sqlite_writer: an append commits on the loop
while the write lock is free, else on the writer's thread, which also runs the prune batches and
checkpoints the WAL), and the reader (aiosqlite), which sees the last committed snapshot without
blocking either. The appends made in one turn of the loop commit together (sqlite_group). The
schema and the file's stamp are in sqlite_schema, the append's transaction in sqlite_append, the
pages of events in sqlite_read, a resync's questions in sqlite_resync; this module ties them
together, with retention.

Durability: WAL with `synchronous=NORMAL` keeps every committed transaction across a crash of
the process (kill -9); only an OS crash or power loss can drop the last few commits (those since
the WAL was last synced: by a checkpoint, or by a commit of the rules journal, which syncs each).
Their events were already published, so a start after such a loss skips ids (`skip_lost_seqs`):
a client never gets an id it saw for another event, nor misses a re-processed message under an
id below its resume point.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite

from gatewayd.events import Event, NewEvent, compact_json_utf8, parse_rfc3339, rfc3339
from gatewayd.store import (
    Checkpoint,
    EventQuery,
    FolderHistory,
    InvalidEventId,
    is_store_failure,
    opening,
    spam_score,
)
from gatewayd.store import sqlite_resync as resync
from gatewayd.store.sqlite_append import announced
from gatewayd.store.sqlite_group import GroupCommit
from gatewayd.store.sqlite_read import read_page

# The file's names, importable from here as they were before the schema had a module of its own.
from gatewayd.store.sqlite_schema import _SCHEMA_V1 as _SCHEMA_V1
from gatewayd.store.sqlite_schema import APPLICATION_ID as APPLICATION_ID
from gatewayd.store.sqlite_schema import SCHEMA_VERSION as SCHEMA_VERSION
from gatewayd.store.sqlite_schema import open_beside as open_beside
from gatewayd.store.sqlite_schema import refuse_foreign as refuse_foreign
from gatewayd.store.sqlite_writer import SqliteWriter

_EVENT_ID = re.compile(r"[0-9]{1,19}")
_MAX_SEQ = 2**63 - 1  # SQLite INTEGER range; larger ids cannot have been issued.

# Rows deleted per prune transaction: short enough that appends waiting on the lock stay fast.
PRUNE_BATCH = 5000

# Seqs skipped on a start after the machine went down under a running gatewayd: more than a power
# loss can take. It takes what was committed since the WAL was last synced, and a checkpoint syncs
# it (before copying) at least every CHECKPOINT_AFTER_PAGES (sqlite_writer) pages the loop's
# appends count (each event counts one: at most 900 events) and every 1,000 pages the writer's
# appends write (each append at least one page: at most 1,000 appends of at most a group commit's
# events); every commit of the rules journal syncs it too. A million covers that many times over and still
# leaves 2**63 room for 9 * 10**12 such starts.
LOST_SEQS_BOUND = 1_000_000


class SqliteEventStore:
    """`EventStore` on a single SQLite file (see gatewayd.store.EventStore for the contract)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = SqliteWriter(self.path, busy_timeout_ms)
        self._appends = GroupCommit(self._writer)
        self._reader: aiosqlite.Connection | None = None
        # The last append failed (locked past the busy timeout, disk full, read-only), until one
        # succeeds: reads still work then, and /healthz must not say the store is fine.
        self._append_failed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        with opening("event store", self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await self._writer.open()
            try:
                reader = await aiosqlite.connect(self.path, isolation_level=None)
                try:
                    await reader.execute_fetchall(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
                    await reader.execute("PRAGMA synchronous=NORMAL")
                    await reader.execute("PRAGMA query_only=ON")  # reads can never write by mistake
                except BaseException:
                    await reader.close()
                    raise
            except BaseException:
                await self._writer.close()
                raise
            self._reader = reader

    async def close(self) -> None:
        reader = self._reader
        self._reader = None
        if reader is not None:
            await reader.close()
        await self._appends.close()
        await self._writer.close()

    @property
    def _r(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("SqliteEventStore is not open")
        return self._reader

    # -- writes ------------------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent], checkpoint: Checkpoint | None = None) -> list[Event]:
        """Store events (skipping known dedupe keys) and the checkpoint in one transaction.

        An event with a dedupe_key and a string `data["message_id"]` is also recorded as
        announced for its (mailbox_id, folder); the folder is `data["folder"]` when it is a
        string, else the checkpoint's folder when the checkpoint is for the same mailbox.
        """
        # Serialize here: a bad payload fails fast and never reaches the writer. As UTF-8 bytes,
        # which the insert stores as TEXT: a str would be decoded here and encoded again to bind.
        encoded = [compact_json_utf8(e.data) for e in events]
        rows = [
            (
                event.type,
                event.agent_id,
                event.mailbox_id,
                event.from_address.lower() if event.from_address else None,
                event.dedupe_key,
                data,
                spam_score(event.data),
                announced(event, checkpoint),
            )
            for event, data in zip(events, encoded, strict=True)
        ]
        try:
            created_at, seqs = await self._appends.append((rows, checkpoint))
        except sqlite3.Error as exc:
            self._append_failed = is_store_failure(exc)
            raise
        self._append_failed = False
        stored: list[Event] = []
        for (type_, agent_id, mailbox_id, from_address, _, data, _, _), event, seq in zip(
            rows, events, seqs, strict=True
        ):
            if seq is not None:
                stored.append(
                    Event(
                        seq,
                        str(seq),
                        type_,
                        created_at,
                        agent_id,
                        mailbox_id,
                        event.data,
                        from_address,
                        data_utf8=data,
                    )
                )
        return stored

    async def skip_lost_seqs(self) -> int:
        """Move the sequence LOST_SEQS_BOUND seqs on (see there): call it after a power loss may
        have taken the log's tail, before the first append."""
        await self._writer.write(_skip_seqs, LOST_SEQS_BOUND, pages=1)
        return LOST_SEQS_BOUND

    # -- retention ---------------------------------------------------------------------------

    async def prune(self, max_age_seconds: float | None, max_events: int | None) -> int:
        """Delete events older than max_age_seconds and/or all but the newest max_events.

        Works in transactions of PRUNE_BATCH rows, letting appends run in between so they are
        never held up for long. The announced Message-IDs of deleted events go with them.
        """
        if max_events is not None and max_events < 0:
            raise ValueError("max_events must be >= 0")
        deleted = 0
        if max_age_seconds is not None:
            cutoff = rfc3339(datetime.now(UTC) - timedelta(seconds=max_age_seconds))
            deleted += await self._prune_where("created_at < ?", cutoff)
        if max_events is not None:
            # The newest seq that falls outside the retained window; everything up to it goes.
            async with self._r.execute(
                "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (max_events,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                deleted += await self._prune_where("seq <= ?", int(row[0]))
        return deleted

    async def _prune_where(self, condition: str, value: object) -> int:
        # `condition` is one of the constant fragments above; the value is always a parameter.
        # No ORDER BY: it would make SQLite walk the whole table by seq (even when nothing is
        # old) instead of seeking the created_at index or the seq range.
        select = f"SELECT seq FROM events WHERE {condition} LIMIT ?"
        deleted = 0
        while True:
            # On the writer's thread: a batch of thousands of rows would hold up the loop.
            removed = await self._writer.run(self._prune_batch, self._writer.thread_conn, select, value)
            deleted += removed
            if removed < PRUNE_BATCH:
                return deleted
            await asyncio.sleep(0)  # appends submitted meanwhile run between the batches

    @staticmethod
    def _prune_batch(conn: sqlite3.Connection, select: str, value: object) -> int:
        """One prune transaction of at most PRUNE_BATCH events, on the writer's thread."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(select, (value, PRUNE_BATCH)).fetchall()
            # The batch's seqs travel as one JSON array parameter (no variable limit).
            batch = json.dumps([row[0] for row in rows])
            if rows:
                for table in ("message_ids", "events"):
                    sql = f"DELETE FROM {table} WHERE seq IN (SELECT value FROM json_each(?))"
                    conn.execute(sql, (batch,))
                newest = max(row[0] for row in rows)
                conn.execute("UPDATE retention SET pruned_through = max(pruned_through, ?)", (newest,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return len(rows)

    # -- reads -------------------------------------------------------------------------------

    async def get_checkpoint(self, mailbox_id: str, folder: str) -> Checkpoint | None:
        async with self._r.execute(
            "SELECT uidvalidity, last_uid FROM checkpoints WHERE mailbox_id = ? AND folder = ?",
            (mailbox_id, folder),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else Checkpoint(mailbox_id, folder, int(row[0]), int(row[1]))

    async def known_message_ids(self, mailbox_id: str, folder: str, message_ids: Sequence[str]) -> set[str]:
        """Which of these Message-IDs were already announced for this folder (UIDVALIDITY resync)."""
        return await resync.known_message_ids(self._r, mailbox_id, folder, message_ids)

    async def folder_history(self, mailbox_id: str, folder: str, uidvalidity: int) -> FolderHistory:
        """The newest announced message's arrival and the first connect, from the events of the
        folder under a UIDVALIDITY other than this one (walked by seq: the newest, the oldest)."""
        return await resync.folder_history(self._r, mailbox_id, folder, uidvalidity)

    async def read_after(self, query: EventQuery, after_seq: int, limit: int) -> list[Event]:
        """Events with seq > after_seq matching query, oldest first, at most limit."""
        return await read_page(self._r, query, "seq > ?", after_seq, "ASC", limit)

    async def read_before(self, query: EventQuery, before_seq: int | None, limit: int) -> list[Event]:
        """Events with seq < before_seq (or the newest when None) matching query, newest first."""
        if before_seq is None:
            return await read_page(self._r, query, None, None, "DESC", limit)
        return await read_page(self._r, query, "seq < ?", before_seq, "DESC", limit)

    def seq_of(self, event_id: str) -> int:
        """The seq behind a public id (its decimal form); raises InvalidEventId."""
        if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
            raise InvalidEventId(f"invalid event id: {event_id!r}")
        seq = int(event_id)
        if seq > _MAX_SEQ:
            raise InvalidEventId(f"invalid event id: {event_id!r}")
        return seq

    async def seq_at(self, created_at: str) -> int:
        """The largest seq created strictly before this RFC 3339 time (0 when none).

        Any offset is accepted: the time is normalized to the stored UTC form first, which
        compares as text. Raises ValueError for a malformed timestamp.
        """
        moment = rfc3339(parse_rfc3339(created_at))
        async with self._r.execute("SELECT max(seq) FROM events WHERE created_at < ?", (moment,)) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def first_seq(self) -> int:
        """The oldest seq still stored.

        When no event is stored: `last_seq() + 1` if events were ever issued (all pruned; a
        client resuming below this lost events), else 0.
        """
        async with self._r.execute("SELECT min(seq) FROM events") as cursor:
            row = await cursor.fetchone()
        if row and row[0] is not None:
            return int(row[0])
        last = await self.last_seq()
        return last + 1 if last else 0

    async def pruned_through(self) -> int:
        """The newest seq retention deleted (0 when none)."""
        async with self._r.execute("SELECT pruned_through FROM retention") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def last_seq(self) -> int:
        """The newest seq ever issued or skipped (0 when none); sqlite_sequence survives pruning."""
        async with self._r.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def ping(self) -> bool:
        if self._append_failed:
            return False
        try:
            async with self._r.execute("SELECT 1") as cursor:
                row = await cursor.fetchone()
        except Exception:
            return False
        return row is not None and row[0] == 1


def _skip_seqs(conn: sqlite3.Connection, count: int) -> None:
    """skip_lost_seqs's transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # The row is gone too when the loss took every event a new store ever had.
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'events', 0"
            " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events')"
        )
        conn.execute("UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'events'", (count,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
