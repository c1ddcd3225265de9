"""The event log's writes: on the event loop while the write lock is free, else on a thread.

A transaction of a few rows (an append, one message or a catch-up's group commit) costs about
0.1 ms: it runs right on the event loop, on a connection that never waits for the write lock
(busy timeout 0) and never checkpoints the WAL, because even one thread round trip costs more CPU
than the transaction. When the lock is taken (a prune batch, another process), the transaction
goes instead to the writer's thread: a plain sqlite3 connection of its own, which waits for the
lock, runs the prune batches and checkpoints the WAL in the background once it has grown past
SQLite's usual threshold, so no fsync ever lands on the loop. Each transaction there is ONE call
to the thread (a round trip per statement would cost several times the transaction). SQLite's
write lock serializes the transactions of both; while one is on the thread, the next ones follow
it there, so their callers resume (and publish their events) in seq order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gatewayd.store.sqlite_schema import prepare

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# SQLite checkpoints by itself once the WAL holds 1,000 pages; the writer's thread does about the
# same for the appends made on the loop (whose connection has automatic checkpoints off), by the
# pages each append wrote: about one per event (its JSON) and 8 for the b-trees it touches, so
# about 9 for one message.received event. Counting appends instead let a catch-up's group
# commits grow the WAL many times past that, and every read through a large WAL is slower (a
# replay of 100,000 events through 430 MB of it ran at about half its speed).
CHECKPOINT_AFTER_PAGES = 900
APPEND_PAGES = 8


class NotNow(Exception):
    """The loop's connection cannot take a transaction now (`SqliteWriter.write_on_loop`)."""


def connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; every write issues BEGIN IMMEDIATE
    # itself, so the write lock is taken up front instead of failing on upgrade.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteWriter:
    """The two writing connections to the event log's file: one on the loop, one on a thread."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        # The thread's: used only on its executor's one thread, one transaction per call.
        self._thread_conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Transactions on the event loop; it never waits for the lock and never checkpoints.
        self._on_loop: sqlite3.Connection | None = None
        self._pages_since_checkpoint = 0
        self._checkpointing: asyncio.Future[Any] | None = None
        # Transactions sent to the thread whose caller has not resumed yet: while any is, one on
        # the loop could commit a later seq and be published before it.
        self._appends_on_writer = 0

    async def open(self) -> None:
        """Open both connections, after the file's schema is migrated and its stamp checked."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewayd-store-writer")
        try:
            self._thread_conn = await self.run(self._open_thread_conn)
            self._on_loop = connect(self.path, busy_timeout_ms=0)
            self._on_loop.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            await self.close()
            raise

    def _open_thread_conn(self) -> sqlite3.Connection:
        conn = connect(self.path, self._busy_timeout_ms)
        try:
            prepare(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._thread_conn is not None and self._executor is not None:
            # Under NORMAL only a checkpoint syncs the WAL: the last commits must be on disk
            # before the instance lock marks the stop clean (SQLite checkpoints when the last
            # connection closes too, but not while another process holds the file open).
            try:
                await self.run(lambda: self.thread_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint before closing failed: %s", exc)
        on_loop, self._on_loop = self._on_loop, None
        if on_loop is not None:
            on_loop.close()
        executor = self._executor
        if executor is None:
            return
        thread_conn, self._thread_conn = self._thread_conn, None
        try:
            if thread_conn is not None:
                # Behind any transaction already submitted, so it commits before the close.
                await self.run(thread_conn.close)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    @property
    def thread_conn(self) -> sqlite3.Connection:
        """The thread's connection: to be used only in what `run` runs."""
        if self._thread_conn is None:
            raise RuntimeError("SqliteEventStore is not open")
        return self._thread_conn

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run `function(*args)` on the writer's thread (after every call submitted before)."""
        if self._executor is None:
            raise RuntimeError("SqliteEventStore is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    def write_on_loop(self, transaction: Callable[..., _T], *args: Any, pages: int) -> _T:
        """Run `transaction(conn, *args)`, which writes about `pages` pages, on the loop's
        connection; NotNow when it cannot run there now (the write lock is taken, a checkpoint
        runs, an earlier transaction is still on the writer's thread): run it with `write`.

        A transaction must take the lock first (BEGIN IMMEDIATE) and roll back on any error, so
        one refused the lock has done nothing and can run again on the thread."""
        conn = self._on_loop
        # During a checkpoint, wait behind it: a transaction beside it would leave frames it
        # cannot copy, and under steady appends the WAL would never restart. While an earlier
        # transaction is on the thread, this one queues behind it there: the thread returns
        # results in order, and one committed on the loop would return (and publish) first.
        if conn is None or self._checkpointing is not None or self._appends_on_writer:
            raise NotNow
        try:
            result = transaction(conn, *args)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise NotNow from None
            raise
        self._pages_since_checkpoint += pages
        if self._pages_since_checkpoint >= CHECKPOINT_AFTER_PAGES:
            self._checkpoint()
        return result

    async def write(self, transaction: Callable[..., _T], *args: Any, pages: int) -> _T:
        """`write_on_loop` if it can run there now, else on the writer's thread (which waits for
        the lock). Callers resume in commit order, so they publish in seq order."""
        try:
            return self.write_on_loop(transaction, *args, pages=pages)
        except NotNow:
            pass
        self._appends_on_writer += 1
        try:
            return await self.run(transaction, self.thread_conn, *args)
        finally:
            self._appends_on_writer -= 1

    def _checkpoint(self) -> None:
        self._pages_since_checkpoint = 0
        # PASSIVE: never waits for a reader; what a reader still needs is copied next time.
        self._checkpointing = asyncio.ensure_future(
            self.run(lambda: self.thread_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        )
        self._checkpointing.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, done: asyncio.Future[Any]) -> None:
        self._checkpointing = None
        if not done.cancelled() and done.exception() is not None:
            log.warning("WAL checkpoint failed: %s", done.exception())
