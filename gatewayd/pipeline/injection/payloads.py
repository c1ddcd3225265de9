"""URLs and encoded payloads: links, data: URLs, exfiltration hosts and placeholders, base64 and hex
blobs decoded when they hold text."""

from __future__ import annotations

import binascii
import re
from collections import Counter
from collections.abc import Iterable

from gatewayd.message.lowercase import lower
from gatewayd.pipeline.injection.limits import MAX_BLOB_CHARS, MAX_BLOBS

URL_TAIL = re.compile(r"://[^\s<>\"'`\]\)]{1,2048}")  # a literal first: the engine skips ahead fast
MARKDOWN_IMAGE = re.compile(r"!\[[^\]\n]{0,300}\]\(\s*<?((?:https?:)?//[^\s)>]{1,2048})", re.I)
DATA_URL = re.compile(r"data:([a-z]{1,20}/[a-z0-9.+-]{1,60})((?:;[a-z0-9=.+-]{1,60}){0,4}),", re.I)
DATA_PAYLOAD = re.compile(r"[A-Za-z0-9+/=%._~-]{1,16384}")
_SECRET_WORD = (
    r"(?:secret|data|password|api|token|key|system|prompt|conversation|chat|summary|context|history|memory"
    r"|insert|credential)"
)
# Template holes in a URL that a model is meant to fill in; "{{" alone is enough.
PLACEHOLDER = re.compile(
    rf"\{{\{{|\$\{{|\{{{_SECRET_WORD}[a-z0-9_ .-]{{0,40}}\}}|<{_SECRET_WORD}[a-z0-9_ -]{{0,40}}>"
    rf"|\[{_SECRET_WORD}[a-z0-9_ -]{{0,40}}\]|append[ +_-](?:the|your|all|here)|include[ +_-](?:the|your|all)"
    r"|system[ +_-]?prompt|conversation[ +_-]?history|chat[ +_-]?history"
)
EXFIL_HOSTS = (
    "webhook.site", "requestbin.com", "requestbin.net", "requestcatcher.com", "pipedream.net", "hookbin.com",
    "beeceptor.com", "ngrok.io", "ngrok-free.app", "ngrok.app", "ngrok.dev", "burpcollaborator.net",
    "oastify.com", "interact.sh", "oast.pro", "oast.live", "oast.site", "oast.online", "oast.fun", "oast.me",
    "canarytokens.com", "postb.in", "ptsv2.com", "ptsv3.com", "trycloudflare.com", "serveo.net", "loca.lt",
    "localtunnel.me", "dnslog.cn", "ceye.io", "requestrepo.com", "webhook.cool", "mockbin.org",
)  # fmt: skip
EXFIL_PATHS = ("discord.com/api/webhooks", "discordapp.com/api/webhooks")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
HEX_RUN = re.compile(r"[0-9a-fA-F]{80,}")
# No payload without a run of 60 base64 characters (80 for hex): most mail stops here. Runs are
# looked for in the UTF-8 bytes with their characters mapped to "a" (C passes), not by a regex
# trying every letter.
BASE64_TO_A = bytes(0x61 if chr(c) in "+/=_-" or chr(c).isalnum() else 0x20 for c in range(128)) + b" " * 128
HEX_TO_A = bytes(0x61 if chr(c) in "0123456789abcdefABCDEF" else 0x20 for c in range(128)) + b" " * 128
_BASE64_GAP = re.compile(r"\s{1,4}")


_HOST_END = re.compile(r"[/?#\\]")


def host(url: str) -> str:
    rest = url.split("://", 1)[-1].lstrip("/")
    authority = _HOST_END.split(rest, maxsplit=1)[0]
    return lower(authority.rpartition("@")[2].split(":")[0]).rstrip(".")


def printable_text(data: bytes) -> str | None:
    """`data` as text when it mostly is (so random bytes and binary blobs are left alone)."""
    text = data.decode("utf-8", "replace")
    if not text:
        return None
    if text.isascii():  # then `data` is `text`: count by deleting bytes (C passes)
        printable = len(data) - len(data.translate(None, _PRINTABLE_ASCII))
        letters = len(data) - len(data.translate(None, _ASCII_LETTERS))
    else:  # count each distinct character's test once
        counts = Counter(text)
        printable = sum(n for c, n in counts.items() if c.isprintable() or c in "\r\n\t")
        letters = sum(n for c, n in counts.items() if c.isalpha())
    return text if printable >= 0.95 * len(text) and letters >= 0.5 * len(text) else None


_PRINTABLE_ASCII = bytes(c for c in range(128) if chr(c).isprintable() or chr(c) in "\r\n\t")
_ASCII_LETTERS = bytes(c for c in range(128) if chr(c).isalpha())


# A character of a run of _BASE64_RUN (not its "=") as "a", any other as " ".
_RUN_CHAR_TO_A = bytes(0x20 if c == ord("=") else a for c, a in enumerate(BASE64_TO_A))
_RUN_START = b"a" * 16


def _base64_runs(text: str) -> Iterable[re.Match[str]]:
    """_BASE64_RUN.finditer(text). The engine tries every letter of every word; a find over the
    text's characters mapped to "a" jumps to the next 16 run characters instead. That is the
    start of a run (the previous match ended at a run's end or after its "="), where the regex
    matches all of the run, as finditer's match there does. After a few runs the engine's own
    loop takes over from there: where runs are dense, a jump per run costs more. Run characters
    are ASCII: the "?" an encoding to ASCII puts for each other character keeps the positions."""
    mapped = text.encode("ascii", "replace").translate(_RUN_CHAR_TO_A)
    position = mapped.find(_RUN_START)
    for _ in range(_JUMPS):
        match = _BASE64_RUN.match(text, position) if position >= 0 else None
        if match is None:  # no more runs (a failed match cannot happen: then finditer has the word)
            break
        yield match
        position = mapped.find(_RUN_START, match.end())
    if position >= 0:
        yield from _BASE64_RUN.finditer(text, position)


_JUMPS = 8


def base64_blobs(text: str) -> Iterable[str]:
    """Runs of base64 of 80+ characters, joined across the line breaks of wrapped blobs."""
    blob: list[str] = []
    size = last_end = found = 0
    for match in _base64_runs(text):
        if blob and not _BASE64_GAP.fullmatch(text, last_end, match.start()):
            if size >= 80:
                yield "".join(blob)
                found += 1
            blob, size = [], 0
        if found >= MAX_BLOBS:
            return
        if size < MAX_BLOB_CHARS:
            blob.append(match.group(0))
            size += len(blob[-1])
        last_end = match.end()
    if size >= 80:
        yield "".join(blob)


def decode_base64(blob: str) -> str | None:
    if blob.isalpha() or blob.isdigit():  # a long word or number is not a payload
        return None
    data = blob.replace("-", "+").replace("_", "/").rstrip("=")
    data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data
    try:
        return printable_text(binascii.a2b_base64(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError):
        return None
