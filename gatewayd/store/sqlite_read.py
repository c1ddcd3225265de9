"""Pages of events for a query: the replay's and the JSON listing's one read, as SQL.

Every plan yields rows already in seq order and stops after `limit` rows, so a page costs the
same wherever it starts. A plain `agent_id IN (...) ORDER BY seq` would instead gather and sort
every remaining row of those agents on each page, which turns a replay into quadratic work.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiosqlite

from gatewayd.events import Event
from gatewayd.store import EventQuery

# The data as bytes: SQLite hands over its UTF-8 as it is, which a replay copies into SSE frames
# (decoding it to str and encoding it back cost a replay about a third of its time).
_COLUMNS = "seq, type, created_at, agent_id, mailbox_id, CAST(data AS BLOB) AS data, from_address"

# Up to this many agents a read merges per-agent index walks; above it, it scans by seq.
_UNION_MAX_AGENTS = 4


def placeholders(count: int) -> str:
    return ",".join("?" * count)


def _glob_literal(text: str) -> str:
    """Escape GLOB's `[` and `?` (by bracketing them) so only a caller's `*` stays special."""
    return text.replace("[", "[[]").replace("?", "[?]")


async def read_page(
    conn: aiosqlite.Connection,
    query: EventQuery,
    seq_condition: str | None,
    seq: int | None,
    order: str,
    limit: int,
) -> list[Event]:
    """At most `limit` events matching `query` and `seq_condition` (a constant fragment on `seq`,
    its value `seq`), in seq `order` (ASC or DESC)."""
    if not query.agent_ids or limit <= 0:
        return []
    # Everything but the agent: shared by every per-agent arm below.
    where: list[str] = []
    params: list[Any] = []
    if seq_condition is not None:
        where.append(seq_condition)
        params.append(seq)
    if query.mailbox_ids:
        where.append(f"mailbox_id IN ({placeholders(len(query.mailbox_ids))})")
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
        conditions = " AND ".join([f"agent_id IN ({placeholders(len(agents))})", *where])
        sql = f"SELECT {_COLUMNS} FROM events NOT INDEXED WHERE {conditions} ORDER BY seq {order} LIMIT ?"
        args = [*agents, *params, limit]
    rows = await conn.execute_fetchall(sql, args)
    return _events(rows)


def _events(rows: Iterable[Any]) -> list[Event]:
    # The hot path of a replay: the data stays JSON bytes, decoded only if someone reads it.
    return [
        Event(seq, str(seq), type_, created_at, agent_id, mailbox_id, None, from_address, data_utf8=data)
        for seq, type_, created_at, agent_id, mailbox_id, data, from_address in rows
    ]
