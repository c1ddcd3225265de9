"""What a message is compared and identified by: the TLSH signature of its normalised body, and
its digest for training."""

from __future__ import annotations

import hashlib
import re
from operator import itemgetter

import tlsh

from gatewayd.message import ParsedMessage
from gatewayd.message.text import squeeze_spaces

# Body bytes hashed for a signature at most; TLSH costs about 8 µs per KB.
MAX_SIGNATURE_TEXT = 16 * 1024
# TLSH itself needs 50 bytes with some variety. Below about 128 bytes short replies and notices
# look alike and a few changed words move the hash a lot: not worth a signature.
MIN_SIGNATURE_TEXT = 128

# A link's query and fragment: "(https?|ftp)://path" then "?" or "#" and the rest. Searched from its
# "://", the scheme checked by lookbehinds: a literal first character lets the regex engine skip
# to it instead of trying every position. Case-insensitive (ASCII only, as bytes.lower()), as it
# runs before the lower-casing; the path repeated possessively, as a shorter one is followed by
# another path byte, never by "?" or "#". The link up to the query is kept by itemgetter, a C call
# per link: a template with a group (rb"://\1") calls Python code per link in Python 3.11.
_URL_QUERY = re.compile(rb"(://(?:(?<=https://)|(?<=http://)|(?<=ftp://))[^\s?#]*+)[?#]\S*", re.IGNORECASE)
_LINK_KEPT = itemgetter(1)
# ASCII letters lower-cased and the whitespace bytes.split() splits at made spaces.
_LOWER_AND_SPACE = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ\t\n\x0b\x0c\r", b"abcdefghijklmnopqrstuvwxyz     "
)


def normalise_body(text: str) -> bytes:
    """The body as compared for near duplicates: per-recipient details (numbers, link
    parameters, spacing, case) taken out. On bytes, where each step runs in C."""
    data = text[: MAX_SIGNATURE_TEXT * 2].encode("utf-8", "replace")
    if data.find(b"://") >= 0:  # not `in`: on bytes it makes and clears a TypeError first
        data = _URL_QUERY.sub(_LINK_KEPT, data)
    # b" ".join(data.lower().split()) without the digits, in passes that make no object per word:
    # one translate lower-cases, drops the digits and makes whitespace spaces, a regex collapses
    # the runs.
    spaced = data.translate(_LOWER_AND_SPACE, b"0123456789")
    return squeeze_spaces(spaced)[:MAX_SIGNATURE_TEXT]


def signature(message: ParsedMessage) -> str | None:
    """TLSH of the normalised body, or None when the body is too short or too uniform to hash."""
    body = normalise_body(message.text)
    if len(body) < MIN_SIGNATURE_TEXT:
        return None
    digest = tlsh.hash(body)
    return digest if digest and digest != "TNULL" else None


def message_digest(message: ParsedMessage) -> str:
    """Identity of a message for training: Message-ID plus a hash of the raw body, so copies of
    it in two folders (with other Received lines) are one message, and a re-sent text is not."""
    body = message.raw[header_end(message.raw) :]
    mid = (message.data.get("message_id") or "").encode("utf-8", "replace")
    return hashlib.sha256(mid + b"\x00" + hashlib.sha256(body).digest()).hexdigest()


_BLANK_LINE = re.compile(rb"\n\r?\n")


def header_end(raw: bytes) -> int:
    """Where the header block of `raw` ends (the whole of it when there is no body)."""
    # One regex search stops at the first blank line; find() of the form that is absent (CRLF in
    # LF mail, say) would scan the whole body.
    blank = _BLANK_LINE.search(raw)
    return blank.start() if blank else len(raw)
