"""The log: secrets masked, and one line per record whatever a sender wrote into it."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from gatewayd.logs import setup_logging

# What a line of a record starts with: "2026-11-22 09:33:16,123 LEVEL name: ".
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """What gatewayd's log handler writes, set up as `gatewayd run` sets it up."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("info", secrets=["hunter22"])
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(written := io.StringIO())
    yield written
    root.handlers[:], root.level = handlers, level


def test_what_a_sender_wrote_cannot_forge_or_hide_a_log_line(output: io.StringIO) -> None:
    """A subject, a URL path or a server's reply quoted in a log line could end the line and start
    a record of its own (CR LF), or hide text on a terminal (ANSI, a right-to-left override)."""
    forged = "2026-11-22 09:00:00,000 INFO gatewayd.api: token revoked"
    log = logging.getLogger("gatewayd.test")
    log.warning("report of %s failed", f"/v1/x\r\n{forged}")
    log.info("subject %r kept", "Hi\x1b[2K\x1b[1Ahidden")
    log.info("from %s", "Bob \u202eevil\u2028\u2066x\x85y")
    try:
        raise ValueError(f"server said: NO\r\n{forged} hunter22")
    except ValueError:
        log.exception("fetch failed: %s", "a\nb")
    lines = output.getvalue().splitlines()
    records = [line for line in lines if _RECORD.match(line)]
    assert len(records) == 4, lines
    assert records[0].endswith(f"report of /v1/x\\r\\n{forged} failed")
    assert "Hi\\x1b[2K\\x1b[1Ahidden" in records[1]
    assert records[2].endswith("from Bob \\u202eevil\\u2028\\u2066x\\x85y")
    assert records[3].endswith("fetch failed: a\\nb")
    # The traceback keeps its lines, each indented under its record; the secret masked.
    traceback = lines[lines.index(records[3]) + 1 :]
    assert traceback[0] == "  Traceback (most recent call last):"
    assert all(line.startswith("  ") for line in traceback), traceback
    assert traceback[-2:] == ["  ValueError: server said: NO\\r", f"  {forged} ***"]
    assert not any("\x1b" in line or "\u202e" in line for line in lines)
