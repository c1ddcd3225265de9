"""Bearer tokens made at run time (`gatewayd token create`), kept hashed beside the event log.

Tokens in the configuration (`token_sha256`) never come here. A run-time token has an id, one
agent and the tenant that agent had when the token was made, scopes, an optional expiry and a
revocation time; only its SHA-256 is stored, so the token itself is shown once, when it is made.
The daemon reads this table on every request and re-checks it while a stream is open, so a token
revoked by another process (the CLI) is refused at once and its streams are closed within
`server.token_check_seconds`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import aiosqlite

from gatewayd.config import hash_token, new_token
from gatewayd.events import rfc3339
from gatewayd.store import opening
from gatewayd.store.sqlite_schema import APPLICATION_ID, open_beside

READ = "read"
SEND = "send"
ADMIN = "admin"
SCOPES = (READ, SEND, ADMIN)

_DURATION = re.compile(r"\A([0-9]{1,6})([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_DURATION = timedelta(days=36525)
_TOKEN_ID = re.compile(r"\Atok_[0-9a-f]{12}\Z")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `3600s`, `2w`; ValueError otherwise."""
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"expected a duration like 30d, 12h, 90m (got {text[:20]!r})")
    duration = timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    if duration > _MAX_DURATION:  # 999999w would end past year 9999, which no datetime can hold
        raise ValueError(f"expected a duration of at most 100 years (got {text[:20]!r})")
    return duration


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    """`read,send` or a list of scope names, in SCOPES order; ValueError for an unknown one."""
    names = text.split(",") if isinstance(text, str) else list(text)
    wanted = {name.strip() for name in names if isinstance(name, str) and name.strip()}
    unknown = sorted(wanted - set(SCOPES)) + [repr(n) for n in names if not isinstance(n, str)]
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)}: expected some of {', '.join(SCOPES)}")
    if not wanted:
        raise ValueError(f"no scope given: expected some of {', '.join(SCOPES)}")
    return tuple(scope for scope in SCOPES if scope in wanted)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What is known about a run-time token: everything but the token and its hash."""

    id: str
    agent_id: str
    # The agent's tenant when the token was made; None: made before tenants were recorded.
    tenant: str | None
    scopes: tuple[str, ...]
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None

    def problem(self, now: str | None = None) -> str | None:
        """Why the token may not be used now ("revoked", "expired"), or None when it may."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or rfc3339()):
            return "expired"
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # shown once; never stored
    record: TokenRecord


class TokenStore(Protocol):
    """Guarantees every implementation keeps:

    - Only the SHA-256 of a token is stored; `create` is the one place the token exists.
    - A token keeps the tenant it was made for: a record never changes tenant.
    - `lookup` finds a token by its hash whatever its state: callers check `problem()`.
    - A revocation is durable and visible to every process sharing the store at once.
    - `revoke` of a revoked token keeps its first revocation time.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(
        self, agent_id: str, tenant: str, scopes: Sequence[str], expires_in: timedelta | None = None
    ) -> IssuedToken:
        """A new token for this agent, bound to `tenant` (the agent's tenant now)."""
        ...

    async def lookup(self, token_sha256: str) -> TokenRecord | None: ...

    async def get(self, token_ids: Iterable[str]) -> dict[str, TokenRecord]:
        """The records of these ids (unknown ids are left out)."""
        ...

    async def records(self, agent_ids: Sequence[str] | None = None) -> list[TokenRecord]:
        """Every token (of these agents), oldest first."""
        ...

    async def revoke(self, token_id: str) -> TokenRecord | None:
        """Revoke now; the record (None for an unknown id)."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    agent_id TEXT NOT NULL,
    tenant TEXT,
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
)
"""
# Stores made before tokens recorded their tenant get the column, NULL for the tokens they hold.
_ADD_TENANT = "ALTER TABLE tokens ADD COLUMN tenant TEXT"
_COLUMNS = "id, agent_id, tenant, scopes, created_at, expires_at, revoked_at"


class SqliteTokenStore:
    """`TokenStore` as a `tokens` table, by default in the event log's SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000, create: bool = True) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        # False: the file must exist (made for its owner by gatewayd.store.ownership).
        self._create = create
        self._conn: aiosqlite.Connection | None = None

    async def open(self) -> None:
        with opening("event store", self.path):
            # Autocommit: every statement here is its own transaction.
            conn = await open_beside(self.path, self._busy_timeout_ms, create=self._create)
            try:
                await _migrate(conn)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @property
    def _c(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteTokenStore is not open")
        return self._conn

    async def create(
        self, agent_id: str, tenant: str, scopes: Sequence[str], expires_in: timedelta | None = None
    ) -> IssuedToken:
        token = new_token()
        now = datetime.now(UTC)
        record = TokenRecord(
            id="tok_" + secrets.token_hex(6),
            agent_id=agent_id,
            tenant=tenant,
            scopes=parse_scopes(scopes),
            created_at=rfc3339(now),
            expires_at=rfc3339(now + expires_in) if expires_in is not None else None,
        )
        await self._c.execute(
            f"INSERT INTO tokens (sha256, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                hash_token(token),
                record.id,
                record.agent_id,
                record.tenant,
                ",".join(record.scopes),
                record.created_at,
                record.expires_at,
                None,
            ),
        )
        return IssuedToken(token, record)

    async def lookup(self, token_sha256: str) -> TokenRecord | None:
        rows = await self._c.execute_fetchall(
            f"SELECT {_COLUMNS} FROM tokens WHERE sha256 = ?", (token_sha256.lower(),)
        )
        return next((_record(row) for row in rows), None)  # aiosqlite types rows as an Iterable

    async def get(self, token_ids: Iterable[str]) -> dict[str, TokenRecord]:
        ids = sorted(set(token_ids))
        found: dict[str, TokenRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._c.execute_fetchall(
                f"SELECT {_COLUMNS} FROM tokens WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((row[0], _record(row)) for row in rows)
        return found

    async def records(self, agent_ids: Sequence[str] | None = None) -> list[TokenRecord]:
        rows = await self._c.execute_fetchall(f"SELECT {_COLUMNS} FROM tokens ORDER BY rowid")
        records = [_record(row) for row in rows]
        return records if agent_ids is None else [r for r in records if r.agent_id in agent_ids]

    async def revoke(self, token_id: str) -> TokenRecord | None:
        if not _TOKEN_ID.match(token_id):
            return None
        await self._c.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (rfc3339(), token_id)
        )
        return (await self.get([token_id])).get(token_id)


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Create the table, or add what an older one lacks; under a write lock, since the daemon and
    a `gatewayd token` command may open the same file at once."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(_SCHEMA)
        columns = {str(row[1]) for row in await conn.execute_fetchall("PRAGMA table_info(tokens)")}
        if "tenant" not in columns:
            await conn.execute(_ADD_TENANT)
        # Made before the event store's first run, the file is gatewayd's from here on.
        await conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.rollback()
        raise


def _record(row: Sequence[object]) -> TokenRecord:
    token_id, agent_id, tenant, scopes, created_at, expires_at, revoked_at = row
    return TokenRecord(
        id=str(token_id),
        agent_id=str(agent_id),
        tenant=None if tenant is None else str(tenant),
        scopes=tuple(str(scopes).split(",")) if scopes else (),
        created_at=str(created_at),
        expires_at=None if expires_at is None else str(expires_at),
        revoked_at=None if revoked_at is None else str(revoked_at),
    )
