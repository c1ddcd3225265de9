"""`server.allowed_hosts`: requests must name this server in their Host header (DNS rebinding).

A web page can point a name of its own at 127.0.0.1 once the browser has loaded it, and then
send requests to a gatewayd on the visitor's machine as its "same origin"; they carry the
attacker's name in Host. With a list of the names clients use, any other Host is a 421
(`misdirected_request`) before anything else is looked at. An entry without a port matches
every port; names compare without case and without a trailing dot. Empty: no check, so a
reverse proxy that rewrites Host keeps working without configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from gatewayd.api.errors import ApiError, Handler


def host_and_port(value: str) -> tuple[str, str | None]:
    """`Example.org.:8025` -> (`example.org`, `8025`); `[::1]` -> (`[::1]`, None)."""
    host, port = value.strip().lower(), ""
    if host.startswith("["):  # an IPv6 literal: its colons are inside the brackets
        literal, bracket, rest = host.partition("]")
        if bracket and rest.startswith(":"):
            host, port = literal + bracket, rest[1:]
    elif host.count(":") == 1:
        host, port = host.split(":")
    return host.rstrip("."), port or None


def allowed_hosts(entries: Sequence[str]) -> Middleware:
    allowed = {host_and_port(entry) for entry in entries}
    any_port = {host for host, port in allowed if port is None}

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        host, port = host_and_port(request.headers.get("Host", ""))
        if host not in any_port and (host, port) not in allowed:
            # The Host is not echoed: it is the attacker's text.
            raise ApiError(421, "the Host header names no host this server answers to (server.allowed_hosts)")
        return await handler(request)

    return check_host
