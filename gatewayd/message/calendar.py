"""What a calendar invite (text/calendar, .ics) says, as the words a calendar app shows.

An invite's SUMMARY, DESCRIPTION, LOCATION and COMMENT reach an assistant that reads the calendar,
but the raw iCalendar text hides them from a text scan: content lines are folded every 75 octets,
often inside a word (RFC 5545 3.1), and text values escape newlines, commas, semicolons and
backslashes (3.3.11). `shown` unfolds the lines and gives each property's value unescaped, one per
line, with the attendees' and organizer's names (a line that is not a content line as it stands),
and Outlook's HTML description (X-ALT-DESC) apart, as HTML. Properties whose values are codes
(dates, ids, recurrence rules, time zones) are left out: they say nothing to a reader, and a long
hex UID would read as an encoded payload. Not a full parser: components, parameters other than CN
and FMTTYPE, and value types are not interpreted.
"""

from __future__ import annotations

import re

# RFC 5545 3.1: a line break followed by one space or tab continues the line.
_FOLD = re.compile(r"\r?\n[ \t]")
# A content line is its name, its parameters (quoted values may hold ":" and ";"), ":" and its value.
_NAME = re.compile(r"[A-Za-z0-9-]+(?=[;:])")
_QUOTED_OR_COLON = re.compile(r'"[^"]*"|:')  # a scan, not one pattern for the line: that backtracks
_COMMON_NAME = re.compile(r';CN=(?:"([^"]*)"|([^;:]*))', re.I)
_HTML_TYPE = re.compile(r";FMTTYPE=\"?text/html", re.I)
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"n": "\n", "N": "\n"}

# Values that are codes, not words: structure, identifiers, times, rules, numbers.
_CODES = frozenset(
    {
        "BEGIN", "END", "VERSION", "PRODID", "CALSCALE", "METHOD", "UID", "SEQUENCE", "DTSTAMP",
        "DTSTART", "DTEND", "DUE", "DURATION", "CREATED", "LAST-MODIFIED", "RECURRENCE-ID", "RRULE",
        "RDATE", "EXDATE", "EXRULE", "TZID", "TZOFFSETFROM", "TZOFFSETTO", "TZNAME", "TZURL",
        "FREEBUSY", "TRANSP", "CLASS", "STATUS", "PRIORITY", "PERCENT-COMPLETE", "GEO", "TRIGGER",
        "ACTION", "REPEAT", "COMPLETED", "RELATED-TO", "REQUEST-STATUS",
    }
)  # fmt: skip
_ALT_DESCRIPTION = "X-ALT-DESC"
_PEOPLE = ("ORGANIZER", "ATTENDEE")  # their value is a mailto: URI; CN is the name shown


def shown(source: str) -> tuple[str, str | None]:
    """The text of the invite `source`, one value per line, and its HTML description (None if it
    has none)."""
    lines: list[str] = []
    html: list[str] = []
    for line in _FOLD.sub("", source).splitlines():
        content = _content_line(line)
        if content is None:  # not a content line: no app shows it, but an agent reading the part does
            lines.append(line)
            continue
        name, parameters, value = content
        if name in _CODES or name.startswith("X-MS-OLK-") or name.startswith("X-MICROSOFT-"):
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


def _content_line(line: str) -> tuple[str, str, str] | None:
    """The name (upper-cased), parameters and value of a content line; None if it is not one."""
    name = _NAME.match(line)
    if name is None:
        return None
    for token in _QUOTED_OR_COLON.finditer(line, name.end()):
        if token.group() == ":":
            return name.group().upper(), line[name.end() : token.start()], line[token.end() :]
    return None


def _unescape(value: str) -> str:
    """RFC 5545 3.3.11: \\n (or \\N) is a newline; \\, \\; \\\\ stand for the character itself."""
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda match: _UNESCAPED.get(match.group(1), match.group(1)), value)
