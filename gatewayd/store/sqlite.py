"""The SQLite event store: one file, WAL mode; aiosqlite for reads, appends on the event loop.

Three connections. An `append` is one short transaction (about 0.1 ms): it runs right on the
event loop, on a connection that never waits for the write lock (busy timeout 0) and never
checkpoints the WAL, because even one thread round trip costs more CPU than the transaction.
When the lock is taken (a prune batch, another process), the append goes instead to the writer:
a plain sqlite3 connection on a thread of its own, which waits for the lock, runs the prune
batches and checkpoints the WAL in the background once it has grown past SQLite's usual
threshold, so no fsync ever lands on the loop. Each transaction there is ONE call to the thread
(a round trip per statement would cost several times the transaction). SQLite's write lock
serializes the transactions of both; while an append is on the thread, the next ones follow it
there, so appends return (and their events are published) in seq order. The reader (aiosqlite)
sees the last committed snapshot without blocking either.

Durability: WAL with `synchronous=NORMAL` keeps every committed transaction across a crash of
the process (kill -9); only an OS crash or power loss can drop the last few commits.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gatewayd.events import (
    MAILBOX_CONNECTED,
    MESSAGE_RECEIVED,
    Event,
    NewEvent,
    compact_json,
    parse_rfc3339,
    rfc3339,
)
from gatewayd.store import (
    Checkpoint,
    EventQuery,
    FolderHistory,
    InvalidEventId,
    StoreUnavailable,
    is_store_failure,
    opening,
    spam_score,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS events (
    -- AUTOINCREMENT: a seq is never handed out twice, even after the newest rows were pruned,
    -- so a client's resume id can never point at a different event.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    mailbox_id TEXT,
    from_address TEXT,
    dedupe_key TEXT UNIQUE,
    data TEXT NOT NULL
);
-- Readers always filter by agent and walk seq: this index yields rows already in seq order.
CREATE INDEX IF NOT EXISTS events_agent_seq ON events (agent_id, seq);
CREATE INDEX IF NOT EXISTS events_mailbox_seq ON events (mailbox_id, seq);
CREATE INDEX IF NOT EXISTS events_created_at ON events (created_at);

CREATE TABLE IF NOT EXISTS checkpoints (
    mailbox_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, folder)
) WITHOUT ROWID;

-- Message-IDs already announced per folder, so a UIDVALIDITY reset does not re-announce mail.
-- `seq` ties a row to its event so pruning keeps this table bounded too.
CREATE TABLE IF NOT EXISTS message_ids (
    mailbox_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, folder, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS message_ids_seq ON message_ids (seq);
"""

# The spam bounds filter on a column, not on json_extract(data): a replay stays a plain index walk.
_V2_SPAM_SCORE = """
ALTER TABLE events ADD COLUMN spam_score REAL;
UPDATE events SET spam_score = json_extract(data, '$.spam.score')
    WHERE json_type(data, '$.spam.score') IN ('integer', 'real')
"""

# Migrations from version N-1 to N, applied in order on open(); index 0 creates the schema.
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _V2_SPAM_SCORE)

_EVENT_ID = re.compile(r"[0-9]{1,19}")
_MAX_SEQ = 2**63 - 1  # SQLite INTEGER range; larger ids cannot have been issued.

# The data as bytes: SQLite hands over its UTF-8 as it is, which a replay copies into SSE frames
# (decoding it to str and encoding it back cost a replay about a third of its time).
_COLUMNS = "seq, type, created_at, agent_id, mailbox_id, CAST(data AS BLOB) AS data, from_address"

# Rows deleted per prune transaction: short enough that appends waiting on the lock stay fast.
PRUNE_BATCH = 5000
# Up to this many agents a read merges per-agent index walks; above it, it scans by seq.
_UNION_MAX_AGENTS = 4
# Bound on bound parameters per statement (SQLite's default limit is 32766; old builds 999).
_IN_CHUNK = 500


# Not `INSERT OR IGNORE`: SQLite advances the AUTOINCREMENT counter even for an ignored row,
# so every skipped duplicate would burn a seq (gaps, and a last_seq no event ever had). The
# existence check is race-free because it runs inside append's BEGIN IMMEDIATE; the UNIQUE
# constraint stays as a loud safety net.
_INSERT_EVENT = (
    "INSERT INTO events (type, created_at, agent_id, mailbox_id, from_address, dedupe_key, data, spam_score)"
    " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8"
    " WHERE ?6 IS NULL OR NOT EXISTS (SELECT 1 FROM events WHERE dedupe_key = ?6)"
)


_T = TypeVar("_T")

# SQLite checkpoints by itself once the WAL holds 1,000 pages; the writer's thread does about the
# same for the appends made on the loop (whose connection has automatic checkpoints off), by the
# pages each append wrote: about one per event (its JSON) and 8 for the b-trees it touches, so
# about 9 for one message.received event. Counting appends instead let a catch-up's group
# commits grow the WAL many times past that, and every read through a large WAL is slower (a
# replay of 100,000 events through 430 MB of it ran at about half its speed).
CHECKPOINT_AFTER_PAGES = 900
APPEND_PAGES = 8

_INSERT_MESSAGE_ID = (
    "INSERT INTO message_ids (mailbox_id, folder, message_id, seq)"
    " VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET seq = excluded.seq"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (mailbox_id, folder, uidvalidity, last_uid)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (mailbox_id, folder) DO UPDATE"
    " SET uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid"
)


# Every SQLite file gatewayd writes carries this in its header (`PRAGMA application_id`, "gwdd").
APPLICATION_ID = 0x67776464
# The tables of gatewayd's files from before that stamp; a file without it holding any other
# table is another program's.
_UNSTAMPED_TABLES = frozenset(
    {"events", "checkpoints", "message_ids", "tokens", "rule_journal", "rule_steps", "outbox", "auto_replies"}
)
_APPLICATION_ID = "PRAGMA application_id"
_TABLES = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite%'"


def refuse_foreign(path: Path, application_id: int, tables: Iterable[str]) -> None:
    """StoreUnavailable when the file at `path` is another program's SQLite database: gatewayd must
    not add its tables to it (nor switch it to WAL, nor alter a table that merely shares a name)."""
    if application_id == APPLICATION_ID:
        return
    others = sorted(set(tables) - _UNSTAMPED_TABLES)
    if application_id != 0 or others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        why = f"it holds tables gatewayd did not make: {shown}" if others else "another program's file"
        raise StoreUnavailable(
            f"cannot open the event store {path}: not a gatewayd store ({why}); give store.path a file"
            " of its own"
        )


async def open_beside(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """An aiosqlite connection to the event log's file in WAL mode, for the tables that live beside
    the events (run-time tokens, the rules journal); autocommit: each opener runs its own schema.
    StoreUnavailable when the file is another program's database."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file SQLite cannot open fails here, not in aiosqlite.connect: that one stops its worker
    # thread without waiting for it, and the thread then reports to an event loop already closed
    # (a traceback after the command's own one-line error).
    await asyncio.to_thread(lambda: sqlite3.connect(path).close())
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        (application_id,) = next(iter(await conn.execute_fetchall(_APPLICATION_ID)))
        tables = [str(row[0]) for row in await conn.execute_fetchall(_TABLES)]
        refuse_foreign(path, int(application_id), tables)
        await conn.execute("PRAGMA journal_mode=WAL")
    except BaseException:
        await conn.close()
        raise
    return conn


def _glob_literal(text: str) -> str:
    """Escape GLOB's `[` and `?` (by bracketing them) so only a caller's `*` stays special."""
    return text.replace("[", "[[]").replace("?", "[?]")


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


class SqliteEventStore:
    """`EventStore` on a single SQLite file (see gatewayd.store.EventStore for the contract)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        # The writer: used only on its executor's one thread, one transaction per call.
        self._writer: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Appends on the event loop; it never waits for the lock and never checkpoints.
        self._on_loop: sqlite3.Connection | None = None
        self._pages_since_checkpoint = 0
        self._checkpointing: asyncio.Future[Any] | None = None
        # Appends sent to the writer's thread whose caller has not resumed yet: while any is, an
        # append on the loop could commit a later seq and be published before it.
        self._appends_on_writer = 0
        self._reader: aiosqlite.Connection | None = None
        # The last append failed (locked past the busy timeout, disk full, read-only), until one
        # succeeds: reads still work then, and /healthz must not say the store is fine.
        self._append_failed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        with opening("event store", self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewayd-store-writer")
            try:
                self._writer = await self._on_writer(self._open_writer)
                self._on_loop = self._connect(busy_timeout_ms=0)
                self._on_loop.execute("PRAGMA wal_autocheckpoint=0")
                reader = await aiosqlite.connect(self.path, isolation_level=None)
                try:
                    await reader.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
                    await reader.execute("PRAGMA synchronous=NORMAL")
                    await reader.execute("PRAGMA query_only=ON")  # reads can never write by mistake
                except BaseException:
                    await reader.close()
                    raise
            except BaseException:
                await self._close_writers()
                raise
            self._reader = reader

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._connect(self._busy_timeout_ms)
        try:
            (application_id,) = conn.execute(_APPLICATION_ID).fetchone()
            refuse_foreign(self.path, int(application_id), (str(row[0]) for row in conn.execute(_TABLES)))
            # journal_mode is persistent in the file and cannot change inside a transaction.
            conn.execute("PRAGMA journal_mode=WAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write issues BEGIN IMMEDIATE
        # itself, so the write lock is taken up front instead of failing on upgrade.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _on_writer(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run `function(*args)` on the writer's thread (after every call submitted before)."""
        if self._executor is None:
            raise RuntimeError("SqliteEventStore is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("PRAGMA user_version").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                # The one line the CLI prints, as for any store that cannot be opened.
                raise StoreUnavailable(
                    f"cannot open the event store {self.path}: schema version {version} is newer than"
                    f" this gatewayd's ({SCHEMA_VERSION}); run the gatewayd that wrote it, or a later one"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                # executescript() would COMMIT first; run the statements one by one instead
                # (so migration scripts must not contain `;` inside statements or comments).
                for statement in _MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    async def close(self) -> None:
        reader = self._reader
        self._reader = None
        if reader is not None:
            await reader.close()
        await self._close_writers()

    async def _close_writers(self) -> None:
        on_loop, self._on_loop = self._on_loop, None
        if on_loop is not None:
            on_loop.close()
        executor = self._executor
        if executor is None:
            return
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                # Behind any transaction already submitted, so it commits before the close.
                await self._on_writer(writer.close)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    @property
    def _w(self) -> sqlite3.Connection:
        if self._writer is None:
            raise RuntimeError("SqliteEventStore is not open")
        return self._writer

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
        # Serialize here: a bad payload fails fast and never reaches the writer.
        encoded = [compact_json(e.data) for e in events]
        rows = [
            (
                event.type,
                event.agent_id,
                event.mailbox_id,
                event.from_address.lower() if event.from_address else None,
                event.dedupe_key,
                data,
                spam_score(event.data),
                self._announced(event, checkpoint),
            )
            for event, data in zip(events, encoded, strict=True)
        ]
        try:
            created_at, seqs = await self._write(
                self._append_now, rows, checkpoint, pages=APPEND_PAGES + len(rows)
            )
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
                        data_json=data,
                    )
                )
        return stored

    @staticmethod
    def _append_now(
        conn: sqlite3.Connection, rows: list[tuple[Any, ...]], checkpoint: Checkpoint | None
    ) -> tuple[str, list[int | None]]:
        """append's transaction, on the writer's thread: each row's seq (None: a known dedupe key)."""
        seqs: list[int | None] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Under the write lock, which orders the transactions: created_at never decreases
            # along seq.
            created_at = rfc3339()
            for type_, agent_id, mailbox_id, from_address, dedupe_key, data, score, announced in rows:
                cursor = conn.execute(
                    _INSERT_EVENT,
                    (type_, created_at, agent_id, mailbox_id, from_address, dedupe_key, data, score),
                )
                if cursor.rowcount != 1:
                    seqs.append(None)  # dedupe_key already stored (earlier or in this batch)
                    continue
                seq = int(cursor.lastrowid or 0)
                seqs.append(seq)
                if announced is not None:
                    # A re-announcement moves the row to the newer seq, so pruning the older
                    # event does not forget a Message-ID that is still in the log.
                    conn.execute(_INSERT_MESSAGE_ID, (mailbox_id, *announced, seq))
            if checkpoint is not None:
                conn.execute(
                    _UPSERT_CHECKPOINT,
                    (checkpoint.mailbox_id, checkpoint.folder, checkpoint.uidvalidity, checkpoint.last_uid),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return created_at, seqs

    async def _write(self, transaction: Callable[..., _T], *args: Any, pages: int) -> _T:
        """Run `transaction(conn, *args)`, which writes about `pages` pages, on the loop if the
        write lock is free now, else on the writer's thread. A transaction must take the lock
        first (BEGIN IMMEDIATE) and roll back on any error, so one refused the lock has done
        nothing and can run again there.

        Callers resume in commit order (so they publish in seq order): while an earlier append
        is on the writer's thread, this one queues behind it there, since the thread returns
        results in order and one committed on the loop would return first."""
        conn = self._on_loop
        # During a checkpoint, wait behind it: a transaction beside it would leave frames it
        # cannot copy, and under steady appends the WAL would never restart.
        if conn is not None and self._checkpointing is None and not self._appends_on_writer:
            try:
                result = transaction(conn, *args)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
            else:
                self._pages_since_checkpoint += pages
                if self._pages_since_checkpoint >= CHECKPOINT_AFTER_PAGES:
                    self._checkpoint()
                return result
        self._appends_on_writer += 1
        try:
            return await self._on_writer(transaction, self._w, *args)
        finally:
            self._appends_on_writer -= 1

    def _checkpoint(self) -> None:
        self._pages_since_checkpoint = 0
        # PASSIVE: never waits for a reader; what a reader still needs is copied next time.
        self._checkpointing = asyncio.ensure_future(
            self._on_writer(lambda: self._w.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        )
        self._checkpointing.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, done: asyncio.Future[Any]) -> None:
        self._checkpointing = None
        if not done.cancelled() and done.exception() is not None:
            log.warning("WAL checkpoint failed: %s", done.exception())

    @classmethod
    def _announced(cls, event: NewEvent, checkpoint: Checkpoint | None) -> tuple[str, str] | None:
        """(folder, Message-ID) to record as announced for this event, or None."""
        folder = cls._message_id_folder(event, checkpoint)
        return None if folder is None else (folder, event.data["message_id"])

    @staticmethod
    def _message_id_folder(event: NewEvent, checkpoint: Checkpoint | None) -> str | None:
        """The folder to record this event's Message-ID under, or None to record nothing."""
        message_id = event.data.get("message_id")
        if not event.dedupe_key or event.mailbox_id is None or not isinstance(message_id, str):
            return None
        if not message_id:
            return None
        folder = event.data.get("folder")
        if isinstance(folder, str):
            return folder
        if checkpoint is not None and checkpoint.mailbox_id == event.mailbox_id:
            return checkpoint.folder
        return None

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
            removed = await self._on_writer(self._prune_batch, self._w, select, value)
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
        wanted = list(dict.fromkeys(message_ids))
        known: set[str] = set()
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            rows = await self._r.execute_fetchall(
                "SELECT message_id FROM message_ids WHERE mailbox_id = ? AND folder = ?"
                f" AND message_id IN ({_placeholders(len(chunk))})",
                (mailbox_id, folder, *chunk),
            )
            known.update(row[0] for row in rows)
        return known

    async def folder_history(self, mailbox_id: str, folder: str, uidvalidity: int) -> FolderHistory:
        """The newest announced message's arrival and the first connect, from the events of the
        folder under a UIDVALIDITY other than this one (walked by seq: the newest, the oldest)."""
        where = (
            "mailbox_id = ? AND json_extract(data, '$.folder') = ?"
            " AND json_extract(data, '$.uidvalidity') != ?"
        )
        async with self._r.execute(
            f"SELECT json_extract(data, '$.received_at') FROM events WHERE {where}"
            " AND (type = ? OR type GLOB ?) AND json_extract(data, '$.received_at') IS NOT NULL"
            " ORDER BY seq DESC LIMIT 1",
            (mailbox_id, folder, uidvalidity, MESSAGE_RECEIVED, f"{MESSAGE_RECEIVED}.*"),
        ) as cursor:
            arrival = await cursor.fetchone()
        async with self._r.execute(
            f"SELECT created_at FROM events WHERE {where} AND type = ? ORDER BY seq ASC LIMIT 1",
            (mailbox_id, folder, uidvalidity, MAILBOX_CONNECTED),
        ) as cursor:
            connected = await cursor.fetchone()
        return FolderHistory(
            newest_arrival=_moment(arrival[0]) if arrival else None,
            first_watched=_moment(connected[0]) if connected else None,
        )

    async def read_after(self, query: EventQuery, after_seq: int, limit: int) -> list[Event]:
        """Events with seq > after_seq matching query, oldest first, at most limit."""
        return await self._read(query, "seq > ?", after_seq, "ASC", limit)

    async def read_before(self, query: EventQuery, before_seq: int | None, limit: int) -> list[Event]:
        """Events with seq < before_seq (or the newest when None) matching query, newest first."""
        if before_seq is None:
            return await self._read(query, None, None, "DESC", limit)
        return await self._read(query, "seq < ?", before_seq, "DESC", limit)

    async def _read(
        self, query: EventQuery, seq_condition: str | None, seq: int | None, order: str, limit: int
    ) -> list[Event]:
        if not query.agent_ids or limit <= 0:
            return []
        # Everything but the agent: shared by every per-agent arm below.
        where: list[str] = []
        params: list[Any] = []
        if seq_condition is not None:
            where.append(seq_condition)
            params.append(seq)
        if query.mailbox_ids:
            where.append(f"mailbox_id IN ({_placeholders(len(query.mailbox_ids))})")
            params.extend(query.mailbox_ids)
        if query.type_patterns:
            alternatives: list[str] = []
            for pattern in query.type_patterns:
                if "*" in pattern:
                    alternatives.append("type GLOB ?")
                    params.append(_glob_literal(pattern))
                else:
                    alternatives.append("type = ?")
                    params.append(pattern)
            where.append("(" + " OR ".join(alternatives) + ")")
        if query.from_filter:
            wanted = query.from_filter.lower()
            if wanted.startswith("@"):
                where.append("from_address GLOB ?")
                params.append("*" + _glob_literal(wanted))
            else:
                where.append("from_address = ?")
                params.append(wanted)
        if query.min_spam is not None:
            where.append("spam_score >= ?")
            params.append(query.min_spam)
        if query.max_spam is not None:
            where.append("spam_score <= ?")
            params.append(query.max_spam)

        # Every plan below yields rows already in seq order and stops after `limit` rows, so a
        # page costs the same wherever it starts. A plain `agent_id IN (...) ORDER BY seq` would
        # instead gather and sort every remaining row of those agents on each page, which turns
        # a replay into quadratic work.
        agents = tuple(dict.fromkeys(query.agent_ids))
        if len(agents) == 1:
            # One agent: walk its (agent_id, seq) index range.
            conditions = " AND ".join(["agent_id = ?", *where])
            sql = f"SELECT {_COLUMNS} FROM events WHERE {conditions} ORDER BY seq {order} LIMIT ?"
            args = [agents[0], *params, limit]
        elif len(agents) <= _UNION_MAX_AGENTS:
            # A few agents: one index walk per agent, merged; at most agents x limit rows read,
            # however rare these agents are in the log.
            conditions = " AND ".join(["agent_id = ?", *where])
            arm = f"SELECT {_COLUMNS} FROM events WHERE {conditions} ORDER BY seq {order} LIMIT ?"
            sql = " UNION ALL ".join([f"SELECT * FROM ({arm})"] * len(agents))
            sql += f" ORDER BY seq {order} LIMIT ?"
            args = [value for agent in agents for value in (agent, *params, limit)]
            args.append(limit)
        else:
            # Many agents (an operator's token) usually cover most of the log: walking seq and
            # filtering is then far cheaper than a walk per agent. NOT INDEXED pins that plan.
            conditions = " AND ".join([f"agent_id IN ({_placeholders(len(agents))})", *where])
            sql = f"SELECT {_COLUMNS} FROM events NOT INDEXED WHERE {conditions} ORDER BY seq {order} LIMIT ?"
            args = [*agents, *params, limit]
        rows = await self._r.execute_fetchall(sql, args)
        return _events(rows)

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

    async def last_seq(self) -> int:
        """The newest seq ever issued (0 when none); sqlite_sequence survives pruning."""
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


def _events(rows: Iterable[Any]) -> list[Event]:
    # The hot path of a replay: the data stays JSON bytes, decoded only if someone reads it.
    return [
        Event(seq, str(seq), type_, created_at, agent_id, mailbox_id, None, from_address, data_utf8=data)
        for seq, type_, created_at, agent_id, mailbox_id, data, from_address in rows
    ]


def _moment(text: object) -> datetime | None:
    """An RFC 3339 time from the store, or None if it is not one (data written by hand, say)."""
    try:
        return parse_rfc3339(str(text))
    except (ValueError, OverflowError):
        return None
