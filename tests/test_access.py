"""Property: no token ever gets an event outside its agent's subtree, nor another tenant's.

Hypothesis draws a token (configured or run-time; valid, revoked, expired, or without the
`read` scope), an endpoint (the stream, the JSON list, the report endpoint, the token list),
filters (`agent=` ids and globs, `mailbox`, `types`, `from`, `min_spam`, `max_spam`) and resume
points (`Last-Event-ID`, `since`, `cursor`: ids of any tenant's events, 0, the future). Each
answer is compared with an oracle written independently of the code under test: the exact
events expected, and first of all that every event returned belongs to the token's subtree.

It runs against the real HTTP application and SQLite store with synthetic events appended
through the store (the real Dovecot stack is exercised by tests/integration/test_fleet.py).
"""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.api.app import create_app
from gatewayd.api.context import Gateway
from gatewayd.bus import Bus
from gatewayd.config import Config, hash_token, parse_config
from gatewayd.events import Event, NewEvent
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.tokens import SqliteTokenStore
from tests.sse import SseReader

# The fleets, written out so the oracle does not lean on Config.subtree.
PARENTS: dict[str, str | None] = {
    "acme": None,
    "acme-sales": "acme",
    "acme-support": "acme",
    "acme-support-bot": "acme-support",
    "globex": None,
    "globex-ops": "globex",
    "solo": None,
}
TENANTS = {"acme": "acme", "globex": "globex", "solo": "default"}
MAILBOXES = {
    "acme": ["acme-in"],
    "acme-sales": ["acme-sales-in"],
    "acme-support": ["acme-support-in", "acme-support-vip"],
    "acme-support-bot": ["acme-support-bot-in"],
    "globex": ["globex-in"],
    "globex-ops": ["globex-ops-in"],
    "solo": ["solo-in"],
}
GHOST = "ghost"  # events of an agent that is not (or no longer) configured: nobody sees them
TYPES = ["message.received", "message.received.unauthenticated", "mailbox.connected", "message.reported"]
SENDERS = ["bob@example.org", "eve@evil.test", "ann@sub.example.org", None]
SCORES: list[Any] = [None, -2.0, 0.0, 3.5, 5.0, 9.99, 10.0, 25.0]


def subtree(agent: str) -> set[str]:
    found = {agent}
    changed = True
    while changed:
        grown = found | {child for child, parent in PARENTS.items() if parent in found}
        changed, found = grown != found, grown
    return found


def root_of(agent: str) -> str:
    while (parent := PARENTS[agent]) is not None:
        agent = parent
    return agent


def glob(pattern: str, text: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), text) is not None


@dataclass(frozen=True)
class TokenCase:
    token: str
    agent: str
    scopes: frozenset[str]
    usable: bool


def config(tmp: Path) -> Config:
    agents = []
    for agent, parent in PARENTS.items():
        entry: dict[str, Any] = {
            "id": agent,
            "token_sha256": [hash_token(f"config-{agent}")],
            "mailboxes": [
                {
                    "id": mailbox,
                    "imap": {
                        "host": "127.0.0.1",
                        "port": 1,
                        "tls": "none",
                        "username": mailbox,
                        "password": "p",
                    },
                }
                for mailbox in MAILBOXES[agent]
            ],
        }
        if parent is None:
            entry["tenant"] = TENANTS[agent]
        else:
            entry["parent"] = parent
        agents.append(entry)
    data = {
        "store": {"path": str(tmp / "events.db")},
        "server": {"max_streams_per_token": None},
        "agents": agents,
    }
    return parse_config(data, env={}, base_dir=tmp)


class _NoWatchers:
    """The pool's interface without IMAP: these tests append synthetic events themselves."""

    def acquire(self, mailbox_ids: Any) -> None:
        pass

    def release(self, mailbox_ids: Any) -> None:
        pass

    def health(self) -> list[dict[str, object]]:
        return []


def synthetic(rng: random.Random, count: int) -> list[NewEvent]:
    events = []
    for _ in range(count):
        agent = rng.choice([*PARENTS, GHOST])
        mailbox = rng.choice(MAILBOXES.get(agent, ["ghost-in"]))
        sender = rng.choice(SENDERS)
        data: dict[str, Any] = {"n": rng.randrange(10**9)}
        score = rng.choice(SCORES)
        if score is not None:
            data["spam"] = {"verdict": "ham", "score": score}
        events.append(NewEvent(rng.choice(TYPES), agent, mailbox, data, from_address=sender))
    return events


@dataclass
class Env:
    store: SqliteEventStore
    tokens: SqliteTokenStore
    gateway: Gateway
    server: TestServer
    session: aiohttp.ClientSession
    cases: list[TokenCase]
    events: list[Event] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(5))

    @classmethod
    async def create(cls, tmp: Path) -> Env:
        cfg = config(tmp)
        store = SqliteEventStore(cfg.store.path)
        await store.open()
        tokens = SqliteTokenStore(cfg.store.path)
        await tokens.open()
        gateway = Gateway(cfg, store, Bus(), _NoWatchers(), tokens=tokens)  # type: ignore[arg-type]
        server = TestServer(create_app(gateway), handler_cancellation=True)
        await server.start_server()
        cases = [TokenCase(f"config-{a}", a, frozenset({"read", "send", "admin"}), True) for a in PARENTS]
        made = [("acme-support", ["read"]), ("globex-ops", ["read", "admin"]), ("acme", ["send"])]
        for agent, scopes in made:
            issued = await tokens.create(agent, TENANTS[root_of(agent)], scopes)
            cases.append(TokenCase(issued.token, agent, frozenset(scopes), True))
        revoked = await tokens.create("acme-sales", "acme", ["read"])
        await tokens.revoke(revoked.record.id)
        cases.append(TokenCase(revoked.token, "acme-sales", frozenset({"read"}), False))
        expired = await tokens.create("globex", "globex", ["read", "admin"])
        with sqlite3.connect(cfg.store.path) as db:
            past = "2001-01-01T00:00:00.000Z"
            db.execute("UPDATE tokens SET expires_at = ? WHERE id = ?", (past, expired.record.id))
        db.close()
        cases.append(TokenCase(expired.token, "globex", frozenset({"read"}), False))
        cases.append(TokenCase("gwd_never-issued", "solo", frozenset(), False))
        env = cls(store, tokens, gateway, server, aiohttp.ClientSession(), cases)
        env.events = await store.append(synthetic(env.rng, 400))
        return env

    async def close(self) -> None:
        await self.session.close()
        await self.server.close()
        await self.tokens.close()
        await self.store.close()

    @property
    def url(self) -> str:
        return str(self.server.make_url(""))


# -- what to ask ---------------------------------------------------------------------------------

AGENT_PATTERNS = [*PARENTS, GHOST, "nobody", "*", "acme*", "*bot", "globex*", "acme-s*", "*-ops", "x*"]
MAILBOX_IDS = [m for ms in MAILBOXES.values() for m in ms] + ["ghost-in"]
TYPE_PATTERNS = ["message.*", "message.received", "mailbox.*", "*", "message.reported", "*.unauthenticated"]
FROM = ["bob@example.org", "@example.org", "@evil.test", "Eve@Evil.TEST", "@sub.example.org"]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, str] = {}
    if draw(st.booleans()):
        params["agent"] = ",".join(draw(st.lists(st.sampled_from(AGENT_PATTERNS), min_size=1, max_size=3)))
    if draw(st.integers(0, 3)) == 0:
        params["mailbox"] = ",".join(draw(st.lists(st.sampled_from(MAILBOX_IDS), min_size=1, max_size=2)))
    if draw(st.booleans()):
        params["types"] = ",".join(draw(st.lists(st.sampled_from(TYPE_PATTERNS), min_size=1, max_size=2)))
    if draw(st.integers(0, 3)) == 0:
        params["from"] = draw(st.sampled_from(FROM))
    bounds = sorted(draw(st.lists(st.sampled_from([-5.0, 0.0, 3.5, 5.0, 10.0, 30.0]), max_size=2)))
    names = draw(st.sampled_from([("min_spam",), ("max_spam",), ("min_spam", "max_spam")]))
    for name, value in zip(names if len(bounds) < 2 else ("min_spam", "max_spam"), bounds, strict=False):
        params[name] = f"{value:g}"
    return {
        "token": draw(st.integers(0, 100)),
        "endpoint": draw(st.sampled_from(["stream", "list", "report", "tokens"])),
        "params": params,
        # A resume point or cursor: 0, any stored event's id (any tenant's), or the future.
        "point": draw(st.one_of(st.none(), st.just(0), st.integers(1, 10**6), st.just(-1))),
        "resume_by": draw(st.sampled_from(["Last-Event-ID", "since"])),
        "limit": draw(st.integers(1, 60)),
        "live": draw(st.integers(0, 6)),
    }


# -- the oracle ----------------------------------------------------------------------------------


def expected_status(case: TokenCase, endpoint: str, params: dict[str, str]) -> int:
    if not case.usable:
        return 401
    scope = "admin" if endpoint == "tokens" else "read"
    if scope not in case.scopes:
        return 403
    if endpoint in ("report", "tokens"):
        return 200
    reach = subtree(case.agent)
    mailboxes = {m for a in reach for m in MAILBOXES[a]}
    if "mailbox" in params and not set(params["mailbox"].split(",")) <= mailboxes:
        return 403
    plain = [p for p in params.get("agent", "").split(",") if p and "*" not in p]
    if any(p not in reach for p in plain):
        return 403
    return 200


def selected(case: TokenCase, params: dict[str, str], event: Event) -> bool:
    reach = subtree(case.agent)
    if event.agent_id not in reach:
        return False
    if "agent" in params and not any(glob(p, event.agent_id) for p in params["agent"].split(",")):
        return False
    if "mailbox" in params and event.mailbox_id not in params["mailbox"].split(","):
        return False
    if "types" in params and not any(glob(p, event.type) for p in params["types"].split(",")):
        return False
    if "from" in params:
        wanted, sender = params["from"].lower(), event.from_address or ""
        if not (sender.endswith(wanted) if wanted.startswith("@") else sender == wanted):
            return False
    if "min_spam" in params or "max_spam" in params:
        spam = event.data.get("spam")
        score = spam.get("score") if isinstance(spam, dict) else None
        if not isinstance(score, float):
            return False
        if score < float(params.get("min_spam", "-inf")) or score > float(params.get("max_spam", "inf")):
            return False
    return True


def assert_reachable(case: TokenCase, agent_ids: list[str]) -> None:
    """The property itself, checked before the exact comparison so a leak is named as one."""
    reach = subtree(case.agent)
    leaked = [a for a in agent_ids if a not in reach]
    assert not leaked, f"token of {case.agent} got events of {leaked}"
    tenants = {TENANTS[root_of(a)] for a in agent_ids}
    assert tenants <= {TENANTS[root_of(case.agent)]}, f"token of {case.agent} crossed into {tenants}"


# -- the checks ----------------------------------------------------------------------------------


async def check(env: Env, request: dict[str, Any]) -> None:
    case = env.cases[request["token"] % len(env.cases)]
    endpoint, params = request["endpoint"], dict(request["params"])
    point = request["point"]
    if point == -1:
        point = env.events[-1].seq + 1000
    elif point is not None and point > 0:
        point = env.events[point % len(env.events)].seq
    headers = {"Authorization": f"Bearer {case.token}"}
    status = expected_status(case, endpoint, params)
    if endpoint == "list":
        await check_list(env, case, params, headers, status, point, request["limit"])
    elif endpoint == "stream":
        await check_stream(env, case, params, headers, status, point, request)
    elif endpoint == "report":
        await check_report(env, case, headers, status, point)
    else:
        await check_tokens(env, case, headers, status)


async def check_list(
    env: Env,
    case: TokenCase,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    point: Any,
    limit: int,
) -> None:
    params["limit"] = str(limit)
    if point is not None:
        params["cursor"] = str(point)
    async with env.session.get(f"{env.url}/v1/events", params=params, headers=headers) as response:
        assert response.status == status, await response.text()
        if status != 200:
            return
        body = await response.json()
    got = body["events"]
    assert_reachable(case, [e["agent_id"] for e in got])
    before = point if point is not None else float("inf")
    want = [e for e in reversed(env.events) if e.seq < before and selected(case, params, e)]
    assert got == [e.envelope() for e in want[:limit]]
    assert body["next_cursor"] == (want[limit - 1].id if len(want) > limit else None)
    # A cursor beyond every id issued (a store restored from a backup, say): a gap says so.
    unknown = point is not None and point > env.events[-1].seq
    assert (body.get("gap") or {}).get("reason") == ("unknown_id" if unknown else None), body.get("gap")


async def check_stream(
    env: Env,
    case: TokenCase,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    point: Any,
    request: dict[str, Any],
) -> None:
    if point is not None:
        if request["resume_by"] == "since":
            params["since"] = str(point)
        else:
            headers["Last-Event-ID"] = str(point)
    response = await env.session.get(f"{env.url}/events", params=params, headers=headers)
    try:
        assert response.status == status, await response.text()
        if status != 200:
            return
        reader = SseReader(response)
        if point is not None and point > env.events[-1].seq:
            # Beyond every id issued (a store restored from a backup, say): a gap says so first.
            gap = await reader.next(5)
            assert gap.event == "stream.gap" and gap.json["reason"] == "unknown_id", gap
        after = min(point, env.events[-1].seq) if point is not None else None
        replayed = [
            e for e in env.events if after is not None and e.seq > after and selected(case, params, e)
        ]
        frames = [await reader.next(5) for _ in replayed]
        assert_reachable(case, [f.json["agent_id"] for f in frames])
        assert [(f.id, f.json) for f in frames] == [(e.id, e.envelope()) for e in replayed]
        # Live: new events of every tenant, published as the watchers do.
        fresh = await env.store.append(synthetic(env.rng, request["live"]))
        env.events += fresh
        env.gateway.bus.publish(fresh)
        wanted = [e for e in fresh if selected(case, params, e)]
        frames = [await reader.next(5) for _ in wanted]
        assert_reachable(case, [f.json["agent_id"] for f in frames])
        assert [(f.id, f.json) for f in frames] == [(e.id, e.envelope()) for e in wanted]
        with pytest.raises(TimeoutError):
            extra = await reader.next(0.05)
            assert_reachable(case, [extra.json["agent_id"]])
    finally:
        response.close()


async def check_report(env: Env, case: TokenCase, headers: dict[str, str], status: int, point: Any) -> None:
    event = env.events[(point or 0) % len(env.events)]
    url = f"{env.url}/v1/messages/{event.id}/report"
    async with env.session.post(url, params={"label": "spam"}, headers=headers) as response:
        if status == 200:
            if event.agent_id not in subtree(case.agent):
                status = 404  # never "forbidden": another subtree's event does not exist for this token
            elif event.type.startswith("message.received"):
                status = 409  # found, but learning is off in this gateway
            else:
                status = 400
        assert response.status == status, await response.text()


async def check_tokens(env: Env, case: TokenCase, headers: dict[str, str], status: int) -> None:
    async with env.session.get(f"{env.url}/v1/tokens", headers=headers) as response:
        assert response.status == status, await response.text()
        if status == 200:
            listed = (await response.json())["tokens"]
            assert {t["agent_id"] for t in listed} <= subtree(case.agent)
            assert not any("token" in t or "sha256" in t for t in listed)


def test_no_token_reaches_beyond_its_subtree(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    env = loop.run_until_complete(Env.create(tmp_path))
    try:

        @settings(
            max_examples=250,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(request=requests())
        def examples(request: dict[str, Any]) -> None:
            loop.run_until_complete(check(env, request))

        examples()
    finally:
        loop.run_until_complete(env.close())
        loop.close()


def test_the_oracle_agrees_with_the_configuration(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    for agent in PARENTS:
        assert set(cfg.subtree(agent)) == subtree(agent)
        assert cfg.agent(agent).tenant == TENANTS[root_of(agent)]
