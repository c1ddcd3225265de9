"""The append's transaction: events, the Message-IDs they announce, and the checkpoint, at once
(for several appends at once: a group commit, gatewayd.store.sqlite_group).

It runs on either of the writer's connections (gatewayd.store.sqlite_writer), so it takes the
write lock first and rolls back on any error, as `SqliteWriter.write` requires.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from gatewayd.events import NewEvent, rfc3339
from gatewayd.store import Checkpoint

# Not `INSERT OR IGNORE`: SQLite advances the AUTOINCREMENT counter even for an ignored row,
# so every skipped duplicate would burn a seq (gaps, and a last_seq no event ever had). The
# existence check is race-free because it runs inside append's BEGIN IMMEDIATE; the UNIQUE
# constraint stays as a loud safety net. The data comes as its UTF-8 bytes (a blob), stored as
# the TEXT they spell (the database's encoding is UTF-8): no str to encode for the binding.
_INSERT_EVENT = (
    "INSERT INTO events (type, created_at, agent_id, mailbox_id, from_address, dedupe_key, data, spam_score)"
    " SELECT ?1, ?2, ?3, ?4, ?5, ?6, CAST(?7 AS TEXT), ?8"
    " WHERE ?6 IS NULL OR NOT EXISTS (SELECT 1 FROM events WHERE dedupe_key = ?6)"
)
_INSERT_MESSAGE_ID = (
    "INSERT INTO message_ids (mailbox_id, folder, message_id, seq)"
    " VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET seq = excluded.seq"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (mailbox_id, folder, uidvalidity, last_uid)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (mailbox_id, folder) DO UPDATE"
    " SET uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid"
)


# One append's rows (gatewayd.store.sqlite.SqliteEventStore.append) and the checkpoint they carry.
Rows = list[tuple[Any, ...]]
Append = tuple[Rows, Checkpoint | None]


def append_rows(conn: sqlite3.Connection, appends: list[Append]) -> tuple[str, list[list[int | None]]]:
    """One transaction for the appends, in order: each row's seq (None: a known dedupe key), per
    append, and the created_at they share."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Under the write lock, which orders the transactions: created_at never decreases
        # along seq.
        created_at = rfc3339()
        seqs = [_insert(conn, rows, checkpoint, created_at) for rows, checkpoint in appends]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return created_at, seqs


def _insert(
    conn: sqlite3.Connection, rows: Rows, checkpoint: Checkpoint | None, created_at: str
) -> list[int | None]:
    seqs: list[int | None] = []
    for type_, agent_id, mailbox_id, from_address, dedupe_key, data, score, announced in rows:
        cursor = conn.execute(
            _INSERT_EVENT, (type_, created_at, agent_id, mailbox_id, from_address, dedupe_key, data, score)
        )
        if cursor.rowcount != 1:
            seqs.append(None)  # dedupe_key already stored (earlier or in this transaction)
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
    return seqs


def announced(event: NewEvent, checkpoint: Checkpoint | None) -> tuple[str, str] | None:
    """(folder, Message-ID) to record as announced for this event, or None."""
    folder = _message_id_folder(event, checkpoint)
    return None if folder is None else (folder, event.data["message_id"])


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
