"""Logging in with any username and password a server accepts (RFC 3501 6.2.3, RFC 4616).

aioimaplib's `login` sends the username bare, so a space, a quote or a `{` in it breaks the
command. Here both are sent as quoted strings when they are ASCII; otherwise, since an IMAP4rev1
quoted string cannot carry UTF-8, with AUTHENTICATE PLAIN (base64 of UTF-8) where the server
offers it (also where it advertises LOGINDISABLED), the initial response inline with SASL-IR
(RFC 4959), else after the server's `+`. Without AUTH=PLAIN, UTF-8 goes in quoted strings
(valid in IMAP4rev2, RFC 9051, and accepted by most servers).
"""

from __future__ import annotations

import base64
import re

import aioimaplib

from gatewayd.imap.names import quote

# `[CAPABILITY ...]` in the tagged answer, or an untagged CAPABILITY (whose `* ` aioimaplib strips).
_CAPABILITY = re.compile(rb"(?:\A|\[)CAPABILITY ([^\]]*)")


async def login(
    protocol: aioimaplib.IMAP4ClientProtocol, username: str, password: str
) -> aioimaplib.Response:
    """LOGIN or AUTHENTICATE PLAIN; on success the protocol is in the AUTH state and its
    capabilities are those the server announced with its answer, if it did."""
    capabilities = protocol.capabilities
    plain = "AUTH=PLAIN" in capabilities
    if plain and (not (username.isascii() and password.isascii()) or "LOGINDISABLED" in capabilities):
        response = await _authenticate_plain(protocol, username, password)
    else:
        command = aioimaplib.Command(
            "LOGIN", protocol.new_tag(), quote(username), quote(password), loop=protocol.loop
        )
        response = await protocol.execute(command, scrub=password)
    if response.result == "OK":
        async with protocol.state_condition:
            protocol.state = aioimaplib.AUTH
            protocol.state_condition.notify_all()
        for line in response.lines:
            if match := _CAPABILITY.search(bytes(line)):
                protocol.capabilities = set(match.group(1).decode("ascii", "replace").split())
    return response


async def _authenticate_plain(
    protocol: aioimaplib.IMAP4ClientProtocol, username: str, password: str
) -> aioimaplib.Response:
    secret = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
    if "SASL-IR" in protocol.capabilities:
        command = aioimaplib.Command("AUTHENTICATE", protocol.new_tag(), "PLAIN", secret, loop=protocol.loop)
        return await protocol.execute(command, scrub=secret)
    answered = False

    def answer(_line: bytes) -> None:
        # The credentials go once; a second challenge is cancelled (`*`) and ends in a NO/BAD.
        nonlocal answered
        protocol.transport.write(b"*\r\n" if answered else secret.encode("ascii") + b"\r\n")
        answered = True

    protocol._continuation = answer
    try:
        command = aioimaplib.Command("AUTHENTICATE", protocol.new_tag(), "PLAIN", loop=protocol.loop)
        return await protocol.execute(command)
    finally:
        del protocol._continuation  # aioimaplib's own handler again
