"""Server-Sent Events: replay from the store, then live from the bus, with no gap or duplicate.

The subscription to the bus is taken *before* the replay reads the store, and live events at or
below the last replayed seq are dropped: an event stored during the replay is either read by
the replay or queued, and never sent twice. Replay and live apply the same filters (the store's
reads and `matches`), so a stream over a whole fleet resumes exactly like one over one mailbox.

A stream ends with a `closing` event (no `id:`) when the server shuts down or when its token is
revoked or expires (`Gateway.end_streams`, or the periodic check in `gatewayd.api.guard`).
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from aiohttp import web

from gatewayd.api.auth import Principal, authenticate
from gatewayd.api.context import Gateway
from gatewayd.api.errors import ApiError
from gatewayd.api.params import event_query, number, resume_point
from gatewayd.bus import Subscription
from gatewayd.events import CLOSING, STREAM_GAP, Event, rfc3339
from gatewayd.store import EventQuery, matches
from gatewayd.store.tokens import READ

REPLAY_PAGE = 1000


def _frame(event: Event) -> bytes:
    return event.sse_frame


def _unnumbered(event_type: str, data: dict[str, object]) -> bytes:
    # No id: line, so the client's resume point stays on the last real event.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event_type}\ndata: {payload}\n\n".encode()


async def stream_events(request: web.Request) -> web.StreamResponse:
    gateway = Gateway.of(request)
    config = gateway.config
    principal = await authenticate(request, config, gateway.tokens)
    principal.require(READ)
    query = event_query(request, principal, config)
    ping = number(request, "ping", 15.0, 1.0, config.server.max_ping_seconds)
    assert ping is not None
    max_seconds = number(request, "max_seconds", None, 1.0, 7 * 86400.0)
    resume = await resume_point(request, gateway.store)
    # Read before subscribing: an id from the future is clamped to what was stored *then*, so
    # an event stored once the subscription exists is above the clamp and never dropped.
    ceiling = await gateway.store.last_seq() if resume is not None else 0
    if gateway.closing:
        raise web.HTTPServiceUnavailable(reason="shutting down", headers={"Retry-After": "5"})
    # No await from here to add_stream: the count cannot change between the check and the add.
    limit = config.server.max_streams_per_token
    if limit is not None and gateway.streams_per_token[principal.key] >= limit:
        retry_after = str(max(1, math.ceil(config.server.retry_ms / 1000)))
        raise ApiError(
            429,
            f"this token already has {limit} open streams (server.max_streams_per_token)",
            code="too_many_streams",
            headers={"Retry-After": retry_after},
        )

    # Whoever subscribes, each (mailbox, folder) has one watcher: the pool counts subscribers.
    mailbox_ids = query.mailbox_ids or tuple(
        m.id for m in config.mailboxes() if m.agent_id in query.agent_ids
    )

    def cut_off() -> None:
        if request.transport is not None:
            request.transport.abort()

    subscription = gateway.bus.subscribe(
        lambda event: matches(query, event), gateway.config.server.subscriber_queue_size, cut_off
    )
    gateway.pool.acquire(mailbox_ids)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "Connection": "keep-alive",
        }
    )
    stream = _Stream(gateway, principal, query, response)
    gateway.add_stream(stream)
    try:
        await response.prepare(request)
        await response.write(f"retry: {config.server.retry_ms}\n: connected\n\n".encode())
        if resume is not None:
            await stream.replay(min(resume.after_seq, ceiling), resume.requested)
        deadline = time.monotonic() + max_seconds if max_seconds else None
        if stream.end_reason is not None:
            await stream.send_closing(stream.end_reason)
        else:
            await stream.live(subscription, ping, deadline)
    except ConnectionResetError:
        pass  # the client went away, or was cut off for being too slow
    finally:
        gateway.discard_stream(stream)
        gateway.bus.unsubscribe(subscription)
        gateway.pool.release(mailbox_ids)
    return response


class _Stream:
    def __init__(
        self, gateway: Gateway, principal: Principal, query: EventQuery, response: web.StreamResponse
    ) -> None:
        self.gateway = gateway
        self.principal = principal
        self.query = query
        self.response = response
        self.last_seq = 0
        self.last_id: str | None = None
        self.end_reason: str | None = None
        self._ended = asyncio.Event()

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self._ended.set()

    async def replay(self, after_seq: int, requested: str) -> None:
        store = self.gateway.store
        first = await store.first_seq()
        if first and after_seq + 1 < first:
            await self.response.write(
                _unnumbered(
                    STREAM_GAP, {"requested": requested, "first_available_id": str(first), "at": rfc3339()}
                )
            )
        self.last_seq = after_seq
        self.last_id = str(after_seq) if after_seq else None
        while True:
            events = await store.read_after(self.query, self.last_seq, REPLAY_PAGE)
            if events:
                await self.response.write(b"".join(_frame(event) for event in events))
                self.last_seq, self.last_id = events[-1].seq, events[-1].id
            if len(events) < REPLAY_PAGE or self.end_reason is not None:
                return

    async def live(self, subscription: Subscription, ping: float, deadline: float | None) -> None:
        closing = asyncio.ensure_future(self.gateway.closing_event.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        getter: asyncio.Future[Event] | None = None
        try:
            while True:
                timeout = ping if deadline is None else min(ping, deadline - time.monotonic())
                if timeout <= 0:
                    return
                getter = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait(
                    {getter, closing, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if closing in done:
                    getter.cancel()
                    await self.send_closing("shutdown")
                    # Hold the connection through the grace period, so clients close first.
                    await self.gateway.grace_over.wait()
                    return
                if ended in done:
                    getter.cancel()
                    await self.send_closing(self.end_reason or "ended")
                    return
                if getter not in done:
                    getter.cancel()
                    if deadline is None or time.monotonic() < deadline:
                        await self.response.write(b": ping\n\n")
                    continue
                if subscription.overflowed:
                    # Too slow: cut it off; it resumes from its last id without losing anything.
                    return
                frames = []
                event = getter.result()
                while True:
                    if event.seq > self.last_seq:
                        frames.append(_frame(event))
                        self.last_seq, self.last_id = event.seq, event.id
                    if not subscription.pending() or subscription.overflowed:
                        break
                    event = await subscription.get()
                await self.response.write(b"".join(frames))
        finally:
            closing.cancel()
            ended.cancel()
            if getter is not None:
                getter.cancel()  # also when the client left and the handler was cancelled

    async def send_closing(self, reason: str) -> None:
        gateway = self.gateway
        await self.response.write(
            _unnumbered(
                CLOSING,
                {
                    "at": rfc3339(),
                    "last_event_id": self.last_id,
                    "reconnect_after_ms": gateway.config.server.retry_ms,
                    "reason": reason,
                },
            )
        )
