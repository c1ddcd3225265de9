"""FetchedMessage in, ParsedMessage out: every field of the event data extracted on its own."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from typing import Any

from gatewayd.message import attached, body, fields, joined, structure
from gatewayd.message.attached import AttachedText, Skipped, SkipReason
from gatewayd.message.limits import safe
from gatewayd.message.lowercase import lower
from gatewayd.message.text import raw_header, text_header


@dataclass(frozen=True, slots=True)
class FetchedPart:
    """A leaf part of a message larger than its prefix, fetched on its own: its MIME header, and
    for a text body part, an attached text file or a forwarded message the start of its content."""

    index: int  # its place among the message's leaf parts, in document order (message/* are leaves)
    section: str  # the IMAP section number, e.g. "2" or "1.3"
    header: bytes  # its MIME header, up to its empty line
    content: bytes  # its encoded content as fetched (b"" for an attachment the scanner does not read)
    size: int | None  # decoded size estimated from the server's BODYSTRUCTURE, for content not all here
    cut: bool  # content fetched only in part (the cap), or not at all


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
    # The leaf parts the prefix holds not whole, in order, from the first of them (see imap/parts.py).
    parts: tuple[FetchedPart, ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the pipeline's stages read: the event data plus the bodies and all headers."""

    data: dict[str, Any]
    # Lower-cased header names to their raw values, in order of appearance.
    headers: dict[str, list[str]]
    # Decoded text of the body's text/plain part (else the visible text of its HTML): see body.bodies.
    text: str
    # Decoded source of the body's text/html part (the body, or the text's alternative), if any.
    html: str | None
    raw: bytes
    # The text may be only part of the body text (a cap, or the fetch, cut it), and leaf parts
    # exist past those read (the attachment list may lack some): see body.bodies.
    text_cut: bool = False
    # The text is cut only where the HTML converter stopped at its cap on markup (not at a size cap
    # or by the fetch): see body.Bodies.
    text_markup_capped: bool = False
    parts_unseen: bool = False
    # Names (lower-cased) in `headers` with a value cut short: see structure.collect_headers.
    headers_cut: frozenset[str] = frozenset()
    # Text of attached text files, forwarded messages and the inline text parts past the text and
    # html (attached.py), and the parts not read.
    attached: tuple[AttachedText, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def parse_message(msg: FetchedMessage, excerpt_chars: int = 500) -> dict[str, Any]:
    """The `data` of a `message.received` event for `msg`. Never raises on malformed mail."""
    return parse(msg, excerpt_chars).data


def parse(msg: FetchedMessage, excerpt_chars: int = 500) -> ParsedMessage:
    """Parse once for the event and for every pipeline stage. Never raises on malformed mail."""
    raw = bytes(msg.raw or b"")
    root = structure.parse(raw)
    truncated = isinstance(msg.size, int) and len(raw) < msg.size
    block_cut = truncated and not structure.header_block_ended(raw)
    headers, headers_cut = safe(({}, frozenset()), structure.collect_headers, root, block_cut)

    def first(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values else None

    leaves, walked_all = safe(([], False), structure.leaves, root)
    # The part the fetch cap cut into has no trustworthy size.
    cut_part = safe(None, structure.cut_part, leaves, walked_all) if truncated else None
    cut: tuple[Message, ...] = (cut_part,) if cut_part is not None else ()
    sizes: dict[Message, int | None] = {}
    if msg.parts:
        leaves, cut, sizes = safe((leaves, cut, sizes), joined.join, leaves, msg.parts)
    # More parts than are walked (or than the parse kept: MAX_PARTS, MAX_DEPTH), or a multipart
    # the fetch cut short whose other parts were never fetched (imap/parts.py gave up on them), or
    # a header block it cut, past which nothing was read (its Content-Type may be past the cut).
    unseen = not walked_all or (
        truncated and not msg.parts and (block_cut or safe(True, structure.unclosed, root))
    )
    attachments = safe([], body.attachments, leaves, root, cut, sizes)
    nothing_read = body.Bodies("", None, True, ())
    # A header block the fetch cut holds no body: the parser reads its last line, when cut before
    # the field's colon ("List-Unsub"), as the body's first.
    text, html, text_cut, unread, text_markup_capped = (
        nothing_read if block_cut else safe(nothing_read, body.bodies, leaves, root, cut, unseen)
    )
    attached_texts: tuple[AttachedText, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    if unread or (attachments and attached.readable(attachments)):  # most mail: neither
        attached_texts, skipped = safe(((), ()), attached.texts, leaves, root, cut, unread)
    if truncated and not msg.parts and (cut_part is not None or not walked_all) and root.is_multipart():
        # The parts past the prefix were not fetched (imap/parts.py gave up): nothing read them.
        skipped = (*skipped, Skipped("rest of message", SkipReason.NOT_FETCHED))
    elif not walked_all:
        # The parse stopped at MAX_PARTS or MAX_DEPTH: the parts after those it kept were never read.
        skipped = (*skipped, Skipped("rest of message", SkipReason.OVER_BUDGET))
    data = {
        "folder": msg.folder,
        "uid": msg.uid,
        "uidvalidity": msg.uidvalidity,
        "size": msg.size,
        "flags": list(msg.flags or ()),
        "message_id": safe(None, fields.message_id, first("message-id")),
        "from": safe(None, fields.first_address, headers.get("from", [])),
        "to": safe([], fields.addresses, headers.get("to", [])),
        "cc": safe([], fields.addresses, headers.get("cc", [])),
        "reply_to": safe([], fields.addresses, headers.get("reply-to", [])),
        "subject": safe(None, text_header, first("subject")),
        "date": safe(None, fields.date, first("date")),
        "received_at": safe(None, fields.internaldate, msg.internaldate),
        "in_reply_to": safe(None, fields.in_reply_to, first("in-reply-to")),
        "references": safe([], fields.references, first("references")),
        "has_attachments": bool(attachments),
        "attachments": attachments,
        "body_text_excerpt": body.excerpt(text, excerpt_chars) if text and excerpt_chars > 0 else None,
        "truncated": truncated,
        "headers": {name: safe(None, raw_header, first(name)) for name in structure.RAW_HEADERS},
    }
    return ParsedMessage(
        data=data,
        headers=headers,
        text=text,
        html=html,
        raw=raw,
        text_cut=text_cut,
        text_markup_capped=text_markup_capped,
        parts_unseen=unseen,
        headers_cut=headers_cut,
        attached=attached_texts,
        skipped=skipped,
    )


def from_address(data: dict[str, Any]) -> str | None:
    """The lower-cased sender address of event data from `parse_message`, for indexing."""
    sender = data.get("from") if isinstance(data, dict) else None
    address = sender.get("address") if isinstance(sender, dict) else None
    return lower(address) if isinstance(address, str) and address else None
