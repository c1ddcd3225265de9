"""`GET /healthz`: the store and each watcher's state for anyone; mail activity for a token.

Without a token (a load balancer, Docker's HEALTHCHECK) it answers what the gateway is doing, and
nothing derived from mail or from what a server replied: when and how much mail arrives in a
mailbox is its tenant's business. A token with the `read` scope also gets the details of the
watchers of its own subtree (`last_uid`, `push_to_event_ms`, `last_error`, ...), never others'.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gatewayd.api.auth import QUERY_TOKEN, authenticate
from gatewayd.api.context import Gateway, SlowClient
from gatewayd.store.tokens import READ

# What anyone may see of a watcher: which one it is and its connection state.
PUBLIC_WATCHER_FIELDS = frozenset({"mailbox_id", "folder", "watch", "state", "since"})


async def healthz(request: web.Request) -> web.Response:
    gateway = Gateway.of(request)
    detailed: set[str] = set()
    if "Authorization" in request.headers or QUERY_TOKEN in request.query:
        principal = await authenticate(request, gateway.config, gateway.tokens)
        principal.require(READ)
        detailed = set(principal.mailboxes(gateway.config))
    store_ok = await gateway.store.ping()
    body: dict[str, object] = {
        "status": "ok" if store_ok and not gateway.stopping else "unavailable",
        "store": "ok" if store_ok else "error",
        "stopping": gateway.stopping,
        "closing": gateway.closing,
        "subscribers": len(gateway.bus),
        "streams_cut_off": {why.value: gateway.slow_clients[why] for why in SlowClient},
        # The event loop's tasks: a count that keeps rising over a long run is a leak.
        "tasks": len(asyncio.all_tasks()),
        "watchers": [
            watcher if watcher["mailbox_id"] in detailed else _public(watcher)
            for watcher in gateway.pool.health()
        ],
    }
    if gateway.rules is not None:
        body["rules"] = gateway.rules.health()
    return web.json_response(body, status=200 if body["status"] == "ok" else 503)


def _public(watcher: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in watcher.items() if key in PUBLIC_WATCHER_FIELDS}
