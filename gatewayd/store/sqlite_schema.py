"""The SQLite event log's file: its schema and migrations, and the stamp that marks it gatewayd's.

Every connection that writes to the file checks the stamp first (`refuse_foreign`): gatewayd must
never add its tables to another program's database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import aiosqlite

from gatewayd.store import StoreUnavailable
from gatewayd.store.ownership import existing_only, refuse_elsewhere

SCHEMA_VERSION = 3

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

# The newest seq retention deleted: a resume point below it lost events. Seqs are not dense (a
# start after a power loss skips some), so the oldest seq left cannot tell. Before this table,
# everything below the oldest event counts as pruned.
_V3_PRUNED_THROUGH = """
CREATE TABLE retention (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    pruned_through INTEGER NOT NULL
);
INSERT INTO retention (one, pruned_through) VALUES (1, coalesce(
    (SELECT min(seq) - 1 FROM events),
    (SELECT seq FROM sqlite_sequence WHERE name = 'events'),
    0
))
"""

# Migrations from version N-1 to N, applied in order on open(); index 0 creates the schema.
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _V2_SPAM_SCORE, _V3_PRUNED_THROUGH)

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


def connect_beside(path: Path, busy_timeout_ms: int, *, create: bool = True) -> sqlite3.Connection:
    """A plain sqlite3 connection to the event log's file in WAL mode, for the tables that live
    beside the events (the rules journal; run-time tokens through `open_beside`); autocommit: each
    opener runs its own schema. StoreUnavailable when the file is another program's database.
    `create=False`, for a path with no symlink in it (gatewayd.store.ownership): the file must
    exist, SQLite never creates one, and a symlink put in its place since is refused before
    anything is written where it leads. Blocking: call it on the thread that will use it."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    database, uri = (str(path), False) if create else (existing_only(path), True)
    conn = sqlite3.connect(database, uri=uri, isolation_level=None)
    try:
        # Pragmas that answer a row are read to the end: a statement left half-read stays active
        # until its cursor is freed, whenever that is, and a COMMIT meanwhile fails ("SQL
        # statements in progress").
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}").fetchall()
        if not create:
            refuse_elsewhere("event store", path, conn.execute("PRAGMA database_list").fetchall())
        (application_id,) = conn.execute(_APPLICATION_ID).fetchone()
        refuse_foreign(path, int(application_id), [str(row[0]) for row in conn.execute(_TABLES)])
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


async def open_beside(path: Path, busy_timeout_ms: int, *, create: bool = True) -> aiosqlite.Connection:
    """`connect_beside`, as an aiosqlite connection."""
    # A file that cannot be opened, or is refused, fails here, not in aiosqlite's worker thread:
    # that one stops without being waited for, and then reports to an event loop already closed
    # (a traceback after the command's own one-line error).

    def connect() -> sqlite3.Connection:
        return connect_beside(path, busy_timeout_ms, create=create)

    await asyncio.to_thread(lambda: connect().close())
    return await aiosqlite.Connection(connect, iter_chunk_size=64)


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Make the event log's file at `path` ready on the writer's connection: refuse another
    program's file, switch to WAL, migrate the schema to this version and stamp it."""
    (application_id,) = conn.execute(_APPLICATION_ID).fetchone()
    refuse_foreign(path, int(application_id), (str(row[0]) for row in conn.execute(_TABLES)))
    # The append stores the events' UTF-8 JSON bytes as TEXT as they are (gatewayd.store.sqlite_append):
    # the file must be in UTF-8, as every file SQLite makes by default is.
    (encoding,) = conn.execute("PRAGMA encoding").fetchone()
    if encoding != "UTF-8":
        raise StoreUnavailable(f"cannot open the event store {path}: its text is {encoding}, not UTF-8")
    # journal_mode is persistent in the file and cannot change inside a transaction.
    conn.execute("PRAGMA journal_mode=WAL")
    _migrate(conn, path)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("PRAGMA user_version").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            # The one line the CLI prints, as for any store that cannot be opened.
            raise StoreUnavailable(
                f"cannot open the event store {path}: schema version {version} is newer than"
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
