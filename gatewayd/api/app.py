"""The HTTP application: its routes and error handling."""

from __future__ import annotations

from aiohttp import web

from gatewayd.api.accept import EVENT_STREAM, accept_header, quality
from gatewayd.api.body import MAX_BODY_BYTES
from gatewayd.api.context import GATEWAY, Gateway
from gatewayd.api.errors import json_errors
from gatewayd.api.events import list_events
from gatewayd.api.health import healthz
from gatewayd.api.hosts import allowed_hosts
from gatewayd.api.report import report_message
from gatewayd.api.stream import stream_events
from gatewayd.api.tokens import create_token, list_tokens, revoke_token


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: the stream when the client names text/event-stream (with q > 0), else JSON."""
    wanted, named = quality(accept_header(request), EVENT_STREAM)
    if named and wanted > 0:
        return await stream_events(request)
    return await list_events(request)


def create_app(gateway: Gateway) -> web.Application:
    hosts = gateway.config.server.allowed_hosts
    middlewares = [json_errors, allowed_hosts(hosts)] if hosts else [json_errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[GATEWAY] = gateway
    app.router.add_get("/events", stream_events, allow_head=False)
    app.router.add_get("/v1/events/stream", stream_events, allow_head=False)
    app.router.add_get("/v1/events", events, allow_head=False)
    app.router.add_post("/v1/messages/{event_id}/report", report_message)
    app.router.add_post("/v1/tokens", create_token)
    app.router.add_get("/v1/tokens", list_tokens, allow_head=False)
    app.router.add_delete("/v1/tokens/{token_id}", revoke_token)
    app.router.add_get("/healthz", healthz, allow_head=False)
    return app
