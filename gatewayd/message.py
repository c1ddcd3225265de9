"""Turn the raw bytes of one fetched message into the `data` of a `message.received` event.

The input is whatever the server had, possibly cut short by the fetch cap (`BODY.PEEK[]<0.N>`), and
quite often malformed. Nothing here may raise on bad mail: every field is extracted on its own, and
a field that cannot be extracted is logged at debug level and becomes None or [].

The structure is parsed with `email.parser.BytesParser` under `policy.compat32`, not
`policy.default`: the modern policy builds a structured header object on every header access (the
feed parser itself asks each part for its Content-Type several times), which made parsing 3-4 times
slower on the SpamAssassin corpus (median 1.4 ms against 0.3 ms for 10-50 KB messages), and its
header parser is slow on very long header values. A single-part message with a plain header block
(most mail) skips the feed parser: the same compat32 Message is built here, at a third of the cost.
The few headers we need are decoded here instead: RFC 2047 words by a small decoder that tolerates
unknown charsets and bad base64, addresses with `email.utils.getaddresses` (its common shapes by a
regular expression that gives the same result), dates with `email.utils.parsedate_tz`.

Strings handed out never contain lone surrogates (the parser's stand-in for 8-bit bytes), since the
event is stored and sent as UTF-8 JSON.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import errors
from email.message import Message
from email.parser import BytesHeaderParser, Parser
from email.policy import compat32
from email.utils import getaddresses, parsedate_tz
from html import unescape
from typing import Any, TypeVar

from gatewayd.events import rfc3339

log = logging.getLogger(__name__)

T = TypeVar("T")

# Header values are cut to this many characters before decoding: a 1 MB header must not cost
# seconds (getaddresses runs at about 5 µs per address), and no useful header is this long.
MAX_HEADER_CHARS = 8192
# Parts walked per message; more than this is not mail a person wrote.
MAX_PARTS = 200
# Nesting depth the parser accepts. The stdlib feed parser resumes one generator per level for
# every line, so deep nesting costs depth x lines and ends in RecursionError near 1000 levels.
MAX_DEPTH = 20
# HTML fed to the HTML-to-text converter at most, and decoded text bytes looked at at most.
MAX_HTML_CHARS = 256 * 1024
MAX_TEXT_BYTES = 256 * 1024

# Headers kept raw under data["headers"] for later pipeline stages.
RAW_HEADERS = ("list-id", "auto-submitted", "precedence", "return-path")
_WANTED = frozenset(
    {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references"}
) | frozenset(RAW_HEADERS)


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """What the IMAP layer hands over for one message."""

    folder: str
    uid: int
    uidvalidity: int
    raw: bytes  # the first N bytes of the message
    size: int  # RFC822.SIZE: the full size on the server
    flags: tuple[str, ...]
    internaldate: str | None  # as the server sent it, e.g. "21-Nov-2026 13:25:53 +0000"


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the pipeline's stages read: the event data plus the bodies and all headers."""

    data: dict[str, Any]
    # Lower-cased header names to their raw values, in order of appearance.
    headers: dict[str, list[str]]
    # Decoded text of the first text/plain body part (else the visible text of the HTML part).
    text: str
    # Decoded source of the first text/html body part, if any.
    html: str | None
    raw: bytes


def parse_message(msg: FetchedMessage, excerpt_chars: int = 500) -> dict[str, Any]:
    """The `data` of a `message.received` event for `msg`. Never raises on malformed mail."""
    return parse(msg, excerpt_chars).data


def parse(msg: FetchedMessage, excerpt_chars: int = 500) -> ParsedMessage:
    """Parse once for the event and for every pipeline stage. Never raises on malformed mail."""
    raw = bytes(msg.raw or b"")
    root = _parse(raw)
    headers = _safe({}, _collect_headers, root)

    def first(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values else None

    truncated = isinstance(msg.size, int) and len(raw) < msg.size
    leaves, walked_all = _safe(([], False), _leaves, root)
    # The part the fetch cap cut into has no trustworthy size.
    cut_part = _safe(None, _cut_part, leaves, walked_all) if truncated else None
    attachments = _safe([], _attachments, leaves, root, cut_part)
    text, html = _safe(("", None), _bodies, leaves, root, cut_part)
    data = {
        "folder": msg.folder,
        "uid": msg.uid,
        "uidvalidity": msg.uidvalidity,
        "size": msg.size,
        "flags": list(msg.flags or ()),
        "message_id": _safe(None, _message_id, first("message-id")),
        "from": _safe(None, _first_address, headers.get("from", [])),
        "to": _safe([], _addresses, headers.get("to", [])),
        "cc": _safe([], _addresses, headers.get("cc", [])),
        "reply_to": _safe([], _addresses, headers.get("reply-to", [])),
        "subject": _safe(None, _text_header, first("subject")),
        "date": _safe(None, _date, first("date")),
        "received_at": _safe(None, _internaldate, msg.internaldate),
        "in_reply_to": _safe(None, _in_reply_to, first("in-reply-to")),
        "references": _safe([], _references, first("references")),
        "has_attachments": bool(attachments),
        "attachments": attachments,
        "body_text_excerpt": excerpt(text, excerpt_chars) if text and excerpt_chars > 0 else None,
        "truncated": truncated,
        "headers": {name: _safe(None, _raw_header, first(name)) for name in RAW_HEADERS},
    }
    return ParsedMessage(data=data, headers=headers, text=text, html=html, raw=raw)


def from_address(data: dict[str, Any]) -> str | None:
    """The lower-cased sender address of event data from `parse_message`, for indexing."""
    sender = data.get("from") if isinstance(data, dict) else None
    address = sender.get("address") if isinstance(sender, dict) else None
    return address.lower() if isinstance(address, str) and address else None


def _safe(fallback: T, extract: Callable[..., T], *args: Any) -> T:
    """Run one field extractor; a broken field must not spoil the others."""
    try:
        return extract(*args)
    except Exception:
        log.debug("could not extract %s", getattr(extract, "__name__", extract), exc_info=True)
        return fallback


# ---------------------------------------------------------------------------------------------
# Parsing the structure


class _TooManyPartsError(Exception):
    def __init__(self, root: Message) -> None:
        super().__init__("MIME structure too deep or too large")
        self.root = root


class _GuardedMessage(Message):
    """A compat32 Message that stops the parse beyond MAX_DEPTH levels or MAX_PARTS parts.

    The feed parser attaches each new part to its parent as soon as the part starts, so this is
    where depth and count are known. Raising aborts the parse; the tree built so far holds only
    whole parts (the one refused had not begun), and the caller keeps it.
    """

    _gw_depth = 0
    _gw_parts = 1
    _gw_root: _GuardedMessage | None = None

    def attach(self, payload: Message) -> None:  # type: ignore[override]
        root = self._gw_root or self
        if self._gw_depth >= MAX_DEPTH or root._gw_parts >= MAX_PARTS:
            raise _TooManyPartsError(root)
        root._gw_parts += 1
        payload._gw_depth = self._gw_depth + 1  # type: ignore[attr-defined]
        payload._gw_root = root  # type: ignore[attr-defined]
        super().attach(payload)


_PARSER = Parser(_class=_GuardedMessage, policy=compat32)
_HEADER_PARSER = BytesHeaderParser(policy=compat32)
# A header block in its plainest form: header fields (a name, a colon and the value, then its
# continuation lines) and the empty line that ends the block.
_PLAIN_HEADER_BLOCK = re.compile(r"(?:[\041-\071\073-\176]++:.*+\n(?:[ \t].*+\n)*+)*+\r?\n")
# One field of such a block: the name, and the value from its first non-blank character on.
_HEADER_FIELD = re.compile(r"([\041-\071\073-\176]++):[ \t]*+(.*+\n(?:[ \t].*+\n)*+)")
# A CR without LF, which the feed parser takes for a line end where _HEADER_FIELD does not.
_BARE_CR = re.compile(r"\r(?!\n)")


def _parse(raw: bytes) -> Message:
    try:
        return _parse_structure(raw)
    except _TooManyPartsError as exc:
        log.debug("MIME deeper than %d or over %d parts; keeping the first", MAX_DEPTH, MAX_PARTS)
        return exc.root
    except Exception:
        log.debug("MIME parse failed; falling back to the headers alone", exc_info=True)
    try:
        return _HEADER_PARSER.parsebytes(raw)  # the body becomes one text payload
    except Exception:
        log.debug("header parse failed too", exc_info=True)
        return Message()


def _parse_structure(raw: bytes) -> Message:
    """What BytesParser.parsebytes(raw) gives; a plain single-part message without the feed parser."""
    text = raw.decode("ascii", "surrogateescape")  # as BytesParser does
    root = _plain_single_part(text)
    return root if root is not None else _PARSER.parsestr(text)


def _plain_single_part(text: str) -> Message | None:
    """The feed parser's result for a single-part message with a plain header block, else None.

    The feed parser takes about 90 µs for a typical 4 KB message, most of it passing each line of
    the headers and the body through a stack of generators. From a plain header block (no envelope
    "From " line, no line it would record a defect for, lines ended by LF or CRLF) _HEADER_FIELD
    reads the same headers as its `_parse_headers` and `compat32.header_source_parse`: the name up
    to the first colon; the value from its first non-blank character, continuation lines kept as
    they are, the final line end stripped. A single-part body is then the rest of the text as it
    stands. Multipart and message/* bodies are left to the parser.
    """
    block = _PLAIN_HEADER_BLOCK.match(text)
    if block is None or _BARE_CR.search(text, 0, block.end()):
        return None
    root = _GuardedMessage(policy=compat32)
    for name, value in _HEADER_FIELD.findall(text, 0, block.end()):
        root.set_raw(name, value.rstrip("\r\n"))
    if root.get_content_maintype() in ("multipart", "message"):
        return None
    root.set_payload(text[block.end() :])
    return root


def _collect_headers(root: Message) -> dict[str, list[str]]:
    """Lower-cased name -> unfolded, cleaned values of the top-level headers we use, in order."""
    found: dict[str, list[str]] = {}
    for name, value in root.raw_items():
        key = str(name).lower()
        if key in _WANTED:
            found.setdefault(key, []).append(_clean_header(str(value)))
    return found


def _leaves(root: Message) -> tuple[list[tuple[Message, tuple[Message, ...]]], bool]:
    """Leaf parts in document order with their multipart ancestors, and whether all were walked.

    message/* parts (forwarded mail, delivery reports) are leaves: they are attachments of this
    message, and their insides are not its body.
    """
    leaves: list[tuple[Message, tuple[Message, ...]]] = []
    stack: list[tuple[Message, tuple[Message, ...]]] = [(root, ())]
    walked = 0
    while stack:
        part, ancestors = stack.pop()
        walked += 1
        if walked > MAX_PARTS:
            return leaves, False
        # is_multipart() first: get_payload() of a leaf may decode it with its charset.
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            if len(ancestors) >= MAX_DEPTH:
                return leaves, False
            inner = (*ancestors, part)
            children = part.get_payload()
            stack.extend((child, inner) for child in reversed(children) if isinstance(child, Message))
        else:
            _safe(None, _repair_headers, part)
            leaves.append((part, ancestors))
    return leaves, True


def _repair_headers(part: Message) -> None:
    """Give Content-Type and Content-Disposition with raw 8-bit bytes real characters.

    compat32 hands such a header out as an "unknown-8bit" Header object whose str() replaces
    every byte by U+FFFD, so a raw UTF-8 filename ("Größe.pdf") would come out as "Gr����e.pdf".
    """
    for name, value in part.raw_items():
        if name.lower() in ("content-type", "content-disposition") and not str(value).isascii():
            part.replace_header(name, _fix_surrogates(str(value)))


def _cut_part(leaves: list[tuple[Message, tuple[Message, ...]]], walked_all: bool) -> Message | None:
    """The part the fetch cap cut into, for a truncated message.

    That is the last leaf, unless some multipart around it saw its closing boundary (then the
    cut fell into an epilogue and every part is whole). With parts left unwalked, the cut lies
    beyond those we list.
    """
    if not leaves or not walked_all:
        return None
    part, ancestors = leaves[-1]
    if all(any(isinstance(d, errors.CloseBoundaryNotFoundDefect) for d in a.defects) for a in ancestors):
        return part
    return None


# ---------------------------------------------------------------------------------------------
# Attachments and body


def _is_attachment(part: Message, root: Message | None = None) -> bool:
    disposition = part.get_content_disposition()
    maintype = part.get_content_maintype()
    if part is root and maintype == "text" and disposition != "attachment":
        # A single-part text message is its own body, even when a mailer gave it a filename.
        return False
    if disposition == "attachment" or part.get_filename():
        return True
    # A multipart that was never split (no boundary) is neither body nor attachment.
    return maintype not in ("text", "multipart")


def _attachments(
    leaves: list[tuple[Message, tuple[Message, ...]]], root: Message, cut_part: Message | None
) -> list[dict[str, Any]]:
    found = []
    for part, _ in leaves:
        if not _safe(False, _is_attachment, part, root):
            continue
        found.append(
            {
                "filename": _safe(None, _filename, part),
                "content_type": _safe("application/octet-stream", part.get_content_type),
                "size": None if part is cut_part else _safe(None, _decoded_size, part),
            }
        )
    return found


def _filename(part: Message) -> str | None:
    name = part.get_filename()  # RFC 2231 (filename*=utf-8''...) and the Content-Type name
    if not name:
        return None
    # Many mailers put RFC 2047 words in filenames although the RFC says not to.
    return _decode_words(_clean_header(str(name))) or None


def _cte(part: Message) -> str:
    return str(part.get("content-transfer-encoding", "")).strip().strip("\"'").lower()


def _decoded_size(part: Message) -> int | None:
    """Decoded size in bytes, computed from the encoded form where that is enough."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/*: count what it takes on the wire
        return _approx_message_size(part)
    if not isinstance(payload, str):
        return None
    if _cte(part) == "base64":
        chars = len(payload) - sum(payload.count(c) for c in " \t\r\n")
        padding = len(payload.rstrip()) - len(payload.rstrip().rstrip("="))
        return max(chars * 3 // 4 - min(padding, 2), 0)
    data = _payload_bytes(part)  # quoted-printable decodes in C; 7bit/8bit are a plain copy
    return len(data) if data is not None else None


def _approx_message_size(msg: Message) -> int:
    size = 0
    stack = [msg]
    walked = 0
    while stack and walked < MAX_PARTS:
        part = stack.pop()
        walked += 1
        size += sum(len(name) + len(str(value)) + 4 for name, value in part.raw_items()) + 2
        payload = part.get_payload()
        if isinstance(payload, list):
            boundary = part.get_boundary() or ""
            size += (len(payload) + 1) * (len(boundary) + 6)
            stack.extend(p for p in payload if isinstance(p, Message))
        elif isinstance(payload, str):
            size += len(payload)
    return size


def _payload_bytes(part: Message) -> bytes | None:
    """The transfer-decoded payload (lenient about bad base64 and quoted-printable)."""
    raw_cte = part.get("content-transfer-encoding")
    if raw_cte is not None and str(raw_cte) != _cte(part):
        # get_payload compares the header verbatim; "base64 " or "Base64" would go undecoded.
        part.replace_header("content-transfer-encoding", _cte(part))
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else None


def _bodies(
    leaves: list[tuple[Message, tuple[Message, ...]]], root: Message, cut_part: Message | None
) -> tuple[str, str | None]:
    """(text, html): the first non-empty text/plain body, else the HTML's visible text; and the
    decoded source of the first text/html body part."""
    plain, html_parts = [], []
    for part, _ in leaves:
        ctype = _safe("", part.get_content_type)
        if ctype not in ("text/plain", "text/html") or _safe(True, _is_attachment, part, root):
            continue
        (plain if ctype == "text/plain" else html_parts).append(part)
    html = None
    for part in html_parts[:8]:
        html = _safe(None, _part_source, part, part is cut_part)
        if html:
            break
    for part in plain[:8]:
        text = _safe(None, _part_source, part, part is cut_part)
        if text and text.strip():
            return text, html
    return (_html_to_text(html, enough=MAX_HTML_CHARS) if html else ""), html


_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""", re.I)


def _part_source(part: Message, cut: bool) -> str | None:
    """The decoded content of a text part (for HTML, the markup), up to the size caps."""
    data = _payload_bytes(part)
    if not data:
        return None
    html = part.get_content_subtype() == "html"
    charset = _safe(None, part.get_content_charset)
    if charset is None and html:
        match = _META_CHARSET.search(data, 0, 4096)
        charset = match.group(1).decode("ascii") if match else None
    cut = cut or len(data) > MAX_TEXT_BYTES
    text = _decode_bytes(data[:MAX_TEXT_BYTES], charset, final=not cut)
    return text[:MAX_HTML_CHARS] if html else text


def excerpt(text: str, limit: int, collapse: Callable[[str], str] | None = None) -> str | None:
    """About the first `limit` characters, whitespace collapsed (by `collapse`, default: controls
    dropped too), cut at a word boundary."""
    collapse = collapse or _collapse
    window = limit * 2 + 64
    while True:  # collapse only a prefix: a body can be far longer than the excerpt
        collapsed = collapse(text[:window])
        if len(collapsed) > limit or window >= len(text):
            break
        window *= 4
    if not collapsed:
        return None
    if len(collapsed) <= limit:
        return collapsed
    cut = collapsed[: max(limit - 1, 0)]  # leave room for the ellipsis
    space = cut.rfind(" ")
    if space >= len(cut) * 3 // 4:
        cut = cut[:space]
    return cut.rstrip() + "…"


# Elements whose content is not shown. Skipped by searching for the end tag, as browsers read them
# as raw text (a "<" inside is not markup). <head> itself holds only these and void tags.
_HIDDEN_CONTENT = {
    name: re.compile(rf"</{name}[^>]*>", re.I)
    for name in ("script", "style", "title", "template", "noscript", "iframe", "noembed", "noframes")
}
# Tags that separate words on screen; inline ones (<b>, <a>, <span>) do not.
_BLOCK_TAGS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "body", "br", "dd", "div", "dl", "dt"),
        *("fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6"),
        *("header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td"),
        *("tfoot", "th", "thead", "tr", "ul"),
    }
)
# A tag ends at the first ">" outside quoted attribute values; as in browsers a "<" inside does not
# end it. Possessive quantifiers: no backtracking. The match is confined to _MAX_TAG_CHARS, since
# quotes can pair up across tags ("<a b='>' x <a b='>' ...") and make every attempt scan to the end
# of the document; beyond that, or with a quote never closed, _LOOSE_TAG ends the tag at its first
# ">" (it scans only up to that ">", so the whole walk stays linear).
_TAG = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9:-]*)(?:[^>"']++|"[^"]*+"|'[^']*+')*+>""")
_LOOSE_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^>]*>")
_MAX_TAG_CHARS = 2048
# Markup tokens looked at per HTML part at most: text comes long before this in real mail.
_MAX_HTML_TOKENS = 20000


def _html_to_text(html: str, enough: int) -> str:
    """The visible text of an HTML document, until about `enough` characters of it.

    One forward scan, linear in the input. Not html.parser.HTMLParser: in Python 3.11 that is
    quadratic or worse on unterminated constructs (CVE-2025-6069 and relatives; 256 KB of "<a b='"
    took 170 s here), and this runs inline on hostile mail. Entities go to html.unescape. As in
    browsers, an unterminated comment, declaration or script/style element hides the rest.
    """
    chunks: list[str] = []
    size = 0
    position, end = 0, len(html)
    for _ in range(_MAX_HTML_TOKENS):
        if position >= end or size >= enough:
            break
        lt = html.find("<", position)
        text = html[position : lt if lt >= 0 else end]
        if text:
            chunks.append(unescape(text) if "&" in text else text)
            size += len(text.strip())
        if lt < 0:
            break
        tag = _TAG.match(html, lt, lt + _MAX_TAG_CHARS) or _LOOSE_TAG.match(html, lt)
        if tag is None:
            if html.startswith("<!--", lt):
                close = html.find("-->", lt + 4)
                position = close + 3 if close >= 0 else end
            elif html.startswith(("<!", "<?", "</"), lt):  # declaration, PI, bogus end tag
                close = html.find(">", lt)
                position = close + 1 if close >= 0 else end
            elif html[lt + 1 : lt + 2].isalpha():
                break  # a tag with no ">" anywhere after it: the rest is that tag
            else:  # a "<" that starts no markup is text
                chunks.append("<")
                size += 1
                position = lt + 1
            continue
        position = tag.end()
        closing, name = tag.group(1), tag.group(2).lower()
        if name in _HIDDEN_CONTENT and not closing and not tag.group(0).endswith("/>"):
            close_tag = _HIDDEN_CONTENT[name].search(html, position)
            position = close_tag.end() if close_tag else end
        elif name in _BLOCK_TAGS:
            chunks.append(" ")
    return "".join(chunks)


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
    label = charset.strip().strip("\"'").lower()
    label = _CHARSET_SUPERSETS.get(label, label)
    try:
        b"".decode(label)  # LookupError for unknown labels and for base64, zlib, rot13 ...
        return codecs.lookup(label).name
    except Exception:
        return None


def _decode_bytes(data: bytes, charset: str | None, final: bool = True) -> str:
    """Decode with the declared charset; fall back to UTF-8, then windows-1252, then latin-1.

    With final=False (the data was cut short) a multi-byte character cut in half at the end is
    dropped, rather than making the whole text fail strict decoding.
    """
    codec = _codec(charset)
    for encoding in dict.fromkeys(e for e in (codec, "utf-8") if e):
        try:
            return codecs.getincrementaldecoder(encoding)("strict").decode(data, final=final)
        except Exception:
            continue
    if codec:
        try:
            return codecs.getincrementaldecoder(codec)("replace").decode(data, final=final)
        except Exception:
            pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _fix_surrogates(text: str) -> str:
    """Replace the parser's surrogate escapes of raw 8-bit bytes by real characters."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _decode_bytes(text.encode("utf-8", "surrogateescape"), None)


def _clean_header(value: str) -> str:
    """Capped, unfolded header value without surrogate escapes."""
    value = value[:MAX_HEADER_CHARS]
    return _fix_surrogates(value.replace("\r", "").replace("\n", ""))


_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x9f]")  # C0 and C1, not whitespace


def _collapse(text: str) -> str:
    """Control characters dropped, whitespace runs made single spaces, stripped."""
    return " ".join(_CONTROLS.sub(" ", text).split())


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; a word that does not decode is kept as written.

    Adjacent words in the same charset are joined before decoding, since senders split
    multi-byte characters across words; whitespace between encoded words is dropped (RFC 2047).
    """
    if "=?" not in text:
        return _collapse(text)
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    position = 0
    after_word = False  # the text so far ends with a decoded word

    def flush() -> None:
        nonlocal pending_charset
        if pending:
            out.append(_decode_bytes(bytes(pending), pending_charset))
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
            if not adjacent or charset.lower() != (pending_charset or "").lower():
                flush()
            if not adjacent:
                out.append(between)
            pending_charset = charset
            pending += decoded
            after_word = True
        position = match.end()
    flush()
    out.append(text[position:])
    return _collapse("".join(out))


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


def _text_header(value: str | None) -> str | None:
    return (_decode_words(value) or None) if value is not None else None


def _raw_header(value: str | None) -> str | None:
    return (_collapse(value) or None) if value is not None else None


# ---------------------------------------------------------------------------------------------
# Identifiers, addresses, dates


def _message_id(value: str | None) -> str | None:
    return (_collapse(value) or None) if value is not None else None


_MSG_ID = re.compile(r"<[^<>\s]*>")


def _in_reply_to(value: str | None) -> str | None:
    """The first <msg-id> when there is one (some mailers add prose), else the whole value."""
    if value is None:
        return None
    match = _MSG_ID.search(value)
    return match.group(0) if match else (_collapse(value) or None)


def _references(value: str | None) -> list[str]:
    if value is None:
        return []
    # Split on whitespace, and between ids a sender wrote without it ("<a@x><b@y>").
    return [token for word in value.split() for token in re.split(r"(?<=>)(?=<)", word) if token]


_ADDRESS = re.compile(r'(?:[^\s@<>()\[\],;:"]+|"[^"]*")@[^\s@<>(),;:"]+')


def _addresses(values: Iterable[str]) -> list[dict[str, str | None]]:
    found: list[dict[str, str | None]] = []
    for value in values:
        # A cut at the last comma keeps a capped list from ending in half an address.
        if len(value) >= MAX_HEADER_CHARS and "," in value:
            value = value.rsplit(",", 1)[0]
        parsed = []
        for name, address in _getaddresses(value):
            address = address.strip()
            name = _decode_words(name) or None
            if _ADDRESS.fullmatch(address):
                parsed.append({"address": address, "name": name})
            elif name:
                parsed.append({"address": None, "name": name})
        if not any(entry["address"] for entry in parsed):
            # getaddresses gives up on, say, an unterminated quote; salvage what looks like addresses.
            parsed += [{"address": a, "name": None} for a in _ADDRESS.findall(value)]
        found += parsed
    return found


# The common shapes of an address list ("a@b.c", "Name <a@b.c>", '"Last, First" <a@b.c>', by commas),
# for which getaddresses (a character-by-character Python parser: 40 µs a message) is not needed.
# Atoms and quoted strings as getaddresses reads them: an atom ends at a special or white space, a
# phrase may hold dots (obs-phrase). Atoms here hold no Unicode white space either, which
# getaddresses treats in odd ways (it drops a local-part atom that str.strip() empties). Possessive
# quantifiers: no backtracking on a failed match.
_PHRASE_ATOM = r'[^()<>@,:;"\[\]\s]++'
_QUOTED = r'"[^"\\\r\n]*+"'
_DOT_ATOM = r'[^()<>@,:;."\[\]\s]++(?:\.[^()<>@,:;."\[\]\s]++)*+'
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*+(?:((?:(?:{_PHRASE_ATOM}|{_QUOTED})[ \t]*+)*+)<({_DOT_ATOM}@{_DOT_ATOM})>"
    rf"|({_DOT_ATOM}@{_DOT_ATOM})(?:[ \t]*+\(([^()\\\r\n]*+)\))?)?[ \t]*+"
)
_PHRASE_WORD = re.compile(rf'"([^"\\\r\n]*)"|({_PHRASE_ATOM})')


def _getaddresses(value: str) -> list[tuple[str, str]]:
    """getaddresses([value]), less the ("", "") it gives for empty list items; by regular expression
    when every item has one of the common shapes ("a@b.c (Name)" included: the comment is the name)."""
    found: list[tuple[str, str]] = []
    position, end = 0, len(value)
    while True:
        match = _SIMPLE_ADDRESS.match(value, position)  # never None: every part is optional
        phrase, routed, bare, comment = match.groups()  # type: ignore[union-attr]
        if routed:
            # getaddresses joins the words of a phrase by single spaces, quotes removed.
            found.append((" ".join(quoted or atom for quoted, atom in _PHRASE_WORD.findall(phrase)), routed))
        elif bare:
            found.append((comment or "", bare))
        position = match.end()  # type: ignore[union-attr]
        if position == end:
            return found
        if value[position] != ",":
            return [pair for pair in getaddresses([value]) if pair != ("", "")]
        position += 1


def _first_address(values: list[str]) -> dict[str, str | None] | None:
    entries = _addresses(values)
    with_address = [entry for entry in entries if entry["address"]]
    return (with_address or entries or [None])[0]


def _to_rfc3339(moment: datetime) -> str | None:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # no zone given: assume UTC
    moment = moment.astimezone(UTC)
    # Four-digit years only: older or later dates in mail are junk, not history.
    return rfc3339(moment) if 1000 <= moment.year <= 9999 else None


def _date(value: str | None) -> str | None:
    if not value:
        return None
    parts = parsedate_tz(value)  # obsolete 2-digit years and zone names included
    if parts is None:
        # Some senders write ISO 8601.
        return _to_rfc3339(datetime.fromisoformat(value.strip()))
    year, *rest = parts[:6]
    if 100 <= year < 200:
        year += 1900  # "0102": years since 1900 printed as four digits, an old mailer bug
    offset = parts[9] or 0
    if abs(offset) >= 24 * 3600:
        offset = 0  # a nonsense zone: treat as missing
    moment = datetime(year, *rest, tzinfo=UTC) - timedelta(seconds=offset)
    return _to_rfc3339(moment)


_MONTHS = {
    month: number
    for number, month in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_INTERNALDATE = re.compile(
    r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\s*"
)


def _internaldate(value: str | None) -> str | None:
    """IMAP INTERNALDATE ("21-Nov-2026 13:25:53 +0000") as RFC 3339 UTC.

    Parsed by hand: strptime's %b follows the process locale.
    """
    if not value:
        return None
    value = value.strip().strip('"')
    match = _INTERNALDATE.fullmatch(value)
    if match is None:
        return _date(value)
    day, month, year, hour, minute, second, sign, zh, zm = match.groups()
    moment = datetime(
        int(year), _MONTHS[month.lower()], int(day), int(hour), int(minute), int(second), tzinfo=UTC
    )
    offset = timedelta(hours=int(zh), minutes=int(zm))
    return _to_rfc3339(moment - offset if sign == "+" else moment + offset)
