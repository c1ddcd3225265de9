"""gatewayd.imap.protocol reads what aioimaplib's own protocol reads, whatever the chunks.

The same bytes, cut into chunks anywhere (inside a line, a CRLF, a literal, right after one), go
to aioimaplib's IMAP4ClientProtocol and to ImapProtocol: every command gets the same response
and the protocols are left in the same state after each chunk. The live comparison against
Dovecot is tests/integration/test_fetch_reading.py."""

from __future__ import annotations

import asyncio
from typing import Any

from aioimaplib import aioimaplib
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.imap.protocol import ImapProtocol


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


def _fetch_response(bodies: list[bytes], tag: str) -> bytes:
    parts = []
    for number, body in enumerate(bodies, 1):
        parts.append(
            b"* %d FETCH (UID %d FLAGS (\\Seen $Label) RFC822.SIZE %d BODY[]<0> {%d}\r\n"
            % (number, 100 + number, len(body), len(body))
            + body
            + b")\r\n"
        )
        if number % 3 == 0:  # a FETCH with no literal between them (a flag change)
            parts.append(b"* %d FETCH (FLAGS (\\Deleted))\r\n" % number)
    parts.append(b"* 7 EXISTS\r\n")
    parts.append(tag.encode() + b" OK Fetch completed (0.001 + 0.000 secs).\r\n")
    return b"".join(parts)


async def _sent_tag(protocol: aioimaplib.IMAP4ClientProtocol) -> str:
    """The tag of the FETCH the protocol was just asked to send (aioimaplib runs it as async)."""
    await asyncio.sleep(0)
    (command,) = protocol.pending_async_commands.values()
    return str(command.tag)


def _state(protocol: aioimaplib.IMAP4ClientProtocol) -> tuple[Any, ...]:
    command = protocol.current_command
    return (
        bytes(protocol.incomplete_line),
        None if command is None else (command.name, list(command.response.lines)),
        protocol.pending_sync_command is None,
        sorted(protocol.pending_async_commands),
    )


async def _read(
    protocol_class: type[aioimaplib.IMAP4ClientProtocol], bodies: list[bytes], cuts: list[int]
) -> tuple[list[tuple[Any, ...]], aioimaplib.Response, bytes]:
    """Feed a UID FETCH's answer to a protocol in chunks ending at `cuts`: its state after each
    chunk, the command's response, what it sent."""
    protocol = protocol_class(asyncio.get_running_loop(), None)
    protocol.tagpre = "GWDD"  # the same tags for both (aioimaplib draws a random prefix)
    transport = _Transport()
    protocol.transport = transport
    protocol.state = aioimaplib.SELECTED
    fetching = asyncio.ensure_future(protocol.uid("fetch", "1:*", "(UID FLAGS BODY.PEEK[])"))
    tag = await _sent_tag(protocol)
    data = _fetch_response(bodies, tag)
    states = []
    start = 0
    for end in [*sorted({min(cut, len(data)) for cut in cuts}), len(data)]:
        protocol.data_received(data[start:end])
        states.append(_state(protocol))
        start = end
    response = await asyncio.wait_for(fetching, 5)
    return states, response, b"".join(transport.sent)


_BODIES = st.lists(
    st.binary(max_size=300).map(lambda raw: raw + b"\r\n(an unclosed parenthesis\r\n"), min_size=1, max_size=7
)


@settings(max_examples=300, deadline=None)
@given(bodies=_BODIES, cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_any_chunks_leave_the_same_response_and_state(bodies: list[bytes], cuts: list[int]) -> None:
    async def both() -> None:
        stock = await _read(aioimaplib.IMAP4ClientProtocol, bodies, cuts)
        ours = await _read(ImapProtocol, bodies, cuts)
        assert ours[0] == stock[0]
        assert ours[1].result == stock[1].result == "OK"
        assert ours[1].lines == stock[1].lines
        assert ours[2] == stock[2]
        assert [bytes(line) for line in ours[1].lines if isinstance(line, bytearray)] == bodies

    asyncio.run(both())


async def test_a_chunk_of_many_lines_is_read_without_recursion() -> None:
    """Thousands of lines in one chunk (a FLAGS fetch of a large folder): aioimaplib's reading
    calls itself once per line and raises RecursionError past about a thousand."""
    protocol = ImapProtocol(asyncio.get_running_loop(), None)
    protocol.transport = _Transport()
    protocol.state = aioimaplib.SELECTED
    fetching = asyncio.ensure_future(protocol.uid("fetch", "1:*", "(UID FLAGS)"))
    tag = await _sent_tag(protocol)
    lines = b"".join(b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (n, n) for n in range(1, 5001))
    protocol.data_received(lines + tag.encode() + b" OK done\r\n")
    response = await asyncio.wait_for(fetching, 5)
    assert response.result == "OK"
    assert len(response.lines) == 5001
    assert response.lines[4999] == b"5000 FETCH (UID 5000 FLAGS (\\Seen))"
