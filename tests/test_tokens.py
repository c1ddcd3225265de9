"""Run-time tokens: the TokenStore contract, and `gatewayd token create|list|revoke`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewayd.cli import main
from gatewayd.config import hash_token
from gatewayd.events import rfc3339
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.tokens import SqliteTokenStore, TokenRecord, TokenStore, parse_duration, parse_scopes

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
async def tokens(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    if request.param == "sqlite":
        store: TokenStore = SqliteTokenStore(tmp_path / "events.db")
    else:  # pragma: no cover - a new backend adds itself here
        raise AssertionError(request.param)
    await store.open()
    yield store
    await store.close()


# -- the contract ----------------------------------------------------------------------------------


async def test_create_shows_the_token_once_and_stores_only_its_hash(tokens: TokenStore) -> None:
    issued = await tokens.create("agent-1", "acme", ["send", "read"], timedelta(days=30))
    record = issued.record
    assert issued.token.startswith("gwd_") and len(issued.token) > 40
    assert record.id.startswith("tok_") and (record.agent_id, record.tenant) == ("agent-1", "acme")
    assert record.scopes == ("read", "send")  # canonical order
    assert record.expires_at is not None and record.created_at < record.expires_at
    assert record.revoked_at is None and record.problem() is None
    assert await tokens.lookup(hash_token(issued.token)) == record
    assert await tokens.lookup(hash_token(issued.token).upper()) == record
    assert await tokens.lookup(hash_token("something else")) is None
    assert issued.token not in repr(record) and issued.token not in json.dumps(record.as_dict())
    if isinstance(tokens, SqliteTokenStore):
        with sqlite3.connect(tokens.path) as db:
            dump = "\n".join(db.iterdump())
        db.close()
        assert issued.token not in dump and hash_token(issued.token) in dump


async def test_tokens_are_distinct_and_listed_oldest_first(tokens: TokenStore) -> None:
    made = [await tokens.create(agent, "default", ["read"]) for agent in ("a", "b", "a")]
    assert len({m.token for m in made}) == 3 and len({m.record.id for m in made}) == 3
    assert [r.id for r in await tokens.records()] == [m.record.id for m in made]
    assert [r.id for r in await tokens.records(["a"])] == [made[0].record.id, made[2].record.id]
    assert await tokens.records(["nobody"]) == []
    found = await tokens.get([made[1].record.id, "tok_000000000000", "garbage"])
    assert found == {made[1].record.id: made[1].record}
    assert await tokens.get([]) == {}


async def test_revocation_is_immediate_and_keeps_its_first_time(tokens: TokenStore) -> None:
    issued = await tokens.create("a", "default", ["read"])
    revoked = await tokens.revoke(issued.record.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert revoked.problem() == "revoked"
    assert await tokens.lookup(hash_token(issued.token)) == revoked
    again = await tokens.revoke(issued.record.id)
    assert again is not None and again.revoked_at == revoked.revoked_at
    assert await tokens.revoke("tok_ffffffffffff") is None
    assert await tokens.revoke("'; DROP TABLE tokens; --") is None
    assert len(await tokens.records()) == 1


async def test_expiry(tokens: TokenStore) -> None:
    issued = await tokens.create("a", "default", ["read"], timedelta(seconds=60))
    record = issued.record
    assert record.problem() is None
    assert record.expires_at is not None
    assert record.problem(now=record.expires_at) == "expired"
    old = TokenRecord("tok_x", "a", "default", ("read",), rfc3339(), expires_at="2000-01-01T00:00:00.000Z")
    assert old.problem() == "expired"


async def test_shares_the_event_log_file(tmp_path: Path) -> None:
    events = SqliteEventStore(tmp_path / "events.db")
    await events.open()
    store = SqliteTokenStore(tmp_path / "events.db")
    await store.open()
    try:
        issued = await store.create("a", "default", ["admin"])
        assert await events.ping()
    finally:
        await store.close()
        await events.close()
    reopened = SqliteTokenStore(tmp_path / "events.db")
    await reopened.open()
    try:
        assert await reopened.lookup(hash_token(issued.token)) == issued.record
    finally:
        await reopened.close()


# The table as gatewayd made it before tokens recorded their tenant.
_OLD_TABLE = """
CREATE TABLE tokens (
    id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, agent_id TEXT NOT NULL, scopes TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT
)
"""


async def test_an_older_table_gains_the_tenant_and_keeps_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as db:
        db.execute(_OLD_TABLE)
        db.execute(
            "INSERT INTO tokens VALUES ('tok_0123456789ab', ?, 'a', 'read', '2026-01-01T00:00:00.000Z',"
            " NULL, NULL)",
            (hash_token("old-token"),),
        )
    db.close()
    store = SqliteTokenStore(path)
    await store.open()
    try:
        old = await store.lookup(hash_token("old-token"))
        assert old is not None and (old.agent_id, old.tenant, old.scopes) == ("a", None, ("read",))
        assert old.as_dict()["tenant"] is None
        new = await store.create("a", "acme", ["read"])
        assert await store.lookup(hash_token(new.token)) == new.record
    finally:
        await store.close()
    again = SqliteTokenStore(path)  # a second open finds the column and leaves it alone
    await again.open()
    try:
        assert [r.tenant for r in await again.records()] == [None, "acme"]
    finally:
        await again.close()


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("15s", 15), ("2w", 14 * 86400)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0d", "30", "d", "1y", "-1d", "1.5h", "9999999d", "999999w", "36526d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_scopes() -> None:
    assert parse_scopes("admin,read") == ("read", "admin")
    assert parse_scopes(" read , read ") == ("read",)
    assert parse_scopes(["send"]) == ("send",)
    for bad in ("", "write", "read,root", ",", [1]):
        with pytest.raises(ValueError):
            parse_scopes(bad)  # type: ignore[arg-type]


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    data: dict[str, Any] = {
        "store": {"path": str(tmp_path / "state" / "events.db")},
        "agents": [{"id": "fleet"}, {"id": "bot-1", "parent": "fleet"}],
    }
    path = tmp_path / "gatewayd.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_create_list_revoke(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(config_file)
    create = ["token", "create", "-c", c, "--agent", "bot-1", "--scope", "read,send", "--expires", "30d"]
    assert main(create) == 0
    out = capsys.readouterr().out
    fields = dict(line.split(": ", 1) for line in out.splitlines() if not line.startswith("#"))
    token, token_id = fields["token"], fields["id"]
    assert (fields["agent"], fields["tenant"], fields["scopes"]) == ("bot-1", "default", "read,send")
    assert fields["expires"] != "never"

    assert main(["token", "create", "-c", c, "--agent", "fleet"]) == 0
    second = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert (second["scopes"], second["expires"]) == ("read", "never")

    assert main(["token", "list", "-c", c]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].split() == [
        "ID",
        "AGENT",
        "TENANT",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "REVOKED",
    ]
    assert token_id in listing and second["id"] in listing
    assert token not in listing and hash_token(token) not in listing

    assert main(["token", "revoke", "-c", c, token_id]) == 0
    assert f"revoked {token_id}" in capsys.readouterr().out
    assert main(["token", "revoke", "-c", c, token_id]) == 0
    assert "already revoked" in capsys.readouterr().out
    assert main(["token", "list", "-c", c, "--json", "--agent", "bot-1"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["id"] == token_id and record["revoked_at"] and record["scopes"] == ["read", "send"]
    assert set(record) == {"id", "agent_id", "tenant", "scopes", "created_at", "expires_at", "revoked_at"}
    assert record["tenant"] == "default"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["create", "--agent", "nobody"], 2, "no agent 'nobody'"),
        (["list", "--agent", "nobody"], 2, "no agent 'nobody'"),
        (["create", "--agent", "fleet", "--scope", "root"], 2, "unknown scope root"),
        (["create", "--agent", "fleet", "--expires", "soon"], 2, "expected a duration"),
        (["revoke", "tok_123456789abc"], 1, "no token"),
    ],
)
def test_cli_refuses(
    config_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], status: int, message: str
) -> None:
    assert main(["token", *args[:1], "-c", str(config_file), *args[1:]]) == status
    assert message in capsys.readouterr().err


def test_cli_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "list", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_cli_bad_config_lists_every_problem_as_check_config_does(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(config_file.read_text())
    imap = {"host": "imap.example.com", "port": "abc", "username": "u", "password": "p"}
    data["agents"][0]["mailboxes"] = [
        {"id": "m", "imap": imap, "smtp": {"host": "smtp.example.com", "port": 0}}
    ]
    config_file.write_text(yaml.safe_dump(data))
    assert main(["token", "list", "-c", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"{config_file}: invalid configuration:\n"
        '  agents[0].mailboxes[0].imap.port: expected an integer 1-65535, got "abc"\n'
        "  agents[0].mailboxes[0].smtp.port: expected an integer 1-65535, got 0\n"
    )
    assert main(["check-config", "-c", str(config_file)]) == 2
    assert capsys.readouterr().err == err


def test_cli_works_while_a_rule_is_broken(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A leaked token must be revocable whatever state the rules are in: they are not the tokens'.
    data = yaml.safe_load(config_file.read_text()) | {"rules": [{"name": "a", "then": ["explode"]}]}
    config_file.write_text(yaml.safe_dump(data))
    assert main(["token", "list", "-c", str(config_file)]) == 0
    assert main(["check-config", "-c", str(config_file)]) == 2
    assert 'rules[0] "a".then[0]: unknown action "explode"' in capsys.readouterr().err


def test_cli_lists_and_revokes_the_tokens_of_an_agent_gone_from_the_config(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(config_file)
    assert main(["token", "create", "-c", c, "--agent", "bot-1"]) == 0
    created = capsys.readouterr().out.splitlines()
    token_id = dict(line.split(": ", 1) for line in created if ": " in line)["id"]
    # bot-1 leaves the configuration; its token is still in the store.
    data = yaml.safe_load(config_file.read_text())
    data["agents"] = [{"id": "fleet"}]
    config_file.write_text(yaml.safe_dump(data))

    assert main(["token", "list", "-c", c, "--agent", "bot-1"]) == 0  # it was 2: "no agent 'bot-1'"
    listed = capsys.readouterr()
    assert token_id in listed.out and "bot-1" in listed.out
    assert listed.err == f"note: no agent 'bot-1' in {c} any more: their tokens are refused\n"

    assert main(["token", "revoke", "-c", c, token_id]) == 0
    revoked = capsys.readouterr()
    assert f"revoked {token_id} (bot-1)" in revoked.out
    assert revoked.err == f"note: no agent 'bot-1' in {c} any more: their tokens are refused\n"
    assert main(["token", "list", "-c", c, "--json", "--agent", "bot-1"]) == 0
    assert json.loads(capsys.readouterr().out)["revoked_at"]
    # An id neither configured nor in the store is still a usage error: most likely a typo.
    assert main(["token", "list", "-c", c, "--agent", "bot-2"]) == 2
    assert capsys.readouterr().err == f"gatewayd token list: no agent 'bot-2' in {c}, nor any token of it\n"
