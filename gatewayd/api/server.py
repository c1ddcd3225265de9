"""The HTTP server: aiohttp's runner, answering requests it cannot parse with our JSON error.

aiohttp refuses a malformed request (request line, header bytes, an over-long header, chunked
encoding) before any handler or middleware sees it, with a text/plain 400 that quotes the
offending bytes, and logs them with a traceback: a bearer token in the bad line ends up in both.
Here that answer is `errors.error_response` instead, and the log names the error's kind alone.

aiohttp builds the server and its per-connection handlers itself and offers no hook for this; the
one seam is the `RequestHandler.handle_error` method, stable from aiohttp 3.9 on. The same
protocol class refuses a connection over `server.max_connections` (gatewayd.api.connections) as
soon as it is made.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from aiohttp import web
from aiohttp.web_request import BaseRequest

from gatewayd.api.connections import BUSY_RESPONSE, ConnectionLimit
from gatewayd.api.errors import error_code, error_response

log = logging.getLogger(__name__)


class _JsonErrorHandler(web.RequestHandler):
    __slots__ = ("_limit",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = cast("_JsonErrorServer", self._manager).connection_limit
        self._limit: ConnectionLimit | None = None
        if not limit.admit():
            # Answered before anything is read, and closed: its descriptor is free again at once.
            cast(asyncio.Transport, transport).write(BUSY_RESPONSE)
            transport.close()
            return
        self._limit = limit
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._limit is None:
            return  # refused: aiohttp never knew of it
        self._limit.release()
        self._limit = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # `message` and `str(exc)` quote the client's bytes: neither goes out nor into the log.
        kind = type(exc).__name__ if exc is not None else "error"
        if status >= 500:
            # A bug of ours, not bad input: its traceback is what the operator needs.
            log.error("internal error outside the handlers (%s)", kind, exc_info=exc)
            reply = "internal error"
        else:
            log.info("refused a malformed HTTP request from %s (%s)", request.remote, kind)
            reply = "malformed HTTP request"
        response = error_response(status, error_code(status), reply)
        response.force_close()  # what follows on the connection cannot be trusted to be framed right
        return response


class _JsonErrorServer(web.Server):
    connection_limit: ConnectionLimit

    def __call__(self) -> web.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer an unparseable request with a JSON error, and
    which keeps at most `max_connections` open."""

    def __init__(self, app: web.Application, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._connection_limit = ConnectionLimit(max_connections)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp's Application constructs a plain Server; ours differs only in its protocol class.
        server.__class__ = _JsonErrorServer
        cast(_JsonErrorServer, server).connection_limit = self._connection_limit
        return server
