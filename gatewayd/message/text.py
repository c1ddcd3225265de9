"""Text from bytes and header values: charsets, decoding, surrogate escapes, cleaning, RFC 2047 words."""

from __future__ import annotations

import binascii
import codecs
import functools
import re

from gatewayd.events import without_lone_surrogates
from gatewayd.message.limits import MAX_HEADER_CHARS
from gatewayd.message.lowercase import lower

# Labels mail uses for a charset Python reads more narrowly than the senders meant (as browsers do).
_CHARSET_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "iso-8859-8-i": "iso-8859-8",
    "tis-620": "cp874",
}


@functools.lru_cache(maxsize=256)
def _codec(charset: str | None) -> str | None:
    """Python's codec for a MIME charset label, or None when unknown or not a text encoding."""
    if not charset:
        return None
    label = lower(charset.strip().strip("\"'"))
    label = _CHARSET_SUPERSETS.get(label, label)
    try:
        b"".decode(label)  # LookupError for unknown labels and for base64, zlib, rot13 ...
        return codecs.lookup(label).name
    except Exception:
        return None


def decode_bytes(data: bytes, charset: str | None, final: bool = True) -> str:
    """Decode with the declared charset; fall back to UTF-8, then windows-1252, then latin-1.

    With final=False (the data was cut short) a multi-byte character cut in half at the end is
    dropped, rather than making the whole text fail strict decoding.
    """
    codec = _codec(charset)
    for encoding in dict.fromkeys(e for e in (codec, "utf-8") if e):
        try:
            text = codecs.getincrementaldecoder(encoding)("strict").decode(data, final=final)
        except Exception:
            continue
        return text if encoding == "utf-8" else without_lone_surrogates(text)
    if codec:
        try:
            text = codecs.getincrementaldecoder(codec)("replace").decode(data, final=final)
            return without_lone_surrogates(text)
        except Exception:
            pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def fix_surrogates(text: str) -> str:
    """Replace the parser's surrogate escapes of raw 8-bit bytes by real characters."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return decode_bytes(text.encode("utf-8", "surrogateescape"), None)


def clean_header(value: str) -> str:
    """Capped, unfolded header value without surrogate escapes."""
    value = value[:MAX_HEADER_CHARS]
    return fix_surrogates(value.replace("\r", "").replace("\n", ""))


_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x9f]")  # C0 and C1, not whitespace
# ASCII's controls (C0 and DEL) and the white space str.split() splits at (\t-\r, \x1c-\x1f and the
# space) made spaces, byte by byte: a search for the controls by _CONTROLS takes 20 instructions a
# character, translate 3.
_ASCII_SEPARATORS = bytes(range(0x21)) + b"\x7f"
_ASCII_SEPARATORS_TO_SPACE = bytes.maketrans(_ASCII_SEPARATORS, b" " * len(_ASCII_SEPARATORS))
# Runs of two spaces or more, by a literal start the regex engine scans for itself ("  +" enters
# the matcher at every single space).
_SPACE_RUN = re.compile(b"   *")


def squeeze_spaces(spaced: bytes) -> bytes:
    """Runs of spaces made one, none at the ends: the last step of b" ".join(data.split()) done
    as a translate that made every separator a space, then this (C passes, no object per word)."""
    return _SPACE_RUN.sub(b" ", spaced).strip(b" ")


def collapse(text: str) -> str:
    """Control characters dropped, whitespace runs made single spaces, stripped."""
    if text.isascii():
        # " ".join(text.split()) without an object per word: half the instructions for an excerpt.
        spaced = text.encode("ascii").translate(_ASCII_SEPARATORS_TO_SPACE)
        return squeeze_spaces(spaced).decode("ascii")
    return " ".join(_CONTROLS.sub(" ", text).split())


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; a word that does not decode is kept as written.

    Adjacent words in the same charset are joined before decoding, since senders split
    multi-byte characters across words; whitespace between encoded words is dropped (RFC 2047).
    """
    if "=?" not in text:
        return collapse(text)
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    position = 0
    after_word = False  # the text so far ends with a decoded word

    def flush() -> None:
        nonlocal pending_charset
        if pending:
            out.append(decode_bytes(bytes(pending), pending_charset))
            pending.clear()
        pending_charset = None

    for match in _ENCODED_WORD.finditer(text):
        between = text[position : match.start()]
        decoded = _decode_word(match.group(2), match.group(3))
        if decoded is None:
            flush()
            out.append(between + match.group(0))
            after_word = False
        else:
            charset = match.group(1).split("*", 1)[0]  # drop an RFC 2231 language tag
            adjacent = after_word and not between.strip()  # whitespace between words is dropped
            if not adjacent or lower(charset) != lower(pending_charset or ""):
                flush()
            if not adjacent:
                out.append(between)
            pending_charset = charset
            pending += decoded
            after_word = True
        position = match.end()
    flush()
    out.append(text[position:])
    return collapse("".join(out))


_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _decode_word(encoding: str, encoded: str) -> bytes | None:
    try:
        if encoding in "bB":
            data = "".join(encoded.split())
            if not _BASE64_TEXT.fullmatch(data):
                return None  # a2b_base64 would silently drop the junk and decode what is left
            data = data.rstrip("=")
            if len(data) % 4 == 1:  # one stray character cannot be decoded; drop it
                data = data[:-1]
            return binascii.a2b_base64(data + "=" * (-len(data) % 4))
        return binascii.a2b_qp(encoded.encode("utf-8"), header=True)
    except (binascii.Error, ValueError):
        return None


def text_header(value: str | None) -> str | None:
    return (decode_words(value) or None) if value is not None else None


def raw_header(value: str | None) -> str | None:
    return (collapse(value) or None) if value is not None else None
