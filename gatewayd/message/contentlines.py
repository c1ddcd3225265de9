"""What a calendar invite (text/calendar, .ics) or a contact card (text/vcard, .vcf) says, as the
words a calendar or address-book app shows.

Both formats are content lines (RFC 5545 3.1, RFC 6350 3.2): an invite's SUMMARY, DESCRIPTION,
LOCATION and COMMENT, a card's name, organisation and NOTE reach an assistant that reads them, but
the raw text hides them from a text scan: lines are folded every 75 octets, often inside a word, and
text values escape newlines, commas, semicolons and backslashes (RFC 5545 3.3.11, RFC 6350 3.4).
`calendar_shown` and `vcard_shown` unfold the lines and give each property's value unescaped, one
per line; an invite's attendees' and organizer's names, and Outlook's HTML description (X-ALT-DESC)
apart, as HTML; a card's structured values (N, ADR) with their components apart. A line that is not
a content line is kept as it stands: no app shows it, but an agent reading the part does. Properties
whose values are codes (dates, ids, recurrence rules, time zones, photos and keys) are left out:
they say nothing to a reader, and a long hex UID or a base64 photo would read as an encoded
payload. A vCard 2.1 value in quoted-printable (`ENCODING=QUOTED-PRINTABLE`, as older phones and
Outlook write them), continued by soft line breaks ("=" at a line's end), is decoded in its CHARSET.
Not a full parser: components, parameters other than CN, FMTTYPE, ENCODING and CHARSET, and value
types are not interpreted.
"""

from __future__ import annotations

import codecs
import contextlib
import quopri
import re
from collections.abc import Iterator

# RFC 5545 3.1, RFC 6350 3.2: a line break followed by one space or tab continues the line.
_FOLD = re.compile(r"\r?\n[ \t]")
# A content line is its name (in a vCard, after an optional "group."), its parameters (quoted values
# may hold ":" and ";"), ":" and its value.
_NAME = re.compile(r"(?:[A-Za-z0-9-]+\.)?([A-Za-z0-9-]+)(?=[;:])")
_QUOTED_OR_COLON = re.compile(r'"[^"]*"|:')  # a scan, not one pattern for the line: that backtracks
_COMMON_NAME = re.compile(r';CN=(?:"([^"]*)"|([^;:]*))', re.I)
_HTML_TYPE = re.compile(r";FMTTYPE=\"?text/html", re.I)
# vCard 2.1 5.3: ENCODING=QUOTED-PRINTABLE, or the bare parameter value.
_QUOTED_PRINTABLE = re.compile(r';(?:ENCODING=)?"?QUOTED-PRINTABLE\b', re.I)
_CHARSET = re.compile(r';CHARSET="?([A-Za-z0-9_.:-]{1,40})', re.I)
_DEFAULT_CHARSET = "utf-8"
_ESCAPE = re.compile(r"\\(.)")
_ESCAPE_OR_SEPARATOR = re.compile(r"\\(.)|;")
_UNESCAPED = {"n": "\n", "N": "\n"}

# Values that are codes, not words: structure, identifiers, times, rules, numbers.
_CALENDAR_CODES = frozenset(
    {
        "BEGIN", "END", "VERSION", "PRODID", "CALSCALE", "METHOD", "UID", "SEQUENCE", "DTSTAMP",
        "DTSTART", "DTEND", "DUE", "DURATION", "CREATED", "LAST-MODIFIED", "RECURRENCE-ID", "RRULE",
        "RDATE", "EXDATE", "EXRULE", "TZID", "TZOFFSETFROM", "TZOFFSETTO", "TZNAME", "TZURL",
        "FREEBUSY", "TRANSP", "CLASS", "STATUS", "PRIORITY", "PERCENT-COMPLETE", "GEO", "TRIGGER",
        "ACTION", "REPEAT", "COMPLETED", "RELATED-TO", "REQUEST-STATUS",
    }
)  # fmt: skip
_VCARD_CODES = frozenset(
    {
        "BEGIN", "END", "VERSION", "PRODID", "UID", "REV", "KIND", "GENDER", "BDAY", "ANNIVERSARY",
        "TZ", "GEO", "PHOTO", "LOGO", "SOUND", "KEY", "CLIENTPIDMAP", "SOURCE", "FBURL", "CALURI",
        "CALADRURI", "LANG", "SORT-STRING", "MAILER", "CLASS", "AGENT",
    }
)  # fmt: skip
_ALT_DESCRIPTION = "X-ALT-DESC"
_PEOPLE = ("ORGANIZER", "ATTENDEE")  # their value is a mailto: URI; CN is the name shown
_STRUCTURED = frozenset({"N", "ADR", "ORG"})  # components apart by ";" (RFC 6350 6.2.2, 6.3.1, 6.6.4)


def calendar_shown(source: str) -> tuple[str, str | None]:
    """The text of the invite `source`, one value per line, and its HTML description (None if it
    has none)."""
    lines: list[str] = []
    html: list[str] = []
    for line, content in _content_lines(source):
        if content is None:
            lines.append(line)
            continue
        name, parameters, value = content
        if name in _CALENDAR_CODES or name.startswith("X-MS-OLK-") or name.startswith("X-MICROSOFT-"):
            continue
        if name in _PEOPLE:
            common_name = _COMMON_NAME.search(parameters)
            if common_name:
                lines.append(common_name.group(1) or common_name.group(2) or "")
        elif name == _ALT_DESCRIPTION and _HTML_TYPE.search(parameters):
            html.append(_unescape(value))
        else:
            lines.append(_unescape(value))
    return "\n".join(line for line in lines if line), "\n".join(html) if html else None


def vcard_shown(source: str) -> str:
    """The text of the contact card `source`, one value per line."""
    lines: list[str] = []
    for line, content in _content_lines(source):
        if content is None:
            lines.append(line)
            continue
        name, _, value = content
        if name in _VCARD_CODES or name.startswith("X-ABUID") or name.startswith("X-ABDATE"):
            continue
        lines.append(_unescape(value, structured=name in _STRUCTURED).strip())
    return "\n".join(line for line in lines if line)


def _content_lines(source: str) -> Iterator[tuple[str, tuple[str, str, str] | None]]:
    """Each unfolded line, with its name, parameters and value if it is a content line; a
    quoted-printable value with the lines its soft line breaks continue it on, decoded."""
    lines = iter(_FOLD.sub("", source).splitlines())
    for line in lines:
        content = _content_line(line)
        if content is not None and _QUOTED_PRINTABLE.search(content[1]):
            name, parameters, value = content
            continued = [value]
            while continued[-1].endswith("="):
                continued.append(next(lines, ""))
            content = name, parameters, _quoted_printable("\n".join(continued), parameters)
        yield line, content


def _content_line(line: str) -> tuple[str, str, str] | None:
    """The name (upper-cased, without a vCard group), parameters and value of a content line; None if
    it is not one."""
    name = _NAME.match(line)
    if name is None:
        return None
    for token in _QUOTED_OR_COLON.finditer(line, name.end()):
        if token.group() == ":":
            return name.group(1).upper(), line[name.end() : token.start()], line[token.end() :]
    return None


def _quoted_printable(value: str, parameters: str) -> str:
    """The value's bytes decoded from quoted-printable ("=" and a line break is no break), in its
    CHARSET (UTF-8 if it names none or one Python does not know)."""
    charset = _CHARSET.search(parameters)
    encoding = _DEFAULT_CHARSET
    if charset:
        with contextlib.suppress(LookupError):
            encoding = codecs.lookup(charset.group(1)).name
    decoded = quopri.decodestring(value.encode("utf-8")).decode(encoding, errors="replace")
    return decoded.replace("\r\n", "\n").replace("\r", "\n")


def _unescape(value: str, structured: bool = False) -> str:
    """RFC 5545 3.3.11, RFC 6350 3.4: \\n (or \\N) is a newline; \\, \\; \\\\ stand for the character
    itself. In a structured value an unescaped ";" parts components, shown apart."""
    if "\\" not in value and not (structured and ";" in value):
        return value
    pattern = _ESCAPE_OR_SEPARATOR if structured else _ESCAPE
    return pattern.sub(_unescaped, value)


def _unescaped(match: re.Match[str]) -> str:
    escaped: str | None = match.group(1)  # None: the separator ";" matched
    return " " if escaped is None else _UNESCAPED.get(escaped, escaped)
