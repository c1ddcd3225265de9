"""What the HTTP handlers share: the gateway's parts, reachable from any request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from gatewayd.bus import Bus
from gatewayd.config import Config
from gatewayd.imap.pool import WatcherPool
from gatewayd.message import ParsedMessage
from gatewayd.store import EventStore


class Learner(Protocol):
    """What the report endpoint feeds (the pipeline's learning store)."""

    def train(self, message: ParsedMessage, label: str, mailbox_id: str | None = None) -> bool: ...


@dataclass
class Gateway:
    config: Config
    store: EventStore
    bus: Bus
    pool: WatcherPool
    learning: Learner | None = None
    # Set at shutdown: streams send their closing event, then wait for grace_over.
    closing_event: asyncio.Event = field(default_factory=asyncio.Event)
    grace_over: asyncio.Event = field(default_factory=asyncio.Event)
    streams: set[Any] = field(default_factory=set)
    no_streams: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.no_streams.set()

    def add_stream(self, stream: Any) -> None:
        self.streams.add(stream)
        self.no_streams.clear()

    def discard_stream(self, stream: Any) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self.no_streams.set()

    @property
    def closing(self) -> bool:
        return self.closing_event.is_set()

    @staticmethod
    def of(request: web.Request) -> Gateway:
        return request.app[GATEWAY]


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
