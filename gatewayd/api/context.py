"""What the HTTP handlers share: the gateway's parts, reachable from any request."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from aiohttp import web

from gatewayd.api.auth import Principal
from gatewayd.bus import Bus
from gatewayd.config import Config
from gatewayd.imap.pool import WatcherPool
from gatewayd.message import ParsedMessage
from gatewayd.store import EventStore
from gatewayd.store.tokens import TokenStore

# Each report opens an IMAP session of its own: a few at a time, the others wait, so that the
# open-file budget (gatewayd.fdlimit) need not set one aside per HTTP connection.
REPORT_SESSIONS_AT_ONCE = 4


class Learner(Protocol):
    """What the report endpoint feeds (the pipeline's learning store)."""

    def train(self, message: ParsedMessage, label: str, mailbox_id: str | None = None) -> bool: ...


class RulesHealth(Protocol):
    def health(self) -> dict[str, object]: ...


class SlowClient(StrEnum):
    """Why a stream was cut off for a client that does not keep up (counted for /healthz)."""

    OVERFLOW = "overflow"  # its queue of live events filled (server.subscriber_queue_size)
    STALLED = "stalled"  # what was written stayed untaken for several pings in a row


class OpenStream(Protocol):
    """An SSE connection in progress."""

    principal: Principal

    def end(self, reason: str) -> None:
        """Close the stream soon: it sends a `closing` event with this reason, then ends."""
        ...

    def wake(self) -> None:
        """Look at the gateway's state soon (`closing`): a stream waits for nothing else."""
        ...


@dataclass
class Gateway:
    config: Config
    store: EventStore
    bus: Bus
    pool: WatcherPool
    learning: Learner | None = None
    # Run-time tokens; None: only the configuration's tokens are accepted.
    tokens: TokenStore | None = None
    # The rules in force, for /healthz; None: not reported.
    rules: RulesHealth | None = None
    # From the shutdown's first step (SIGTERM) on: /healthz answers 503 while the watchers' held
    # events are still being stored, before `closing`.
    stopping: bool = False
    # Set at shutdown: streams send their closing event, then wait for grace_over.
    closing_event: asyncio.Event = field(default_factory=asyncio.Event)
    grace_over: asyncio.Event = field(default_factory=asyncio.Event)
    streams: set[OpenStream] = field(default_factory=set)
    no_streams: asyncio.Event = field(default_factory=asyncio.Event)
    # Open streams per token (Principal.key), for server.max_streams_per_token.
    streams_per_token: Counter[str] = field(default_factory=Counter)
    # Streams cut off since start, by why.
    slow_clients: Counter[SlowClient] = field(default_factory=Counter)
    report_sessions: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(REPORT_SESSIONS_AT_ONCE)
    )

    def __post_init__(self) -> None:
        self.no_streams.set()

    def add_stream(self, stream: OpenStream) -> None:
        self.streams.add(stream)
        self.streams_per_token[stream.principal.key] += 1
        self.no_streams.clear()

    def discard_stream(self, stream: OpenStream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
            key = stream.principal.key
            self.streams_per_token[key] -= 1
            if self.streams_per_token[key] <= 0:
                del self.streams_per_token[key]
        if not self.streams:
            self.no_streams.set()

    def end_streams(self, token_id: str, reason: str) -> int:
        """End every open stream of this run-time token; how many there were."""
        ending = [s for s in self.streams if s.principal.token_id == token_id]
        for stream in ending:
            stream.end(reason)
        return len(ending)

    def take_configured_tokens(self, fresh: Config) -> int:
        """A reload: the agents' configured tokens become `fresh`'s, and every open stream of a
        configured token that no longer reaches its agent ends (`token_revoked`), as a revoked
        run-time token's would; how many ended."""
        self.config = self.config.with_tokens_of(fresh)
        ending = []
        for stream in self.streams:
            digest = stream.principal.configured_token
            if digest is not None:
                owner = self.config.agent_for_token_hash(digest)
                if owner is None or owner.id != stream.principal.agent.id:
                    ending.append(stream)
        for stream in ending:
            stream.end("token_revoked")
        return len(ending)

    def begin_closing(self) -> None:
        """Shutdown: every open stream sends its closing event, then waits for grace_over."""
        self.closing_event.set()
        for stream in list(self.streams):
            stream.wake()

    @property
    def closing(self) -> bool:
        return self.closing_event.is_set()

    @staticmethod
    def of(request: web.Request) -> Gateway:
        return request.app[GATEWAY]


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
