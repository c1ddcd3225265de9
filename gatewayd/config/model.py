"""What a validated configuration is: frozen dataclasses, the constants their fields take, and
ConfigError. Secrets (passwords, password file contents, environment values) never show in reprs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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


class UnreadSecret(Secret):
    """A password kept elsewhere (password_file, password_env, password_credential) and left unread,
    by a command that never logs in (load_config's `secrets=False`): reading it would fail where
    only the service may (a credential, the service user's file). `_value` holds its key path."""

    __slots__ = ()

    def reveal(self) -> str:
        raise RuntimeError(f"{self._value}: not read (the configuration was loaded without secrets)")


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
    # How long a connection may take to send a whole request (its headers; a body: again as long)
    # from when it opened or got its last answer: idle and trickling clients are cut off.
    request_timeout_seconds: float = 60.0
    # HTTP connections open at once; one more is answered 503 and closed. None: half the
    # file-descriptor limit (gatewayd.api.connections).
    max_connections: int | None = None
    # The names (host or host:port) a request's Host header may give; empty: any (gatewayd.api.hosts).
    allowed_hosts: tuple[str, ...] = ()


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
        """Every password the file gives (IMAP, SMTP, external scorers) and that was read: what logs
        must never show."""
        found: list[object] = [mailbox.imap.password for mailbox in self.mailboxes()]
        found += [mailbox.smtp.password for mailbox in self.mailboxes() if mailbox.smtp is not None]
        for stage in self.pipeline.stages if self.pipeline is not None else ():
            found += [
                scorer.get("password")
                for scorer in (stage.options.get("rspamd"), stage.options.get("spamd"))
                if scorer
            ]
        return [
            secret.reveal()
            for secret in found
            if isinstance(secret, Secret) and not isinstance(secret, UnreadSecret)
        ]

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
