"""GET /v1/events as JSON: newest first, paged with an opaque cursor, down to `since` if given.

A `since` or cursor beyond every id the store issued (a store replaced, or restored from a backup)
adds a `gap` member, the data of the stream's `stream.gap` with `reason: unknown_id`: else a client
polling with `since=` its last id would list nothing, forever, and not know why."""

from __future__ import annotations

from aiohttp import web

from gatewayd.api.auth import authenticate
from gatewayd.api.context import Gateway
from gatewayd.api.gap import GAP_UNKNOWN_ID, first_available, gap_data
from gatewayd.api.params import event_query, event_seq, integer, since_point, single
from gatewayd.store.tokens import READ


async def list_events(request: web.Request) -> web.Response:
    gateway = Gateway.of(request)
    principal = await authenticate(request, gateway.config, gateway.tokens)
    principal.require(READ)
    query = event_query(request, principal, gateway.config)
    limit = integer(request, "limit", 50, 1, 500)
    cursor = single(request, "cursor")
    before = event_seq(gateway.store, "cursor", cursor) if cursor else None
    since = await since_point(request, gateway.store)
    events = await gateway.store.read_before(query, before, limit + 1)
    if since is not None:
        # Newest first, those at or below the bound end the read: a page that reaches one is the last.
        events = [event for event in events if event.seq > since.after_seq]
    page = events[:limit]
    body: dict[str, object] = {
        "events": [event.envelope() for event in page],
        "next_cursor": page[-1].id if len(events) > limit else None,
    }
    # Asked only with a bound or a cursor, and after the events: an id beyond the last issued now
    # was beyond it for the read too.
    if since is not None or before is not None:
        last = await gateway.store.last_seq()
        unknown = None
        if since is not None and since.after_seq > last:
            unknown = since.requested
        elif before is not None and before > last:
            unknown = cursor
        if unknown is not None:
            body["gap"] = gap_data(unknown, await first_available(gateway.store, query), GAP_UNKNOWN_ID)
    return web.json_response(body)
