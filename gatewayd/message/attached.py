"""Text outside the body: attachments, forwarded messages, further inline text parts, for the stages
that read what an agent may read.

An agent that opens a .txt attachment or a forwarded message, or reads a message to its end, reads
text the body (body.bodies: the first text/plain or text/html part, and its alternative) does not
hold. `texts` decodes it: attached text files (of any text/* type, the text-like application/*
types such as JSON, XML, YAML, RTF and calendar invites, and application/octet-stream named as a
text file), the inline text parts of any text/* type the body left unread, and each message/rfc822
part's Subject, From display name and body, with its own such parts in turn. A file is read as the
app that opens it shows it: an invite or a contact card as its words (contentlines.py), RTF,
text/enriched and text/richtext as their text (richtext.py), HTML in the charset its Content-Type or
its <meta> declares, as the body's. The work is bounded by MAX_ATTACHED_PARTS, MAX_ATTACHED_BYTES (per part)
and MAX_ATTACHED_TOTAL; a part left out, or whose content the fetch did not bring (a message over
`fetch_max_bytes`: past its prefix, text files and forwarded messages only within that budget,
imap/parts.py), is listed with the reason, never passed over in silence.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from email.message import Message
from enum import StrEnum
from typing import Any

from gatewayd.message import body, contentlines, fields, richtext, structure
from gatewayd.message.html import without_cut_entity
from gatewayd.message.limits import (
    MAX_ATTACHED_BYTES,
    MAX_ATTACHED_PARTS,
    MAX_ATTACHED_TOTAL,
    MAX_DEPTH,
    safe,
)
from gatewayd.message.lowercase import lower
from gatewayd.message.text import decode_bytes, text_header

Leaves = list[tuple[Message, tuple[Message, ...]]]

_CALENDAR_TYPES = frozenset({"text/calendar", "application/ics"})
_VCARD_TYPES = frozenset({"text/vcard", "text/x-vcard", "text/directory"})
_RTF_TYPES = frozenset({"text/rtf", "application/rtf", "application/x-rtf"})
_ENRICHED = "text/enriched"  # RFC 1896
_RICHTEXT = "text/richtext"  # RFC 1341
# Besides text/*: application/* types that are text an agent reads as such (RFC 6839's +json, +xml).
_TEXT_APPLICATION_TYPES = frozenset(
    {
        "application/json", "application/xml", "application/yaml", "application/x-yaml",
        "application/toml", "application/x-sh", "application/sql", "application/javascript",
        "application/x-javascript", "application/ecmascript", "application/x-python",
        "application/x-httpd-php", "application/csv", "application/x-subrip", "application/mbox",
        "application/rtf", "application/x-rtf",
    }
) | _CALENDAR_TYPES  # fmt: skip
_TEXT_SYNTAX_SUFFIXES = ("+json", "+xml", "+yaml")
_TEXT_SUFFIXES = frozenset(
    {
        ".txt", ".text", ".log", ".md", ".markdown", ".rst", ".csv", ".tsv", ".html", ".htm", ".xml",
        ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf", ".py", ".js", ".sh", ".sql",
        ".ics", ".vcf", ".rtf",
    }
)  # fmt: skip
_FORWARDED = "message/rfc822"
_OCTET_STREAM = "application/octet-stream"
_HTML_SUFFIXES = (".html", ".htm")


class SkipReason(StrEnum):
    NOT_FETCHED = "not fetched"  # the content lies past what the fetch brought
    PARTLY_FETCHED = "partly fetched"  # only its start was fetched, and read
    OVER_BUDGET = "over budget"  # past MAX_ATTACHED_PARTS or MAX_ATTACHED_TOTAL


@dataclass(frozen=True, slots=True)
class AttachedText:
    """What one attached text file or forwarded message says."""

    location: str  # "attachment:notes.txt", "inline:2", "forwarded:1", "forwarded:1/attachment:2"
    headers: str  # of a forwarded message: its Subject and From display name, one per line
    text: str
    html: str | None
    read_in_part: bool = False  # bytes past MAX_ATTACHED_BYTES, or past the budget left, were not read


@dataclass(frozen=True, slots=True)
class Skipped:
    location: str
    reason: SkipReason


def readable(attachments: list[dict[str, Any]]) -> bool:
    """Whether any of the message's attachments (body.attachments) is one `texts` reads: the
    check that keeps the cost of most mail, which has none, at a look at that list."""
    return any(_readable(item["content_type"], item["filename"]) for item in attachments)


def read_attached(content_type: str, filename: str | None) -> bool:
    """Whether `texts` reads an attached part of this type and file name (a text file or a forwarded
    message): the attachments worth fetching past a message's prefix (imap/parts.py)."""
    return _readable(content_type, filename)


def texts(
    leaves: Leaves, root: Message, cut: Collection[Message], unread: Collection[Message] = ()
) -> tuple[tuple[AttachedText, ...], tuple[Skipped, ...]]:
    """The attached texts among `leaves` and the text of the inline parts in `unread` (body.bodies),
    and the parts left unread or read in part (`cut`: the parts whose content the fetch cut short
    or left out)."""
    walk = _Walk(cut)
    walk.leaves(leaves, root, "", 0, unread)
    return tuple(walk.found), tuple(walk.skipped)


def _readable(content_type: str, filename: str | None) -> bool:
    if content_type.startswith("text/") or content_type in _TEXT_APPLICATION_TYPES:
        return True
    if content_type == _FORWARDED:
        return True
    if content_type.startswith("application/") and content_type.endswith(_TEXT_SYNTAX_SUFFIXES):
        return True
    return content_type == _OCTET_STREAM and bool(filename) and _suffix(filename) in _TEXT_SUFFIXES


def _candidate(part: Message) -> bool:
    ctype = part.get_content_type()
    return _readable(ctype, safe(None, body.filename, part) if ctype == _OCTET_STREAM else None)


def _suffix(filename: str | None) -> str:
    name = lower((filename or "").strip())
    return name[name.rfind(".") :] if "." in name else ""


class _Walk:
    def __init__(self, cut: Collection[Message]) -> None:
        self.cut = cut
        self.budget = MAX_ATTACHED_TOTAL
        self.found: list[AttachedText] = []
        self.skipped: list[Skipped] = []

    def leaves(
        self, leaves: Leaves, root: Message, prefix: str, depth: int, unread: Collection[Message]
    ) -> None:
        forwarded = attachments = inline = 0
        for part, _ in leaves:
            if not safe(False, body.is_attachment, part, root):
                if part.get_content_maintype() != "text":  # as body.bodies reads them
                    continue
                inline += 1  # numbered among all inline text parts, the body's included
                if part not in unread:
                    continue
                location = f"{prefix}inline:{inline}"
            elif not _candidate(part):
                continue
            elif part.get_content_type() == _FORWARDED:
                forwarded += 1
                location = f"{prefix}forwarded:{forwarded}"
            else:
                attachments += 1
                name = safe(None, body.filename, part)
                location = f"{prefix}attachment:{name or attachments}"
            if part in self.cut and _empty(part):
                self.skipped.append(Skipped(location, SkipReason.NOT_FETCHED))
                continue
            if len(self.found) >= MAX_ATTACHED_PARTS or self.budget <= 0:
                self.skipped.append(Skipped(location, SkipReason.OVER_BUDGET))
                continue
            if part in self.cut:
                self.skipped.append(Skipped(location, SkipReason.PARTLY_FETCHED))
            if part.get_content_type() == _FORWARDED:
                self._forwarded(part, location, depth)
            else:
                self._file(part, location)

    def _file(self, part: Message, location: str) -> None:
        fetched_in_part = part in self.cut
        data = safe(None, body.payload_bytes, part, fetched_in_part)
        if not data:
            return
        limit = min(MAX_ATTACHED_BYTES, self.budget)
        read_in_part = len(data) > limit
        ctype, suffix = part.get_content_type(), _suffix(safe(None, body.filename, part))
        html = part.get_content_subtype() == "html" or suffix in _HTML_SUFFIXES
        charset = body.declared_charset(part, data, html)
        # What a cut ended in (a character, an entity) is no text of the whole.
        text = decode_bytes(data[:limit], charset, final=not (read_in_part or fetched_in_part))
        if html and (read_in_part or fetched_in_part):
            text = without_cut_entity(text)
        self.budget -= min(len(data), limit)
        if ctype in _CALENDAR_TYPES or suffix == ".ics":
            self.found.append(AttachedText(location, "", *contentlines.calendar_shown(text), read_in_part))
            return
        if ctype in _VCARD_TYPES or suffix == ".vcf":
            text = contentlines.vcard_shown(text)
        elif (ctype in _RTF_TYPES or suffix == ".rtf") and text.lstrip().startswith("{\\rtf"):
            text = richtext.rtf_shown(text)  # a file named .rtf that is not RTF is read as it stands
        elif ctype == _ENRICHED:
            text = richtext.enriched_shown(text)
        elif ctype == _RICHTEXT:
            text = richtext.richtext_shown(text)
        found = AttachedText(location, "", "" if html else text, text if html else None, read_in_part)
        self.found.append(found)

    def _forwarded(self, part: Message, location: str, depth: int) -> None:
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            return
        headers, _ = safe(({}, frozenset()), structure.collect_headers, inner)
        subjects = headers.get("subject")
        subject = safe(None, text_header, subjects[0]) if subjects else None
        sender = safe(None, fields.first_address, headers.get("from", []))
        name = sender.get("name") if isinstance(sender, dict) else None
        inner_leaves, _ = safe(([], False), structure.leaves, inner)
        nothing = body.Bodies("", None, False, ())
        text, html, _, unread, _ = safe(nothing, body.bodies, inner_leaves, inner, ())
        limit = min(MAX_ATTACHED_BYTES, self.budget)
        text, html = text[:limit], html[:limit] if html else None
        self.budget -= max(len(text), len(html or ""))
        header_lines = "\n".join(value for value in (subject, name) if value)
        self.found.append(AttachedText(location, header_lines, text, html))
        if depth + 1 < MAX_DEPTH:
            self.leaves(inner_leaves, inner, f"{location}/", depth + 1, unread)


def _empty(part: Message) -> bool:
    """Nothing of the content was fetched: only the part's MIME header."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822: an empty message inside
        return all(isinstance(p, Message) and not p.keys() and not p.get_payload() for p in payload)
    return not (isinstance(payload, str) and payload.strip())
