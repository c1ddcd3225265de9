"""gatewayd.imap.protocol against the real Dovecot: a UID FETCH of many messages at once (several
in each read, some split across reads) answers exactly what aioimaplib's own protocol reads."""

from __future__ import annotations

import aioimaplib

from gatewayd.imap import protocol
from gatewayd.imap.fetch import FETCH_ITEMS, parse_fetch
from gatewayd.sandbox.dovecot import PASSWORD, Dovecot
from tests.sse import mail

ITEMS = FETCH_ITEMS.format(max_bytes=262144)


async def _fetch_all(client: aioimaplib.IMAP4, user: str) -> aioimaplib.Response:
    try:
        await client.wait_hello_from_server()
        assert (await client.login(user, PASSWORD)).result == "OK"
        assert (await client.select("INBOX")).result == "OK"
        return await client.uid("fetch", "1:*", ITEMS)
    finally:
        await client.logout()


def _without_recent(line: bytes | bytearray) -> bytes | bytearray:
    return line.replace(b"FLAGS (\\Recent)", b"FLAGS ()") if isinstance(line, bytes) else line


async def test_a_large_fetch_reads_as_aioimaplib_reads_it(dovecot: Dovecot, user: str) -> None:
    sent = [
        mail(f"note {n} :) (see {n})", body="(a line with a parenthesis\r\n" * (n % 7) + "x" * 3000 * (n % 5))
        for n in range(80)
    ]
    for raw in sent:
        await dovecot.deliver_async(user, raw)
    ours = await _fetch_all(protocol.IMAP4(dovecot.host, dovecot.imap_port), user)
    stock = await _fetch_all(aioimaplib.IMAP4(dovecot.host, dovecot.imap_port), user)
    assert ours.result == stock.result == "OK"
    # Only the first session to select the folder sees \Recent; the tagged line ends with timings.
    assert [_without_recent(line) for line in ours.lines[:-1]] == stock.lines[:-1]
    assert ours.lines[-1].startswith(b"Fetch completed")
    fetched = parse_fetch(ours.lines, "INBOX", 1)
    assert [message.uid for message in fetched] == list(range(1, 81))
    # Dovecot adds its trace fields on delivery; what was sent follows them unchanged.
    assert all(message.raw.endswith(raw) for message, raw in zip(fetched, sent, strict=True))
