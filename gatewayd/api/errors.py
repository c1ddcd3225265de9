"""JSON errors: every failure an API client can cause is a 4xx with a code, never a 500."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gatewayd.store import is_store_failure

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    421: "misdirected_request",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


# Long enough for another process's transaction or a prune batch to end.
STORE_RETRY_AFTER_SECONDS = 5

# What aiohttp's own HTTP errors say that the JSON error keeps.
_KEPT_HEADERS = ("Retry-After", "Allow")


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or error_code(status)
        self.message = message
        self.headers = headers or {}


def error_code(status: int) -> str:
    return _CODES.get(status, "error")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="gatewayd"'
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # HTTP requires Allow on a 405 (RFC 9110 15.5.6); aiohttp's exception carries it.
        kept = {name: value for name, value in exc.headers.items() if name in _KEPT_HEADERS}
        return error_response(exc.status, error_code(exc.status), exc.reason, kept)
    except Exception as exc:
        if is_store_failure(exc):
            # Not the client's fault nor a bug: the store is locked, full or read-only for now.
            log.warning("%s %s: the store failed: %s", request.method, request.path, exc)
            return error_response(
                503,
                "store_unavailable",
                f"the event store is unavailable ({exc}); try again later",
                {"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
            )
        # A bug of ours, not bad input: log it (without the request's secrets) and say so.
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")
