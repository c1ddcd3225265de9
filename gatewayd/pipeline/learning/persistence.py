"""The learning store's SQLite file: its schema, the writes of training, and a snapshot of it all.

The connection and its transactions belong to the caller (store.py), which holds its lock around
every call here; `read_snapshot` alone opens a connection of its own. `create=False`: the file
must exist, at a path with no symlink in it, and SQLite never creates one (a command run as root
made it for its directory's owner: gatewayd.store.ownership).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gatewayd.pipeline.learning.nearest import Buckets, add_signature
from gatewayd.pipeline.learning.senders import ALL_MAILBOXES, SenderRow, Senders
from gatewayd.store.ownership import existing_only, refuse_elsewhere

_SCHEMA = """
CREATE TABLE IF NOT EXISTS learn_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS learn_tokens (
    token TEXT PRIMARY KEY, spam INTEGER NOT NULL, ham INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_messages (
    digest TEXT PRIMARY KEY, label TEXT NOT NULL, address TEXT, mailbox TEXT,
    trained_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_signatures (digest TEXT PRIMARY KEY, tlsh TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_senders (
    address TEXT NOT NULL, mailbox TEXT NOT NULL, ham INTEGER NOT NULL DEFAULT 0,
    spam INTEGER NOT NULL DEFAULT 0, sent_to INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (address, mailbox)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_sent_marks (
    mailbox TEXT PRIMARY KEY, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO learn_meta VALUES ('nspam', 0), ('nham', 0);
"""


@dataclass(frozen=True, slots=True)
class SentMark:
    """How far a mailbox's Sent folder has been learnt from (gatewayd.imap.sent)."""

    folder: str
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What scoring reads, as loaded from the file."""

    nspam: int
    nham: int
    tokens: dict[str, tuple[int, int]]
    signatures: Buckets
    senders: Senders
    sender_rows: dict[SenderRow, SenderRow]


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    """The store's own connection (autocommit: training opens its transactions itself), the
    schema created if missing."""
    db = _open(path, create, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def _open(path: Path, create: bool, check_same_thread: bool = True) -> sqlite3.Connection:
    """An autocommit connection to the file; with `create=False`, refused (StoreUnavailable) before
    anything is read or written when SQLite opened another file: a symlink put in its place."""
    if create:
        return sqlite3.connect(path, check_same_thread=check_same_thread, isolation_level=None)
    db = sqlite3.connect(
        existing_only(path), uri=True, check_same_thread=check_same_thread, isolation_level=None
    )
    try:
        refuse_elsewhere("learning store", path, db.execute("PRAGMA database_list").fetchall())
    except BaseException:
        db.close()
        raise
    return db


def file_version(db: sqlite3.Connection) -> int:
    """SQLite's data_version on `db`: it changes when another connection commits (never for
    this connection's own commits)."""
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def load(db: sqlite3.Connection) -> Snapshot:
    meta = dict(db.execute("SELECT key, value FROM learn_meta").fetchall())
    tokens = {token: (s, h) for token, s, h in db.execute("SELECT token, spam, ham FROM learn_tokens")}
    signatures: Buckets = {}
    for digest, text in db.execute("SELECT digest, tlsh FROM learn_signatures"):
        add_signature(signatures, digest, text)
    senders: Senders = {}
    rows: dict[SenderRow, SenderRow] = {}  # equal rows share one tuple, as in senders.set_sender
    previous = ""
    query = "SELECT address, mailbox, ham, spam, sent_to FROM learn_senders"
    for address, mailbox, ham, spam, sent_to in db.execute(query):
        if address == previous:  # rows come by address: its mailboxes share one string
            address = previous
        previous = address
        row = (ham, spam, sent_to)
        senders.setdefault(mailbox, {})[address] = rows.setdefault(row, row)
    return Snapshot(meta.get("nspam", 0), meta.get("nham", 0), tokens, signatures, senders, rows)


def read_snapshot(path: Path, create: bool = True) -> Snapshot:
    """The file as it is, read on a connection of its own in one read transaction: a
    consistent snapshot, and the store's lock stays free for scoring meanwhile."""
    db = _open(path, create)
    try:
        db.execute("PRAGMA query_only=ON")
        db.execute("BEGIN")
        snapshot = load(db)
        db.execute("COMMIT")
    finally:
        db.close()
    return snapshot


def write_tokens(db: sqlite3.Connection, deltas: dict[str, list[int]], totals: list[int]) -> None:
    db.executemany(
        "UPDATE learn_meta SET value = MAX(0, value + ?) WHERE key = ?",
        [(totals[0], "nspam"), (totals[1], "nham")],
    )
    db.executemany(
        "INSERT INTO learn_tokens VALUES (?1, MAX(0, ?2), MAX(0, ?3)) ON CONFLICT (token) DO UPDATE "
        "SET spam = MAX(0, spam + ?2), ham = MAX(0, ham + ?3)",
        [(token, s, h) for token, (s, h) in deltas.items() if s or h],
    )
    db.executemany(  # only an un-learn can bring a token to zero
        "DELETE FROM learn_tokens WHERE token = ? AND spam = 0 AND ham = 0",
        [(token,) for token, (s, h) in deltas.items() if s < 0 or h < 0],
    )


def write_message(
    db: sqlite3.Connection, digest: str, label: str, address: str | None, mailbox_id: str | None, at: float
) -> None:
    db.execute(
        "INSERT OR REPLACE INTO learn_messages VALUES (?, ?, ?, ?, ?)",
        (digest, label, address, mailbox_id, at),
    )


def trained_as(db: sqlite3.Connection, digest: str) -> tuple[str, str | None, str | None] | None:
    """The label, address and mailbox a message was trained with; None: never trained."""
    row = db.execute(
        "SELECT label, address, mailbox FROM learn_messages WHERE digest = ?", (digest,)
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def count_sender(db: sqlite3.Connection, address: str, mailbox: str, column: str, sign: int) -> None:
    """Add `sign` to the `column` ("ham" or "spam") of a sender's row, clamped at zero; a row even
    at zero."""
    db.execute(
        f"INSERT INTO learn_senders (address, mailbox, {column}) VALUES (?1, ?2, MAX(0, ?3)) "
        f"ON CONFLICT (address, mailbox) DO UPDATE SET {column} = MAX(0, {column} + ?3)",
        (address, mailbox, sign),
    )


def write_signature(db: sqlite3.Connection, digest: str, text: str) -> None:
    db.execute("INSERT OR REPLACE INTO learn_signatures VALUES (?, ?)", (digest, text))


def delete_signatures(db: sqlite3.Connection, digests: Iterable[str]) -> None:
    db.executemany("DELETE FROM learn_signatures WHERE digest = ?", [(d,) for d in digests])


def write_sent(db: sqlite3.Connection, mailbox_id: str, addresses: list[str], mark: SentMark | None) -> None:
    """`mailbox_id` (and so the tenant: ALL_MAILBOXES) wrote to `addresses`; its Sent folder is
    learnt up to `mark`."""
    db.executemany(
        "INSERT INTO learn_senders (address, mailbox, sent_to) VALUES (?, ?, 1) "
        "ON CONFLICT (address, mailbox) DO UPDATE SET sent_to = 1",
        [(address, mailbox) for address in addresses for mailbox in (mailbox_id, ALL_MAILBOXES)],
    )
    if mark is not None:
        db.execute(
            "INSERT OR REPLACE INTO learn_sent_marks VALUES (?, ?, ?, ?)",
            (mailbox_id, mark.folder, mark.uidvalidity, mark.last_uid),
        )


def read_sent_mark(db: sqlite3.Connection, mailbox_id: str) -> SentMark | None:
    row = db.execute(
        "SELECT folder, uidvalidity, last_uid FROM learn_sent_marks WHERE mailbox = ?", (mailbox_id,)
    ).fetchone()
    return SentMark(*row) if row is not None else None
