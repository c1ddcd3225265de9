"""Date against the message's own Received stamps.

Only the message's own timestamps are compared (Date against its Received headers), never the
clock: mail can be old, re-delivered or imported.
"""

from __future__ import annotations

import datetime
import functools
import re
from email.utils import parsedate_tz

from gatewayd.pipeline.spam.symbols import Scorer

_DATE_PAST_SLACK = 48 * 3600
_DATE_FUTURE_SLACK = 24 * 3600


# The shape nearly every Date and Received stamp has ("Thu, 22 Aug 2002 18:26:25 -0700"), read
# here as parsedate_tz reads it, at a fraction of its cost; other shapes go to parsedate_tz. The
# zone must end the word: parsedate_tz splits on whitespace and reads it whole.
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_COMMON_DATE = re.compile(
    r"[ \t]*(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),[ \t]+)?([0-9]{1,2})[ \t]+(" + "|".join(_MONTHS) + r")[ \t]+"
    r"([1-9][0-9]{3})[ \t]+([0-9]{1,2}):([0-9]{2}):([0-9]{2})[ \t]+([+-][0-9]{4})(?![^ \t])"
)
_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()


def _parsedate(value: str) -> tuple[int, int, int, int, int, int, int | None] | None:
    """(year, month, day, hour, minute, second, zone offset in seconds) as email.utils.parsedate_tz
    reads them, with a fast path for the common shape."""
    common = _COMMON_DATE.match(value)
    if not common:
        parts = parsedate_tz(value)
        return None if parts is None else (*parts[:6], parts[9])
    day, year, hour, minute, second, zone = map(int, common.group(1, 3, 4, 5, 6, 7))
    offset = abs(zone) // 100 * 3600 + abs(zone) % 100 * 60  # "-0130" is -(1 h 30 min)
    return (year, _MONTHS[common.group(2)], day, hour, minute, second, -offset if zone < 0 else offset)


@functools.lru_cache(maxsize=256)  # a message's stamps share their month
def _days_to_month(year: int, month: int) -> int:
    """Days from 1970-01-01 to the first of the month, as calendar.timegm counts them."""
    return datetime.date(year, month, 1).toordinal() - _EPOCH_DAY


def _timestamp(value: str) -> tuple[float | None, bool]:
    """(UTC seconds, sane) of an RFC 5322 date, or (None, False).

    Sane: a real zone offset and a year from 1980 to 2200 (spamware writes "-1600" and "0102").
    """
    try:
        parts = _parsedate(value)
        if parts is None:
            return None, False
        year, month, day, hour, minute, second, offset = parts
        sane = offset is not None and -12 * 3600 <= offset <= 14 * 3600 and offset % 900 == 0
        sane = sane and 1980 <= year <= 2200
        if offset is None or abs(offset) >= 24 * 3600:
            offset = 0
        # email.utils.mktime_tz: calendar.timegm's arithmetic, minus the zone offset.
        days = _days_to_month(year, month) + day - 1
        return float(((days * 24 + hour) * 60 + minute) * 60 + second - offset), sane
    except (ValueError, OverflowError, TypeError, IndexError):
        return None, False


def date_signals(scorer: Scorer, dates: list[str] | None, received: list[str]) -> None:
    """Date against the message's own Received times: never against the clock."""
    if not dates:
        scorer.add("MISSING_DATE", "")
        return
    moment, sane = _timestamp(dates[0])
    if moment is None or not sane:
        scorer.add("INVALID_DATE", dates[0][:80])
        return
    stamps = []
    for text in received:
        if ";" in text:
            stamp, stamp_sane = _timestamp(text.rpartition(";")[2])
            if stamp is not None and stamp_sane:
                # One stamp this near the Date rules out both findings: the rest need not be read.
                if moment - _DATE_FUTURE_SLACK <= stamp <= moment + _DATE_PAST_SLACK:
                    return
                stamps.append(stamp)
    if not stamps:
        return
    if moment < min(stamps) - _DATE_PAST_SLACK:
        days = (min(stamps) - moment) / 86400
        scorer.add("DATE_IN_PAST", f"{days:.1f} days before the earliest Received")
    elif moment > max(stamps) + _DATE_FUTURE_SLACK:
        hours = (moment - max(stamps)) / 3600
        scorer.add("DATE_IN_FUTURE", f"{hours:.0f} h after the latest Received")
