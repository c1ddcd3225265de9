"""Request bodies: small JSON documents, read within a bound on size and on time."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from gatewayd.api.context import Gateway
from gatewayd.api.errors import ApiError

# The largest body any endpoint takes ({"label": "spam"}, a token's agent, scopes and expiry) is
# well under 1 KiB; larger is refused with 413 before it is read whole.
MAX_BODY_BYTES = 16 * 1024


async def read_json(request: web.Request, expected: str) -> Any:
    """The body as JSON: ApiError 400 (`body: expected ...`) when it is not, 408 when it does not
    arrive within `server.request_timeout_seconds` (a client trickling it would hold its handler)."""
    try:
        async with asyncio.timeout(Gateway.of(request).config.server.request_timeout_seconds):
            body = await request.read()
    except TimeoutError:
        raise ApiError(408, "the request body did not arrive in time") from None
    try:
        # JSON is UTF-8 (RFC 8259), whatever charset the Content-Type names: decoding by that name
        # raised LookupError for an unknown one. UnicodeDecodeError is a ValueError.
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise ApiError(400, f"body: expected {expected}") from None
