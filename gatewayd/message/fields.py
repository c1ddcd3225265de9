"""Identifiers, addresses and dates: Message-ID, In-Reply-To, References, address lists (with a fast
path for their common shapes), Date and INTERNALDATE."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses, parsedate_tz

from gatewayd.events import rfc3339
from gatewayd.message.limits import MAX_HEADER_CHARS
from gatewayd.message.lowercase import lower
from gatewayd.message.text import collapse, decode_words


def message_id(value: str | None) -> str | None:
    return (collapse(value) or None) if value is not None else None


_MSG_ID = re.compile(r"<[^<>\s]*>")


def in_reply_to(value: str | None) -> str | None:
    """The first <msg-id> when there is one (some mailers add prose), else the whole value."""
    if value is None:
        return None
    match = _MSG_ID.search(value)
    return match.group(0) if match else (collapse(value) or None)


def references(value: str | None) -> list[str]:
    if value is None:
        return []
    # Split on whitespace, and between ids a sender wrote without it ("<a@x><b@y>"): a space put
    # there, as re.split of each word at "(?<=>)(?=<)" would cut it (~10k instructions a word).
    return value.replace("><", "> <").split()


# A local part starts where its atom does (the lookbehind): tried from every character of a long run
# without an "@", findall would cost the square of the header's length (8 KiB of "a": 0.4 s).
# Nothing with a control character in it or beside it is an address: a NUL would reach the rules
# and an auto-reply's RCPT TO, and the part beside it would be another address.
_CONTROLS = r"\x00-\x08\x0e-\x1b\x7f-\x9f"  # C0 and C1, not white space
_ADDRESS = re.compile(
    rf'(?:(?<![^\s@<>()\[\],;:"])[^\s@<>()\[\],;:"{_CONTROLS}]++|"[^"{_CONTROLS}]*")'
    rf'@[^\s@<>(),;:"{_CONTROLS}]++(?![{_CONTROLS}])'
)


def addresses(values: Iterable[str]) -> list[dict[str, str | None]]:
    found: list[dict[str, str | None]] = []
    for value in values:
        # A cut at the last comma keeps a capped list from ending in half an address.
        if len(value) >= MAX_HEADER_CHARS and "," in value:
            value = value.rsplit(",", 1)[0]
        parsed: list[dict[str, str | None]] = []
        # Kept as it goes: any() over the entries, stopped at the first, costs its generator's close.
        with_address = False
        name: str | None
        for name, address in _getaddresses(value):
            address = address.strip()
            name = (decode_words(name) or None) if name else None  # most To and Cc entries: no name
            if _ADDRESS.fullmatch(address):
                parsed.append({"address": address, "name": name})
                with_address = True
            elif name:
                parsed.append({"address": None, "name": name})
        if not with_address:
            # getaddresses gives up on, say, an unterminated quote; salvage what looks like addresses.
            parsed += [{"address": a, "name": None} for a in _ADDRESS.findall(value)]
        found += parsed
    return found


# The common shapes of an address list ("a@b.c", "Name <a@b.c>", '"Last, First" <a@b.c>', by commas),
# for which getaddresses (a character-by-character Python parser: 40 µs a message) is not needed.
# Atoms and quoted strings as getaddresses reads them: an atom ends at a special or white space, a
# phrase may hold dots (obs-phrase). Atoms here hold no Unicode white space either, which
# getaddresses treats in odd ways (it drops a local-part atom that str.strip() empties). Possessive
# quantifiers: no backtracking on a failed match. Left to getaddresses as well: empty items, commas
# and quotes in comments, backslashes, which it reads differently since the fix of CVE-2023-27043
# (backported to Debian 12's Python 3.11.2, not in an upstream 3.11.7): it counts the commas
# outside quoted strings, pairing quotes with backslash escapes, and refuses a list whose count of
# addresses differs.
_PHRASE_ATOM = r'[^()<>@,:;"\[\]\\\s]++'
_QUOTED = r'"[^"\\\r\n]*+"'
_DOT_ATOM = r'[^()<>@,:;."\[\]\\\s]++(?>(?:\.[^()<>@,:;."\[\]\\\s]++)*)'
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*+(?:((?>(?:(?:{_PHRASE_ATOM}|{_QUOTED})[ \t]*+)*))<({_DOT_ATOM}@{_DOT_ATOM})>"
    rf"|({_DOT_ATOM}@{_DOT_ATOM})(?:[ \t]*+\(([^(),\"\\\r\n]*+)\))?)?[ \t]*+"
)
_PHRASE_WORD = re.compile(rf'"([^"\\\r\n]*)"|({_PHRASE_ATOM})')


def _getaddresses(value: str) -> list[tuple[str, str]]:
    """getaddresses([value]), less the ("", "") it gives for empty list items; by regular expression
    when every item has one of the common shapes ("a@b.c (Name)" included: the comment is the name)
    and none is empty."""
    found: list[tuple[str, str]] = []
    position, end = 0, len(value)
    while True:
        match = _SIMPLE_ADDRESS.match(value, position)  # never None: every part is optional
        phrase, routed, bare, comment = match.groups()  # type: ignore[union-attr]
        position = match.end()  # type: ignore[union-attr]
        if routed:
            # getaddresses joins the words of a phrase by single spaces, quotes removed.
            found.append((" ".join(quoted or atom for quoted, atom in _PHRASE_WORD.findall(phrase)), routed))
        elif bare:
            found.append((comment or "", bare))
        elif position < end or found:  # an empty item: not the whole value blank
            break
        if position == end:
            return found
        if value[position] != ",":
            break
        position += 1
    return [pair for pair in getaddresses([value]) if pair != ("", "")]


def first_address(values: list[str]) -> dict[str, str | None] | None:
    entries = addresses(values)
    for entry in entries:
        if entry["address"]:
            return entry
    return entries[0] if entries else None


def _to_rfc3339(moment: datetime) -> str | None:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # no zone given: assume UTC
    moment = moment.astimezone(UTC)
    # Four-digit years only: older or later dates in mail are junk, not history.
    return rfc3339(moment) if 1000 <= moment.year <= 9999 else None


_MONTHS = {
    month: number
    for number, month in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}


# RFC 5322's form of a date, the day name and the seconds given, a numeric zone (a comment with its
# name after it or not): nine in ten Date headers ("Thu, 22 Aug 2002 09:15:25 -0400 (EDT)").
_COMMON_DATE = re.compile(
    r"(?:[A-Za-z]+, +)?([0-9]{1,2}) ([A-Za-z]{3}) ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) "
    r"([+-])([0-9]{2})([0-9]{2})(?: \([A-Za-z]*\))?"
)


def _common_date(value: str) -> tuple[int, int, int, int, int, int, int, int, int, int | None] | None:
    """parsedate_tz(value) for a date of the common form by one match (parsedate_tz splits and reads
    it in some 60 lines of Python), its year not one date() refuses; else None. A test compares them."""
    match = _COMMON_DATE.fullmatch(value)
    if match is None:
        return None
    day, month_name, year, hour, minute, second, sign, zone_hours, zone_minutes = match.groups()
    month = _MONTHS.get(lower(month_name))
    if month is None or int(year) < 100:  # parsedate_tz reads no month; date() refuses the year
        return None
    offset = int(zone_hours) * 3600 + int(zone_minutes) * 60
    return (
        int(year),
        month,
        int(day),
        int(hour),
        int(minute),
        int(second),
        0,
        1,
        -1,
        -offset if sign == "-" else offset,
    )


# A number of 3+ digits outside the time and the zone: the year as the header wrote it.
_LONG_NUMBER = re.compile(r"(?<![\d:+-])\d{3,}(?![\d:])")


def date(value: str | None) -> str | None:
    if not value:
        return None
    parts = _common_date(value)
    if parts is None:
        parts = parsedate_tz(value)  # obsolete 2-digit years and zone names included
        if parts is None:
            # Some senders write ISO 8601.
            return _to_rfc3339(datetime.fromisoformat(value.strip()))
        if any(int(written) < 100 for written in _LONG_NUMBER.findall(value)):
            return None  # a year written with 3+ digits ("0001") is as written, not parsedate's 2001
    year, month, day, hour, minute, second = parts[:6]
    if 100 <= year < 200:
        year += 1900  # "0102": years since 1900 printed as four digits, an old mailer bug
    offset = parts[9] or 0
    if abs(offset) >= 24 * 3600:
        offset = 0  # a nonsense zone: treat as missing
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC) - timedelta(seconds=offset)
    return _to_rfc3339(moment)


_INTERNALDATE = re.compile(
    r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\s*"
)


def internaldate(value: str | None) -> str | None:
    """IMAP INTERNALDATE ("21-Nov-2026 13:25:53 +0000") as RFC 3339 UTC.

    Parsed by hand: strptime's %b follows the process locale.
    """
    if not value:
        return None
    value = value.strip().strip('"')
    match = _INTERNALDATE.fullmatch(value)
    if match is None:
        return date(value)
    day, month, year, hour, minute, second, sign, zh, zm = match.groups()
    moment = datetime(
        int(year), _MONTHS[lower(month)], int(day), int(hour), int(minute), int(second), tzinfo=UTC
    )
    offset = timedelta(hours=int(zh), minutes=int(zm))
    return _to_rfc3339(moment - offset if sign == "+" else moment + offset)
