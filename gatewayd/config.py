"""Configuration: a YAML file in, validated frozen dataclasses out.

One small schema per section (a `_Key` per key: a check and a default) drives both validation and
defaults. Every problem is collected, so one run lists everything wrong with the file, each message
starting with its key path: `agents[0].mailboxes[1].imap.port: expected an integer 1-65535, got "abc"`.
Secrets (passwords, password file contents, environment values) are never echoed, in messages or reprs.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import ipaddress
import itertools
import json
import os
import re
import secrets
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import yaml

from gatewayd.imap.names import folder_key

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

WATCH_ALWAYS = "always"
WATCH_ON_DEMAND = "on_demand"
TLS_IMPLICIT = "implicit"
TLS_STARTTLS = "starttls"
TLS_NONE = "none"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Agents that name no tenant (and whose ancestors name none) all share this one.
DEFAULT_TENANT = "default"
DEFAULT_STORE_PATH = "/var/lib/gatewayd/events.db"
# RFC 2177: a server may drop an IDLE after 30 minutes, so it must be renewed before that.
MAX_IDLE_RENEW_SECONDS = 1740
# `imap.sent_folder`: the folder whose special-use attribute is \Sent (RFC 6154).
SENT_AUTO = "auto"

T = TypeVar("T", bound="DataclassInstance")


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A string that does not show itself: repr and str print `***`; `reveal()` returns the value."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True)
class ImapConfig:
    host: str
    port: int
    tls: str
    username: str
    password: Secret
    folders: tuple[str, ...]
    allow_insecure: bool
    verify_cert: bool
    ca_file: Path | None
    idle_renew_seconds: float
    read_timeout_seconds: float
    poll_interval_seconds: float
    connect_timeout_seconds: float
    # Where the recipients of the account's own mail are learnt (gatewayd.imap.sent): SENT_AUTO,
    # a folder name, or None (off).
    sent_folder: str | None = SENT_AUTO


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where a mailbox's auto-replies and forwards are sent (gatewayd.send.smtp)."""

    host: str
    port: int
    tls: str
    # None: the server is used without AUTH (a local relay).
    username: str | None
    password: Secret | None
    allow_insecure: bool
    verify_cert: bool
    ca_file: Path | None
    timeout_seconds: float
    retry_attempts: int
    retry_initial_seconds: float
    retry_max_seconds: float


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """Rules as written (`rules:` and `rules_file:`); gatewayd.rules.load checks and compiles them, so
    this module stays free of the rules engine. `inline` is the raw YAML list."""

    inline: tuple[Any, ...] = ()
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    id: str
    agent_id: str
    watch: str
    imap: ImapConfig
    backfill: int
    fetch_max_bytes: int
    on_demand_linger_seconds: float
    # Authentication-Results authserv-ids trusted for this mailbox; None: pipeline.auth's list.
    trusted_authserv_ids: tuple[str, ...] | None = None
    # The mailbox's own address: the From of its auto-replies and forwards (default: the IMAP
    # username when it is an address).
    address: str | None = None
    smtp: SmtpConfig | None = None
    rules: RulesConfig = field(default=RulesConfig(), compare=False)
    tenant: str = DEFAULT_TENANT  # its agent's


@dataclass(frozen=True, slots=True)
class AgentConfig:
    id: str
    token_sha256: tuple[str, ...]
    mailboxes: tuple[MailboxConfig, ...]
    # The agent whose fleet this one belongs to: the parent's tokens reach this agent's events.
    parent: str | None = None
    # Never crossed by any token; a sub-agent always has its parent's tenant.
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str
    port: int
    shutdown_grace_seconds: float
    subscriber_queue_size: int
    retry_ms: int
    max_ping_seconds: float
    allow_query_token: bool = False
    # None: no limit.
    max_streams_per_token: int | None = 100
    # How often open streams of run-time tokens are checked against revocation and expiry.
    token_check_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path
    retention_days: float | None
    retention_max_events: int | None
    prune_interval_seconds: float


@dataclass(frozen=True, slots=True)
class StageConfig:
    """One pipeline stage: its budget, its failure policy, and its own options."""

    name: str
    timeout_seconds: float
    on_error: str
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LearningConfig:
    path: Path
    min_training: int
    signature_distance: int


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    stages: tuple[StageConfig, ...]
    learning: LearningConfig

    def stage(self, name: str) -> StageConfig | None:
        return next((stage for stage in self.stages if stage.name == name), None)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    store: StoreConfig
    agents: tuple[AgentConfig, ...]
    log_level: str
    source: Path | None
    pipeline: PipelineConfig | None = None
    # Rules for every mailbox (each mailbox's own rules run after these).
    rules: RulesConfig = field(default=RulesConfig(), compare=False)

    def mailboxes(self) -> list[MailboxConfig]:
        """Every mailbox of every agent, in file order."""
        return [mailbox for agent in self.agents for mailbox in agent.mailboxes]

    def secrets(self) -> list[str]:
        """Every password the file gives (IMAP, SMTP, external scorers): what logs must never show."""
        found: list[object] = [mailbox.imap.password for mailbox in self.mailboxes()]
        found += [mailbox.smtp.password for mailbox in self.mailboxes() if mailbox.smtp is not None]
        for stage in self.pipeline.stages if self.pipeline is not None else ():
            found += [
                scorer.get("password")
                for scorer in (stage.options.get("rspamd"), stage.options.get("spamd"))
                if scorer
            ]
        return [secret.reveal() for secret in found if isinstance(secret, Secret)]

    def agent(self, agent_id: str) -> AgentConfig:
        """The agent with this id; KeyError if there is none."""
        for agent in self.agents:
            if agent.id == agent_id:
                return agent
        raise KeyError(agent_id)

    def subtree(self, agent_id: str) -> tuple[str, ...]:
        """This agent and all its descendants (any depth), in file order; () for an unknown agent."""
        children: dict[str, list[str]] = {}
        for agent in self.agents:
            if agent.parent is not None:
                children.setdefault(agent.parent, []).append(agent.id)
        if not any(agent.id == agent_id for agent in self.agents):
            return ()
        reached, todo = {agent_id}, [agent_id]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in reached:  # cycles are refused at load; stay safe anyway
                    reached.add(child)
                    todo.append(child)
        return tuple(agent.id for agent in self.agents if agent.id in reached)

    def with_tokens_of(self, other: Config) -> Config:
        """This configuration with each agent's configured tokens as `other` gives them (none for
        an agent `other` lacks): the part of the agents a reload takes while the daemon runs."""
        tokens = {agent.id: agent.token_sha256 for agent in other.agents}
        agents = tuple(replace(agent, token_sha256=tokens.get(agent.id, ())) for agent in self.agents)
        return replace(self, agents=agents)

    def agent_for_token_hash(self, token_hash: str) -> AgentConfig | None:
        """The agent owning this SHA-256 hex digest. Compares against every hash, in constant time."""
        probe = token_hash.lower().encode()
        found = None
        for agent in self.agents:
            for digest in agent.token_sha256:
                if hmac.compare_digest(probe, digest.encode()) and found is None:
                    found = agent
        return found


class ConfigError(Exception):
    """The configuration is unusable; `errors` lists every problem as `<key path>: <problem>`."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def hash_token(token: str) -> str:
    """The form a token takes in `token_sha256`: SHA-256 of its UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "gwd_" + secrets.token_urlsafe(32)


# --- checks: each takes a raw YAML value and returns the clean value or raises _Invalid ---------------

Check = Callable[[Any], Any]


class _Invalid(Exception):
    """A value failed its check: (path suffix such as "" or "[2]", message) pairs."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _fail(message: str) -> _Invalid:
    return _Invalid(("", message))


def _kind(value: Any) -> str:
    """What a value is, without showing it."""
    if isinstance(value, list) and not value:
        return "an empty list"
    kinds = {type(None): "null", bool: "a boolean", str: "a string", int: "an integer", float: "a number"}
    return {**kinds, dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    """A short rendering of a (non-secret) value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if len(repr(value)) <= 30 else "a huge number"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    return _kind(value)


def _check(ok: Callable[[Any], object], want: str, convert: Callable[[Any], Any] = lambda v: v) -> Check:
    """A check from a predicate; a value failing it gets `expected <want>, got <value>`."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise _fail(f"expected {want}, got {_describe(value)}")
        return convert(value)

    return check


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_number(v: Any) -> bool:  # the bound also keeps out inf, nan and ints too large for a float
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e18


# No setting needs more, and SQLite cannot store more (a retention count, say).
_MAX_INTEGER = 2**63 - 1


def _integer(lo: int, hi: int | None = None) -> Check:
    if hi is not None:
        return _check(lambda v: _is_int(v) and lo <= v <= hi, f"an integer {lo}-{hi}", int)
    at_least = _check(lambda v: _is_int(v) and lo <= v, f"an integer >= {lo}", int)

    def check(value: Any) -> int:
        number: int = at_least(value)
        if number > _MAX_INTEGER:
            raise _fail(f"expected an integer below 2^63, got {_describe(value)}")
        return number

    return check


def _number(lo: float, hi: float | None = None, *, above: bool = False) -> Check:
    """An int or float in range; `above` makes `lo` exclusive."""
    want = f"a number {lo}-{hi}" if hi is not None else f"a number {'>' if above else '>='} {lo}"

    def ok(v: Any) -> bool:
        return _is_number(v) and (v > lo if above else v >= lo) and (hi is None or v <= hi)

    return _check(ok, want, float)


def _choice(*options: str, fold_case: bool = False) -> Check:
    fold: Callable[[str], str] = str.lower if fold_case else str
    want = "one of " + ", ".join(map(json.dumps, options))
    return _check(lambda v: isinstance(v, str) and fold(v) in options, want, fold)


_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]\s]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]{1,5})")

_positive = _number(0, above=True)
_boolean = _check(lambda v: isinstance(v, bool), "true or false")
_string = _check(lambda v: isinstance(v, str) and v != "", "a non-empty string")
_address = _check(lambda v: isinstance(v, str) and _ADDRESS.fullmatch(v), "an address like name@example.com")
_ident = _check(lambda v: isinstance(v, str) and _ID.fullmatch(v), "1-64 characters from A-Z a-z 0-9 . _ -")
# A login name or password goes into one IMAP or SMTP command line: a CR or LF in it would end that
# command and send the rest as another (aioimaplib quotes only quotes and backslashes), NUL separates
# AUTH PLAIN's fields.
_LINE_BREAK = re.compile(r"[\r\n\0]")
_login_name = _check(
    lambda v: isinstance(v, str) and v != "" and not _LINE_BREAK.search(v),
    "a non-empty string without line breaks",
)


def _secret(value: Any) -> str:  # never echoed
    if not isinstance(value, str) or not value:
        raise _fail("expected a string" if not isinstance(value, str) else "must not be empty")
    if _LINE_BREAK.search(value):
        raise _fail("must not contain a line break or NUL")
    return value


def _hex_digest(value: Any) -> str:  # not echoed: it may be the token itself, pasted by mistake
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        got = f"{len(value)} characters" if isinstance(value, str) else _kind(value)
        raise _fail(f"expected the token's SHA-256 as 64 hex characters (never the token), got {got}")
    return value.lower()


def _sent_folder(value: Any) -> str | None:
    if value is None or value is False:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(f'expected "{SENT_AUTO}", a folder name, or null/false for off, got {_describe(value)}')
    return value


def _listen(value: Any) -> tuple[str, int]:
    match = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match["port"]) > 65535:
        raise _fail(f'expected "host:port" or "[ipv6]:port" with a port 0-65535, got {_describe(value)}')
    return match["v6"] or match["host"], int(match["port"])


def _nullable(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _list_of(
    item: Check,
    *,
    single_ok: bool = False,
    nonempty: bool = False,
    unique: bool = False,
    same: Callable[[Any], Hashable] = lambda clean: clean,
) -> Check:
    """`same` gives what two elements are compared by, with `unique`."""

    def check(value: Any) -> tuple[Any, ...]:
        if single_ok and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or (nonempty and not value):
            raise _fail(f"expected a {'non-empty ' if nonempty else ''}list, got {_describe(value)}")
        out: list[Any] = []
        first_of: dict[Hashable, Any] = {}
        problems: list[tuple[str, str]] = []
        for i, element in enumerate(value):
            try:
                clean = item(element)
            except _Invalid as bad:
                problems += [(f"[{i}]{at}", message) for at, message in bad.problems]
                continue
            known = len(first_of)
            first = first_of.setdefault(same(clean), clean)
            if unique and len(first_of) == known:  # nothing new: a duplicate
                also = "" if first == clean else f" (the same as {_describe(first)})"
                problems.append((f"[{i}]", f"duplicate {_describe(clean)}{also}"))
            out.append(clean)
        if problems:
            raise _Invalid(*problems)
        return tuple(out)

    return check


# --- schema -----------------------------------------------------------------------------------------

_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class _Key:
    check: Check | None = None  # None: the raw value goes to the caller (nested sections)
    default: Any = _REQUIRED


_TOP = {
    "server": _Key(None, {}),
    "store": _Key(None, {}),
    "logging": _Key(None, {}),
    "pipeline": _Key(None, {}),
    "rules": _Key(None, []),
    "rules_file": _Key(_nullable(_string), None),
    "agents": _Key(),
}
_SERVER = {
    "listen": _Key(_listen, ("127.0.0.1", 8025)),
    "shutdown_grace_seconds": _Key(_number(0), 5.0),
    "subscriber_queue_size": _Key(_integer(1), 1000),
    "retry_ms": _Key(_integer(0), 3000),
    "max_ping_seconds": _Key(_number(1), 300.0),
    "allow_query_token": _Key(_boolean, False),
    "max_streams_per_token": _Key(_nullable(_integer(1)), 100),
    "token_check_seconds": _Key(_positive, 2.0),
}
_STORE = {
    "path": _Key(_string, DEFAULT_STORE_PATH),
    "retention_days": _Key(_nullable(_positive), 30.0),
    "retention_max_events": _Key(_nullable(_integer(1)), None),
    "prune_interval_seconds": _Key(_positive, 300.0),
}
_LOGGING = {"level": _Key(_choice(*LOG_LEVELS, fold_case=True), "info")}
_AGENT = {
    "id": _Key(_ident),
    "token_sha256": _Key(_list_of(_hex_digest, single_ok=True), ()),
    "parent": _Key(_nullable(_ident), None),
    "tenant": _Key(_nullable(_ident), None),  # None: the parent's tenant, or DEFAULT_TENANT
    "mailboxes": _Key(None, []),
}
_MAILBOX = {
    "id": _Key(_ident),
    "watch": _Key(_choice(WATCH_ALWAYS, WATCH_ON_DEMAND), WATCH_ON_DEMAND),
    "on_demand_linger_seconds": _Key(_number(0), 30.0),
    "backfill": _Key(_integer(0), 0),
    "fetch_max_bytes": _Key(_integer(1), 262144),
    "trusted_authserv_ids": _Key(_nullable(_list_of(_string, single_ok=True)), None),
    "address": _Key(_nullable(_address), None),
    "rules": _Key(None, []),
    "rules_file": _Key(_nullable(_string), None),
    "imap": _Key(),
    "smtp": _Key(None, None),
}
STAGE_NAMES = ("spam", "auth", "injection")
ON_ERROR = ("continue", "suspect", "skip_rest")
_PIPELINE = {
    "stages": _Key(_list_of(_choice(*STAGE_NAMES), unique=True), STAGE_NAMES),
    "spam": _Key(None, {}),
    "auth": _Key(None, {}),
    "injection": _Key(None, {}),
    "learning": _Key(None, {}),
}


def _weights(value: Any) -> dict[str, float]:
    """SYMBOL: score; each bad entry is reported under its own symbol."""
    if not isinstance(value, dict):
        raise _fail(f"expected a mapping of SYMBOL: score, got {_describe(value)}")
    problems = [
        (
            f".{symbol}",
            "expected a symbol name"
            if not isinstance(symbol, str)
            else f"expected a number, got {_describe(score)}",
        )
        for symbol, score in value.items()
        if not isinstance(symbol, str) or not _is_number(score)
    ]
    if problems:
        raise _Invalid(*problems)
    return {symbol: float(score) for symbol, score in value.items()}


# The injection score from which each `injection.level` starts; below the lowest: "none".
INJECTION_LEVELS = {"low": 0.2, "medium": 0.5, "high": 0.8}


def _injection_levels(value: Any) -> dict[str, float]:
    """Some or all of INJECTION_LEVELS' bounds, the rest default; each above the one before."""
    if not isinstance(value, dict):
        raise _fail(f"expected a mapping of level: score such as {{high: 0.9}}, got {_describe(value)}")
    unknown = [key for key in value if key not in INJECTION_LEVELS]
    if unknown:
        raise _fail(f"unknown level {_describe(unknown[0])}; the levels are {', '.join(INJECTION_LEVELS)}")
    levels = dict(INJECTION_LEVELS)
    for name, bound in value.items():
        if not _is_number(bound) or not 0 < bound <= 1:
            raise _fail(f"{name}: expected a number above 0 and at most 1, got {_describe(bound)}")
        levels[name] = float(bound)
    bounds = list(levels.values())
    if any(lower >= upper for lower, upper in itertools.pairwise(bounds)):
        order = " < ".join(f"{name} ({bound:g})" for name, bound in levels.items())
        raise _fail(f"each level must start above the one before: {order}")
    return levels


def _stage_keys(timeout_ms: int, **keys: _Key) -> dict[str, _Key]:
    return {
        "timeout_ms": _Key(_integer(1, 60000), timeout_ms),
        "on_error": _Key(_choice(*ON_ERROR), "continue"),
        **keys,
    }


_STAGES = {
    "spam": _stage_keys(
        250,
        suspect_threshold=_Key(_number(-1000, 1000), 5.0),
        spam_threshold=_Key(_number(-1000, 1000), 10.0),
        weights=_Key(_weights, {}),
        allow=_Key(_list_of(_string), ()),
        block=_Key(_list_of(_string), ()),
        rspamd=_Key(None, None),  # null: off; a mapping: see _RSPAMD
        spamd=_Key(None, None),  # null: off; a mapping: see _SPAMD
    ),
    "auth": _stage_keys(
        250,
        trusted_authserv_ids=_Key(_list_of(_string, single_ok=True), ()),
        weights=_Key(_weights, {}),
        dkim_verify=_Key(_boolean, False),
        dns_timeout_seconds=_Key(_positive, 2.0),
    ),
    "injection": _stage_keys(
        250,
        weights=_Key(_weights, {}),
        excerpt_chars=_Key(_integer(0, 10000), 500),
        levels=_Key(_injection_levels, INJECTION_LEVELS),
    ),
}


def _http_url(value: Any) -> str:
    """A server's http(s) URL: scheme, host, optional port and path; no credentials, query or fragment."""
    want = 'an http:// or https:// URL such as "http://127.0.0.1:11333"'
    if not isinstance(value, str):
        raise _fail(f"expected {want}, got {_describe(value)}")
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        raise _fail(f"expected {want}, got {_describe(value)}") from None
    if "@" in parts.netloc:  # not echoed: it may hold a password
        raise _fail("credentials in the URL are not supported; use `password`")
    try:
        port_ok = parts.port != 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    # A space or control character in the host is no host: aiohttp would refuse it on every message.
    host = parts.hostname or ""
    host_ok = bool(host) and host.isprintable() and " " not in host
    if parts.scheme not in ("http", "https") or not host_ok or not port_ok:
        raise _fail(f"expected {want}, got {_describe(value)}")
    if parts.query or parts.fragment:
        raise _fail(f"expected {want}, without a query or fragment, got {_describe(value)}")
    return value


# The spam stage's optional external scorers (gatewayd/pipeline/external.py).
_EXTERNAL_TIMEOUT_MS = 150
_RSPAMD = {
    "url": _Key(_http_url, "http://127.0.0.1:11333"),
    "timeout_ms": _Key(_integer(1, 60000), _EXTERNAL_TIMEOUT_MS),
    "weight": _Key(_number(-1000, 1000), 1.0),
    "password": _Key(_nullable(_secret), None),
}
_SPAMD = {
    "host": _Key(_string, "127.0.0.1"),
    "port": _Key(_integer(1, 65535), 783),
    "timeout_ms": _Key(_integer(1, 60000), _EXTERNAL_TIMEOUT_MS),
    "weight": _Key(_number(-1000, 1000), 1.0),
}
_LEARNING = {
    "path": _Key(_nullable(_string), None),  # None: learning.db beside the event store
    "min_training": _Key(_integer(1), 200),
    "signature_distance": _Key(_integer(0, 1000), 50),
}
_PASSWORD_KEYS = ("password", "password_file", "password_env")


_IMAP = {
    "host": _Key(_string),
    "port": _Key(_integer(1, 65535), None),  # None: 993 for implicit TLS, 143 otherwise
    "tls": _Key(_choice(TLS_IMPLICIT, TLS_STARTTLS, TLS_NONE), TLS_IMPLICIT),
    "allow_insecure": _Key(_boolean, False),
    "verify_cert": _Key(_boolean, True),
    "ca_file": _Key(_nullable(_string), None),
    "username": _Key(_login_name),
    "password": _Key(_secret, None),
    "password_file": _Key(_string, None),
    "password_env": _Key(_string, None),
    "folders": _Key(_list_of(_string, nonempty=True, unique=True, same=folder_key), ("INBOX",)),
    "idle_renew_seconds": _Key(_number(1, MAX_IDLE_RENEW_SECONDS), 1500.0),
    "read_timeout_seconds": _Key(_positive, 60.0),
    "poll_interval_seconds": _Key(_positive, 60.0),
    "connect_timeout_seconds": _Key(_positive, 15.0),
    "sent_folder": _Key(_sent_folder, SENT_AUTO),
}
_SMTP = {
    "host": _Key(_string),
    "port": _Key(_integer(1, 65535), None),  # None: 465 with implicit TLS, 587 with starttls, else 25
    "tls": _Key(_choice(TLS_IMPLICIT, TLS_STARTTLS, TLS_NONE), TLS_IMPLICIT),
    "allow_insecure": _Key(_boolean, False),
    "verify_cert": _Key(_boolean, True),
    "ca_file": _Key(_nullable(_string), None),
    "username": _Key(_nullable(_login_name), None),
    "password": _Key(_secret, None),
    "password_file": _Key(_string, None),
    "password_env": _Key(_string, None),
    "timeout_seconds": _Key(_positive, 15.0),
    "retry_attempts": _Key(_integer(1, 100), 6),
    "retry_initial_seconds": _Key(_positive, 60.0),
    "retry_max_seconds": _Key(_positive, 3600.0),
}


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _section(data: Any, path: str, schema: Mapping[str, _Key], errors: list[str]) -> dict[str, Any] | None:
    """Check `data` against `schema`: the clean values (defaults filled in) of the keys that passed."""
    if not isinstance(data, dict):
        errors.append(f"{path or '(top level)'}: expected a mapping, got {_kind(data)}")
        return None
    errors += [_unknown_key(path, key, schema) for key in data if key not in schema]
    values: dict[str, Any] = {}
    for key, spec in schema.items():
        if key not in data:
            if spec.default is _REQUIRED:
                errors.append(f"{_join(path, key)}: missing required key")
            else:
                values[key] = spec.default
            continue
        try:
            values[key] = data[key] if spec.check is None else spec.check(data[key])
        except _Invalid as bad:
            errors += [f"{_join(path, key)}{at}: {message}" for at, message in bad.problems]
    return values


# A key with its value glued on (`password hunter2`, `password:hunter2`, `password=hunter2` in a flow
# mapping): only the part before the value may be shown.
_GLUED_VALUE = re.compile(r"\s*([^\s:=]+)\s*[\s:=]\s*\S")


def _unknown_key(path: str, key: object, schema: Mapping[str, _Key]) -> str:
    glued = _GLUED_VALUE.match(str(key))
    name = glued[1] if glued else str(key)
    close = difflib.get_close_matches(name, schema, n=1)
    if glued:
        fix = f'write "{close[0]}: VALUE"' if close else 'a key and its value need ": " between them'
        return (
            f'{path or "(top level)"}: unknown key "{name}" followed by more, not shown as it may be a secret'
            f" ({fix})"
        )
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"{_join(path, key)}: unknown key{hint}"


def _build(cls: type[T], values: Mapping[str, Any], **overrides: Any) -> T:
    """A dataclass from checked values whose keys are named like its fields."""
    return cls(**{f.name: overrides[f.name] if f.name in overrides else values[f.name] for f in fields(cls)})


@dataclass
class _Context:
    env: Mapping[str, str]
    base_dir: Path
    errors: list[str] = field(default_factory=list)
    first_use: dict[tuple[str, str], str] = field(default_factory=dict)
    # (host, port, username, folder) -> the mailbox that watches it
    watched: dict[tuple[str, int, str, str], str] = field(default_factory=dict)

    def unique(self, key: tuple[str, str], label: str, path: str) -> None:
        if key in self.first_use:
            self.errors.append(f"{path}: {label} (first used at {self.first_use[key]})")
        else:
            self.first_use[key] = path

    def path(self, raw: str) -> Path:
        """Relative paths are relative to the configuration file's directory."""
        resolved = Path(raw).expanduser()
        return resolved if resolved.is_absolute() else self.base_dir / resolved


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _password(data: dict[str, Any], v: dict[str, Any], path: str, ctx: _Context) -> Secret | None:
    """Exactly one of password, password_file, password_env; the secret is never put in a message."""
    given = [key for key in _PASSWORD_KEYS if key in data]
    if len(given) != 1:
        required = "one of password, password_file, password_env is required"
        exclusive = f"{' and '.join(given)} are mutually exclusive; set exactly one"
        ctx.errors.append(f"{path}: {exclusive if given else required}")
        return None
    key = given[0]
    if key not in v:  # its check failed, already reported
        return None
    if key == "password":
        return Secret(v[key])
    if key == "password_env":
        value = ctx.env.get(v[key])
        where = f"environment variable {v[key]}"
        problem = "is not set" if value is None else "is empty" if not value else None
    else:
        value, where, problem = _read_password_file(ctx.path(v[key]))
    if problem is None and value is not None and _LINE_BREAK.search(value):
        problem = (
            "contains a line break or NUL"
            if key == "password_env"
            else "has more than one line; it must hold the password alone"
        )
    if problem is not None or value is None:
        ctx.errors.append(f"{path}.{key}: {where} {problem}")
        return None
    return Secret(value)


# Far more than any password: a larger file is the wrong one (or /dev/urandom, which never ends).
_MAX_PASSWORD_FILE_BYTES = 64 * 1024


def _read_password_file(file: Path) -> tuple[str | None, str, str | None]:
    """(the password without its final newline, what to call the file, the problem or None)."""
    try:
        with file.open("rb") as handle:
            raw = handle.read(_MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {file}:", exc.strerror or type(exc).__name__
    if len(raw) > _MAX_PASSWORD_FILE_BYTES:
        return None, str(file), "is larger than 64 KiB: not a password file"
    try:
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None, str(file), "is not valid UTF-8"
    return value, str(file), None if value else "is empty"


def _imap(data: Any, path: str, ctx: _Context) -> ImapConfig | None:
    before = len(ctx.errors)
    v = _section(data, path, _IMAP, ctx.errors)
    if v is None:
        return None
    insecure = v.get("tls") == TLS_NONE and v.get("allow_insecure") is False
    if insecure and "host" in v and not _is_loopback(v["host"]):
        ctx.errors.append(
            f'{path}.tls: "none" sends the password in clear to a non-loopback host;'
            " set allow_insecure: true to allow it"
        )
    ca_file = ctx.path(v["ca_file"]) if v.get("ca_file") else None
    if ca_file is not None and not ca_file.is_file():
        ctx.errors.append(f"{path}.ca_file: no such file: {ca_file}")
    password = _password(data, v, path, ctx)
    if len(ctx.errors) > before or password is None:
        return None
    port = v["port"] if v["port"] is not None else 993 if v["tls"] == TLS_IMPLICIT else 143
    # `inbox` is INBOX: one spelling everywhere (events, checkpoints, a rule's move into INBOX).
    folders = tuple(map(folder_key, v["folders"]))
    return _build(ImapConfig, v, port=port, password=password, ca_file=ca_file, folders=folders)


def _smtp(data: Any, path: str, ctx: _Context) -> SmtpConfig | None:
    """Like `imap:`, except that without a username the server is used without AUTH."""
    before = len(ctx.errors)
    v = _section(data, path, _SMTP, ctx.errors)
    if v is None:
        return None
    insecure = v.get("tls") == TLS_NONE and v.get("allow_insecure") is False
    if insecure and "host" in v and not _is_loopback(v["host"]):
        ctx.errors.append(
            f'{path}.tls: "none" sends mail in clear to a non-loopback host;'
            " set allow_insecure: true to allow it"
        )
    ca_file = ctx.path(v["ca_file"]) if v.get("ca_file") else None
    if ca_file is not None and not ca_file.is_file():
        ctx.errors.append(f"{path}.ca_file: no such file: {ca_file}")
    password = None
    if v.get("username") is not None:
        password = _password(data, v, path, ctx)
    elif any(key in data for key in _PASSWORD_KEYS):
        ctx.errors.append(f"{path}: a password needs a username")
    if len(ctx.errors) > before:
        return None
    default_port = {TLS_IMPLICIT: 465, TLS_STARTTLS: 587}.get(v["tls"], 25)
    port = v["port"] if v["port"] is not None else default_port
    return _build(SmtpConfig, v, port=port, password=password, ca_file=ca_file)


def _rules(inline: Any, file: str | None, path: str, ctx: _Context) -> RulesConfig:
    if not isinstance(inline, list):
        ctx.errors.append(f"{path}rules: expected a list of rules, got {_kind(inline)}")
        inline = []
    return RulesConfig(tuple(inline), ctx.path(file) if file else None)


def _mailbox(data: Any, path: str, agent_id: str, ctx: _Context) -> MailboxConfig | None:
    before = len(ctx.errors)
    v = _section(data, path, _MAILBOX, ctx.errors)
    if v is None:
        return None
    if "id" in v:
        ctx.unique(("mailbox", v["id"]), f'duplicate mailbox id "{v["id"]}"', f"{path}.id")
    imap = _imap(v["imap"], f"{path}.imap", ctx) if "imap" in v else None
    if len(ctx.errors) > before or imap is None:
        return None
    smtp = _smtp(v["smtp"], f"{path}.smtp", ctx) if v.get("smtp") is not None else None
    rules = _rules(v["rules"], v.get("rules_file"), f"{path}.", ctx)
    if len(ctx.errors) > before:
        return None
    _watch_once(imap, path, ctx)
    trusted = v["trusted_authserv_ids"]
    address = v["address"] or (imap.username if _ADDRESS.fullmatch(imap.username) else None)
    return _build(
        MailboxConfig,
        v,
        agent_id=agent_id,
        imap=imap,
        trusted_authserv_ids=trusted and tuple(trusted),
        address=address,
        smtp=smtp,
        rules=rules,
        tenant=DEFAULT_TENANT,  # resolved with the agent's (see _fleets)
    )


def _watch_once(imap: ImapConfig, path: str, ctx: _Context) -> None:
    """Refuse a folder of an account that another mailbox watches already: both watchers would act
    on every message (rules twice, auto-replies twice). Host names and usernames are compared
    without case, as servers (and DNS) compare them."""
    account = (imap.host.lower().rstrip("."), imap.port, imap.username.casefold())
    for folder in imap.folders:  # already normalised by folder_key
        first = ctx.watched.setdefault((*account, folder), path)
        if first != path:
            ctx.errors.append(
                f"{path}: watches the same folder as {first} ({imap.username} on {imap.host}:{imap.port},"
                f" {json.dumps(folder, ensure_ascii=False)})"
            )


def _agent(data: Any, path: str, ctx: _Context) -> AgentConfig | None:
    before = len(ctx.errors)
    v = _section(data, path, _AGENT, ctx.errors)
    if v is None:
        return None
    if "id" in v:
        ctx.unique(("agent", v["id"]), f'duplicate agent id "{v["id"]}"', f"{path}.id")
    for i, digest in enumerate(v.get("token_sha256", ())):
        label = "duplicate token hash; a token must identify exactly one agent"
        ctx.unique(("token", digest), label, f"{path}.token_sha256[{i}]")
    raw = v["mailboxes"]
    if not isinstance(raw, list):
        ctx.errors.append(f"{path}.mailboxes: expected a list, got {_kind(raw)}")
        raw = []
    mailboxes = [_mailbox(item, f"{path}.mailboxes[{i}]", v.get("id", ""), ctx) for i, item in enumerate(raw)]
    if len(ctx.errors) > before:
        return None
    # `tenant` stays None when not given: _fleets() resolves it from the parent.
    return _build(AgentConfig, v, mailboxes=tuple(m for m in mailboxes if m is not None))


def _fleets(agents: list[tuple[str, AgentConfig]], ctx: _Context) -> list[AgentConfig]:
    """Check every `parent` (known, no cycle) and resolve every tenant; `agents` are (path, agent).

    A sub-agent inherits its parent's tenant; naming a different one is an error, so a token's
    subtree never spans two tenants.
    """
    known = {agent_id for kind, agent_id in ctx.first_use if kind == "agent"}
    parents = {agent.id: agent.parent for _, agent in agents}
    ok = True
    for path, agent in agents:
        if agent.parent is not None and agent.parent not in known:
            ctx.errors.append(f'{path}.parent: unknown agent "{agent.parent}"')
            ok = False
    index = {agent.id: i for i, (_, agent) in enumerate(agents)}
    walked: dict[str, bool] = {}  # False: on the walk in progress; True: known to end at a root
    cycles: list[list[str]] = []
    for _, agent in agents:
        chain: list[str] = []
        current: str | None = agent.id
        while current is not None and current in parents and current not in walked:
            walked[current] = False
            chain.append(current)
            current = parents[current]
        if current is not None and walked.get(current) is False:
            cycle = chain[chain.index(current) :]
            start = min(range(len(cycle)), key=lambda i: index[cycle[i]])
            cycles.append(cycle[start:] + cycle[:start])
        walked.update(dict.fromkeys(chain, True))
    for cycle in sorted(cycles, key=lambda c: index[c[0]]):
        ctx.errors.append(f"{agents[index[cycle[0]]][0]}.parent: cycle {' → '.join([*cycle, cycle[0]])}")
        ok = False
    _tenant_spellings(agents, ctx)
    if not ok:
        return []
    by_id = {agent.id: (path, agent) for path, agent in agents}
    tenants: dict[str, str | None] = {}  # None: unknown (an ancestor failed to parse)
    resolved = []
    for _, agent in agents:
        chain = [agent.id]  # up to the root or to an agent resolved before (no cycles by now)
        while chain[-1] not in tenants and (up := by_id.get(chain[-1])) and up[1].parent is not None:
            chain.append(up[1].parent)
        for agent_id in reversed(chain):
            if agent_id in tenants:
                continue
            if agent_id not in by_id:
                tenants[agent_id] = None
                continue
            path, member = by_id[agent_id]
            inherited = tenants[member.parent] if member.parent is not None else DEFAULT_TENANT
            if member.tenant and member.parent is not None and inherited and member.tenant != inherited:
                ctx.errors.append(
                    f'{path}.tenant: "{member.tenant}" differs from the tenant "{inherited}" of its parent'
                    f' "{member.parent}"; a parent and its sub-agents share one tenant'
                )
            tenants[agent_id] = member.tenant or inherited
        tenant = tenants[agent.id] or DEFAULT_TENANT
        mailboxes = tuple(replace(mailbox, tenant=tenant) for mailbox in agent.mailboxes)
        resolved.append(replace(agent, tenant=tenant, mailboxes=mailboxes))
    return resolved


def _tenant_spellings(agents: list[tuple[str, AgentConfig]], ctx: _Context) -> None:
    """Refuse tenant ids that differ only in case: each tenant has files named after it
    (`learning.acme.db`), and on a case-insensitive filesystem two such tenants would share them."""
    first: dict[str, tuple[str, str]] = {}  # casefolded id -> (the id as first written, its key)
    for path, agent in agents:
        if not agent.tenant:
            continue
        spelling, where = first.setdefault(agent.tenant.casefold(), (agent.tenant, f"{path}.tenant"))
        if spelling != agent.tenant:
            ctx.errors.append(
                f'{path}.tenant: "{agent.tenant}" differs only in case from the tenant "{spelling}" of'
                f" {where}; tenants name files, which would collide on a case-insensitive filesystem"
            )


def parse_config(
    data: object, env: Mapping[str, str] | None = None, base_dir: str | Path | None = None
) -> Config:
    """Validate already-parsed YAML. Relative paths resolve against `base_dir` (default: the cwd)."""
    ctx = _Context(os.environ if env is None else env, Path.cwd() if base_dir is None else Path(base_dir))
    if data is None:
        raise ConfigError(['(top level): the configuration is empty; at least "agents" is required'])
    top = _section(data, "", _TOP, ctx.errors)
    if top is None:
        raise ConfigError(ctx.errors)
    server = _section(top["server"], "server", _SERVER, ctx.errors)
    store = _section(top["store"], "store", _STORE, ctx.errors)
    logging = _section(top["logging"], "logging", _LOGGING, ctx.errors)
    pipeline = _section(top["pipeline"], "pipeline", _PIPELINE, ctx.errors)
    agents = top.get("agents", [])
    if "agents" in top and (not isinstance(agents, list) or not agents):
        ctx.errors.append(f"agents: expected a non-empty list, got {_kind(agents)}")
        agents = []
    parsed = [(f"agents[{i}]", _agent(item, f"agents[{i}]", ctx)) for i, item in enumerate(agents)]
    fleet = _fleets([(path, agent) for path, agent in parsed if agent is not None], ctx)
    stages = _pipeline_stages(pipeline, ctx) if pipeline is not None else ()
    learning = (
        _section(pipeline["learning"], "pipeline.learning", _LEARNING, ctx.errors) if pipeline else None
    )
    rules = _rules(top["rules"], top.get("rules_file"), "", ctx)
    if ctx.errors or server is None or store is None or logging is None or learning is None:
        raise ConfigError(ctx.errors)
    host, port = server["listen"]
    store_path = ctx.path(store["path"])
    learning_path = ctx.path(learning["path"]) if learning["path"] else store_path.with_name("learning.db")
    return Config(
        server=_build(ServerConfig, server, host=host, port=port),
        store=_build(StoreConfig, store, path=store_path),
        agents=tuple(fleet),
        log_level=logging["level"],
        source=None,
        pipeline=PipelineConfig(stages, _build(LearningConfig, learning, path=learning_path)),
        rules=rules,
    )


def _pipeline_stages(pipeline: dict[str, Any], ctx: _Context) -> tuple[StageConfig, ...]:
    """Every stage's section is validated; the ones listed in `stages` run, in that order."""
    checked = {
        name: _section(pipeline[name], f"pipeline.{name}", _STAGES[name], ctx.errors) for name in STAGE_NAMES
    }
    if checked["spam"] is not None:
        _external_scorers(checked["spam"], ctx)
    stages = []
    for name in pipeline.get("stages", ()):  # absent when it failed its check (reported)
        values = checked[name]
        if values is None or len(values) < len(_STAGES[name]):  # a key failed its check (reported)
            continue
        timeout_ms, on_error = values.pop("timeout_ms"), values.pop("on_error")
        if name == "spam" and values["suspect_threshold"] > values["spam_threshold"]:
            # Swapped, most likely: no score could be "suspect".
            suspect, spam = values["suspect_threshold"], values["spam_threshold"]
            ctx.errors.append(
                f"pipeline.spam.suspect_threshold: must not exceed spam_threshold ({spam:g}), got {suspect:g}"
            )
        if (
            name == "auth"
            and values["dkim_verify"]
            and timeout_ms < values["dns_timeout_seconds"] * 1000 + 500
        ):
            ctx.errors.append(
                "pipeline.auth.timeout_ms: with dkim_verify on it must exceed dns_timeout_seconds by 500 ms,"
                f" got {timeout_ms}"
            )
        stages.append(StageConfig(name, timeout_ms / 1000, on_error, values))
    return tuple(stages)


def _external_scorers(spam: dict[str, Any], ctx: _Context) -> None:
    """Check `rspamd` and `spamd` in place: null, or a mapping whose timeout leaves the stage time to
    fall back on the built-in score."""
    for key, schema in (("rspamd", _RSPAMD), ("spamd", _SPAMD)):
        if spam.get(key) is None:
            continue
        path = f"pipeline.spam.{key}"
        values = _section(spam[key], path, schema, ctx.errors)
        if values is None or len(values) < len(schema):  # errors reported
            spam[key] = None
            continue
        budget = spam.get("timeout_ms")
        if budget is not None and values["timeout_ms"] >= budget:
            ctx.errors.append(
                f"{path}.timeout_ms: must be below pipeline.spam.timeout_ms ({budget}) so that the stage"
                f" can fall back on the built-in score, got {values['timeout_ms']}"
            )
        if values.get("password") is not None:
            values["password"] = Secret(values["password"])
        spam[key] = values


def unprintable(text: str, exc: yaml.reader.ReaderError) -> str:
    """Where YAML found a character it does not allow (NUL, most control characters), and which."""
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - text.rfind("\n", 0, exc.position)
    code = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return (
        f"line {line}, column {column}: invalid YAML: character U+{code:04X} is not allowed (a binary file?)"
    )


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


# Nodes a document may expand to through aliases. PyYAML builds an alias as a shared reference, so
# loading stays cheap, but whatever walks the data (the rules parser) meets every copy: ten levels of
# ten aliases ("billion laughs") are 10**10 conditions, a reload that never ends on the event loop.
MAX_EXPANDED_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (plain PyYAML silently keeps the last)
    and aliases that expand the document past MAX_EXPANDED_NODES nodes."""

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise yaml.MarkedYAMLError(
                problem=f"aliases expand the document past {MAX_EXPANDED_NODES} nodes",
                problem_mark=node.start_mark,
            )
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    problem = f"duplicate key {_describe(key)}"
                    raise _DuplicateKey(problem=problem, problem_mark=key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes `node` is with every alias copied out; each distinct node is counted once
    (`sizes`), so this costs the document's size, not the expansion's. An alias of a node that
    contains it (a recursive one) is counted as too many."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = MAX_EXPANDED_NODES + 1  # until counted: an alias met inside it recurses
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_EXPANDED_NODES:
            break
    sizes[id(node)] = total
    return total


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a configuration file; ConfigError lists every problem found."""
    source = Path(path).expanduser().resolve()
    try:
        text = source.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read the configuration file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: the configuration file is not valid UTF-8"]) from None
    except yaml.MarkedYAMLError as exc:
        # Only the position and the problem: str(exc) would quote the offending line, maybe a password.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else str(source)
        prefix = "" if isinstance(exc, _DuplicateKey) else "invalid YAML: "
        raise ConfigError([f"{where}: {prefix}{exc.problem or exc.context or 'syntax error'}"]) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError([unprintable(text, exc)]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{source}: invalid YAML"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: invalid YAML: nested too deeply"]) from None
    return replace(parse_config(data, env, source.parent), source=source)
