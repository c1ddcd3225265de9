"""Open streams of run-time tokens are closed soon after their token is revoked or expires.

A token is usually revoked by another process (`gatewayd token revoke`), so the daemon learns
of it through the token store: every `server.token_check_seconds` one query fetches the records
of the run-time tokens that have streams open (however many streams that is), and the streams of
a revoked, expired or deleted token get a `closing` event and end. Requests are refused at once
anyway: every request looks its token up.
"""

from __future__ import annotations

import asyncio
import logging

from gatewayd.api.context import Gateway
from gatewayd.events import rfc3339

log = logging.getLogger(__name__)


async def check_streams(gateway: Gateway) -> int:
    """End the streams whose token may no longer be used; how many were ended."""
    streams = [s for s in gateway.streams if s.principal.token_id is not None]
    if not streams or gateway.tokens is None:
        return 0
    records = await gateway.tokens.get({s.principal.token_id for s in streams if s.principal.token_id})
    now = rfc3339()
    ended = 0
    for stream in streams:
        record = records.get(stream.principal.token_id or "")
        problem = "revoked" if record is None else record.problem(now)
        if problem is not None:
            stream.end(f"token_{problem}")
            ended += 1
    return ended


async def guard_tokens(gateway: Gateway) -> None:
    """Run check_streams every server.token_check_seconds, until cancelled."""
    while True:
        await asyncio.sleep(gateway.config.server.token_check_seconds)
        try:
            await check_streams(gateway)
        except Exception:
            log.exception("checking the tokens of open streams failed")
