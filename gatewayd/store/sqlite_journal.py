"""`RuleJournal` on SQLite (WAL), by default in the event log's file, with its own connection.

`get` runs for every new message and `open_entries` before every sync of every folder, and both
almost always find nothing: the journal keeps in memory every key that may have an entry, and
those of the entries that may be open by (mailbox, folder), and answers the others at once. Both
sets are read from the file at `open` (what a previous process left) and kept supersets from then
on: `begin` and `place` add their key before their transaction, `finish` removes open keys only
once committed, a query that finds fewer open entries than the set holds corrects it, and a prune
that deleted entries reads the keys again. It rests on this object being the only writer of
entries to its file while open, as it is in the daemon (one journal per store).

Durability: its connection runs `synchronous=FULL`, so every commit is on disk when the method
returns, across an OS crash or power loss too (the event log's NORMAL keeps commits across a
kill -9 only). An intent lost after its mail went out would have the message processed again and
the mail sent twice. Only messages whose rules act write here, about 3 + 2 per step commits each,
each an fsync of the WAL (a few milliseconds on an SSD, see README's "Exactly once").

Each method is ONE call to the journal's own thread, a plain sqlite3 connection that waits for the
write lock and the fsync there: a transaction, with what it reads back (`begin` returns the entry
it wrote). A round trip to a thread costs about as much CPU as a small transaction, and a
statement each (aiosqlite's way, before) made a message's journal cost 2.7 ms of CPU.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gatewayd.store import opening
from gatewayd.store.journal import (
    DONE,
    FINAL,
    OPEN,
    PLACED,
    REPLY_MEMORY_SECONDS,
    RETRY,
    SENDING,
    JournalEntry,
    OutboxItem,
    OutgoingMail,
)
from gatewayd.store.sqlite_journal_tables import (
    ENTRY_COLUMNS,
    OUTBOX_COLUMNS,
    SCHEMA,
    add_mail,
    dumps,
    journal_entry,
    outbox_item,
)
from gatewayd.store.sqlite_schema import connect_beside

_T = TypeVar("_T")

# A `sending` item whose message's entry is open belongs to the rules engine finishing that message.
_MESSAGE_FINISHED = "NOT EXISTS (SELECT 1 FROM rule_journal j WHERE j.key = outbox.key AND j.state = ?)"


class SqliteRuleJournal:
    """`RuleJournal` on SQLite (WAL), by default in the event log's file, with its own connection."""

    # Looked up on the journal, where a test can make it fail inside begin's transaction.
    _add_mail = staticmethod(add_mail)

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        # Used only on the executor's one thread, one method call at a time.
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Keeps the in-memory key sets in step with the transactions (see above).
        self._lock = asyncio.Lock()
        # Every key that may have an entry (see above).
        self._keys: set[str] = set()
        # Every key whose entry may be `open`, by (mailbox_id, folder), and the reverse (see above).
        self._open_keys: dict[tuple[str, str], set[str]] = {}
        self._open_folder: dict[str, tuple[str, str]] = {}

    async def open(self) -> None:
        with opening("event store", self.path):
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewayd-journal")
            try:
                conn, keys, rows = await self._call(self._open_on_thread)
            except BaseException:
                self._executor.shutdown(wait=False)
                self._executor = None
                raise
            self._keys = {key for (key,) in keys}
            self._open_keys.clear()
            self._open_folder.clear()
            for key, mailbox_id, folder in rows:
                self._mark_open(key, mailbox_id, folder)
            self._conn = conn

    def _open_on_thread(self) -> tuple[sqlite3.Connection, list[Any], list[Any]]:
        conn = connect_beside(self.path, self._busy_timeout_ms)
        try:
            # FULL: the WAL is synced at every commit (see above); per connection, so the
            # event log's appends in the same file stay NORMAL.
            conn.execute("PRAGMA synchronous=FULL")
            _transaction(conn, [(statement, ()) for statement in SCHEMA.split(";") if statement.strip()])
            # What a previous process left (open ones over the rule_journal_open index alone).
            keys = conn.execute("SELECT key FROM rule_journal").fetchall()
            rows = conn.execute(
                "SELECT key, mailbox_id, folder FROM rule_journal WHERE state = ?", (OPEN,)
            ).fetchall()
        except BaseException:
            conn.close()
            raise
        return conn, keys, rows

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            if conn is not None:
                async with self._lock:
                    # Behind every call already submitted, on the thread the connection belongs to.
                    await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=False)

    def _mark_open(self, key: str, mailbox_id: str, folder: str) -> None:
        pair = (mailbox_id, folder)
        self._open_keys.setdefault(pair, set()).add(key)
        self._open_folder[key] = pair

    def _mark_closed(self, keys: Sequence[str]) -> None:
        for key in keys:
            pair = self._open_folder.pop(key, None)
            if pair is not None:
                folder_keys = self._open_keys[pair]
                folder_keys.discard(key)
                if not folder_keys:
                    del self._open_keys[pair]

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        """`function(*args)` on the journal's thread."""
        if self._executor is None:
            raise RuntimeError("SqliteRuleJournal is not open")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(function, *args)
        )

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work(connection)` on the journal's thread."""
        return await self._call(lambda: work(self._connection()))

    async def trace(self, callback: Callable[[str], object] | None) -> None:
        """Have `callback` called (on the journal's thread) with each SQL statement the journal
        runs from now on; None stops it. What the tests count reads with."""
        await self._run(lambda conn: conn.set_trace_callback(callback))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteRuleJournal is not open")
        return self._conn

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        async with self._lock:
            return await self._run(lambda conn: conn.execute(sql, params).fetchall())

    async def _write(
        self, statements: Sequence[tuple[str, Sequence[Any]]], adds: str | None = None
    ) -> list[int]:
        """Run statements in one transaction; the row counts, in order. `adds`: the key of an entry
        the transaction may insert, known from before it begins."""
        async with self._lock:
            if adds is not None:
                self._keys.add(adds)
            return await self._run(lambda conn: _transaction(conn, statements))

    # -- journal -------------------------------------------------------------------------------

    async def get(self, key: str) -> JournalEntry | None:
        if key not in self._keys:
            return None  # the common case: a message no rule acted on nor placed, nothing to read
        async with self._lock:
            entries = await self._run(lambda conn: _read_entries(conn, "key = ?", (key,)))
        return entries[0] if entries else None

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
    ) -> JournalEntry:
        now = time.time()

        def begin_on_thread(conn: sqlite3.Connection) -> tuple[bool, JournalEntry]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT INTO rule_journal (key, agent_id, mailbox_id, folder, uidvalidity, uid, state,"
                    " record, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (key) DO NOTHING",
                    (key, agent_id, mailbox_id, folder, uidvalidity, uid, OPEN, dumps(record), now, now),
                )
                inserted = cursor.rowcount == 1
                if inserted:
                    for mail in mails:
                        self._add_mail(conn, key, agent_id, mailbox_id, mail, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
            (entry,) = _read_entries(conn, "key = ?", (key,))
            return inserted, entry

        async with self._lock:
            # Before the transaction: whatever happens to it, the key is never open unknown to us.
            known = key in self._open_folder
            self._keys.add(key)
            self._mark_open(key, mailbox_id, folder)
            inserted, entry = await self._run(begin_on_thread)
            if not inserted and not known:
                # Journaled before and not open (finished, or placed here): unchanged, still not open.
                self._mark_closed([key])
        return entry

    async def step(self, key: str, index: int, record: dict[str, Any]) -> None:
        await self._write([_step_statement(key, index, record)])

    async def complete(
        self, key: str, result: dict[str, Any], steps: Mapping[int, dict[str, Any]] | None = None
    ) -> None:
        await self._write(
            [
                *(_step_statement(key, index, record) for index, record in (steps or {}).items()),
                # Not updated_at: only prune reads it, of finished entries, and finish sets it.
                ("UPDATE rule_journal SET result = ? WHERE key = ?", (dumps(result), key)),
            ]
        )

    async def finish(self, keys: Sequence[str]) -> None:
        now = time.time()
        await self._write(
            [
                (
                    "UPDATE rule_journal SET state = ?, updated_at = ? WHERE key = ? AND state = ?",
                    (DONE, now, k, OPEN),
                )
                for k in keys
            ]
        )
        # Committed: none of these is open now (finished here, or never open).
        self._mark_closed(keys)

    async def place(self, key: str, mailbox_id: str, folder: str, uidvalidity: int, uid: int) -> None:
        now = time.time()
        await self._write(
            [
                (
                    "INSERT INTO rule_journal (key, agent_id, mailbox_id, folder, uidvalidity, uid, state,"
                    " record, created_at, updated_at) VALUES (?, '', ?, ?, ?, ?, ?, '{}', ?, ?)"
                    " ON CONFLICT (key) DO NOTHING",
                    (key, mailbox_id, folder, uidvalidity, uid, PLACED, now, now),
                )
            ],
            adds=key,
        )

    async def open_entries(self, mailbox_id: str, folder: str | None = None) -> list[JournalEntry]:
        pairs = [p for p in self._open_keys if p[0] == mailbox_id and folder in (None, p[1])]
        if not pairs:
            return []  # the common case: no entry of this folder is open, nothing to read
        where, params = (
            ("", (mailbox_id, OPEN)) if folder is None else (" AND folder = ?", (mailbox_id, OPEN, folder))
        )
        async with self._lock:
            entries = await self._run(
                lambda conn: _read_entries(conn, f"mailbox_id = ? AND state = ?{where}", params)
            )
            # Under the lock no transaction is half done: exactly these are open.
            found = {entry.key: entry.folder for entry in entries}
            self._mark_closed(
                [key for pair in pairs for key in self._open_keys.get(pair, ()) if key not in found]
            )
            for key, key_folder in found.items():
                self._mark_open(key, mailbox_id, key_folder)
        return entries

    async def open_folders(self) -> set[tuple[str, str]]:
        return set(self._open_keys)

    # -- outbox --------------------------------------------------------------------------------

    async def outbox_get(self, key: str, step: int) -> OutboxItem | None:
        rows = await self._read(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE key = ? AND step = ?", (key, step)
        )
        return outbox_item(rows[0]) if rows else None

    async def outbox_update(
        self,
        item_id: int,
        state: str,
        *,
        attempts: int | None = None,
        next_attempt_at: float | None = None,
        last_error: str | None = None,
    ) -> None:
        await self._write(
            [
                (
                    "UPDATE outbox SET state = ?, attempts = coalesce(?, attempts), next_attempt_at = ?,"
                    " last_error = ?, updated_at = ? WHERE id = ?",
                    (state, attempts, next_attempt_at, last_error, time.time(), item_id),
                )
            ]
        )

    async def outbox_due(self, now: float, limit: int = 20) -> list[OutboxItem]:
        rows = await self._read(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?",
            (RETRY, now, limit),
        )
        return [outbox_item(row) for row in rows]

    async def outbox_next_due(self) -> float | None:
        rows = await self._read("SELECT min(next_attempt_at) FROM outbox WHERE state = ?", (RETRY,))
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def outbox_orphans(self) -> list[OutboxItem]:
        rows = await self._read(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = ? AND {_MESSAGE_FINISHED}", (SENDING, OPEN)
        )
        return [outbox_item(row) for row in rows]

    async def release_reservation(self, mailbox_id: str, key: str) -> None:
        await self._write([("DELETE FROM auto_replies WHERE mailbox_id = ? AND key = ?", (mailbox_id, key))])

    async def prune(self, max_age_seconds: float) -> int:
        """Forget finished messages and final mail older than max_age_seconds; never open ones."""
        now = time.time()
        cutoff = now - max_age_seconds
        counts = await self._write(
            [
                (
                    "DELETE FROM rule_steps WHERE key IN (SELECT key FROM rule_journal"
                    " WHERE state != ? AND updated_at < ?)",
                    (OPEN, cutoff),
                ),
                ("DELETE FROM rule_journal WHERE state != ? AND updated_at < ?", (OPEN, cutoff)),
                (
                    f"DELETE FROM outbox WHERE state IN ({','.join('?' * len(FINAL))}) AND updated_at < ?",
                    (*FINAL, cutoff),
                ),
                ("DELETE FROM auto_replies WHERE replied_at < ?", (now - REPLY_MEMORY_SECONDS,)),
            ]
        )
        if counts[1]:
            async with self._lock:  # no transaction half done: exactly these keys have entries
                keys = await self._run(lambda conn: conn.execute("SELECT key FROM rule_journal").fetchall())
                self._keys = {key for (key,) in keys}
        return counts[1]


def _step_statement(key: str, index: int, record: dict[str, Any]) -> tuple[str, Sequence[Any]]:
    return (
        "INSERT INTO rule_steps (key, step, record) VALUES (?, ?, ?)"
        " ON CONFLICT (key, step) DO UPDATE SET record = excluded.record",
        (key, index, dumps(record)),
    )


def _transaction(conn: sqlite3.Connection, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
    """Run statements in one transaction; the row counts, in order."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        counts = [conn.execute(sql, params).rowcount for sql, params in statements]
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return counts


def _read_entries(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[JournalEntry]:
    """The entries whose rule_journal rows match `where`, oldest first, with their steps."""
    rows = conn.execute(
        f"SELECT {ENTRY_COLUMNS} FROM rule_journal WHERE {where} ORDER BY created_at", params
    ).fetchall()
    return [
        journal_entry(
            row, conn.execute("SELECT step, record FROM rule_steps WHERE key = ? ORDER BY step", (row[0],))
        )
        for row in rows
    ]
