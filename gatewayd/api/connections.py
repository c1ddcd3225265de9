"""A cap on open HTTP connections, so that clients cannot take every file descriptor.

Each connection, a stream or an idle keep-alive alike, holds a descriptor, and so does every IMAP
connection, the SQLite store and the template child: past the process's limit (often 1024) the
watchers could not reconnect and the store could not open a file. A connection over
`server.max_connections` is answered at once with a 503 (JSON, `Retry-After`) and closed, before
aiohttp reads anything from it; the streams and requests already open go on as ever.
"""

from __future__ import annotations

import json
import logging
import resource

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# Without a limit (RLIM_INFINITY), as many as such a process would meet in practice.
_UNLIMITED_FDS = 1 << 20


def default_max_connections() -> int:
    """Half the file-descriptor soft limit (RLIMIT_NOFILE): the other half is for IMAP, SQLite,
    the template child and logs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, (_UNLIMITED_FDS if soft == resource.RLIM_INFINITY else soft) // 2)


def _busy_response() -> bytes:
    body = json.dumps({"error": {"code": "unavailable", "message": "too many connections"}}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER_SECONDS}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


BUSY_RESPONSE = _busy_response()


class ConnectionLimit:
    """Counts the open connections; `admit` says whether one more may stay."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.open = 0
        self._full = False  # warned about since the count was last below the maximum

    def admit(self) -> bool:
        if self.open < self.maximum:
            self.open += 1
            return True
        if not self._full:
            self._full = True
            log.warning(
                "%d HTTP connections open (server.max_connections): refusing more until some close",
                self.open,
            )
        return False

    def release(self) -> None:
        self.open -= 1
        if self.open < self.maximum:
            self._full = False
