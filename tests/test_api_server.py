"""Requests aiohttp refuses before any handler: our JSON error, and nothing of the request logged."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from gatewayd.app import Daemon
from tests.conftest import mailless_config

SECRET = "tok-5ecret-never-echoed"
HEAD = "GET /events HTTP/1.1\r\nHost: x\r\n"

# Each is refused by aiohttp's parser, with the secret in the bytes it would quote.
MALFORMED = {
    "a control byte in a header": f"{HEAD}Authorization: Bearer {SECRET}\x01\r\n\r\n",
    "a bad request line": f"G\x00T /events?access_token={SECRET} HTTP/1.1\r\nHost: x\r\n\r\n",
    "a bad HTTP version": f"GET /events?access_token={SECRET} HTTP/9.x\r\n\r\n",
    "an over-long header": f"{HEAD}Authorization: Bearer {SECRET}{'a' * 70_000}\r\n\r\n",
    "bad chunked encoding": (
        f"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n"
        f"Transfer-Encoding: chunked\r\n\r\nzz{SECRET}\r\nabc\r\n0\r\n\r\n"
    ),
}


async def test_a_malformed_request_gets_a_json_400_quoting_and_logging_none_of_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's own answer was text/plain quoting the offending line (a bearer token in it), and
    its log had the same line in a traceback."""
    daemon = Daemon(mailless_config(tmp_path))
    await daemon.start()
    try:
        with caplog.at_level(logging.DEBUG):
            for what, request in MALFORMED.items():
                reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
                writer.write(request.encode("latin-1"))
                answer = await asyncio.wait_for(reader.read(), 30)  # the server closes after it
                writer.close()
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.split(b"\r\n")[0].split()[1] == b"400", (what, head)
                assert b"content-type: application/json" in head.lower(), (what, head)
                error = json.loads(body)["error"]
                assert error["code"] == "bad_request" and error["message"], what
                assert SECRET.encode() not in answer, what
    finally:
        await daemon.stop()
    assert "malformed HTTP request" in caplog.text
    assert SECRET not in caplog.text
