"""Server-Sent Events: replay from the store, then live from the bus, with no gap or duplicate.

The subscription to the bus is taken *before* the replay reads the store, and live events at or
below the last replayed seq are dropped: an event stored during the replay is either read by
the replay or queued, and never sent twice.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from gatewayd.api.auth import authenticate
from gatewayd.api.context import Gateway
from gatewayd.api.params import event_query, number, resume_point
from gatewayd.bus import Subscription
from gatewayd.events import CLOSING, STREAM_GAP, Event, rfc3339
from gatewayd.store import EventQuery, matches

REPLAY_PAGE = 1000


def _frame(event: Event) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.to_json()}\n\n".encode()


def _unnumbered(event_type: str, data: dict[str, object]) -> bytes:
    # No id: line, so the client's resume point stays on the last real event.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event_type}\ndata: {payload}\n\n".encode()


async def stream_events(request: web.Request) -> web.StreamResponse:
    gateway = Gateway.of(request)
    agent = authenticate(request, gateway.config)
    query = event_query(request, agent)
    ping = number(request, "ping", 15.0, 1.0, gateway.config.server.max_ping_seconds)
    assert ping is not None
    max_seconds = number(request, "max_seconds", None, 1.0, 7 * 86400.0)
    resume = await resume_point(request, gateway.store)
    if gateway.closing:
        raise web.HTTPServiceUnavailable(reason="shutting down", headers={"Retry-After": "5"})

    mailbox_ids = query.mailbox_ids or tuple(m.id for m in agent.mailboxes)

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
    stream = _Stream(gateway, query, response)
    gateway.add_stream(stream)
    try:
        await response.prepare(request)
        await response.write(f"retry: {gateway.config.server.retry_ms}\n: connected\n\n".encode())
        if resume is not None:
            await stream.replay(resume.after_seq, resume.requested)
        deadline = time.monotonic() + max_seconds if max_seconds else None
        await stream.live(subscription, ping, deadline)
    except ConnectionResetError:
        pass  # the client went away, or was cut off for being too slow
    finally:
        gateway.discard_stream(stream)
        gateway.bus.unsubscribe(subscription)
        gateway.pool.release(mailbox_ids)
    return response


class _Stream:
    def __init__(self, gateway: Gateway, query: EventQuery, response: web.StreamResponse) -> None:
        self.gateway = gateway
        self.query = query
        self.response = response
        self.last_seq = 0
        self.last_id: str | None = None

    async def replay(self, after_seq: int, requested: str) -> None:
        store = self.gateway.store
        first = await store.first_seq()
        if first and after_seq + 1 < first:
            await self.response.write(
                _unnumbered(
                    STREAM_GAP, {"requested": requested, "first_available_id": str(first), "at": rfc3339()}
                )
            )
        # An id from the future (say, a store wiped since) must not hide every new event.
        after_seq = min(after_seq, await store.last_seq())
        self.last_seq = after_seq
        self.last_id = str(after_seq) if after_seq else None
        while True:
            events = await store.read_after(self.query, self.last_seq, REPLAY_PAGE)
            if events:
                await self.response.write(b"".join(_frame(event) for event in events))
                self.last_seq, self.last_id = events[-1].seq, events[-1].id
            if len(events) < REPLAY_PAGE:
                return

    async def live(self, subscription: Subscription, ping: float, deadline: float | None) -> None:
        closing = asyncio.ensure_future(self.gateway.closing_event.wait())
        try:
            while True:
                timeout = ping if deadline is None else min(ping, deadline - time.monotonic())
                if timeout <= 0:
                    return
                getter = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait(
                    {getter, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if closing in done:
                    getter.cancel()
                    await self.send_closing()
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

    async def send_closing(self) -> None:
        gateway = self.gateway
        await self.response.write(
            _unnumbered(
                CLOSING,
                {
                    "at": rfc3339(),
                    "last_event_id": self.last_id,
                    "reconnect_after_ms": gateway.config.server.retry_ms,
                    "reason": "shutdown",
                },
            )
        )
        # Hold the connection through the grace period, so clients close on their side first.
        await gateway.grace_over.wait()
