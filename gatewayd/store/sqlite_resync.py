"""What the event log tells a UIDVALIDITY resync (gatewayd.imap.resync) of a folder's past."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import aiosqlite

from gatewayd.events import MAILBOX_CONNECTED, MESSAGE_RECEIVED, parse_rfc3339
from gatewayd.store import FolderHistory
from gatewayd.store.sqlite_read import placeholders

# Bound on bound parameters per statement (SQLite's default limit is 32766; old builds 999).
_IN_CHUNK = 500


async def known_message_ids(
    conn: aiosqlite.Connection, mailbox_id: str, folder: str, message_ids: Sequence[str]
) -> set[str]:
    """Which of these Message-IDs were already announced for this folder."""
    wanted = list(dict.fromkeys(message_ids))
    known: set[str] = set()
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        rows = await conn.execute_fetchall(
            "SELECT message_id FROM message_ids WHERE mailbox_id = ? AND folder = ?"
            f" AND message_id IN ({placeholders(len(chunk))})",
            (mailbox_id, folder, *chunk),
        )
        known.update(row[0] for row in rows)
    return known


async def folder_history(
    conn: aiosqlite.Connection, mailbox_id: str, folder: str, uidvalidity: int
) -> FolderHistory:
    """The newest announced message's arrival and the first connect, from the events of the
    folder under a UIDVALIDITY other than this one (walked by seq: the newest, the oldest)."""
    where = (
        "mailbox_id = ? AND json_extract(data, '$.folder') = ? AND json_extract(data, '$.uidvalidity') != ?"
    )
    async with conn.execute(
        f"SELECT json_extract(data, '$.received_at') FROM events WHERE {where}"
        " AND (type = ? OR type GLOB ?) AND json_extract(data, '$.received_at') IS NOT NULL"
        " ORDER BY seq DESC LIMIT 1",
        (mailbox_id, folder, uidvalidity, MESSAGE_RECEIVED, f"{MESSAGE_RECEIVED}.*"),
    ) as cursor:
        arrival = await cursor.fetchone()
    async with conn.execute(
        f"SELECT created_at FROM events WHERE {where} AND type = ? ORDER BY seq ASC LIMIT 1",
        (mailbox_id, folder, uidvalidity, MAILBOX_CONNECTED),
    ) as cursor:
        connected = await cursor.fetchone()
    return FolderHistory(
        newest_arrival=_moment(arrival[0]) if arrival else None,
        first_watched=_moment(connected[0]) if connected else None,
    )


def _moment(text: object) -> datetime | None:
    """An RFC 3339 time from the store, or None if it is not one (data written by hand, say)."""
    try:
        return parse_rfc3339(str(text))
    except (ValueError, OverflowError):
        return None
