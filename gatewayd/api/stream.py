"""Server-Sent Events: replay from the store, then live from the bus, with no gap or duplicate.

The subscription to the bus is taken *before* the replay reads the store, and live events at or
below the last replayed seq are dropped: an event stored during the replay is either read by
the replay or queued, and never sent twice. Replay and live apply the same filters (the store's
reads and `matches`), so a stream over a whole fleet resumes exactly like one over one mailbox.

A stream ends with a `closing` event (no `id:`) when the server shuts down or when its token is
revoked or expires (`Gateway.end_streams`, or the periodic check in `gatewayd.api.guard`); a
replay stops for it at the next page, and then sends none of the live events queued meanwhile
(they lie beyond the events it did not replay). Its `last_event_id` is the client's resume point:
the last event sent, or, before any, where the stream started (so a reconnect misses and repeats
nothing).

Fan-out to thousands of streams costs no task, timer or copy per event and stream: an idle
stream's event is written to its socket by the publisher itself (the frame is encoded once per
event), and everything else (a busy or slow client, the end, shutdown, pings) goes through the
stream's one waiter (see `_Stream.live`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from gatewayd.api.accept import EVENT_STREAM, accept_header, quality
from gatewayd.api.auth import Principal, authenticate
from gatewayd.api.backlog import undelivered_bytes
from gatewayd.api.context import Gateway, SlowClient
from gatewayd.api.errors import ApiError
from gatewayd.api.gap import GAP_RETENTION, GAP_UNKNOWN_ID, first_available, gap_data
from gatewayd.api.params import event_query, number, resume_point
from gatewayd.bus import Subscription
from gatewayd.events import CLOSING, STREAM_GAP, Event, rfc3339
from gatewayd.store import EventQuery, EventStore
from gatewayd.store.tokens import READ

log = logging.getLogger(__name__)

# A replay reads the store in pages: a small first one, so the first events are on the wire within
# milliseconds, then bigger ones (fewer round trips to the reader thread and fewer, larger
# writes). The next page is read while the current one is written.
REPLAY_FIRST_PAGE = 100
REPLAY_PAGE = 2000
# A live event is written straight from the publisher only while the client's socket buffer holds
# less than this (bytes); above it the event queues, and a client that stays behind is cut off.
DIRECT_WRITE_MAX_BUFFER = 64 * 1024
# Seconds between `: ping` comments when the client names no `ping`: well inside nginx's 60 s.
DEFAULT_PING_SECONDS = 15.0
# A stream whose client has not taken what was written by this many pings in a row is cut off
# (it resumes from its last id): a ping-only stream would otherwise keep a client that stopped
# reading, or vanished, until TCP gives up.
STALLED_PINGS = 3
_CUT_OFF_BECAUSE = {
    SlowClient.OVERFLOW: "its queue of live events filled (server.subscriber_queue_size)",
    SlowClient.STALLED: f"it left what was written untaken at {STALLED_PINGS} pings in a row",
}


def _frame(event: Event) -> bytes:
    return event.sse_frame


async def replay_pages(
    store: EventStore,
    query: EventQuery,
    after_seq: int,
    write: Callable[[bytes, Event], Awaitable[bool]],
    gap: Callable[[int, int], Awaitable[None]] | None = None,
) -> bool:
    """Every stored event after `after_seq` that matches the query, oldest first, framed for SSE.

    `write(frames, last_event)` gets one page at a time and returns False to stop early; the
    result is False when it did, True once every page was written.
    `gap(after, first_available)` is awaited before a page when events after seq `after` were
    pruned before that page was read: at the start (a resume point older than retention), or
    during the replay, when retention overtook a long one. `first_available` is the first seq
    this query can still be sent: the page's first event, or the next seq issued when none is left.
    """
    limit = REPLAY_FIRST_PAGE
    after = after_seq
    reading = asyncio.ensure_future(store.read_after(query, after, limit))
    try:
        while True:
            events = await reading
            if gap is not None:
                # Read after the page: pruning only ever removes the oldest events, so when it never
                # removed one after `after`, nothing after it was gone for the read. Not the oldest
                # seq left: seqs are not dense (a start after a power loss skips some).
                contiguous = bool(events) and events[0].seq == after + 1
                if not contiguous and after < await store.pruned_through():
                    # Not the oldest event left: it may be another tenant's, never sent here.
                    await gap(after, events[0].seq if events else await store.last_seq() + 1)
            more = len(events) >= limit
            if more:
                limit = REPLAY_PAGE
                after = events[-1].seq
                reading = asyncio.ensure_future(store.read_after(query, after, limit))
            if events and not await write(b"".join([_frame(event) for event in events]), events[-1]):
                return False
            if not more:
                return True
    finally:
        reading.cancel()  # a page read ahead and never written (stopped, or the client left)


def _unnumbered(event_type: str, data: dict[str, object]) -> bytes:
    # No id: line, so the client's resume point stays on the last real event.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event_type}\ndata: {payload}\n\n".encode()


async def stream_events(request: web.Request) -> web.StreamResponse:
    wanted, _ = quality(accept_header(request), EVENT_STREAM)
    if wanted == 0:
        raise ApiError(406, f"this endpoint serves {EVENT_STREAM} only, and the Accept header refuses it")
    gateway = Gateway.of(request)
    config = gateway.config
    principal = await authenticate(request, config, gateway.tokens, query_token=True)
    principal.require(READ)
    query = event_query(request, principal, config)
    max_ping = config.server.max_ping_seconds
    # The default too stays within the server's maximum (set low for a proxy's idle timeout).
    ping = number(request, "ping", min(DEFAULT_PING_SECONDS, max_ping), 1.0, max_ping)
    assert ping is not None
    max_seconds = number(request, "max_seconds", None, 1.0, 7 * 86400.0)
    resume = await resume_point(request, gateway.store)
    # Read before subscribing: an id from the future is clamped to what was stored *then*, so
    # an event stored once the subscription exists is above the clamp and never dropped. A live
    # stream starts there too: its position until it sends an event (closing's last_event_id).
    ceiling = await gateway.store.last_seq()
    start = ceiling if resume is None else min(resume.after_seq, ceiling)
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

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "Connection": "keep-alive",
        }
    )
    stream = _Stream(gateway, principal, query, response, start, request.transport)
    subscription = gateway.bus.subscribe_query(
        query, gateway.config.server.subscriber_queue_size, lambda: stream.cut_off(SlowClient.OVERFLOW)
    )
    gateway.pool.acquire(mailbox_ids)
    gateway.add_stream(stream)
    try:
        await response.prepare(request)
        await response.write(f"retry: {config.server.retry_ms}\n: connected\n\n".encode())
        stream.allow_direct_writes(request)
        if resume is not None:
            await stream.replay(resume.requested, unknown=resume.after_seq > start)
        deadline = asyncio.get_running_loop().time() + max_seconds if max_seconds else None
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
        self,
        gateway: Gateway,
        principal: Principal,
        query: EventQuery,
        response: web.StreamResponse,
        start_seq: int,
        connection: asyncio.Transport | None,
    ) -> None:
        self.gateway = gateway
        self.principal = principal
        self.query = query
        self.response = response
        # The client's resume point: where the stream started, then the last event it was sent.
        self.last_seq = start_seq
        self.last_id = str(start_seq)
        self.end_reason: str | None = None
        # False once a replay stopped short (an end, a shutdown): live events queued meanwhile lie
        # beyond the stored ones it never sent.
        self.caught_up = True
        self._subscription: Subscription | None = None  # while live
        # How `_sink` frames a write to the socket: "chunked", "plain", or None (it does not).
        self._direct: str | None = None
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wrote_at = 0.0
        self._deadline: float | None = None
        self._connection = connection
        self._undrained_pings = 0  # pings in a row that found earlier writes not taken yet

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self.wake()

    @property
    def ending(self) -> bool:
        return self.end_reason is not None or self.gateway.closing

    async def replay(self, requested: str, unknown: bool) -> None:
        """Every stored event after the start, until a shutdown or an end (checked between pages).
        `unknown`: the resume point lies beyond every id the store issued (a store restored from a
        backup, say), so the ids the client saw may be issued again: a gap event says so first."""
        start = self.last_seq

        async def gap(after: int, first: int, reason: str = GAP_RETENTION) -> None:
            if self.ending:
                return
            # Past the start, the hole is after the last event sent, not after the resume point.
            hole = gap_data(requested if after == start else str(after), first, reason)
            await self.response.write(_unnumbered(STREAM_GAP, hole))

        async def write(frames: bytes, last: Event) -> bool:
            if self.ending:
                return False
            await self.response.write(frames)
            self.last_seq, self.last_id = last.seq, last.id
            return not self.ending

        if unknown:
            await gap(start, await first_available(self.gateway.store, self.query), GAP_UNKNOWN_ID)

        self.caught_up = await replay_pages(self.gateway.store, self.query, start, write, gap)

    async def live(self, subscription: Subscription, ping: float, deadline: float | None) -> None:
        """Live events until the deadline, a shutdown, an end (token revoked), an overflow, or a
        client that leaves what was written untaken (checked at each ping: `_stalled`).

        While it waits, the stream lets the bus write each event straight to its client (`_sink`:
        the frame every subscriber shares, no task wake-up, no copy when the socket takes it).
        Otherwise events queue, and one waiter per stream takes them: it is woken by the bus, by
        `wake()` (shutdown, end), or by one timer per stream, re-armed only when it fires: a ping
        goes out after `ping` seconds without a write, however many events came before.
        """
        loop = asyncio.get_running_loop()
        gateway = self.gateway
        timer: asyncio.TimerHandle | None = None
        self._wrote_at = loop.time()
        self._deadline = deadline

        def fire() -> None:
            nonlocal timer
            timer = None
            subscription.wake()

        self._subscription = subscription
        sink = self._sink if self._direct is not None else None
        try:
            while True:
                if gateway.closing:
                    # What was published before the shutdown first, unless a replay stopped short of
                    # it: the client's resume point must stay before the events it was never sent.
                    if self.caught_up and not subscription.overflowed:
                        await self._write_events(subscription.take())
                    await self.send_closing("shutdown")
                    # Hold the connection through the grace period, so clients close first.
                    await gateway.grace_over.wait()
                    return
                if self.end_reason is not None:
                    await self.send_closing(self.end_reason)
                    return
                if subscription.overflowed:
                    # Too slow: cut it off; it resumes from its last id without losing anything.
                    return
                events = subscription.take()
                if events:
                    await self._write_events(events)
                    continue
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return
                ping_at = self._wrote_at + ping
                if now >= ping_at:
                    if self._stalled():
                        self.cut_off(SlowClient.STALLED)
                        return
                    await self.response.write(b": ping\n\n")
                    self._wrote_at = loop.time()
                    continue
                if timer is None:
                    timer = loop.call_at(ping_at if deadline is None else min(ping_at, deadline), fire)
                subscription.sink = sink
                try:
                    await subscription.wait()
                finally:
                    subscription.sink = None
        finally:
            self._subscription = None
            if timer is not None:
                timer.cancel()

    async def _write_events(self, events: list[Event]) -> None:
        frames = []
        for event in events:
            if event.seq > self.last_seq:  # not replayed already
                frames.append(_frame(event))
                self.last_seq, self.last_id = event.seq, event.id
        if frames:
            await self.response.write(b"".join(frames))
            self._wrote_at = asyncio.get_running_loop().time()

    def _sink(self, event: Event) -> bool:
        """Write one live event to the client now, from the publisher; False: queue it instead.

        Only while `live` waits (nothing of this response is being written), the client keeps up
        (the socket's buffer is nearly empty: a slow client takes the queue and its overflow
        cut-off instead) and the stream is not ending.
        """
        transport = self._transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > DIRECT_WRITE_MAX_BUFFER
            or self.end_reason is not None
            or self.gateway.closing
        ):
            return False
        if event.seq <= self.last_seq:
            return True  # replayed already
        assert self._loop is not None  # set with _direct, and `live` passes _sink only when that is
        now = self._loop.time()
        if self._deadline is not None and now >= self._deadline:
            return False
        transport.write(event.sse_chunk if self._direct == "chunked" else event.sse_frame)
        self.last_seq, self.last_id = event.seq, event.id
        self._wrote_at = now
        return True

    def allow_direct_writes(self, request: web.Request) -> None:
        """After the response has started: whether and how `_sink` may write to its socket."""
        headers = self.response.headers
        if self.response.compression or hdrs.CONTENT_ENCODING in headers:
            return
        chunked = headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        if not chunked and hdrs.TRANSFER_ENCODING in headers:
            return
        self._transport = request.transport
        self._loop = asyncio.get_running_loop()
        self._direct = "chunked" if chunked else "plain"

    def _stalled(self) -> bool:
        """At a ping, `ping` seconds or more after the last write: whether the client has left
        what was written untaken at STALLED_PINGS pings in a row."""
        if self._connection is None or undelivered_bytes(self._connection) == 0:
            self._undrained_pings = 0
            return False
        self._undrained_pings += 1
        return self._undrained_pings >= STALLED_PINGS

    def cut_off(self, why: SlowClient) -> None:
        """Close the connection of a client that does not keep up; it resumes from its last id."""
        self.gateway.slow_clients[why] += 1
        log.info("cut off a stream of agent %s: %s", self.principal.agent.id, _CUT_OFF_BECAUSE[why])
        if self._connection is not None:
            self._connection.abort()

    def wake(self) -> None:
        """Look at the gateway's state (shutdown) and this stream's end soon."""
        if self._subscription is not None:
            self._subscription.wake()

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
