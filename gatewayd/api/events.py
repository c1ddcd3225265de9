"""GET /v1/events as JSON: newest first, paged with an opaque cursor, down to `since` if given."""

from __future__ import annotations

from aiohttp import web

from gatewayd.api.auth import authenticate
from gatewayd.api.context import Gateway
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
    return web.json_response(
        {
            "events": [event.envelope() for event in page],
            "next_cursor": page[-1].id if len(events) > limit else None,
        }
    )
