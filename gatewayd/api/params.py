"""Query parameters shared by the stream and the JSON list, validated into an EventQuery."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web

from gatewayd.api.auth import Principal
from gatewayd.api.errors import ApiError
from gatewayd.config import Config
from gatewayd.events import parse_rfc3339, rfc3339
from gatewayd.store import EventQuery, EventStore, InvalidEventId, glob_matches

_TYPE_PATTERN = re.compile(r"\A[A-Za-z0-9_.*-]{1,100}\Z")
_AGENT_PATTERN = re.compile(r"\A[A-Za-z0-9._*-]{1,100}\Z")
_ADDRESS = re.compile(r"\A[^@\s,]+@[^@\s,]+\Z")
_DOMAIN = re.compile(r"\A@[^@\s,]+\Z")
TYPE_PARAMS = ("types", "event_types", "eventTypes")
# Each pattern is one OR in the store's read (SQLite refuses an expression deeper than 1000) and
# one test per live event; there are not a dozen event types.
MAX_TYPE_PATTERNS = 100
# Far beyond any score the pipeline gives; keeps the bounds ordinary floats.
_SPAM_LIMIT = 1e6


def single(request: web.Request, name: str) -> str | None:
    """The query parameter `name`, or None; given twice it is a 400: taking one value would
    silently drop the other (a filter the client believes in force)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, f"{name}: given {len(values)} times; give it once (a list is comma-separated)")
    return values[0] if values else None


def listed(request: web.Request, name: str) -> str | None:
    """The list parameter `name` (comma-separated), or None; given more than once, its values are
    one list, as clients that spell a list `a=x&a=y` mean."""
    values = request.query.getall(name, [])
    return ",".join(values) if values else None


def event_query(request: web.Request, principal: Principal, config: Config) -> EventQuery:
    """The filters of a request, checked against what the token may see (403 beyond its subtree)."""
    query = request.query
    spelled = [name for name in TYPE_PARAMS if name in query]
    if len(spelled) > 1:
        raise ApiError(400, f"give the type filter once, not as {' and '.join(spelled)}")
    patterns: tuple[str, ...] = ()
    if spelled:
        # Empty (`types=`): no type filter, as it always was.
        patterns = tuple(p.strip() for p in (listed(request, spelled[0]) or "").split(",") if p.strip())
        if len(patterns) > MAX_TYPE_PATTERNS:
            raise ApiError(400, f"{spelled[0]}: at most {MAX_TYPE_PATTERNS} patterns, got {len(patterns)}")
        for pattern in patterns:
            if not _TYPE_PATTERN.match(pattern):
                raise ApiError(400, f"{spelled[0]}: invalid event type pattern {pattern[:40]!r}")
    own = principal.mailboxes(config)
    mailboxes: tuple[str, ...] = ()
    raw_mailboxes = listed(request, "mailbox")
    if raw_mailboxes is not None:
        mailboxes = tuple(m.strip() for m in raw_mailboxes.split(",") if m.strip())
        if not mailboxes:
            raise ApiError(400, "mailbox: empty value")
        for mailbox in mailboxes:
            if mailbox not in own:
                raise ApiError(403, f"mailbox {mailbox[:40]!r} is not accessible with this token")
    sender = None
    raw_sender = single(request, "from")
    if raw_sender is not None:
        sender = raw_sender.strip().lower()
        if not (_ADDRESS.match(sender) or _DOMAIN.match(sender)):
            raise ApiError(400, "from: expected an address (bob@example.org) or a domain (@example.org)")
    min_spam = number(request, "min_spam", None, -_SPAM_LIMIT, _SPAM_LIMIT)
    max_spam = number(request, "max_spam", None, -_SPAM_LIMIT, _SPAM_LIMIT)
    if min_spam is not None and max_spam is not None and min_spam > max_spam:
        raise ApiError(400, "min_spam: must not exceed max_spam")
    return EventQuery(
        agent_ids=agent_selection(request, principal),
        mailbox_ids=mailboxes,
        type_patterns=patterns,
        from_filter=sender,
        min_spam=min_spam,
        max_spam=max_spam,
    )


def agent_selection(request: web.Request, principal: Principal) -> tuple[str, ...]:
    """`agent=`: ids and `*` globs within the token's subtree (all of it by default).

    A plain id outside the subtree is a 403 (whether or not such an agent exists); a glob only
    ever expands within the subtree, and may select nothing.
    """
    raw = listed(request, "agent")
    if raw is None:
        return principal.agents
    patterns = [p.strip() for p in raw.split(",") if p.strip()]
    if not patterns:
        raise ApiError(400, "agent: empty value")
    chosen: set[str] = set()
    for pattern in patterns:
        if not _AGENT_PATTERN.match(pattern):
            raise ApiError(400, f"agent: invalid agent id or pattern {pattern[:40]!r}")
        if "*" in pattern:
            chosen.update(a for a in principal.agents if glob_matches(pattern, a))
        elif pattern in principal.agents:
            chosen.add(pattern)
        else:
            raise ApiError(403, f"agent {pattern!r} is not accessible with this token")
    return tuple(a for a in principal.agents if a in chosen)


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def number(request: web.Request, name: str, default: float | None, low: float, high: float) -> float | None:
    raw = single(request, name)
    if raw is None:
        return default
    # Not float() alone: it also reads "1_0", " 1", "nan" and non-ASCII digits such as "１".
    if not _DECIMAL.fullmatch(raw):
        raise ApiError(400, f"{name}: expected a number, got {raw[:40]!r}")
    value = float(raw)
    if not low <= value <= high:  # also refuses 1e999, which reads as inf
        raise ApiError(400, f"{name}: must be between {low:g} and {high:g}")
    return value


_DIGITS = re.compile(r"[0-9]{1,18}")


def integer(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = single(request, name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:  # not isdigit(): "²" is a digit
        raise ApiError(400, f"{name}: expected an integer {low}-{high}, got {raw[:40]!r}")
    return int(raw)


def event_seq(store: EventStore, name: str, event_id: str) -> int:
    try:
        return store.seq_of(event_id)
    except InvalidEventId:
        raise ApiError(400, f"{name}: not an event id: {event_id[:40]!r}") from None


@dataclass(frozen=True, slots=True)
class ResumePoint:
    after_seq: int
    # What the client asked for, echoed in a stream.gap event.
    requested: str


async def resume_point(request: web.Request, store: EventStore) -> ResumePoint | None:
    """Last-Event-ID (it wins) or since= (an event id or an RFC 3339 timestamp)."""
    last_ids = request.headers.getall("Last-Event-ID", [])
    if len(last_ids) > 1:
        raise ApiError(400, f"Last-Event-ID: given {len(last_ids)} times; give it once")
    last_id = last_ids[0] if last_ids else None
    if last_id is not None and last_id.strip():
        return ResumePoint(event_seq(store, "Last-Event-ID", last_id.strip()), last_id.strip())
    return await since_point(request, store)


async def since_point(request: web.Request, store: EventStore) -> ResumePoint | None:
    """since= alone: an event id (the events after it) or an RFC 3339 timestamp (those at or
    after it)."""
    since = single(request, "since")
    if since is None:
        return None
    since = since.strip()
    if since.isdigit():
        return ResumePoint(event_seq(store, "since", since), since)
    try:
        moment = parse_rfc3339(since)
    except ValueError:
        raise ApiError(400, "since: expected an event id or an RFC 3339 timestamp") from None
    return ResumePoint(await store.seq_at(rfc3339(moment)), since)
