"""The rules journal's tables in SQLite, and the rows of an entry and of its mail.

`SqliteRuleJournal` (gatewayd.store.sqlite_journal) runs its transactions over these.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gatewayd.events import compact_json
from gatewayd.store.journal import HELD, JournalEntry, OutboxItem, OutgoingMail

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_journal (
    key TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    mailbox_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    result TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rule_journal_open ON rule_journal (mailbox_id, folder, state);
CREATE INDEX IF NOT EXISTS rule_journal_updated ON rule_journal (updated_at);
CREATE TABLE IF NOT EXISTS rule_steps (
    key TEXT NOT NULL,
    step INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (key, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    step INTEGER NOT NULL,
    mailbox_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    envelope_from TEXT NOT NULL,
    recipients TEXT NOT NULL,
    message BLOB NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    info TEXT NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (key, step)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS auto_replies (
    mailbox_id TEXT NOT NULL,
    address TEXT NOT NULL,
    replied_at REAL NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, address)
) WITHOUT ROWID
"""

ENTRY_COLUMNS = "key, mailbox_id, folder, uidvalidity, uid, state, record, result, created_at"
OUTBOX_COLUMNS = (
    "id, key, step, mailbox_id, agent_id, kind, envelope_from, recipients, message, message_id,"
    " state, attempts, next_attempt_at, last_error, info"
)


def dumps(value: Any) -> str:
    # orjson, as for the events' own data: a tenth of json.dumps's time on a record, which holds the
    # event's data (the journal wrote 3 KB of it per acting message through json.dumps).
    return compact_json(value)


def journal_entry(row: Any, steps: Any) -> JournalEntry:
    """An entry from its rule_journal row (ENTRY_COLUMNS) and its rule_steps rows (step, record)."""
    key, mailbox_id, folder, uidvalidity, uid, state, record, result, created_at = row
    return JournalEntry(
        key,
        mailbox_id,
        folder,
        int(uidvalidity),
        int(uid),
        state,
        json.loads(record),
        {int(step): json.loads(data) for step, data in steps},
        json.loads(result) if result is not None else None,
        float(created_at),
    )


def add_mail(
    conn: sqlite3.Connection,
    key: str,
    agent_id: str,
    mailbox_id: str,
    mail: OutgoingMail,
    now: float,
) -> None:
    """Hold `mail` in the outbox of `key`, in the caller's transaction, unless its reservation is
    taken: then record its step as skipped instead."""
    if mail.reservation is not None:
        addresses = sorted({address.lower() for address in mail.reservation.addresses})
        cutoff = now - mail.reservation.period_seconds
        marks = ", ".join("?" * len(addresses))
        taken = conn.execute(
            f"SELECT address FROM auto_replies WHERE mailbox_id = ? AND address IN ({marks})"
            " AND replied_at > ? LIMIT 1",
            (mailbox_id, *addresses, cutoff),
        ).fetchone()
        if taken:
            skipped = {
                "state": "done",
                "outcome": "skipped",
                "reason": f"already auto-replied to {taken[0]} within the period",
            }
            conn.execute(
                "INSERT OR REPLACE INTO rule_steps (key, step, record) VALUES (?, ?, ?)",
                (key, mail.step, dumps(skipped)),
            )
            return
        conn.executemany(
            "INSERT OR REPLACE INTO auto_replies (mailbox_id, address, replied_at, key) VALUES (?, ?, ?, ?)",
            [(mailbox_id, address, now, key) for address in addresses],
        )
    conn.execute(
        "INSERT INTO outbox (key, step, mailbox_id, agent_id, kind, envelope_from, recipients, message,"
        " message_id, state, info, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (key, step) DO NOTHING",
        (
            key,
            mail.step,
            mailbox_id,
            agent_id,
            mail.kind,
            mail.envelope_from,
            dumps(list(mail.recipients)),
            mail.message,
            mail.message_id,
            HELD,
            dumps(mail.info),
            now,
        ),
    )


def outbox_item(row: Any) -> OutboxItem:
    (
        item_id,
        key,
        step,
        mailbox_id,
        agent_id,
        kind,
        envelope_from,
        recipients,
        message,
        message_id,
        state,
        attempts,
        next_attempt_at,
        last_error,
        info,
    ) = row
    return OutboxItem(
        int(item_id),
        key,
        int(step),
        mailbox_id,
        agent_id,
        kind,
        envelope_from,
        tuple(json.loads(recipients)),
        bytes(message),
        message_id,
        state,
        int(attempts),
        float(next_attempt_at) if next_attempt_at is not None else None,
        last_error,
        json.loads(info),
    )
