"""Attachments and body: the attachment list, the body text and HTML, and the excerpt."""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from email import errors
from email.message import Message
from email.utils import quote
from typing import Any, NamedTuple

from gatewayd.message.html import Scan, html_to_text, without_cut_entity
from gatewayd.message.limits import MAX_HTML_CHARS, MAX_PARTS, MAX_TEXT_BYTES, safe
from gatewayd.message.lowercase import lower
from gatewayd.message.text import clean_header, decode_bytes, decode_words
from gatewayd.message.text import collapse as _collapse  # excerpt has a parameter named collapse


def is_attachment(part: Message, root: Message | None = None) -> bool:
    disposition = part.get_content_disposition()
    maintype = part.get_content_maintype()
    if part is root and maintype == "text" and disposition != "attachment":
        # A single-part text message is its own body, even when a mailer gave it a filename.
        return False
    if disposition == "attachment" or part.get_filename():
        return True
    # A multipart that was never split (no boundary) is neither body nor attachment.
    return maintype not in ("text", "multipart")


def attachments(
    leaves: list[tuple[Message, tuple[Message, ...]]],
    root: Message,
    cut: Collection[Message],
    sizes: Mapping[Message, int | None],
) -> list[dict[str, Any]]:
    """Metadata of the attachments: a part in `cut` has no trustworthy size unless `sizes` has it."""
    found = []
    for part, _ in leaves:
        if not safe(False, is_attachment, part, root):
            continue
        found.append(
            {
                "filename": safe(None, filename, part),
                "content_type": safe("application/octet-stream", part.get_content_type),
                "size": sizes.get(part) if part in sizes or part in cut else safe(None, _decoded_size, part),
            }
        )
    return found


def filename(part: Message) -> str | None:
    name = part.get_filename()  # RFC 2231 (filename*=utf-8''...) and the Content-Type name
    if not name:
        return None
    # Many mailers put RFC 2047 words in filenames although the RFC says not to.
    return decode_words(clean_header(str(name))) or None


def filename_of_parameters(
    disposition: Sequence[tuple[str, str]], content_type: Sequence[tuple[str, str]]
) -> str | None:
    """The file name of a part known only by its Content-Disposition and Content-Type parameters
    (IMAP's BODYSTRUCTURE lists them), decoded as `filename` decodes a part's."""
    part = Message()
    for header, value, parameters in (
        ("Content-Disposition", "attachment", disposition),
        ("Content-Type", "application/octet-stream", content_type),
    ):
        quoted = (f'; {name}="{quote(_one_line(text))}"' for name, text in parameters)
        part[header] = value + "".join(quoted)
    return filename(part)


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def _cte(part: Message) -> str:
    return lower(str(part.get("content-transfer-encoding", "")).strip().strip("\"'"))


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
    data = payload_bytes(part)  # quoted-printable decodes in C; 7bit/8bit are a plain copy
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


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
# A quoted-printable escape the fetch cut after its first digit.
_QP_ESCAPE_CUT = re.compile(r"=[0-9A-Fa-f]")


def payload_bytes(part: Message, cut: bool = False) -> bytes | None:
    """The transfer-decoded payload (lenient about bad base64 and quoted-printable); of a part the
    fetch `cut`, without the quoted-printable escape it cut."""
    raw_cte = part.get("content-transfer-encoding")
    if raw_cte is not None and str(raw_cte) != _cte(part):
        # get_payload compares the header verbatim; "base64 " or "Base64" would go undecoded.
        part.replace_header("content-transfer-encoding", _cte(part))
    data = part.get_payload(decode=True)
    if any(isinstance(defect, errors.InvalidBase64LengthDefect) for defect in part.defects):
        # 4n+1 characters of base64 (cut by the fetch, or malformed) come back undecoded: the
        # last character holds no whole byte, and the others decode.
        encoded = _NOT_BASE64.sub(b"", str(part.get_payload()).encode("ascii", "ignore"))
        data = binascii.a2b_base64(encoded[: len(encoded) // 4 * 4])
    escape_cut = (
        cut and _cte(part) == "quoted-printable" and _QP_ESCAPE_CUT.fullmatch(str(part.get_payload())[-2:])
    )
    if isinstance(data, bytes) and escape_cut:
        data = data[:-2]  # "=C" of "=C3", left as it is written: not text
    return data if isinstance(data, bytes) else None


class Bodies(NamedTuple):
    text: str
    html: str | None
    text_cut: bool
    # The other inline text parts (a second text part after the first, a mailing list's footer, an
    # HTML part that is no alternative of the text, a calendar invite): not read here, but an agent
    # reading the message reads them.
    unread: tuple[Message, ...]
    # `text_cut` only as the HTML converter stopped at its cap on markup (html.MAX_HTML_TOKENS).
    markup_capped: bool = False


# The text/plain and the text/html parts looked at for the body, of each type.
_MAX_BODY_CANDIDATES = 8

# A leaf, its multipart ancestors, and whether it is text/plain (else text/html).
_Candidate = tuple[Message, tuple[Message, ...], bool]


def bodies(
    leaves: list[tuple[Message, tuple[Message, ...]]],
    root: Message,
    cut: Collection[Message],
    unseen: bool = False,
) -> Bodies:
    """The body as a mail client shows it (RFC 2046): the first non-empty text/plain or text/html
    part in document order, with its alternative of the other type (a multipart/alternative holds
    both) if it has one. `text` is the text/plain one, else the HTML's visible text; `html` the
    decoded source of the text/html one. Also whether the text may be only part of what the whole
    message holds: its part, or one looked at before it, was cut (by the fetch or the size caps),
    or, with leaf parts never read (`unseen`), it is not from a text/plain part; and the inline
    text parts (of any text/* type) not looked at, in document order: an HTML body's plain-text
    footer, or an HTML part after a plain-text body, is one of them."""
    inline: list[Message] = []
    candidates: list[_Candidate] = []
    plain_count = html_count = 0
    for part, ancestors in leaves:
        ctype = safe("", part.get_content_type)
        if not ctype.startswith("text/") or safe(True, is_attachment, part, root):
            continue
        inline.append(part)
        if ctype == "text/plain" and plain_count < _MAX_BODY_CANDIDATES:
            plain_count += 1
            candidates.append((part, ancestors, True))
        elif ctype == "text/html" and html_count < _MAX_BODY_CANDIDATES:
            html_count += 1
            candidates.append((part, ancestors, False))
    read = _Reader(cut)
    lead = next((candidate for candidate in candidates if read.shown(candidate)), None)
    if lead is not None and len(candidates) > 1:
        # The lead's alternatives of the other type, read until one shows something (one before
        # the lead was empty, and is looked at already).
        _, ancestors, plain = lead
        for other in candidates:
            if other[2] == plain or other[0] in read.looked_at or not _alternatives(ancestors, other[1]):
                continue
            if read.shown(other):
                break
    unread = _unread(inline, read.looked_at)
    if read.text is not None:
        return Bodies(read.text, read.html, read.plain_cut, unread)
    text, scan = html_to_text(read.html, enough=MAX_HTML_CHARS) if read.html else ("", Scan.WHOLE)
    fetched_cut = read.plain_cut or read.html_cut or unseen
    markup_capped = scan is Scan.MARKUP_CAP and not fetched_cut
    return Bodies(text, read.html, fetched_cut or scan is not Scan.WHOLE, unread, markup_capped)


class _Reader:
    """Reads body candidates: what was looked at, the text and HTML found, and whether any of
    the text/plain or the text/html parts read was cut."""

    def __init__(self, cut: Collection[Message]) -> None:
        self.cut = cut
        self.looked_at: list[Message] = []
        self.text: str | None = None
        self.html: str | None = None
        self.plain_cut = self.html_cut = False

    def shown(self, candidate: _Candidate) -> bool:
        """Whether the part has something to show (plain text: not only whitespace)."""
        part, _, plain = candidate
        self.looked_at.append(part)
        source, part_cut = safe((None, part in self.cut), _part_source, part, part in self.cut)
        if plain:
            self.plain_cut = self.plain_cut or part_cut
            if source and source.strip():
                self.text = source
                return True
        else:
            self.html_cut = self.html_cut or part_cut
            if source:
                self.html = source
                return True
        return False


def _alternatives(first: tuple[Message, ...], second: tuple[Message, ...]) -> bool:
    """Whether two leaves with these multipart ancestors are alternatives of each other: the
    innermost multipart holding both is a multipart/alternative."""
    common = None
    for mine, theirs in zip(first, second, strict=False):
        if mine is not theirs:
            break
        common = mine
    return common is not None and safe("", common.get_content_type) == "multipart/alternative"


def _unread(inline: list[Message], looked_at: list[Message]) -> tuple[Message, ...]:
    if len(looked_at) == len(inline):  # most mail: one body part, or a text and an HTML alternative
        return ()
    looked = set(looked_at)
    return tuple(part for part in inline if part not in looked)


_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]{1,40})""", re.I)


def declared_charset(part: Message, data: bytes, html: bool) -> str | None:
    """The charset of a text part's content `data`: its Content-Type's, else for HTML its <meta>'s."""
    charset = safe(None, part.get_content_charset)
    if charset is None and html:
        match = _META_CHARSET.search(data, 0, 4096)
        charset = match.group(1).decode("ascii") if match else None
    return charset


def _part_source(part: Message, cut: bool) -> tuple[str | None, bool]:
    """The decoded content of a text part (for HTML, the markup), up to the size caps; and whether
    that is only part of it (`cut`: the fetch cap cut into it)."""
    data = payload_bytes(part, cut)
    if not data:
        return None, cut
    html = part.get_content_subtype() == "html"
    charset = declared_charset(part, data, html)
    cut = cut or len(data) > MAX_TEXT_BYTES
    text = decode_bytes(data[:MAX_TEXT_BYTES], charset, final=not cut)
    if not html:
        return text, cut
    if cut := cut or len(text) > MAX_HTML_CHARS:
        return without_cut_entity(text[:MAX_HTML_CHARS]), cut
    return text, cut


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
